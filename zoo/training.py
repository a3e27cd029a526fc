"""The training loop: strategies, model directories, checkpoints and resume.

Library code with explicit arguments; `train/common.py` turns flags into
these calls. Training goes through `keras.Model.fit`, so every model's own
`train_step` runs with Keras' progress bar and callbacks.

A model directory holds
- `config.json`: what was trained (model, architecture, dataset, flags). A
  second run in the same directory must train the same thing; it resumes.
- `checkpoints/`: `tf.train.CheckpointManager` checkpoints of the model and
  optimizer, written every `checkpoint_every` steps. The step counter is the
  optimizer's, so a resumed run continues at the checkpointed step.
- `logs/`: TensorBoard summaries; `timing.csv`: wall-clock seconds per step.
- `model.keras`: the final model, written when training completes.
"""

import csv
import json
import math
import os
import time

import keras
import tensorflow as tf

from zoo import registry

STRATEGIES = ("auto", "one_device", "mirrored")
# config.json keys that must match for a run to resume in an existing directory.
IDENTITY_KEYS = ("model", "arch", "dataset", "latent_dim", "image_shape")
MODEL_FILE = "model.keras"
CONFIG_FILE = "config.json"


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
    """A `tf.distribute` strategy by name; `auto` mirrors when several GPUs are visible."""
    gpus = tf.config.list_logical_devices("GPU")
    cpus = tf.config.list_logical_devices("CPU")
    if name == "auto":
        return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy((gpus or cpus)[0].name)
    if name == "mirrored":
        return tf.distribute.MirroredStrategy([d.name for d in gpus] if gpus else [d.name for d in cpus])
    raise ValueError(f"unknown strategy {name!r}; choose one of: {', '.join(STRATEGIES)}")


def prepare_model_dir(model_dir, config):
    """Creates `model_dir`, refuses one written for another model, and records `config`.

    Fails now, not after hours of training, when the directory cannot be written.
    """
    try:
        os.makedirs(model_dir, exist_ok=True)
        probe = os.path.join(model_dir, ".write_probe")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as error:
        raise ModelDirError(f"model_dir {model_dir!r} is not writable: {error.strerror or error}") from None
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
    with open(path, "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)


def build_model(name, strategy, learning_rate=1e-4, jit_compile=False, **model_kwargs):
    """Builds and compiles the registered model `name` under `strategy` (Adam)."""
    with strategy.scope():
        model = registry.get_model_class(name)(**model_kwargs)
        model.compile(optimizer=keras.optimizers.Adam(learning_rate), jit_compile=jit_compile)
        # Optimizer slots exist before a checkpoint is restored into them.
        model.optimizer.build(model.trainable_variables)
    return model


def checkpoint_manager(model, model_dir):
    checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
    return tf.train.CheckpointManager(checkpoint, os.path.join(model_dir, "checkpoints"), max_to_keep=3)


def restore(model, model_dir):
    """Restores the latest checkpoint, if any; returns the step it resumes at."""
    manager = checkpoint_manager(model, model_dir)
    if manager.latest_checkpoint:
        manager.checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
    return int(model.optimizer.iterations.numpy())


class _TrainingControl(keras.callbacks.Callback):
    """Stops at the step budget or at a non-finite loss; checkpoints only good states."""

    def __init__(self, manager, train_steps):
        super().__init__()
        self.manager = manager
        self.train_steps = train_steps
        self.bad_step = None

    def _step(self):
        return int(self.model.optimizer.iterations.numpy())

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.bad_step = self._step()
            self.model.stop_training = True
        elif self._step() >= self.train_steps:
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        if self.bad_step is None:
            self.manager.save(checkpoint_number=self._step())


class _StepTimer(keras.callbacks.Callback):
    """Appends `step,seconds` per training step to timing.csv (wall clock)."""

    def __init__(self, path):
        super().__init__()
        self.path = path
        self.rows = []

    def on_train_batch_begin(self, batch, logs=None):
        self.start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.rows.append((int(self.model.optimizer.iterations.numpy()), time.perf_counter() - self.start))

    def on_epoch_end(self, epoch, logs=None):
        new_file = not os.path.exists(self.path)
        with open(self.path, "a", newline="") as f:
            writer = csv.writer(f)
            if new_file:
                writer.writerow(("step", "seconds"))
            writer.writerows((step, f"{seconds:.6f}") for step, seconds in self.rows)
        self.rows = []


def train(
    model,
    make_train_data,
    model_dir,
    train_steps,
    checkpoint_every=500,
    validation_data=None,
    log_every=50,
    verbose="auto",
    is_chief=True,
):
    """Trains `model` to `train_steps` optimizer steps, resuming from `model_dir`.

    `make_train_data(initial_step)` returns the training dataset, repeating
    forever (the step budget ends training); it gets the step a resumed run
    starts at, so its shuffling can continue rather than replay. Returns
    the Keras History of this invocation. Raises NonFiniteLossError, keeping
    the last good checkpoint, when a loss stops being finite.
    """
    initial_step = restore(model, model_dir)
    steps_per_epoch = max(1, min(checkpoint_every, train_steps))
    epochs = math.ceil(train_steps / steps_per_epoch)
    control = _TrainingControl(checkpoint_manager(model, model_dir), train_steps)
    callbacks = [control, _StepTimer(os.path.join(model_dir, "timing.csv"))]
    if is_chief:
        callbacks.append(keras.callbacks.TensorBoard(os.path.join(model_dir, "logs"), update_freq=log_every))
    history = None
    if initial_step < train_steps:
        history = model.fit(
            make_train_data(initial_step),
            epochs=epochs,
            initial_epoch=initial_step // steps_per_epoch,
            steps_per_epoch=steps_per_epoch,
            validation_data=validation_data,
            callbacks=callbacks,
            verbose=verbose,
        )
    if control.bad_step is not None:
        kept = control.manager.latest_checkpoint
        raise NonFiniteLossError(
            f"loss became non-finite at step {control.bad_step}; training stopped, "
            f"last good checkpoint kept: {kept or 'none (no checkpoint was written yet)'}"
        )
    if is_chief:
        model.save(os.path.join(model_dir, MODEL_FILE))
    return history


def load_model(model_dir):
    """Loads the final model a training run wrote to `model_dir`."""
    path = os.path.join(model_dir, MODEL_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no trained model in {model_dir!r} (expected {path})")
    import zoo  # noqa: F401  (registers the model classes for deserialisation)

    return keras.saving.load_model(path)
