"""What every evaluation stage shares: settings as dataclass fields, the context a stage runs in, progress.

A stage (`evaluate.stages`) is a frozen dataclass whose fields are its settings; each field carries its
default, one line of help, the allowed values of a choice and a check (`setting`), so the command-line
flags, their help and the validation all come from the same place. `Common` holds the settings every
stage reads (examples, batch size, tasks, the project's PGD budget, seed). A stage declares `name`, the
keys of robustness.json it fills (`results`) and `run(context) -> {key: value}`; `check_inputs` refuses,
before any stage runs, what the data or the model rule out.
"""

import dataclasses
import math
import time
from typing import Callable, ClassVar, Optional

import numpy as np
import tensorflow as tf

from zoo import data as zoo_data
from zoo.config import AT_LEAST_ONE, Config, setting


class EvaluationError(ValueError):
    """Bad input to the evaluation: one clear sentence."""


# Checks (see zoo.config): the evaluation's own, for tuples of radii and lists.
def ALL_NON_NEGATIVE(values):
    return None if values and all(math.isfinite(v) and v >= 0 for v in values) else "must be finite and >= 0"


def ALL_POSITIVE(values):
    return None if values and all(math.isfinite(v) and v > 0 for v in values) else "must be finite and > 0"


def NOT_EMPTY(values):
    return None if values else "must not be empty"


class Settings(Config):
    """Base of `Common` and every stage: a `zoo.config.Config` whose errors are EvaluationErrors."""

    error = EvaluationError


@dataclasses.dataclass(frozen=True)
class Common(Settings):
    """Settings every stage reads."""

    num_examples: int = setting(1000, "Examples evaluated (the first N of the split).", check=AT_LEAST_ONE)
    split: str = setting(
        "test",
        "The split evaluated: test, or validation (the digits the *_plus_embedded datasets hold out of training, "
        "on which settings, checkpoints and versions are chosen).",
        choices=("test", "validation"),
    )
    batch_size: int = setting(100, "Examples per attack batch.", check=AT_LEAST_ONE)
    tasks: Optional[tuple[str, ...]] = setting(None, "Tasks to probe; default: every task of the dataset.")
    pgd_steps: int = setting(
        40, "Steps of the project's PGD (zoo.attacks) in every stage that runs it.", check=AT_LEAST_ONE
    )
    restarts: int = setting(10, "Random restarts of the project's PGD (the worst case is kept).", check=AT_LEAST_ONE)
    seed: int = setting(0, "Seed of attacks, probes and example selection.")
    download: bool = setting(True, "Let tensorflow-datasets download data that is not prepared in data_dir.")


class Stage(Settings):
    """One part of the protocol; subclasses are frozen dataclasses of their settings."""

    name: ClassVar[str]
    results: ClassVar[tuple]  # the top-level keys of robustness.json this stage fills

    def check_inputs(self, dataset, tasks, data_dir=None):
        """Raises EvaluationError, before any stage runs, for a dataset (read from data_dir) or tasks
        ({task: classes}) it cannot use."""

    def run(self, context):
        """Runs the stage; returns {key: value} for the keys in `results` (and may write plots)."""
        raise NotImplementedError


@dataclasses.dataclass
class Context:
    """What a stage runs on: the model, the examples evaluated (of `common.split`), the tasks, where to write, and how
    to report."""

    model: object  # evaluate.interface.Autoencoder
    dataset: str
    images: np.ndarray  # [n, H, W, C] evaluated images in [0, 1]
    labels: dict  # {task: [n] int}
    tasks: dict  # {task: number of classes}, the tasks probed
    common: Common
    output_dir: str
    data_dir: Optional[str] = None
    log: Callable = print
    timing: dict = dataclasses.field(default_factory=dict)
    # What a stage leaves for a later one: the accuracy stage's probes {task: (W, b)} for the latent attack.
    shared: dict = dataclasses.field(default_factory=dict)

    def load_arrays(self, split, num_examples):
        return load_arrays(self.dataset, split, num_examples, self.data_dir, self.common.download)

    def seed(self, *parts):
        return stateless_seed(self.common.seed, *parts)

    def progress(self, label, total):
        return Progress(label, total, self.log)


def load_arrays(dataset, split, num_examples, data_dir, download, batch_size=256):
    """Up to `num_examples` examples of a split as numpy: (images [n, H, W, C], {task: labels [n]})."""
    images, labels = [], {}
    for x, y in zoo_data.load(dataset, split, batch_size, data_dir=data_dir, take=num_examples, download=download):
        images.append(x.numpy())
        for task, values in y.items():
            labels.setdefault(task, []).append(values.numpy())
    if not images:
        raise EvaluationError(f"the {split!r} split of {dataset!r} is empty")
    return np.concatenate(images), {task: np.concatenate(v) for task, v in labels.items()}


def mix_seeds(*parts):
    """One int in [0, 2^31 - 1) from integers (a seed and what tells calls apart), deterministically."""
    value = 0
    for part in parts:
        value = (value * 1_000_003 + int(part)) % (2**31 - 1)
    return value


def stateless_seed(*parts):
    """A stateless shape-[2] seed from integers: [the first, the rest mixed]."""
    return tf.constant([int(parts[0]) % (2**31 - 1), mix_seeds(*parts[1:])], tf.int32)


def batches(n, batch_size):
    return [(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


def stats(values):
    values = np.asarray(values, np.float64)
    return {"mean": float(values.mean()), "std": float(values.std())}


class Progress:
    """Prints `label: done/total examples, <extra>, N examples/s` at most every `every` seconds, and at the end."""

    def __init__(self, label, total, log, every=5.0):
        self.label, self.total, self.log, self.every = label, total, log, every
        self.start = self.last = time.perf_counter()
        self.done = 0

    def update(self, count, extra=""):
        self.done += count
        now = time.perf_counter()
        if now - self.last >= self.every or self.done >= self.total:
            self.last = now
            rate = self.done / max(now - self.start, 1e-9)
            self.log(f"{self.label}: {self.done}/{self.total} examples{extra}, {rate:.1f} examples/s")

    @property
    def seconds(self):
        return time.perf_counter() - self.start
