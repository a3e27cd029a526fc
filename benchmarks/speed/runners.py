"""What the speed benchmark times: the models and settings, and a runner per configuration that trains and times it."""

import os
import time

import keras
import numpy as np
import tensorflow as tf

import zoo
from train import loop
from train.callbacks import StepTimer
from zoo import data as zoo_data
from zoo import networks

# (label, registry name, hyper-parameters): the rows of the AVAE paper's Tables 1 and 2, and SE^1-fast, the SE with
# fast adversarial training's selection (configs/radius/se_0.2_fast.json), whose cost against SE^5 turns the two
# runs' curves at equal steps into curves at equal wall time.
MODELS = (
    ("VAE", "vae", {}),
    ("AVAE", "avae", {}),
    ("SE^5", "se", {"pgd_steps": 5}),
    ("SE^1-fast", "se", {"pgd_steps": 1, "selection_step_scale": 1.25}),
    ("SE^5-AVAE", "se_avae", {"pgd_steps": 5}),
    ("AVAE-SS", "avae_ss", {}),
)
# Steps of a shared machine are slowed by whatever else runs; the fast end of their times is the machine's
# speed, and the one least disturbed by the others (the mean over the run is reported beside it).
FAST_PERCENTILE = 10


class Setting:
    """One ARCH:PRECISION:XLA:STEPS_PER_EXECUTION[:MODEL+MODEL...] item of --settings."""

    def __init__(self, text):
        parts = text.split(":")
        if len(parts) not in (4, 5):
            raise ValueError(f"setting {text!r} is not ARCH:PRECISION:XLA:STEPS_PER_EXECUTION[:MODEL+MODEL...]")
        self.arch, self.precision, xla, spe = parts[:4]
        if self.arch not in networks.ARCHITECTURES:
            raise ValueError(f"setting {text!r}: arch must be one of {', '.join(networks.ARCHITECTURES)}")
        if self.precision not in loop.PRECISIONS:
            raise ValueError(f"setting {text!r}: precision must be one of {', '.join(loop.PRECISIONS)}")
        if xla not in ("on", "off"):
            raise ValueError(f"setting {text!r}: XLA must be on or off")
        if not spe.isdigit() or int(spe) < 1:
            raise ValueError(f"setting {text!r}: steps per execution must be a positive integer")
        self.jit_compile, self.steps_per_execution = xla == "on", int(spe)
        self.models = set(parts[4].split("+")) if len(parts) == 5 else None  # None: every model of --models
        unknown = sorted((self.models or set()) - {label for label, _, _ in MODELS})
        if unknown:
            raise ValueError(f"setting {text!r}: unknown model(s) {', '.join(unknown)}")

    @property
    def xla(self):
        return "on" if self.jit_compile else "off"

    def times(self, label):
        return self.models is None or label in self.models


class Runner:
    """One configuration: trains `steps` more steps and returns the seconds per step of the timed executions."""

    label = arch = precision = xla = None
    steps_per_execution = 1
    flops = None

    def __init__(self):
        self.rounds = []  # per round: the timed steps and the seconds per step of each timed execution

    @property
    def key(self):
        return (self.arch, self.precision, self.xla, self.steps_per_execution)

    def record(self, seconds_per_step):
        self.rounds.append(
            {
                "steps": len(seconds_per_step) * self.steps_per_execution,
                "seconds_per_step": [float(s) for s in seconds_per_step],
            }
        )

    def _seconds(self):
        return [s for r in self.rounds for s in r["seconds_per_step"]]

    def round_rate(self):
        """Steps per second of the last round."""
        return 1.0 / float(np.mean(self.rounds[-1]["seconds_per_step"]))

    def fast_seconds(self):
        """The FAST_PERCENTILE-th percentile of the timed step times: the step when the process had the cores."""
        return float(np.percentile(self._seconds(), FAST_PERCENTILE))

    def mean_rate(self):
        """Every timed step over their total time (every execution holds the same number of steps)."""
        return 1.0 / float(np.mean(self._seconds()))


class KerasRunner(Runner):
    def __init__(self, label, name, hyperparameters, setting, image_shape, dataset, size_only, latent_dim):
        super().__init__()
        self.label, self.name = label, name
        self.arch, self.precision, self.xla = setting.arch, setting.precision, setting.xla
        self.steps_per_execution = setting.steps_per_execution
        keras.utils.set_random_seed(0)
        model_class = zoo.get_model_class(name)
        self.model = loop.build_model(
            model_class,
            tf.distribute.get_strategy(),
            jit_compile=setting.jit_compile,
            steps_per_execution=setting.steps_per_execution,
            precision=setting.precision,
            image_shape=image_shape,
            arch=setting.arch,
            latent_dim=latent_dim,
            **hyperparameters,
        )
        self.dataset = dataset if model_class.needs_data else size_only

    def batch_spec(self):
        return tf.TensorSpec(tf.nest.flatten(self.dataset.element_spec)[0].shape, tf.float32)

    def executions(self, steps):
        """Whole executions that train about `steps` (at least one)."""
        return max(1, round(steps / self.steps_per_execution))

    def run(self, steps):
        """Trains about `steps` in whole executions; the seconds per step of each timed execution.

        Every `fit` starts a fresh data iterator, which refills the shuffle buffer during the first execution
        (about 0.05 s here); that execution is left out unless it is the only one (a slow step, beside which
        the refill is small).
        """
        timer = StepTimer()
        self.model.fit(
            self.dataset,
            steps_per_epoch=self.executions(steps) * self.steps_per_execution,
            epochs=1,
            verbose=0,
            shuffle=False,
            callbacks=[timer],
        )
        seconds = [seconds for _, seconds in timer.rows]
        return seconds[1:] or seconds


def _datasets(dataset_name, data_dir, batch_size):
    dataset = zoo_data.training_batches(dataset_name, batch_size, data_dir=data_dir, download=False)
    size_only = tf.data.Dataset.from_tensors(tf.zeros([0])).repeat().batch(batch_size, drop_remainder=True)
    return dataset, size_only


def _fill_cache(dataset, dataset_name, data_dir, batch_size):
    """One pass over the training split, so every round reads the in-memory cache (as every later epoch does)."""
    size = zoo_data.get_spec(dataset_name).load("train", data_dir, False).cardinality().numpy()
    iterator = iter(dataset)
    for _ in range(int(size) // batch_size + 2):
        next(iterator)


def keras_runners(settings, labels, dataset_name, data_dir, batch_size, latent_dim):
    """The training pipeline, its cache filled, and a KerasRunner per configuration: (runners, image shape, dataset)."""
    dataset, size_only = _datasets(dataset_name, data_dir, batch_size)
    image_shape = tuple(zoo_data.get_spec(dataset_name).image_shape)
    _fill_cache(dataset, dataset_name, data_dir, batch_size)
    runners = [
        KerasRunner(label, name, hyperparameters, setting, image_shape, dataset, size_only, latent_dim)
        for setting in settings
        for label, name, hyperparameters in MODELS
        if label in labels and setting.times(label)
    ]
    return runners, image_shape, dataset


def time_in_rounds(runners, peak, rounds, round_seconds):
    """Warms every runner up, then times them in `rounds` alternated rounds; the load averages seen.

    Each round measures the matmul `peak`, then trains every runner for about `round_seconds`, in reversed
    order every other round, so that a change of load hits every configuration alike.
    """
    estimate = {}
    for runner in runners:  # warm-up: tracing, XLA compilation; a first rate for the round lengths
        start = time.perf_counter()
        seconds = runner.run(2 * runner.steps_per_execution)  # the second execution gives the first rate
        estimate[runner] = 1.0 / float(np.mean(seconds))
        print(
            f"warm-up {runner.label} {runner.key}: {time.perf_counter() - start:.1f} s, "
            f"~{estimate[runner]:.1f} steps/s",
            flush=True,
        )
    loads = [os.getloadavg()[0]]
    for round_ in range(rounds):
        rates = peak.measure()
        print(
            f"round {round_}: matmul {rates['float32']:.1f} GFLOP/s float32, {rates['bfloat16']:.1f} bfloat16",
            flush=True,
        )
        for runner in runners if round_ % 2 == 0 else runners[::-1]:
            runner.record(runner.run(round(round_seconds * estimate[runner])))
            estimate[runner] = runner.round_rate()  # the next round's length follows the latest rate
            loads.append(os.getloadavg()[0])
            print(f"round {round_} {runner.label} {runner.key}: {runner.round_rate():.1f} steps/s", flush=True)
    return loads
