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
import glob
import math
import os
import re
import shutil

import keras
import tensorflow as tf
from absl import logging

from train import distribute
from train.callbacks import BatchSummaries, StepTimer, TrainingControl
from train.xla_programs import use_xla_programs
from zoo.model_dir import ModelDir, atomic_path

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
# How the learning rate moves over a run (`learning_rate_of`).
LEARNING_RATE_SCHEDULES = ("constant", "cosine")
# Where checkpoints that do not restore are kept, inside the checkpoint directory.
DAMAGED = "damaged"

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


def learning_rate_of(learning_rate, schedule="constant", train_steps=None):
    """The optimizer's learning rate: `learning_rate` throughout (constant), or decayed from it to 0 on a half
    cosine over `train_steps` (cosine). A schedule is a function of the optimizer's step, which a checkpoint
    restores, so a resumed run follows it exactly; a run's train_steps then fixes its rates."""
    if schedule not in LEARNING_RATE_SCHEDULES:
        raise ValueError(
            f"unknown learning rate schedule {schedule!r}; choose one of: {', '.join(LEARNING_RATE_SCHEDULES)}"
        )
    if schedule == "constant":
        return learning_rate
    return keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=int(train_steps))


def build_for_settings(model_class, strategy, settings, **model_kwargs):
    """`build_model` as a run with `settings` (its `TrainSettings`, speed settings decided) trains it: its learning
    rate and schedule, precision, XLA and steps per execution. The one place a run's model is built, for training
    and for reading a run's checkpoints back (`train.study.record_stage`): a schedule's optimizer holds other
    variables than a constant rate's, so a checkpoint restores only into the optimizer that wrote it."""
    return build_model(
        model_class,
        strategy,
        learning_rate=learning_rate_of(settings.learning_rate, settings.learning_rate_schedule, settings.train_steps),
        jit_compile=settings.jit_compile,
        steps_per_execution=settings.steps_per_execution,
        steps_per_xla_program=settings.steps_per_xla_program,
        precision=settings.precision,
        **model_kwargs,
    )


def build_model(
    model_class,
    strategy,
    learning_rate=1e-4,
    jit_compile=False,
    steps_per_execution=1,
    precision="float32",
    steps_per_xla_program=distribute.AUTO_STEPS_PER_XLA_PROGRAM,
    **model_kwargs,
):
    """Builds and compiles a `model_class(**model_kwargs)` under `strategy` (Adam, at `learning_rate`: a rate or a
    schedule, `learning_rate_of`).

    `model_class` is the model's class, looked up once where its name entered (`zoo.get_model_class(name)`); a
    name is refused with a TypeError.

    `steps_per_xla_program`, with XLA: training steps unrolled into one XLA program (`train.xla_programs`).

    `precision` is a Keras dtype policy: the mixed ones compute in float16 or
    bfloat16 and keep float32 weights (the networks compute their output
    layers in float32, so posteriors, logits and losses stay float32). With
    mixed_float16 Keras wraps Adam in a `LossScaleOptimizer`, whose loss
    scaling `ZooModel.train_step` applies; bfloat16 has float32's range and
    needs none.
    """
    if not (isinstance(model_class, type) and issubclass(model_class, keras.Model)):
        raise TypeError(
            f"build_model takes a model class, got {model_class!r}: look a name up with zoo.get_model_class(name)"
        )
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
    if jit_compile and strategy.num_replicas_in_sync > 1:
        # Keras compiles the whole distributed step, whose variables live on several devices, and XLA
        # has no collectives on CPU: tf.distribute with jit_compile fails at the first step.
        logging.warning(
            "jit_compile is ignored with %d replicas: the train step runs without XLA", strategy.num_replicas_in_sync
        )
        jit_compile = False
    with strategy.scope(), _dtype_policy(precision):
        model = model_class(**model_kwargs)
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate),
            jit_compile=jit_compile,
            steps_per_execution=steps_per_execution,
        )
        # Optimizer slots exist before a checkpoint is restored into them.
        model.optimizer.build(model.trainable_variables)
    use_xla_programs(model, int(steps_per_xla_program))
    return model


class CheckpointError(RuntimeError):
    """The model directory has checkpoints, and none of them restores."""


def checkpoint_manager(model, model_dir):
    """Checkpoints of `model` and its optimizer in the `ModelDir` `model_dir`."""
    checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
    return tf.train.CheckpointManager(checkpoint, model_dir.checkpoint_dir, max_to_keep=3)


_CHECKPOINT_INDEX = re.compile(r"^ckpt-(\d+)\.index$")


def _checkpoints_on_disk(directory):
    """The checkpoint prefixes in `directory`, newest first: those its state file lists and those whose index is on
    disk (a checkpoint written but not yet recorded, or a state file that is itself damaged)."""
    prefixes = set()
    try:
        state = tf.train.get_checkpoint_state(directory)
    except Exception:  # an unreadable state file: the files on disk still say what there is
        state = None
    if state is not None:
        prefixes.update(os.path.join(directory, os.path.basename(p)) for p in state.all_model_checkpoint_paths)
    for name in os.listdir(directory) if os.path.isdir(directory) else ():
        if _CHECKPOINT_INDEX.match(name):
            prefixes.add(os.path.join(directory, name[: -len(".index")]))
    return sorted(prefixes, key=lambda p: int(p.rsplit("-", 1)[1]), reverse=True)


def _move_aside(prefix):
    """Moves every file of the checkpoint `prefix` into `damaged/` beside it (never deleting one); returns where."""
    directory, name = os.path.split(prefix)
    damaged = os.path.join(directory, DAMAGED)
    os.makedirs(damaged, exist_ok=True)
    target = os.path.join(damaged, name)
    suffix = 1
    while any(n.startswith(os.path.basename(target) + ".") for n in os.listdir(damaged)):
        target, suffix = os.path.join(damaged, f"{name}.{suffix}"), suffix + 1  # damaged again at the same step
    for path in glob.glob(glob.escape(prefix) + ".*") + glob.glob(glob.escape(prefix) + "_temp*"):
        shutil.move(path, target + path[len(prefix) :])
    return target


def restore(model, model_dir, move_damaged=True):
    """Restores the newest checkpoint that restores, if any; returns the step it resumes at.

    A checkpoint that does not restore (a truncated or corrupt file, a write cut short) is moved into
    `checkpoints/damaged/` with one warning, never deleted, and the next newest is tried; the state file then
    lists only the good ones. Raises CheckpointError when checkpoints were found and none restores. A worker that
    does not own the directory passes `move_damaged=False` and only skips them.
    """
    directory = ModelDir(model_dir).checkpoint_dir
    checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
    candidates = _checkpoints_on_disk(directory)
    for index, prefix in enumerate(candidates):
        try:
            checkpoint.restore(prefix).assert_existing_objects_matched()
        except Exception as error:  # TensorFlow raises many types for a damaged file (IndexError, DataLossError, ...)
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            if not move_damaged:
                logging.warning("skipping checkpoint %s, which does not restore (%s)", prefix, reason)
                continue
            logging.warning(
                "checkpoint %s does not restore (%s): moved to %s; resuming from the one before",
                prefix,
                reason,
                _move_aside(prefix),
            )
            continue
        if move_damaged:  # the state file lists what is there: not the damaged, and those written but not recorded
            good = candidates[index:]
            tf.compat.v1.train.update_checkpoint_state(directory, good[0], list(reversed(good)))
        step = int(model.optimizer.iterations.numpy())
        # A warning: a user who meant a fresh run learns here that the directory held one.
        logging.warning("resuming from checkpoint %s at step %d", prefix, step)
        return step
    if candidates:
        raise CheckpointError(
            f"none of the {len(candidates)} checkpoints in {directory} restores "
            f"({', '.join(os.path.basename(p) for p in candidates)}; "
            + (f"moved to {os.path.join(directory, DAMAGED)}" if move_damaged else "left in place")
            + "): delete the model directory, or train into a new one, to start afresh"
        )
    return int(model.optimizer.iterations.numpy())


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
            wanted,
            steps_per_epoch,
            remaining,
            fitting,
        )
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
    initial_step=None,
):
    """Trains `model` to `train_steps` optimizer steps, resuming from `model_dir`.

    `initial_step`: the step a caller that already restored the model (`restore`) resumes at; None restores here.

    `make_train_data(initial_step)` returns the training dataset, batched to
    the global batch size with drop_remainder and repeating forever (the step
    budget ends training); it gets the step a resumed run starts at and must
    yield from there what the uninterrupted run would have read
    (`zoo.data.training_order`), so that a resumed run ends with the same weights. `callbacks` are added to the
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
    if initial_step is None:  # every worker restores the chief's checkpoint
        initial_step = restore(model, model_dir, move_damaged=role.is_chief)
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
        fit = (
            functools.partial(_multi_worker_fit, model)
            if distribute.is_multi_worker(strategy)
            else functools.partial(model.fit, shuffle=False)
        )
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
        with atomic_path(out_dir.model_file) as temporary:  # a kill during the save leaves the old model whole
            model.save(temporary)
    finally:
        if not role.is_chief:  # a worker's temporary directory goes, whatever happened
            shutil.rmtree(out_dir.path, ignore_errors=True)
    return history
