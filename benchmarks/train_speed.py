"""One speed benchmark: training steps per second through the real training path, against the VAE and
against the machine's measured matmul peak.

    nice -n 5 python -m benchmarks.train_speed --data_dir=../shared/tfds

Every model (VAE, AVAE, SE^5, SE^1-fast, SE^5-AVAE, AVAE-SS) is built by `train.loop.build_model` and trained by
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
end of its step times (`runners.FAST_PERCENTILE`), as the peak is the best matmul rate; the mean over the run
is reported too. Its cost relative to the VAE is the ratio of those step times in the same setting. The
fraction of the matmul peak is the step's matmul and convolution FLOPs (counted from the traced step,
see `benchmarks.speed.flops`) times its steps/s, over the best float32 matmul rate of the run.

With jax, dm-haiku and optax importable (`pip install -e '.[jax]'`), an equivalent JAX/Haiku MLP VAE
and AVAE (`benchmarks.speed.jax_reference`) run in the same rounds, fed by the same pipeline, and the report
gives the project's steps/s over theirs. Without them that part is skipped, saying so.

Writes `--output`.md (the tables and the command) and `--output`.json (every round).

`--profile_steps=N` profiles N steps of every configuration with TensorFlow's profiler instead and writes
where the step spends its time to `--output`.md and .json: without XLA, op self time by op type and the
most expensive ops (the framework op statistics, read as TensorBoard's profile plugin reads them); with
XLA, the program's thunks by kind (`xla_breakdown`: matmuls, convolutions, random draws, the optimizer
update, the rest) and the time between them and outside the programs.

This module reads the flags and wires the parts in `benchmarks/speed/` together: `runners` (the models, the
settings, the timed rounds), `flops`, `matmul_peak`, `jax_reference`, `profiler` (`xla_breakdown`), `machine`
and `report` (the rows and the Markdown).
"""

import json
import os
import shlex
import sys
import time

from zoo import console

console.quiet_tensorflow()  # before anything loads TensorFlow

from absl import app, flags  # noqa: E402

import zoo  # noqa: E402
from benchmarks.speed import report  # noqa: E402
from benchmarks.speed.flops import step_flops  # noqa: E402
from benchmarks.speed.jax_reference import JaxReference, jax_missing  # noqa: E402
from benchmarks.speed.machine import machine  # noqa: E402
from benchmarks.speed.matmul_peak import MatmulPeak  # noqa: E402
from benchmarks.speed.profiler import profile  # noqa: E402
from benchmarks.speed.runners import MODELS, Setting, keras_runners, time_in_rounds  # noqa: E402
from train import distribute, loop  # noqa: E402

FLAGS = flags.FLAGS

# The training default (float32, no XLA, one step per execution), the fast mlp setting, and bfloat16 for a
# few models (what it costs or gains on this device, e.g. its emulation on CPUs without AVX512-BF16 / AMX).
DEFAULT_SETTINGS = [
    "mlp:float32:off:1",
    "mlp:float32:on:10",
    "mlp:mixed_bfloat16:on:10:VAE+AVAE",
    "conv:float32:off:1",
    "conv:mixed_bfloat16:off:1:VAE",
]


def define_flags():
    flags.DEFINE_list("models", [label for label, _, _ in MODELS], "Models to time (labels of MODELS).")
    flags.DEFINE_list(
        "settings",
        DEFAULT_SETTINGS,
        "Settings to time the models in, each ARCH:PRECISION:XLA:STEPS_PER_EXECUTION[:MODEL+MODEL...], e.g. "
        f"mlp:float32:on:10 or conv:mixed_bfloat16:off:1:VAE+AVAE (precision: one of {', '.join(loop.PRECISIONS)}; "
        "XLA: on or off; models: a subset of --models, default all).",
    )
    flags.DEFINE_string("dataset", "color_mnist", "Dataset whose training pipeline feeds the models.")
    flags.DEFINE_string("data_dir", None, "tensorflow-datasets data directory.")
    flags.DEFINE_integer("batch_size", 64, "Batch size.", lower_bound=1)
    flags.DEFINE_integer("latent_dim", 64, "Latent dimension (the paper's 64).", lower_bound=1)
    flags.DEFINE_float("seconds", 2.0, "Timed seconds per configuration and round.", lower_bound=0.0)
    flags.DEFINE_integer("rounds", 5, "Timed rounds over all configurations.", lower_bound=1)
    flags.DEFINE_integer("matmul_size", 1024, "Side of the square matmuls that measure the peak.", lower_bound=64)
    flags.DEFINE_bool("jax", True, "Also time the JAX/Haiku reference VAE and AVAE (mlp) when jax is importable.")
    flags.DEFINE_string("output", "results/train_speed", "Output path without extension (.md and .json are written).")
    flags.DEFINE_integer(
        "profile_steps",
        0,
        "Instead of timing: profile this many steps of every configuration with "
        "TensorFlow's profiler and write its op self time by op type and its most expensive ops.",
        lower_bound=0,
    )


def _keras_runners(settings, labels):
    """A KerasRunner per configuration on the flags' training pipeline: (runners, image shape, dataset)."""
    return keras_runners(settings, labels, FLAGS.dataset, FLAGS.data_dir, FLAGS.batch_size, FLAGS.latent_dim)


def measure(settings, labels):
    """Builds and warms every configuration, then times them in alternated rounds.

    Returns (runners, matmul peak, load averages, why the JAX reference was not timed or None).
    """
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
        jax_note = jax_missing()  # None when jax, haiku and optax import
    if jax_note is None:
        runners += [
            JaxReference(label, label == "AVAE", image_shape, dataset, flops.get((label, "mlp")), FLAGS.latent_dim)
            for label in ("VAE", "AVAE")
        ]
    print(f"JAX reference: {jax_note or 'timed'}", flush=True)
    peak = MatmulPeak(FLAGS.matmul_size)
    loads = time_in_rounds(runners, peak, FLAGS.rounds, FLAGS.seconds)
    return runners, peak, loads, jax_note


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
        sys.exit(
            f"error: --models: unknown {', '.join(unknown)}; choose from {', '.join(label for label, _, _ in MODELS)}"
        )
    niceness = os.nice(0)  # the command beside the numbers says how it was run
    command = (f"nice -n {niceness} " if niceness else "") + "python -m benchmarks.train_speed"
    command = (command + " " + " ".join(shlex.quote(a) for a in sys.argv[1:])).strip()
    started = time.time()
    if FLAGS.profile_steps:
        result = {
            "command": command,
            "machine": machine(),
            "profiles": profile(_keras_runners(settings, set(FLAGS.models))[0], FLAGS.profile_steps),
        }
        return _write(result, report.profile_markdown(result))
    runners, peak, loads, jax_note = measure(settings, set(FLAGS.models))
    rows, jax_ratios = report.summarise(runners, peak, FLAGS.batch_size)
    result = {
        "command": command,
        "machine": machine(),
        "setup": {
            "dataset": FLAGS.dataset,
            "batch_size": FLAGS.batch_size,
            "latent_dim": FLAGS.latent_dim,
            "settings": FLAGS.settings,
            "seconds": FLAGS.seconds,
            "rounds": FLAGS.rounds,
            "matmul_size": FLAGS.matmul_size,
            "wall_clock_seconds": round(time.time() - started),
            "steps_per_xla_program": distribute.AUTO_STEPS_PER_XLA_PROGRAM,  # loop.build_model's default
        },
        "loads": loads,
        "matmul_gflops": peak.rounds,
        "rows": rows,
        "jax": jax_note or "timed",
        "jax_ratios": jax_ratios,
        "paper": report.PAPER,
    }
    _write(result, report.markdown(result))


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
