"""Callbacks of the training loop: step budget and checkpoints, TensorBoard batch summaries, the robustness
curve (`evaluate.quick_check`), step timing."""

import csv
import math
import os
import shutil
import time

import keras
import tensorflow as tf

from evaluate import quick_check
from zoo.model_dir import atomic_open


class TrainingControl(keras.callbacks.Callback):
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


class EveryNSteps(keras.callbacks.Callback):
    """Calls `on_every(step, logs)` once each time the optimizer step passes a multiple of `every`.

    The optimizer step, not Keras' batch counter: continuous across resumes and independent of
    steps_per_execution. `writer` is a TensorBoard summary writer on `log_dir`, opened at the start.
    """

    def __init__(self, every, log_dir):
        super().__init__()
        self.every = every
        self.log_dir = log_dir
        self.writer = None

    def on_train_begin(self, logs=None):
        self.writer = self.writer or tf.summary.create_file_writer(self.log_dir)
        self.last = int(self.model.optimizer.iterations.numpy()) // self.every

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        if step // self.every > self.last:
            self.last = step // self.every
            self.on_every(step, logs)

    def on_every(self, step, logs):
        raise NotImplementedError

    def on_train_end(self, logs=None):
        self.writer.flush()


class BatchSummaries(EveryNSteps):
    """TensorBoard scalars `batch_<metric>` every `log_every` optimizer steps, against the step.

    Keras' TensorBoard callback with a batch frequency does Python work at every batch (about a
    millisecond, a tenth of a small model's step) and counts batches from 0 in every `fit`, so it
    only writes the epoch summaries here.
    """

    def __init__(self, log_dir, log_every):
        super().__init__(log_every, log_dir)

    def on_every(self, step, logs):
        with self.writer.as_default(step=step):
            for name, value in (logs or {}).items():
                tf.summary.scalar(f"batch_{name}", value)


class RobustnessMonitor(EveryNSteps):
    """Every `every` optimizer steps: the quick check (`evaluate.quick_check`), to TensorBoard
    (`robustness/...`) and a CSV (`quick_check.read_curve` reads it back)."""

    def __init__(self, check_data, epsilons, every, csv_path, log_dir, pgd_steps=quick_check.PGD_STEPS, seed=0):
        super().__init__(every, log_dir)
        self.check_data, self.epsilons = check_data, tuple(epsilons)
        self.csv_path, self.pgd_steps, self.seed = csv_path, pgd_steps, seed

    def on_every(self, step, logs):
        model = self.model
        result = quick_check.quick_robustness(
            lambda x: model(x, training=False), self.check_data, self.epsilons, self.pgd_steps, self.seed
        )
        with self.writer.as_default(step=step):
            tf.summary.scalar("robustness/clean_accuracy", result["clean"])
            for epsilon, accuracy in result["pgd"].items():
                tf.summary.scalar(f"robustness/pgd_accuracy_eps_{epsilon:g}", accuracy)
        self.writer.flush()
        quick_check.append_curve_row(self.csv_path, step, result, self.epsilons)


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
        with atomic_open(self.path, "a") as f:
            writer = csv.writer(f)
            if new_file:
                writer.writerow(("step", "seconds"))
            writer.writerows((step, f"{seconds:.6f}") for step, seconds in self.rows)
        self.rows = []
