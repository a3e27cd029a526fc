"""One speed benchmark: training steps per second through the real training path, against the VAE and
against the machine's measured matmul peak.

    nice -n 5 python -m benchmarks.train_speed --data_dir=../shared/tfds

Every model (VAE, AVAE, SE^5, SE^5-AVAE, AVAE-SS) is built by `train.loop.build_model` and trained by
`keras.Model.fit`, i.e. by its own `train_step` as `train.loop.train` runs it, on the real ColorMNIST
pipeline of `zoo.data` (AVAE-SS on batches that carry only the batch size, as training feeds it). Each
`--settings` item is an architecture, a precision, XLA on or off, a number of steps per execution and,
optionally, the models to time in it (default: every model of `--models`).

One timer, `train.callbacks.StepTimer`, times every execution from its start to the end of its last step
(the step counter is read, so the steps are done); the callbacks' own work between executions is not in
it. The first execution of every `fit` (a fresh data iterator refills its shuffle buffer) is not counted
unless it is the only one of its round.

The machine is shared and noisy, so everything runs side by side: after a warm-up (tracing, XLA
compilation, the data cache), `--rounds` rounds each train every configuration for about `--seconds`
in turn, in reversed order every other round, and each round also times a large float32 (and a
bfloat16) matmul. Other processes slow some steps down, so a configuration's rate comes from the fast
end of its step times (`FAST_PERCENTILE`), as the peak is the best matmul rate; the mean over the run
is reported too. Its cost relative to the VAE is the ratio of those step times in the same setting. The
fraction of the matmul peak is the step's matmul and convolution FLOPs (counted from the traced step,
see `step_flops`) times its steps/s, over the best float32 matmul rate of the run.

With jax, dm-haiku and optax importable (`pip install -e '.[jax]'`), an equivalent JAX/Haiku MLP VAE
and AVAE written here (`_JaxReference`) run in the same rounds, fed by the same pipeline, and the report
gives the project's steps/s over theirs. Without them that part is skipped, saying so.

Writes `--output`.md (the tables and the command) and `--output`.json (every round).

`--profile_steps=N` profiles N steps of every configuration with TensorFlow's profiler instead and writes
where the step spends its time to `--output`.md and .json: without XLA, op self time by op type and the
most expensive ops (the framework op statistics, read as TensorBoard's profile plugin reads them); with
XLA, the program's thunks by kind (`xla_breakdown`: matmuls, convolutions, random draws, the optimizer
update, the rest) and the time between them and outside the programs.
"""

import importlib.util
import json
import os
import platform
import re
import shlex
import sys
import time

from zoo import console

console.quiet_tensorflow()  # before anything loads TensorFlow

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

import zoo  # noqa: E402
from benchmarks import runs  # noqa: E402
from train import distribute, loop  # noqa: E402
from train.callbacks import StepTimer  # noqa: E402
from zoo import data as zoo_data  # noqa: E402
from zoo import networks  # noqa: E402

FLAGS = flags.FLAGS

# (label, registry name, hyper-parameters): the rows of the AVAE paper's Tables 1 and 2.
MODELS = (
    ("VAE", "vae", {}),
    ("AVAE", "avae", {}),
    ("SE^5", "se", {"pgd_steps": 5}),
    ("SE^5-AVAE", "se_avae", {"pgd_steps": 5}),
    ("AVAE-SS", "avae_ss", {}),
)
# The paper's time relative to the VAE: Table 1 (ColorMNIST, conv) and Table 2 (CelebA).
PAPER = {
    "VAE": ("x1", "x1"),
    "AVAE": ("x1.5", "x2.2"),
    "SE^5": ("x4", "x3.1"),
    "SE^5-AVAE": ("x4.7", "x4.3"),
    "AVAE-SS": ("x1.5", "x2.2"),
}
# The training default (float32, no XLA, one step per execution), the fast mlp setting, and bfloat16 for a
# few models (what it costs or gains on this device, e.g. its emulation on CPUs without AVX512-BF16 / AMX).
DEFAULT_SETTINGS = [
    "mlp:float32:off:1",
    "mlp:float32:on:10",
    "mlp:mixed_bfloat16:on:10:VAE+AVAE",
    "conv:float32:off:1",
    "conv:mixed_bfloat16:off:1:VAE",
]
JAX_LABEL = " (JAX/Haiku)"
# Steps of a shared machine are slowed by whatever else runs; the fast end of their times is the machine's
# speed, and the one least disturbed by the others (the mean over the run is reported beside it).
FAST_PERCENTILE = 10


def define_flags():
    flags.DEFINE_list("models", [label for label, _, _ in MODELS], "Models to time (labels of MODELS).")
    flags.DEFINE_list(
        "settings", DEFAULT_SETTINGS,
        "Settings to time the models in, each ARCH:PRECISION:XLA:STEPS_PER_EXECUTION[:MODEL+MODEL...], e.g. "
        f"mlp:float32:on:10 or conv:mixed_bfloat16:off:1:VAE+AVAE (precision: one of {', '.join(loop.PRECISIONS)}; "
        "XLA: on or off; models: a subset of --models, default all).",
    )  # fmt: skip
    flags.DEFINE_string("dataset", "color_mnist", "Dataset whose training pipeline feeds the models.")
    flags.DEFINE_string("data_dir", None, "tensorflow-datasets data directory.")
    flags.DEFINE_integer("batch_size", 64, "Batch size.", lower_bound=1)
    flags.DEFINE_integer("latent_dim", 64, "Latent dimension (the paper's 64).", lower_bound=1)
    flags.DEFINE_float("seconds", 2.0, "Timed seconds per configuration and round.", lower_bound=0.0)
    flags.DEFINE_integer("rounds", 5, "Timed rounds over all configurations.", lower_bound=1)
    flags.DEFINE_integer("matmul_size", 1024, "Side of the square matmuls that measure the peak.", lower_bound=64)
    flags.DEFINE_bool("jax", True, "Also time the JAX/Haiku reference VAE and AVAE (mlp) when jax is importable.")
    flags.DEFINE_string("output", "results/train_speed", "Output path without extension (.md and .json are written).")
    flags.DEFINE_integer("profile_steps", 0, "Instead of timing: profile this many steps of every configuration with "
                         "TensorFlow's profiler and write its op self time by op type and its most expensive ops.",
                         lower_bound=0)


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


# ---------------------------------------------------------------------------------------------- FLOPs

_MATMULS = ("MatMul", "BatchMatMul", "BatchMatMulV2", "BatchMatMulV3")
_CONVOLUTIONS = ("Conv2D", "Conv2DBackpropInput", "Conv2DBackpropFilter")


def _live_ops(graph):
    """The ops a call of the function runs: those its outputs and its control outputs (the updates) need.

    The gradient graph holds ops nobody uses (e.g. the gradient with respect to the input images), which
    the runtime prunes; they are not counted.
    """
    seen, stack = set(), [t.op for t in graph.outputs] + list(graph.control_outputs)
    while stack:
        op = stack.pop()
        if op not in seen:
            seen.add(op)
            stack.extend(t.op for t in op.inputs)
            stack.extend(op.control_inputs)
    return seen


def _source(tensor):
    while tensor.op.type == "Identity":
        tensor = tensor.op.inputs[0]
    return tensor


def _constant(tensor):
    tensor = _source(tensor)
    return int(tf.make_ndarray(tensor.op.get_attr("value"))) if tensor.op.type == "Const" else None


def _trip_count(op):
    """Iterations of a `tf.while_loop` whose counter starts at a constant and steps by one below a constant."""
    cond, body = op._cond_graph, op._body_graph
    tests = [o for o in cond.get_operations() if o.type == "Less"]
    if len(tests) == 1:
        counter, bound = _source(tests[0].inputs[0]), _constant(tests[0].inputs[1])
        index = next((i for i, t in enumerate(cond.inputs) if t is counter), None)
        if index is not None and bound is not None:
            start, step = _constant(op.inputs[index]), _source(body.outputs[index]).op
            increments = (step.type in ("Add", "AddV2") and _source(step.inputs[0]) is body.inputs[index]
                          and _constant(step.inputs[1]) == 1)  # fmt: skip
            if start is not None and increments:
                return max(0, bound - start)
    raise ValueError(f"cannot tell how many times the loop {op.name} runs")


def _op_flops(op):
    """FLOPs (2 per multiply-add) of one matmul or convolution, from its static shapes."""
    if op.type in _MATMULS:
        a, out = op.inputs[0].shape, op.outputs[0].shape
        transposed = op.get_attr("transpose_a") if op.type == "MatMul" else op.get_attr("adj_x")
        factors = [out.num_elements(), a[-2] if transposed else a[-1]]
    else:
        # Conv2D(input, filter) -> y; Conv2DBackpropInput(sizes, filter, dy); Conv2DBackpropFilter(input, sizes,
        # dy) -> filter gradient: each is one multiply-add per element of y (dy), kernel tap and input channel.
        y = op.outputs[0] if op.type == "Conv2D" else op.inputs[2]
        kernel = op.outputs[0].shape if op.type == "Conv2DBackpropFilter" else op.inputs[1].shape
        factors = [y.shape.num_elements(), *kernel[:3]]
    if any(f is None for f in factors):
        raise ValueError(f"{op.name} ({op.type}) has no static shape")
    return 2 * int(np.prod(factors))


def _graph_flops(graph):
    total = 0
    for op in _live_ops(graph):
        if op.type in _MATMULS or op.type in _CONVOLUTIONS:
            total += _op_flops(op)
        elif op.type in ("While", "StatelessWhile"):
            total += _trip_count(op) * _graph_flops(op._body_graph)
        elif op.type in ("If", "StatelessIf", "PartitionedCall", "StatefulPartitionedCall"):
            raise ValueError(f"{op.name}: FLOPs of {op.type} are not counted")
    return total


def step_flops(model, batch_spec):
    """Matmul and convolution FLOPs of one `train_step` on a batch of `batch_spec`, or None if not countable.

    Counted on the traced TensorFlow step before any optimisation, loops by their trip count (the SE's
    PGD selection); element-wise work (activations, BatchNorm, Adam) is left out, as in the usual
    model-FLOPs utilisation. XLA or oneDNN may fuse but do not remove these multiply-adds.
    """
    try:
        return _graph_flops(tf.function(model.train_step).get_concrete_function(batch_spec).graph)
    except ValueError as error:
        print(f"FLOPs not counted: {error}", flush=True)
        return None


# ---------------------------------------------------------------------------------------------- machine


def _cpu():
    """(model name, ISA flags) of the first CPU in /proc/cpuinfo."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields.get("model name", platform.processor() or platform.machine()), set(fields.get("flags", "").split())


def machine():
    name, isa = _cpu()
    vector = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in isa]
    native_bf16 = bool({"avx512_bf16", "amx_bf16"} & isa)
    gpus = [d.name for d in tf.config.list_physical_devices("GPU")]
    return {
        "cpu": name,
        "cores": os.cpu_count(),
        "isa": vector,
        "bfloat16": "native (AVX512-BF16/AMX)" if native_bf16 else "emulated: no AVX512-BF16 or AMX instructions",
        "auto_precision": distribute.auto_precision(),
        "gpus": gpus,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "onednn": _onednn_enabled(),
    }


def _onednn_enabled():
    from tensorflow.python.util import _pywrap_util_port

    return bool(_pywrap_util_port.IsMklEnabled())


class MatmulPeak:
    """GFLOP/s of a square `size` matmul in float32 and bfloat16, the best of `repeats`, measured once per round.

    Many short matmuls rather than a few long ones, so that, like the fast steps, some run while the process
    has the cores.
    """

    def __init__(self, size):
        self.size = size
        self.rounds = []
        self._matmul = tf.function(lambda a, b: tf.reduce_sum(tf.matmul(a, b)))
        a, b = tf.random.uniform([size, size], seed=1), tf.random.uniform([size, size], seed=2)
        self._inputs = {"float32": (a, b), "bfloat16": (tf.cast(a, tf.bfloat16), tf.cast(b, tf.bfloat16))}
        for inputs in self._inputs.values():
            self._matmul(*inputs).numpy()  # trace

    def measure(self, repeats=10):
        rates = {}
        for dtype, inputs in self._inputs.items():
            best = min(self._seconds(inputs) for _ in range(repeats))
            rates[dtype] = 2 * self.size**3 / best / 1e9
        self.rounds.append(rates)
        return rates

    def _seconds(self, inputs):
        start = time.perf_counter()
        self._matmul(*inputs).numpy()
        return time.perf_counter() - start

    def peak(self, dtype="float32"):
        return max(r[dtype] for r in self.rounds)


# ---------------------------------------------------------------------------------------------- runners


class _Runner:
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
        self.rounds.append({"steps": len(seconds_per_step) * self.steps_per_execution,
                            "seconds_per_step": [float(s) for s in seconds_per_step]})  # fmt: skip

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


class KerasRunner(_Runner):
    def __init__(self, label, name, hyperparameters, setting, image_shape, dataset, size_only):
        super().__init__()
        self.label, self.name = label, name
        self.arch, self.precision, self.xla = setting.arch, setting.precision, setting.xla
        self.steps_per_execution = setting.steps_per_execution
        keras.utils.set_random_seed(0)
        self.model = loop.build_model(
            name, tf.distribute.get_strategy(), jit_compile=setting.jit_compile,
            steps_per_execution=setting.steps_per_execution, precision=setting.precision, image_shape=image_shape,
            arch=setting.arch, latent_dim=FLAGS.latent_dim, **hyperparameters,
        )  # fmt: skip
        self.dataset = dataset if zoo.get_model_class(name).needs_data else size_only

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
        self.model.fit(self.dataset, steps_per_epoch=self.executions(steps) * self.steps_per_execution, epochs=1,
                       verbose=0, shuffle=False, callbacks=[timer])  # fmt: skip
        seconds = [seconds for _, seconds in timer.rows]
        return seconds[1:] or seconds


class _JaxReference(_Runner):
    """The AVAE (or, with `coupling=False`, the VAE) of zoo/models/avae.py in JAX/Haiku/optax, mlp only.

    Same networks (4 x 200 ReLU encoder with mean and log-variance heads, 4 x 200 ReLU decoder to logits),
    Gaussian likelihood with the model's obs_var around sigmoid(logits), z = mu + sigma eps, the closed-form
    coupling <log p_rho(z'|z)> and H[q(z'|x~)] of the delusion x~ drawn as the AVAE's default `delusion` says
    (a sample sigmoid(decoder(z)) + sqrt(obs_var) eps', or the mean image), gradient stopped; Adam; one
    `jax.jit` update per step on batches of the same pipeline, timed like `StepTimer`.
    """

    def __init__(self, label, coupling, image_shape, dataset, flops):
        import haiku as hk
        import jax
        import jax.numpy as jnp
        import optax

        super().__init__()
        self.label, self.arch, self.precision, self.xla = label + JAX_LABEL, "mlp", "float32", "jax.jit"
        self.flops = flops  # the same matmuls as the project's model
        config = zoo.get_model_class("avae").config_class()
        if config.posterior_noise != "std" or config.likelihood != "gaussian":
            raise ValueError("the JAX reference implements the AVAE's Gaussian likelihood and std posterior noise")
        rho, obs_var, latent_dim = config.rho, config.obs_var, FLAGS.latent_dim
        sampled_delusion = config.delusion == "sample"
        pixels = int(np.prod(image_shape))
        log_2pi = float(np.log(2.0 * np.pi))

        def loss(x, key):
            trunk = hk.nets.MLP([200] * 4, activate_final=True, name="encoder")
            heads = hk.Linear(latent_dim, name="z_mean"), hk.Linear(latent_dim, name="z_log_var")

            def encode(images):  # the same module instances, so both calls share the encoder's weights
                h = trunk(hk.Flatten()(images))
                return heads[0](h), heads[1](h)

            mean, log_var = encode(x)
            var = jnp.exp(log_var)
            posterior_key, delusion_key = jax.random.split(key)
            z = mean + jnp.exp(0.5 * log_var) * jax.random.normal(posterior_key, mean.shape)
            logits = hk.nets.MLP([200] * 4 + [pixels], name="decoder")(z).reshape(x.shape)
            reconstruction = jax.nn.sigmoid(logits)
            log_likelihood = jnp.sum(-0.5 * (log_2pi + np.log(obs_var) + (x - reconstruction) ** 2 / obs_var),
                                     axis=(1, 2, 3))  # fmt: skip
            kl = 0.5 * jnp.sum(var + mean**2 - 1.0 - log_var, axis=-1)
            objective = log_likelihood - kl
            if coupling:
                delusion = reconstruction
                if sampled_delusion:
                    delusion = delusion + np.sqrt(obs_var) * jax.random.normal(delusion_key, x.shape)
                d_mean, d_log_var = encode(jax.lax.stop_gradient(delusion))
                cond_var = 1.0 - rho**2
                square = jnp.exp(d_log_var) + d_mean**2 - 2.0 * rho * mean * d_mean + rho**2 * (var + mean**2)
                objective += jnp.sum(-0.5 * (log_2pi + np.log(cond_var)) - 0.5 * square / cond_var, axis=-1)
                objective += jnp.sum(0.5 * (log_2pi + 1.0 + d_log_var), axis=-1)
            return -jnp.mean(objective)

        network = hk.without_apply_rng(hk.transform(loss))
        optimizer = optax.adam(1e-4)  # build_model's default, which the project's runners use
        base_key = jax.random.PRNGKey(0)

        @jax.jit
        def update(params, opt_state, x, step):
            value, grads = jax.value_and_grad(network.apply)(params, x, jax.random.fold_in(base_key, step))
            updates, opt_state = optimizer.update(grads, opt_state)
            return optax.apply_updates(params, updates), opt_state, value

        self._iterator = dataset.map(lambda images, labels: images).as_numpy_iterator()
        x = next(self._iterator)
        self._params = network.init(jax.random.PRNGKey(1), x, base_key)
        self._opt_state = optimizer.init(self._params)
        self._update, self._step = update, 0

    def run(self, steps):
        seconds = []
        for _ in range(max(1, steps)):
            start = time.perf_counter()
            x = next(self._iterator)
            self._params, self._opt_state, value = self._update(self._params, self._opt_state, x, self._step)
            value.block_until_ready()
            seconds.append(time.perf_counter() - start)
            self._step += 1
        return seconds[1:] or seconds  # as `KerasRunner.run` (the first call compiles)


def _jax_missing():
    """Why the JAX reference cannot run here, or None."""
    missing = [name for name in ("jax", "haiku", "optax") if importlib.util.find_spec(name) is None]
    return f"skipped: {', '.join(missing)} not installed (pip install -e '.[jax]')" if missing else None


# ---------------------------------------------------------------------------------------------- run


def _datasets():
    dataset = zoo_data.load(FLAGS.dataset, "train", FLAGS.batch_size, data_dir=FLAGS.data_dir, shuffle=True,
                            repeat=True, drop_remainder=True, download=False)  # fmt: skip
    size_only = tf.data.Dataset.from_tensors(tf.zeros([0])).repeat().batch(FLAGS.batch_size, drop_remainder=True)
    return dataset, size_only


def _fill_cache(dataset):
    """One pass over the training split, so every round reads the in-memory cache (as every later epoch does)."""
    size = zoo_data.get_spec(FLAGS.dataset).load("train", FLAGS.data_dir, False).cardinality().numpy()
    iterator = iter(dataset)
    for _ in range(int(size) // FLAGS.batch_size + 2):
        next(iterator)


def _keras_runners(settings, labels):
    """The training pipeline, its cache filled, and a KerasRunner per configuration: (runners, image shape, dataset)."""
    dataset, size_only = _datasets()
    image_shape = tuple(zoo_data.get_spec(FLAGS.dataset).image_shape)
    _fill_cache(dataset)
    runners = [KerasRunner(label, name, hyperparameters, setting, image_shape, dataset, size_only)
               for setting in settings for label, name, hyperparameters in MODELS
               if label in labels and setting.times(label)]  # fmt: skip
    return runners, image_shape, dataset


def measure(settings, labels):
    """Builds and warms every configuration, then times them in alternated rounds; returns (runners, peak)."""
    runners, image_shape, dataset = _keras_runners(settings, labels)
    flops = {}
    for runner in runners:
        if (runner.label, runner.arch) not in flops:  # the same maths in every precision and setting
            flops[runner.label, runner.arch] = step_flops(runner.model, runner.batch_spec())
        runner.flops = flops[runner.label, runner.arch]
    if not FLAGS.jax:
        jax_note = "not asked for (--nojax)"
    elif not any(s.arch == "mlp" for s in settings):
        jax_note = "no mlp setting to compare it with"
    else:
        jax_note = _jax_missing()  # None when jax, haiku and optax import
    if jax_note is None:
        runners += [_JaxReference(label, label == "AVAE", image_shape, dataset, flops.get((label, "mlp")))
                    for label in ("VAE", "AVAE")]  # fmt: skip
    print(f"JAX reference: {jax_note or 'timed'}", flush=True)

    peak = MatmulPeak(FLAGS.matmul_size)
    estimate = {}
    for runner in runners:  # warm-up: tracing, XLA compilation; a first rate for the round lengths
        start = time.perf_counter()
        seconds = runner.run(2 * runner.steps_per_execution)  # the second execution gives the first rate
        estimate[runner] = 1.0 / float(np.mean(seconds))
        print(f"warm-up {runner.label} {runner.key}: {time.perf_counter() - start:.1f} s, "
              f"~{estimate[runner]:.1f} steps/s", flush=True)  # fmt: skip
    loads = [os.getloadavg()[0]]
    for round_ in range(FLAGS.rounds):
        rates = peak.measure()
        print(f"round {round_}: matmul {rates['float32']:.1f} GFLOP/s float32, {rates['bfloat16']:.1f} bfloat16",
              flush=True)  # fmt: skip
        for runner in runners if round_ % 2 == 0 else runners[::-1]:
            runner.record(runner.run(round(FLAGS.seconds * estimate[runner])))
            estimate[runner] = runner.round_rate()  # the next round's length follows the latest rate
            loads.append(os.getloadavg()[0])
            print(f"round {round_} {runner.label} {runner.key}: {runner.round_rate():.1f} steps/s", flush=True)
    return runners, peak, loads, jax_note


def profile(settings, labels, steps):
    """Where `steps` steps of each configuration spend their time, from TensorFlow's profiler.

    Without XLA: the framework op statistics (each op's self time). With XLA the step is one program, which
    those statistics do not break down: its thunks (each a dot, a fusion, ...) are, by `xla_breakdown`.
    """
    import tempfile

    profiles = []
    for runner in _keras_runners(settings, labels)[0]:
        runner.run(2 * runner.steps_per_execution)  # traced (and compiled) outside the profile
        unprofiled = runner.run(steps)  # the profiler's own cost, by comparison
        log_dir = tempfile.mkdtemp(prefix="train-speed-profile-")
        tf.profiler.experimental.start(log_dir)
        seconds = runner.run(steps)
        tf.profiler.experimental.stop()
        paths = [os.path.join(root, f) for root, _, files in os.walk(log_dir) for f in files
                 if f.endswith(".xplane.pb")]  # fmt: skip
        profiled = runner.executions(steps) * runner.steps_per_execution
        entry = {
            "model": runner.label, "arch": runner.arch, "precision": runner.precision, "xla": runner.xla,
            "steps_per_execution": runner.steps_per_execution, "profiled_steps": profiled,
            "seconds_per_step": float(np.mean(seconds)), "unprofiled_seconds_per_step": float(np.mean(unprofiled)),
        }  # fmt: skip
        if runner.xla == "on":
            entry["xla_breakdown"] = xla_breakdown(_xspaces(paths), runner.model.optimizer.name, profiled,
                                                   entry["seconds_per_step"])  # fmt: skip
        else:
            entry.update(_framework_op_stats(paths, profiled))
        profiles.append(entry)
        print(f"profiled {runner.label} {runner.key}", flush=True)
    return profiles


def _framework_op_stats(paths, profiled_steps):
    """Busy time per step, and each op type's and the costliest ops' share of it (their self time)."""
    from tensorflow.python.profiler.internal import _pywrap_profiler_plugin as profiler_plugin

    table = json.loads(profiler_plugin.xspace_to_tools_data(paths, "framework_op_stats")[0])[0]
    columns = [column["id"] for column in table["cols"]]
    ops = [dict(zip(columns, [cell.get("v") if cell else None for cell in row["c"]])) for row in table["rows"]]
    ops = [op for op in ops if op["type"] != "IDLE"]
    total = sum(op["total_self_time"] for op in ops)
    by_type = {}
    for op in ops:
        by_type[op["type"]] = by_type.get(op["type"], 0.0) + op["total_self_time"]
    return {
        "busy_ms_per_step": total / 1e3 / profiled_steps,
        "by_type": sorted(((t, us / total) for t, us in by_type.items()), key=lambda item: -item[1]),
        "top_ops": [(op["operation"], op["type"], op["total_self_time"] / total)
                    for op in sorted(ops, key=lambda op: -op["total_self_time"])[:8]],
    }  # fmt: skip


def _planes(spaces, name):
    """The planes called `name` ("/host:CPU": the host trace; "/host:metadata": the captured HloProtos)."""
    return [plane for space in spaces for plane in space.planes if plane.name == name]


def _xspaces(paths):
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    spaces = []
    for path in paths:
        with open(path, "rb") as f:
            spaces.append(xplane_pb2.XSpace.FromString(f.read()))
    return spaces


def union_length(intervals):
    """Length covered by (start, end) intervals, overlaps counted once (threads run thunks side by side)."""
    covered, end = 0.0, -np.inf
    for start, stop in sorted(intervals):
        if stop > end:
            covered += stop - max(start, end)
            end = stop
    return covered


# Kinds of XLA thunks, in the order they are told apart: by the opcodes of the instruction and of the
# computations it calls (a fusion around a dot is a matmul), by the TensorFlow ops they came from (a fusion
# that draws random numbers is a draw), then by the TensorFlow op of the thunk (the optimizer's scope).
XLA_KINDS = ("matmuls", "convolutions", "random draws", "optimizer update", "other element-wise and reductions")
# Thunks that run other thunks (a loop's body, a branch): their events span their children's, not counted.
_XLA_CONTROL_FLOW = ("while", "conditional", "call")


def _with_called(instruction, computations):
    """The instruction and every instruction of the computations it calls (a fusion's body)."""
    found = [instruction]
    for called in instruction.called_computation_ids:
        for inner in computations[called].instructions:
            found += _with_called(inner, computations)
    return found


def _thunk_kind(instruction, computations, optimizer_scope):
    """The kind (XLA_KINDS) of an HLO instruction's thunk; None for control flow, whose children are traced."""
    if instruction.opcode in _XLA_CONTROL_FLOW:
        return None
    found = _with_called(instruction, computations)
    opcodes = {i.opcode for i in found}
    if "dot" in opcodes:
        return "matmuls"
    if "convolution" in opcodes:
        return "convolutions"
    if "rng-bit-generator" in opcodes or any("Random" in i.metadata.op_type for i in found):
        return "random draws"  # drawing the bits costs far more than what is fused with them
    if optimizer_scope.match(instruction.metadata.op_name):
        return "optimizer update"
    return XLA_KINDS[-1]


def _thunk_kinds(spaces, optimizer_name):
    """{(HLO module, instruction): kind} for the XLA programs the profile captured (their HloProtos)."""
    from tensorflow.compiler.xla.service import hlo_pb2

    optimizer_scope = re.compile(rf"^{re.escape(optimizer_name)}(_\d+)?/")
    modules = [hlo_pb2.HloProto.FromString(stat.bytes_value).hlo_module for plane in _planes(spaces, "/host:metadata")
               for metadata in plane.event_metadata.values() for stat in metadata.stats]  # fmt: skip
    kinds = {}
    for module in modules:
        computations = {c.id: c for c in module.computations}
        for computation in module.computations:
            for instruction in computation.instructions:
                kinds[module.name, instruction.name] = _thunk_kind(instruction, computations, optimizer_scope)
    return kinds


def xla_breakdown(spaces, optimizer_name, profiled_steps, seconds_per_step):
    """Milliseconds per step in each kind of XLA thunk, in the programs, and outside them.

    A thunk is one event of the profiler's host trace carrying an `hlo_op` and `hlo_module` stat; a program
    is a `CpuExecutable::ExecuteAsyncOnStream` event. Intervals of one kind are merged across threads, so
    thunks running side by side count once. `seconds_per_step` is the step as the timer saw it (its whole
    execution): what is not in a program is the execution's loop, the input pipeline, the callbacks.
    """
    kinds = _thunk_kinds(spaces, optimizer_name)
    intervals = {kind: [] for kind in XLA_KINDS}
    programs, unknown = [], set()
    for plane in _planes(spaces, "/host:CPU"):
        stat_names = {key: value.name for key, value in plane.stat_metadata.items()}
        for line in plane.lines:
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                start = line.timestamp_ns * 1000 + event.offset_ps  # exact integer picoseconds
                interval = (start, start + event.duration_ps)
                if name == "CpuExecutable::ExecuteAsyncOnStream":
                    programs.append(interval)
                    continue
                stats = {stat_names.get(stat.metadata_id): stat for stat in event.stats}
                if "hlo_op" not in stats or "hlo_module" not in stats:
                    continue
                module = stat_names.get(stats["hlo_module"].ref_value, stats["hlo_module"].str_value)
                kind = kinds.get((module, name), "unknown")
                if kind == "unknown":
                    unknown.add(name)
                elif kind is not None:
                    intervals[kind].append(interval)
    if unknown:
        print(f"XLA thunks of no captured module, left out: {', '.join(sorted(unknown)[:5])}", flush=True)
    per_step = 1e-9 / profiled_steps  # milliseconds per step from picoseconds
    in_programs = union_length(programs)
    in_thunks = union_length([i for kind in XLA_KINDS for i in intervals[kind]])
    return {
        "step_ms": 1e3 * seconds_per_step,
        "in_programs_ms": in_programs * per_step,
        "kinds_ms": {kind: union_length(intervals[kind]) * per_step for kind in XLA_KINDS},
        "between_thunks_ms": (in_programs - in_thunks) * per_step,
    }


def profile_markdown(result):
    lines = ["# Where a training step spends its time (TensorFlow profiler)", "",
             f"Machine: {result['machine']['cpu']}, {result['machine']['cores']} cores; oneDNN kernels "
             f"{'on' if result['machine']['onednn'] else 'off'}. Without XLA: the self time of each op (its own "
             "kernel time, children excluded) over the profiled steps, as a share of the step's busy time (the "
             "profiler's idle time left out). With XLA: the time of the program's thunks by kind, intervals of a "
             "kind merged across threads (`xla_breakdown`): matmuls and convolutions are the thunks that run a dot "
             "or a convolution (with what XLA fused into them), random draws those that draw (with what is fused "
             "into them), the optimizer update those from the optimizer's ops. Thunks of different kinds can run "
             "side by side, each counted, so the kinds can add up to more than the program's time; `between "
             "thunks` is the program's time in none of them (launching, waiting for threads). The "
             "profiler slows the steps (each thunk is traced): both step times are given.", ""]  # fmt: skip
    for entry in result["profiles"]:
        lines += [f"## {entry['model']}, {entry['arch']}, {entry['precision']}, XLA {entry['xla']}", "",
                  f"{entry['profiled_steps']} steps, {entry['seconds_per_step'] * 1e3:.2f} ms per step under the "
                  f"profiler, {entry['unprofiled_seconds_per_step'] * 1e3:.2f} without.", ""]  # fmt: skip
        lines += _xla_lines(entry["xla_breakdown"]) if "xla_breakdown" in entry else _op_stats_lines(entry)
        lines.append("")
    return "\n".join(lines + runs.produced_by(result["command"]))


def _xla_lines(x):
    lines = ["| where | ms per step | share of the time in XLA programs |", "|---|---:|---:|"]
    for kind, ms in [*x["kinds_ms"].items(), ("between thunks", x["between_thunks_ms"])]:
        lines.append(f"| {kind} | {ms:.2f} | {100 * ms / x['in_programs_ms']:.1f} % |")
    outside = x["step_ms"] - x["in_programs_ms"]
    lines += [f"| in XLA programs, all | {x['in_programs_ms']:.2f} | 100 % |",
              f"| outside them (the execution's loop, data, callbacks) | {outside:.2f} | |"]  # fmt: skip
    arithmetic = x["kinds_ms"]["matmuls"] + x["kinds_ms"]["convolutions"]
    if arithmetic:
        lines += ["", f"Were all but its matmuls and convolutions free, this step would run at most "
                  f"{1e3 / arithmetic:.0f} steps/s (at {x['step_ms']:.2f} ms: {1e3 / x['step_ms']:.0f})."]  # fmt: skip
    return lines


def _op_stats_lines(entry):
    lines = [f"Op self time summed over threads: {entry['busy_ms_per_step']:.0f} ms per step.", "",
             "| op type | share of busy time |", "|---|---:|"]  # fmt: skip
    lines += [f"| {op_type} | {100 * share:.1f} % |" for op_type, share in entry["by_type"][:10]]
    lines += ["", "| most expensive ops | type | share |", "|---|---|---:|"]
    lines += [f"| `{name}` | {op_type} | {100 * share:.1f} % |" for name, op_type, share in entry["top_ops"]]
    return lines


def summarise(runners, peak):
    """One row per configuration: rates, the ratio to the VAE of its setting, FLOPs and the fraction of the peak."""
    vae = {r.key: r for r in runners if r.label in ("VAE", "VAE" + JAX_LABEL)}
    peak_gflops = peak.peak("float32")
    rows = []
    for runner in runners:
        rate = 1.0 / runner.fast_seconds()
        row = {
            "model": runner.label, "arch": runner.arch, "precision": runner.precision, "xla": runner.xla,
            "steps_per_execution": runner.steps_per_execution, "steps_per_s": rate,
            "mean_steps_per_s": runner.mean_rate(), "examples_per_s": rate * FLAGS.batch_size,
            "rounds": runner.rounds, "gflop_per_step": None if runner.flops is None else runner.flops / 1e9,
        }  # fmt: skip
        reference = vae.get(runner.key)
        if reference is not None:
            row["ratio_to_vae"] = runner.fast_seconds() / reference.fast_seconds()
        if runner.flops is not None:
            row["gflop_per_s"] = runner.flops * rate / 1e9
            row["fraction_of_matmul_peak"] = row["gflop_per_s"] / peak_gflops
        rows.append(row)
    jax_ratios = []
    for jax_row in (r for r in runners if r.label.endswith(JAX_LABEL)):
        label = jax_row.label[: -len(JAX_LABEL)]
        for runner in runners:
            if runner.label == label and runner.arch == "mlp" and runner.precision == "float32":
                jax_ratios.append({
                    "model": label, "xla": runner.xla, "steps_per_execution": runner.steps_per_execution,
                    "ratio": jax_row.fast_seconds() / runner.fast_seconds(),
                })  # fmt: skip
    return rows, jax_ratios


def _cell(value, fmt):
    return "-" if value is None else format(value, fmt)


def _rate(value):
    """Three significant digits: 36.8, 0.618."""
    return f"{value:.3g}" if value < 1000 else f"{value:.0f}"


def markdown(result):
    m, setup = result["machine"], result["setup"]
    lines = [
        "# Training speed",
        "",
        "Steps per second of each model's own `train_step` through `keras.Model.fit` (models built by "
        "`train.loop.build_model`), on the ColorMNIST training pipeline, timed by `train.callbacks.StepTimer`, "
        f"in {setup['rounds']} alternated rounds of about {setup['seconds']:g} s per configuration (at least one "
        f"execution). Batch {setup['batch_size']}, latent {setup['latent_dim']}, Adam. `steps/s`: from the "
        f"{FAST_PERCENTILE}th percentile of the timed step times (the machine is shared: the steps that ran while "
        "the process had the cores); `run mean`: all timed steps over their total time. `x VAE step`: the model's "
        "step time over the VAE's in the same setting. `GFLOP/step`: the step's matmul and convolution FLOPs "
        "counted on the traced step (PGD loops by their trip count); `% of peak`: GFLOP/step x steps/s over the "
        "best float32 matmul rate of this run."
        + (f" With XLA on, an execution's steps run unrolled in XLA programs of up to {setup['steps_per_xla_program']} "
           "steps (`ZooModel.make_train_function`), which draw their noise with ThreeFry."
           if "steps_per_xla_program" in setup else ""),
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores ({', '.join(m['isa'])}); bfloat16 {m['bfloat16']}; "
        f"{'GPUs: ' + ', '.join(m['gpus']) if m['gpus'] else 'no GPU'}; TensorFlow {m['tensorflow']}, "
        f"Keras {m['keras']}; oneDNN kernels {'on' if m.get('onednn') else 'off'}; `--precision=auto` picks "
        f"{m['auto_precision']} here. Load average (1 min) during the "
        f"run: {min(result['loads']):.1f}-{max(result['loads']):.1f} (the machine is shared)."
        + (" Other processes wanted more than all the cores throughout, so these rates are lower and noisier "
           "than on an idle machine." if min(result["loads"]) > m["cores"] else ""),
        "",
        f"Matmul {setup['matmul_size']}^3, GFLOP/s per round: float32 "
        + ", ".join(f"{r['float32']:.1f}" for r in result["matmul_gflops"])
        + " (peak used below: "
        + f"{max(r['float32'] for r in result['matmul_gflops']):.1f}); bfloat16 "
        + ", ".join(f"{r['bfloat16']:.1f}" for r in result["matmul_gflops"])
        + ".",
        "",
        "| model | arch | precision | XLA | steps/execution | steps/s | steps/s (run mean) | examples/s | "
        "x VAE step | GFLOP/step | GFLOP/s | % of float32 matmul peak |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in result["rows"]:
        fraction = row.get("fraction_of_matmul_peak")
        lines.append(
            f"| {row['model']} | {row['arch']} | {row['precision']} | {row['xla']} | {row['steps_per_execution']} | "
            f"{_rate(row['steps_per_s'])} | {_rate(row['mean_steps_per_s'])} | {_rate(row['examples_per_s'])} | "
            f"{_cell(row.get('ratio_to_vae'), '.2f')} | {_cell(row['gflop_per_step'], '.3f')} | "
            f"{_cell(row.get('gflop_per_s'), '.2f')} | {_cell(None if fraction is None else 100 * fraction, '.1f')} |"
        )
    lines += [
        "",
        "The paper's time relative to the VAE (Table 1, ColorMNIST conv / Table 2, CelebA): "
        + "; ".join(f"{label} {t1} / {t2}" for label, (t1, t2) in PAPER.items() if label != "VAE")
        + ".",
        "",
        "## JAX/Haiku reference (mlp, float32)",
        "",
    ]
    if result["jax_ratios"]:
        lines += ["Project steps/s over the JAX reference's (both from the fast step times, as above).", "",
                  "| model | project setting (XLA, steps/execution) | project / JAX |", "| --- | --- | ---: |"]  # fmt: skip
        for r in result["jax_ratios"]:
            lines.append(f"| {r['model']} | XLA {r['xla']}, {r['steps_per_execution']} | x{r['ratio']:.2f} |")
    else:
        lines.append(f"Not timed: {result['jax']}.")
    lines += ["", *runs.produced_by(result["command"])]
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        sys.exit(f"error: unexpected arguments: {argv[1:]}")
    console.quiet_info_logs()
    zoo.MODELS  # registers the models
    try:
        settings = [Setting(text) for text in FLAGS.settings]
    except ValueError as error:
        sys.exit(f"error: --settings: {error}")
    unknown = sorted(set(FLAGS.models) - {label for label, _, _ in MODELS})
    if unknown:
        sys.exit(f"error: --models: unknown {', '.join(unknown)}; choose from {', '.join(l for l, _, _ in MODELS)}")
    niceness = os.nice(0)  # the command beside the numbers says how it was run
    command = (f"nice -n {niceness} " if niceness else "") + "python -m benchmarks.train_speed"
    command = (command + " " + " ".join(shlex.quote(a) for a in sys.argv[1:])).strip()
    started = time.time()
    if FLAGS.profile_steps:
        result = {"command": command, "machine": machine(),
                  "profiles": profile(settings, set(FLAGS.models), FLAGS.profile_steps)}  # fmt: skip
        return _write(result, profile_markdown(result))
    runners, peak, loads, jax_note = measure(settings, set(FLAGS.models))
    rows, jax_ratios = summarise(runners, peak)
    result = {
        "command": command,
        "machine": machine(),
        "setup": {
            "dataset": FLAGS.dataset, "batch_size": FLAGS.batch_size, "latent_dim": FLAGS.latent_dim,
            "settings": FLAGS.settings, "seconds": FLAGS.seconds, "rounds": FLAGS.rounds,
            "matmul_size": FLAGS.matmul_size, "wall_clock_seconds": round(time.time() - started),
            "steps_per_xla_program": zoo.base.ZooModel.steps_per_xla_program,
        },  # fmt: skip
        "loads": loads,
        "matmul_gflops": peak.rounds,
        "rows": rows,
        "jax": jax_note or "timed",
        "jax_ratios": jax_ratios,
        "paper": PAPER,
    }
    _write(result, markdown(result))


def _write(result, text):
    os.makedirs(os.path.dirname(FLAGS.output) or ".", exist_ok=True)
    with open(FLAGS.output + ".json", "w") as f:
        json.dump(result, f, indent=2)
    with open(FLAGS.output + ".md", "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    define_flags()
    app.run(main)
