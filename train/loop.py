"""The training loop: build and compile a model, train it with checkpoints and resume.

Library code with explicit arguments; `train.run` turns settings into these
calls. Training goes through `keras.Model.fit`, so every model's own
`train_step` runs with Keras' progress bar and callbacks. Keras 3's `fit`
does not run under `MultiWorkerMirroredStrategy` (keras-team/keras#20585),
so for that strategy `train` drives the same `train_step`, `test_step` and
callbacks itself with `strategy.run` over a distributed dataset.

The model directory (`zoo.model_dir.ModelDir`) receives `tf.train.CheckpointManager`
checkpoints of the model and optimizer every `checkpoint_every` steps. The
step counter is the optimizer's, so a resumed run continues at the
checkpointed step. `model.keras` is written when training completes.

With several workers only the chief writes there. Every worker takes part in
saving (saving reads distributed variables, which may need all workers), but
the others write to `workertemp_<task>` inside the model directory and delete
it, as TensorFlow's multi-worker guide prescribes; every worker restores from
the chief's checkpoints, so the model directory must be on storage all
workers share.
"""

import contextlib
import functools
import hashlib
import math
import shutil

import keras
import tensorflow as tf
from absl import logging

from train import distribute
from train.callbacks import BatchSummaries, StepTimer, TrainingControl
from zoo import registry
from zoo.model_dir import ModelDir

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")

# Passes of `fit` in a row that may apply no step (all skipped by loss scaling) before training gives up.
_MAX_STALLED_PASSES = 20


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss."""


@contextlib.contextmanager
def _dtype_policy(name):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def build_model(
    name, strategy, learning_rate=1e-4, jit_compile=False, steps_per_execution=1, precision="float32",
    steps_per_xla_program=None, **model_kwargs,
):  # fmt: skip
    """Builds and compiles the registered model `name` under `strategy` (Adam).

    `steps_per_xla_program`, with XLA: training steps unrolled into one XLA program (None: the model's
    default, `ZooModel.steps_per_xla_program`).

    `precision` is a Keras dtype policy: the mixed ones compute in float16 or
    bfloat16 and keep float32 weights (the networks compute their output
    layers in float32, so posteriors, logits and losses stay float32). With
    mixed_float16 Keras wraps Adam in a `LossScaleOptimizer`, whose loss
    scaling `ZooModel.train_step` applies; bfloat16 has float32's range and
    needs none.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
    if jit_compile and strategy.num_replicas_in_sync > 1:
        # Keras compiles the whole distributed step, whose variables live on several devices, and XLA
        # has no collectives on CPU: tf.distribute with jit_compile fails at the first step.
        logging.warning("jit_compile is ignored with %d replicas: the train step runs without XLA",
                        strategy.num_replicas_in_sync)  # fmt: skip
        jit_compile = False
    with strategy.scope(), _dtype_policy(precision):
        model = registry.get_model_class(name)(**model_kwargs)
        if steps_per_xla_program is not None:
            model.steps_per_xla_program = int(steps_per_xla_program)
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate),
            jit_compile=jit_compile,
            steps_per_execution=steps_per_execution,
        )
        # Optimizer slots exist before a checkpoint is restored into them.
        model.optimizer.build(model.trainable_variables)
    return model


def checkpoint_manager(model, model_dir):
    """Checkpoints of `model` and its optimizer in the `ModelDir` `model_dir`."""
    checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
    return tf.train.CheckpointManager(checkpoint, model_dir.checkpoint_dir, max_to_keep=3)


def restore(model, model_dir):
    """Restores the latest checkpoint, if any; returns the step it resumes at."""
    manager = checkpoint_manager(model, ModelDir(model_dir))
    if manager.latest_checkpoint:
        manager.checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
    step = int(model.optimizer.iterations.numpy())
    if manager.latest_checkpoint:
        # A warning: a user who meant a fresh run learns here that the directory held one.
        logging.warning("resuming from checkpoint %s at step %d", manager.latest_checkpoint, step)
    return step


def _batch_size(dataset):
    """The static batch size of a dataset batched with drop_remainder=True."""
    return tf.nest.flatten(dataset.element_spec)[0].shape[0]


def _whole_batches(validation_data, batch_size, replicas):
    """The validation data in whole global batches when several replicas share each batch.

    A distributed batch is split into per-replica batches of batch_size / replicas, so a short last
    batch can leave a replica nothing: its mean would be NaN (or its sampling fail). None when not
    one whole batch is left.
    """
    if validation_data is None or replicas == 1:
        return validation_data
    whole = validation_data.unbatch().batch(batch_size, drop_remainder=True)
    if not any(True for _ in whole.take(1)):
        logging.warning("no validation: fewer validation examples than one global batch (%d)", batch_size)
        return None
    return whole


def _data_sharded(dataset):
    """Shards by element, so any source (one file, in-memory arrays) splits evenly over workers."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def _multi_worker_fit(
    model, dataset, epochs, initial_epoch, steps_per_epoch, callbacks, validation_data=None, verbose="auto"
):
    """`model.fit` for `MultiWorkerMirroredStrategy`, which Keras 3's own `fit` cannot run.

    Runs the model's own `train_step` (and `test_step` for validation) in
    `strategy.run`, `steps_per_execution` steps per call, and calls the same
    callbacks as `fit`; the logs are the metric trackers' values over every
    replica of every worker. Every worker must call it.
    """
    strategy = model.distribute_strategy
    test_step = tf.function(model.test_step, jit_compile=True) if model.jit_compile else model.test_step
    steps_per_execution = int(model.steps_per_execution)
    results = lambda: {name: tracker.result() for name, tracker in model.trackers.items()}  # noqa: E731

    if model.jit_compile:  # one replica (`build_model`): the model's own XLA executions, as `fit` runs them
        model.make_train_function()
        run_steps = model.train_function
    else:

        @tf.function
        def run_steps(iterator):
            for _ in tf.range(steps_per_execution):
                strategy.run(model.train_step, args=(next(iterator),))
            return results()

    @tf.function
    def evaluate(distributed):
        for batch in distributed:
            strategy.run(test_step, args=(batch,))
        return results()

    iterator = iter(strategy.experimental_distribute_dataset(_data_sharded(dataset)))
    if validation_data is not None:
        validation_data = strategy.experimental_distribute_dataset(_data_sharded(validation_data))
    callbacks = keras.callbacks.CallbackList(
        callbacks,
        add_history=True,
        add_progbar=verbose != 0,
        verbose=1 if verbose == "auto" else verbose,
        epochs=epochs,
        steps=steps_per_epoch,
        model=model,
    )
    model.stop_training = False
    callbacks.on_train_begin()
    for epoch in range(initial_epoch, epochs):
        model.reset_metrics()
        callbacks.on_epoch_begin(epoch)
        logs = {}
        for begin in range(0, steps_per_epoch, steps_per_execution):
            callbacks.on_train_batch_begin(begin)
            logs = {name: float(value) for name, value in run_steps(iterator).items()}
            callbacks.on_train_batch_end(begin + steps_per_execution - 1, logs)
            if model.stop_training:
                break
        epoch_logs = dict(logs)
        if validation_data is not None:
            model.reset_metrics()
            callbacks.on_test_begin()
            val_logs = {name: float(value) for name, value in evaluate(validation_data).items()}
            callbacks.on_test_end(val_logs)
            epoch_logs.update({f"val_{name}": value for name, value in val_logs.items()})
        callbacks.on_epoch_end(epoch, epoch_logs)
        if model.stop_training:
            break
    callbacks.on_train_end(logs)
    return model.history


def _fit_steps_per_execution(model, steps_per_epoch, remaining):
    """Lowers steps_per_execution to divide the epoch and the steps left, so no execution overshoots."""
    wanted = int(model.steps_per_execution)
    fitting = math.gcd(wanted, steps_per_epoch, remaining)
    if fitting != wanted:
        logging.warning(
            "steps_per_execution=%d does not divide the checkpoint interval (%d) and the %d steps left; using %d",
            wanted, steps_per_epoch, remaining, fitting,
        )  # fmt: skip
        with model.distribute_strategy.scope():
            model.compile(optimizer=model.optimizer, jit_compile=model.jit_compile, steps_per_execution=fitting)


def train(
    model,
    make_train_data,
    model_dir,
    train_steps,
    checkpoint_every=500,
    validation_data=None,
    log_every=50,
    verbose="auto",
    callbacks=(),
):
    """Trains `model` to `train_steps` optimizer steps, resuming from `model_dir`.

    `make_train_data(initial_step)` returns the training dataset, batched to
    the global batch size with drop_remainder and repeating forever (the step
    budget ends training); it gets the step a resumed run starts at, so its
    shuffling can continue rather than replay. `callbacks` are added to the
    run's own. Returns the Keras History of this invocation. Raises
    NonFiniteLossError, keeping the last good checkpoint, when a loss stops
    being finite. Under a multi-worker strategy every worker calls it; only
    the chief writes into `model_dir`.
    """
    strategy = model.distribute_strategy
    role = distribute.worker_role(strategy)
    model_dir = ModelDir(model_dir)
    out_dir = distribute.worker_model_dir(model_dir, role)
    if not role.is_chief:
        out_dir.check_writable()
    initial_step = restore(model, model_dir)  # every worker restores the chief's checkpoint
    steps_per_epoch = max(1, min(checkpoint_every, train_steps))
    epochs = math.ceil(train_steps / steps_per_epoch)
    control = TrainingControl(checkpoint_manager(model, out_dir), train_steps, discard=not role.is_chief)
    all_callbacks = [control, StepTimer(out_dir.timing_file), *callbacks]
    if role.is_chief:
        logs = model_dir.log_dir
        all_callbacks += [keras.callbacks.TensorBoard(logs), BatchSummaries(f"{logs}/train", log_every)]
    elif verbose == "auto":
        verbose = 0  # one progress bar, the chief's
    try:
        history = None
        # The data comes shuffled (`make_train_data`); shuffle=False says so to Keras, which warns otherwise.
        fit = (functools.partial(_multi_worker_fit, model) if distribute.is_multi_worker(strategy)
               else functools.partial(model.fit, shuffle=False))  # fmt: skip
        # One pass normally; more when a loss-scaling optimizer skipped steps (non-finite float16
        # gradients), which do not advance the step counter.
        stalled_passes = 0
        while initial_step < train_steps and control.bad_steps is None:
            _fit_steps_per_execution(model, steps_per_epoch, train_steps - initial_step)
            dataset = make_train_data(initial_step)
            validation_data = _whole_batches(validation_data, _batch_size(dataset), strategy.num_replicas_in_sync)
            history = fit(
                dataset,
                epochs=epochs,
                initial_epoch=initial_step // steps_per_epoch,
                steps_per_epoch=steps_per_epoch,
                validation_data=validation_data,
                callbacks=all_callbacks,
                verbose=verbose,
            )
            step = int(model.optimizer.iterations.numpy())
            # Each skipped step halves the loss scale, so a few passes always get going; a run that
            # applies no step in many passes has gradients that are non-finite at any scale.
            stalled_passes = stalled_passes + 1 if step == initial_step else 0
            if stalled_passes == _MAX_STALLED_PASSES:
                raise NonFiniteLossError(
                    f"every gradient of {stalled_passes} passes from step {step} was non-finite; no step was applied"
                )
            initial_step = step
        if control.bad_steps is not None:
            first, last = control.bad_steps
            at = f"step {last}" if first == last else f"steps {first}-{last} (one execution of steps_per_execution)"
            kept = checkpoint_manager(model, model_dir).latest_checkpoint  # the chief's
            raise NonFiniteLossError(
                f"loss became non-finite at {at}; training stopped, "
                f"last good checkpoint kept: {kept or 'none (no checkpoint was written yet)'}"
            )
        model.save(out_dir.model_file)
    finally:
        if not role.is_chief:  # a worker's temporary directory goes, whatever happened
            shutil.rmtree(out_dir.path, ignore_errors=True)
    return history


def weights_digest(model):
    """A short fingerprint of every weight's value: equal digests, equal models (e.g. across workers)."""
    digest = hashlib.sha256()
    for weight in model.weights:
        digest.update(keras.ops.convert_to_numpy(weight).tobytes())
    return digest.hexdigest()[:16]
