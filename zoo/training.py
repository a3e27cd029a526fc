"""The training loop: strategies, model directories, checkpoints and resume.

Library code with explicit arguments; `train/common.py` turns flags into
these calls. Training goes through `keras.Model.fit`, so every model's own
`train_step` runs with Keras' progress bar and callbacks. Keras 3's `fit`
does not run under `MultiWorkerMirroredStrategy` (keras-team/keras#20585),
so for that strategy `train` drives the same `train_step`, `test_step` and
callbacks itself with `strategy.run` over a distributed dataset.

A model directory holds
- `config.json`: what was trained (model, architecture, dataset, flags). A
  second run in the same directory must train the same thing; it resumes.
- `checkpoints/`: `tf.train.CheckpointManager` checkpoints of the model and
  optimizer, written every `checkpoint_every` steps. The step counter is the
  optimizer's, so a resumed run continues at the checkpointed step.
- `logs/`: TensorBoard summaries; `timing.csv`: wall-clock seconds per step.
- `model.keras`: the final model, written when training completes.

With several workers only the chief writes there. Every worker takes part in
saving (saving reads distributed variables, which may need all workers), but
the others write to `workertemp_<task>` inside the model directory and delete
it, as TensorFlow's multi-worker guide prescribes; every worker restores from
the chief's checkpoints, so the model directory must be on storage all
workers share.
"""

import collections
import contextlib
import csv
import functools
import hashlib
import json
import math
import os
import shutil
import tempfile
import time

import keras
import tensorflow as tf
from absl import logging

from zoo import registry

STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker")
# config.json keys that must match for a run to resume in an existing directory.
IDENTITY_KEYS = ("model", "arch", "dataset", "latent_dim", "image_shape")
MODEL_FILE = "model.keras"
CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"


# Passes of `fit` in a row that may apply no step (all skipped by loss scaling) before training gives up.
_MAX_STALLED_PASSES = 20


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss."""


class ModelDirError(ValueError):
    """The model directory cannot be used for this run."""


def split_cpu(virtual_cpus):
    """Splits the host CPU into `virtual_cpus` logical devices (before TF initialises)."""
    if virtual_cpus > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * virtual_cpus)


def make_strategy(name):
    """A `tf.distribute` strategy by name; `auto` mirrors when several GPUs are visible.

    `multi_worker` reads the cluster from the TF_CONFIG environment variable;
    create it first thing in the program, before any other TensorFlow work.
    """
    if name == "multi_worker":
        if not os.environ.get("TF_CONFIG"):
            raise ValueError(
                "--strategy=multi_worker needs the TF_CONFIG environment variable describing the cluster "
                "and this worker's task (see the README, 'Several machines')"
            )
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    cpus = tf.config.list_logical_devices("CPU")
    if name == "auto":
        return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy((gpus or cpus)[0].name)
    if name == "mirrored":
        return tf.distribute.MirroredStrategy([d.name for d in gpus] if gpus else [d.name for d in cpus])
    raise ValueError(f"unknown strategy {name!r}; choose one of: {', '.join(STRATEGIES)}")


def is_multi_worker(strategy):
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


WorkerRole = collections.namedtuple("WorkerRole", ["is_chief", "task_type", "task_id"])


def worker_role(strategy):
    """This process's place in the cluster; a single-process strategy is its own chief.

    The chief is the task of type "chief", or worker 0 when the cluster names no chief.
    """
    resolver = getattr(strategy, "cluster_resolver", None) if is_multi_worker(strategy) else None
    if resolver is None or not resolver.task_type:
        return WorkerRole(True, None, 0)
    task_type, task_id = resolver.task_type, int(resolver.task_id or 0)
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    is_chief = task_type == "chief" or (task_type == "worker" and task_id == 0 and not has_chief)
    return WorkerRole(is_chief, task_type, task_id)


def write_dir(model_dir, role):
    """Where this worker writes: the model directory for the chief, a temporary one inside it otherwise."""
    if role.is_chief:
        return model_dir
    return os.path.join(model_dir, f"workertemp_{role.task_type}_{role.task_id}")


def _check_writable(directory):
    try:
        os.makedirs(directory, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write_probe_", dir=directory)  # unique: workers probe at once
        with os.fdopen(fd, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as error:
        raise ModelDirError(f"model_dir {directory!r} is not writable: {error.strerror or error}") from None


def prepare_model_dir(model_dir, config, write_config=True):
    """Creates `model_dir`, refuses one written for another model, and records `config`.

    Fails now, not after hours of training, when the directory cannot be
    written. Workers other than the chief pass `write_config=False`: they
    check the chief's directory but leave its files to the chief.
    """
    _check_writable(model_dir)
    path = os.path.join(model_dir, CONFIG_FILE)
    if os.path.exists(path):
        with open(path) as f:
            previous = json.load(f)
        clashes = [
            f"{key}={previous.get(key)!r} (this run: {config.get(key)!r})"
            for key in IDENTITY_KEYS
            if previous.get(key) != config.get(key)
        ]
        if clashes:
            raise ModelDirError(
                f"model_dir {model_dir!r} holds a different run ({', '.join(clashes)}); "
                "use a new --model_dir or delete the old one"
            )
    if write_config:
        with open(path, "w") as f:
            json.dump(config, f, indent=2, sort_keys=True)


@contextlib.contextmanager
def _dtype_policy(name):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def build_model(
    name, strategy, learning_rate=1e-4, jit_compile=False, steps_per_execution=1, mixed_precision=False, **model_kwargs
):
    """Builds and compiles the registered model `name` under `strategy` (Adam).

    `mixed_precision` builds the layers with the mixed_float16 policy
    (float16 maths, float32 weights); Keras then wraps Adam in a
    `LossScaleOptimizer`, whose loss scaling `ZooModel.train_step` applies.
    """
    if jit_compile and strategy.num_replicas_in_sync > 1:
        # Keras compiles the whole distributed step, whose variables live on several devices, and XLA
        # has no collectives on CPU: tf.distribute with jit_compile fails at the first step.
        logging.warning("jit_compile is ignored with %d replicas: the train step runs without XLA",
                        strategy.num_replicas_in_sync)  # fmt: skip
        jit_compile = False
    with strategy.scope(), _dtype_policy("mixed_float16" if mixed_precision else "float32"):
        model = registry.get_model_class(name)(**model_kwargs)
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate),
            jit_compile=jit_compile,
            steps_per_execution=steps_per_execution,
        )
        # Optimizer slots exist before a checkpoint is restored into them.
        model.optimizer.build(model.trainable_variables)
    return model


def checkpoint_manager(model, model_dir):
    checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
    return tf.train.CheckpointManager(checkpoint, os.path.join(model_dir, CHECKPOINT_DIR), max_to_keep=3)


def restore(model, model_dir):
    """Restores the latest checkpoint, if any; returns the step it resumes at."""
    manager = checkpoint_manager(model, model_dir)
    if manager.latest_checkpoint:
        manager.checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
    step = int(model.optimizer.iterations.numpy())
    if manager.latest_checkpoint:
        logging.info("resuming from checkpoint %s at step %d", manager.latest_checkpoint, step)
    return step


class _TrainingControl(keras.callbacks.Callback):
    """Stops at the step budget or at a non-finite loss; checkpoints only good states.

    A worker other than the chief saves too (see the module doc) and then
    deletes what it wrote (`discard=True`).
    """

    def __init__(self, manager, train_steps, discard=False):
        super().__init__()
        self.manager = manager
        self.train_steps = train_steps
        self.discard = discard
        self.bad_steps = None  # (first, last) step that may have produced the non-finite loss

    def _step(self):
        return int(self.model.optimizer.iterations.numpy())

    def on_train_begin(self, logs=None):
        self.last_step = self._step()

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        step = self._step()
        if loss is not None and not math.isfinite(float(loss)):
            self.bad_steps = (min(self.last_step + 1, step), step)
            self.model.stop_training = True
        elif step >= self.train_steps:
            self.model.stop_training = True
        self.last_step = step

    def on_epoch_end(self, epoch, logs=None):
        if self.bad_steps is None:
            self.manager.save(checkpoint_number=self._step())
            if self.discard:
                shutil.rmtree(self.manager.directory, ignore_errors=True)


class _BatchSummaries(keras.callbacks.Callback):
    """TensorBoard scalars `batch_<metric>` every `log_every` optimizer steps, against the step.

    Keras' TensorBoard callback with a batch frequency does Python work at every batch (about a
    millisecond, a tenth of a small model's step) and counts batches from 0 in every `fit`, so it
    only writes the epoch summaries here. These use the optimizer step: continuous across resumes
    and independent of steps_per_execution.
    """

    def __init__(self, log_dir, log_every):
        super().__init__()
        self.log_dir = log_dir
        self.log_every = log_every
        self.writer = None

    def on_train_begin(self, logs=None):
        self.writer = self.writer or tf.summary.create_file_writer(self.log_dir)
        self.last = int(self.model.optimizer.iterations.numpy()) // self.log_every

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        if step // self.log_every > self.last and logs:
            self.last = step // self.log_every
            with self.writer.as_default(step=step):
                for name, value in logs.items():
                    tf.summary.scalar(f"batch_{name}", value)

    def on_train_end(self, logs=None):
        self.writer.flush()


class StepTimer(keras.callbacks.Callback):
    """Wall-clock seconds per training step, as `rows` of (step, seconds).

    With a `path` (a run's timing.csv) the rows are appended to it at each
    epoch end; without one they accumulate for the caller (the benchmarks).
    With steps_per_execution > 1 Keras reports once per execution; the row
    then holds its last step and the mean time of its steps. Reading the step
    counter waits for the step to finish, so the time is the step's own.
    """

    def __init__(self, path=None):
        super().__init__()
        self.path = path
        self.rows = []

    def _step(self):
        return int(self.model.optimizer.iterations.numpy())

    def on_train_begin(self, logs=None):
        self.step = self._step()

    def on_train_batch_begin(self, batch, logs=None):
        self.start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        seconds = time.perf_counter() - self.start
        step = self._step()
        self.rows.append((step, seconds / max(1, step - self.step)))
        self.step = step

    def on_epoch_end(self, epoch, logs=None):
        if self.path is None:
            return
        new_file = not os.path.exists(self.path)
        with open(self.path, "a", newline="") as f:
            writer = csv.writer(f)
            if new_file:
                writer.writerow(("step", "seconds"))
            writer.writerows((step, f"{seconds:.6f}") for step, seconds in self.rows)
        self.rows = []


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
    train_step, test_step = model.train_step, model.test_step
    if model.jit_compile:
        train_step = tf.function(train_step, jit_compile=True)
        test_step = tf.function(test_step, jit_compile=True)
    steps_per_execution = int(model.steps_per_execution)
    results = lambda: {name: tracker.result() for name, tracker in model.trackers.items()}  # noqa: E731

    @tf.function
    def run_steps(iterator):
        for _ in tf.range(steps_per_execution):
            strategy.run(train_step, args=(next(iterator),))
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
    role = worker_role(strategy)
    out_dir = write_dir(model_dir, role)
    if not role.is_chief:
        _check_writable(out_dir)
    initial_step = restore(model, model_dir)  # every worker restores the chief's checkpoint
    steps_per_epoch = max(1, min(checkpoint_every, train_steps))
    epochs = math.ceil(train_steps / steps_per_epoch)
    control = _TrainingControl(checkpoint_manager(model, out_dir), train_steps, discard=not role.is_chief)
    all_callbacks = [control, StepTimer(os.path.join(out_dir, "timing.csv")), *callbacks]
    if role.is_chief:
        logs = os.path.join(model_dir, "logs")
        all_callbacks += [keras.callbacks.TensorBoard(logs), _BatchSummaries(os.path.join(logs, "train"), log_every)]
    elif verbose == "auto":
        verbose = 0  # one progress bar, the chief's
    try:
        history = None
        fit = functools.partial(_multi_worker_fit, model) if is_multi_worker(strategy) else model.fit
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
        model.save(os.path.join(out_dir, MODEL_FILE))
    finally:
        if not role.is_chief:  # a worker's temporary directory goes, whatever happened
            shutil.rmtree(out_dir, ignore_errors=True)
    return history


def weights_digest(model):
    """A short fingerprint of every weight's value: equal digests, equal models (e.g. across workers)."""
    digest = hashlib.sha256()
    for weight in model.weights:
        digest.update(keras.ops.convert_to_numpy(weight).tobytes())
    return digest.hexdigest()[:16]


def load_model(model_dir):
    """Loads the final model a training run wrote to `model_dir`."""
    path = os.path.join(model_dir, MODEL_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no trained model in {model_dir!r} (expected {path})")
    import zoo  # noqa: F401  (registers the model classes for deserialisation)

    return keras.saving.load_model(path)
