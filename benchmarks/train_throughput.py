"""Update steps per second through the real training path, and the tf.data pipeline alone.

Every model is built by `zoo.training.build_model` and trained by `zoo.training.train`, i.e. by
`keras.Model.fit` with the run's own callbacks (checkpointing, non-finite check, step timer,
TensorBoard) exactly as `python -m train.<model>` does, on the real ColorMNIST pipeline of
`zoo.data` (batch 64, latent 64). Configurations: VAE, AVAE and SE (5 PGD steps) on the mlp
(4 x 200) and conv architectures, XLA off and on (`--jit_compile`), one and several steps per
execution (`--steps_per_execution`, mlp only: beside a conv step the per-step overhead it saves is
negligible).

The machine is shared, so the configurations run side by side: after a warm-up round (tracing,
XLA compilation, the shuffle buffer), `--rounds` rounds each train every configuration for about
`--seconds` in turn, so a change of load hits all of them alike. A configuration's rate is its
median over the rounds; the CPU milliseconds per step (all threads of this process) are reported
too, being far less sensitive to other processes than wall-clock time. The pipeline's in-memory
cache is filled once before timing (a run pays that during its first epoch only); the first
execution of every round is not timed.

    python -m benchmarks.train_throughput --data_dir=../shared/tfds

writes results/train_throughput.md (the table and the command) and results/train_throughput.json.
"""

import json
import os
import platform
import shlex
import shutil
import statistics
import sys
import tempfile
import time

from absl import app, flags

FLAGS = flags.FLAGS

# (label, registry name, hyper-parameters)
MODELS = (("VAE", "vae", {}), ("AVAE", "avae", {}), ("SE^5", "se", {"pgd_steps": 5}))
# The public JAX/Haiku AVAE implementation on this machine (issue 7): MLP 4 x 200, latent 64, batch 64.
JAX_REFERENCE = {"AVAE": "70-74", "VAE": "85-95"}
TARGET_STEPS_PER_SECOND = 85.0
TARGET_RATIO = 1.3

flags.DEFINE_list("models", [label for label, _, _ in MODELS], "Models to time (labels of MODELS).")
flags.DEFINE_list("archs", ["mlp", "conv"], "Architectures to time.")
flags.DEFINE_list("jit", ["off", "on"], "XLA settings to time.")
flags.DEFINE_list("steps_per_execution", ["1", "10"], "steps_per_execution values to time (mlp; conv: the first).")
flags.DEFINE_string("dataset", "color_mnist", "Dataset whose training pipeline feeds the models.")
flags.DEFINE_string("data_dir", None, "tensorflow-datasets data directory.")
flags.DEFINE_integer("batch_size", 64, "Global batch size.")
flags.DEFINE_integer("latent_dim", 64, "Latent dimension.")
flags.DEFINE_float("seconds", 3.0, "Timed seconds per configuration and round.")
flags.DEFINE_integer("rounds", 3, "Timed rounds over all configurations.")
flags.DEFINE_float("pipeline_seconds", 5.0, "Seconds to time the input pipeline alone.")
flags.DEFINE_string("output", "results/train_throughput", "Output path without extension (.md and .json).")


def _clock():
    """A callback noting wall and process-CPU time and the step counter at the end of every execution."""
    import keras

    class Clock(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.marks = []

        def on_train_batch_end(self, batch, logs=None):
            step = int(self.model.optimizer.iterations.numpy())
            self.marks.append((time.perf_counter(), time.process_time(), step))

        def window(self):
            """(steps, wall seconds, cpu seconds) after the first execution of the round."""
            (w0, c0, s0), (w1, c1, s1) = self.marks[0], self.marks[-1]
            return s1 - s0, w1 - w0, c1 - c0

    return Clock()


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def _load():
    return round(os.getloadavg()[0], 2)


def _time_pipeline(dataset, seconds):
    """Batches per second of the (warm) input pipeline alone, as fit would iterate it."""
    iterator = iter(dataset)
    next(iterator)
    count, start, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        next(iterator)
        count += 1
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {"batches_per_s": count / wall, "cpu_ms_per_batch": 1000 * cpu / count, "load": _load()}


class _Config:
    def __init__(self, label, name, hyper, arch, jit, steps_per_execution):
        self.label, self.name, self.hyper = label, name, hyper
        self.arch, self.jit, self.steps_per_execution = arch, jit, steps_per_execution
        self.rounds = []
        self.steps = 0

    @property
    def key(self):
        return f"{self.label} {self.arch} xla={'on' if self.jit else 'off'} spe={self.steps_per_execution}"

    def build(self, image_shape):
        import tensorflow as tf

        from zoo import training

        self.model = training.build_model(
            self.name, tf.distribute.get_strategy(), learning_rate=1e-4, jit_compile=self.jit,
            steps_per_execution=self.steps_per_execution, image_shape=image_shape, arch=self.arch,
            latent_dim=FLAGS.latent_dim, **self.hyper,
        )  # fmt: skip
        self.model_dir = tempfile.mkdtemp(prefix="train_throughput_")

    def run(self, dataset, steps):
        """Trains `steps` more steps through zoo.training.train; returns (steps, wall s, cpu s) timed."""
        from zoo import training

        steps = max(2, round(steps / self.steps_per_execution)) * self.steps_per_execution
        clock = _clock()
        self.steps += steps
        training.train(
            self.model, lambda initial_step: dataset, self.model_dir, self.steps, checkpoint_every=steps,
            verbose=0, callbacks=[clock],
        )  # fmt: skip
        return clock.window()


def _markdown(results, command):
    lines = [
        "# Training throughput",
        "",
        "Update steps per second through the real training path (`zoo.training.train` -> `keras.Model.fit` "
        "with the run's callbacks), ColorMNIST 28x28x3, batch 64, latent 64, Adam. Median over rounds run side "
        "by side; `cpu ms/step` is the process CPU time per step (all threads), the figure least disturbed by "
        "other processes on this shared machine.",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {results['machine']}; load average (1 min) during the run: "
        f"{min(results['loads'])}-{max(results['loads'])} on {os.cpu_count()} cores.",
        "",
        "## Input pipeline alone",
        "",
        "| pipeline | batches/s | cpu ms/batch |",
        "| --- | ---: | ---: |",
    ]
    for name, row in results["pipeline"].items():
        lines.append(f"| {name} | {row['batches_per_s']:.0f} | {row['cpu_ms_per_batch']:.2f} |")
    lines += [
        "",
        "## Training steps",
        "",
        "`x VAE step`: the model's step time over the VAE's of the same setting, per round, median (wall); "
        "and the same from the CPU time.",
        "",
        "| model | arch | XLA | steps/execution | steps/s (median) | steps/s (best) | cpu ms/step | x VAE step "
        "(wall) | x VAE step (cpu) |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in results["rows"]:
        ratio = f"{row['ratio_to_vae']:.2f}" if row.get("ratio_to_vae") else "-"
        cpu_ratio = f"{row['cpu_ratio_to_vae']:.2f}" if row.get("cpu_ratio_to_vae") else "-"
        lines.append(
            f"| {row['model']} | {row['arch']} | {row['xla']} | {row['steps_per_execution']} | "
            f"{row['steps_per_s']:.1f} | {row['best_steps_per_s']:.1f} | {row['cpu_ms_per_step']:.2f} | {ratio} | "
            f"{cpu_ratio} |"
        )
    lines += ["", "## Targets (issue 7)", ""] + results["summary"] + [""]
    return "\n".join(lines)


def _summary(rows):
    """The AVAE mlp targets: >= 85 steps/s and <= 1.3 x the VAE step, per configuration."""
    lines = [
        f"Public JAX/Haiku reference on this machine: AVAE {JAX_REFERENCE['AVAE']} steps/s, VAE "
        f"{JAX_REFERENCE['VAE']} steps/s (AVAE ~1.25 x VAE). Targets: AVAE mlp >= {TARGET_STEPS_PER_SECOND:.0f} "
        f"steps/s and <= {TARGET_RATIO} x the VAE step.",
        "",
        "| AVAE mlp configuration | steps/s (median) | steps/s (best) | >= 85 (best) | x VAE step (wall) "
        "| x VAE step (cpu) | <= 1.3 |",
        "| --- | ---: | ---: | --- | ---: | ---: | --- |",
    ]
    for row in rows:
        if row["model"] != "AVAE" or row["arch"] != "mlp":
            continue
        rate, best = row["steps_per_s"], row["best_steps_per_s"]
        ratio, cpu_ratio = row.get("ratio_to_vae"), row.get("cpu_ratio_to_vae")
        if ratio is None:
            continue
        lines.append(
            f"| XLA {row['xla']}, steps/execution {row['steps_per_execution']} | {rate:.1f} | {best:.1f} | "
            f"{'yes' if best >= TARGET_STEPS_PER_SECOND else 'no'} | {ratio:.2f} | {cpu_ratio:.2f} | "
            f"{'yes' if max(ratio, cpu_ratio) <= TARGET_RATIO else 'no'} |"
        )
    return lines


def main(argv):
    del argv
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    import zoo
    from zoo import data as zoo_data

    command = "python -m benchmarks.train_throughput " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    keras.utils.set_random_seed(0)
    spec = zoo_data.get_spec(FLAGS.dataset)
    dataset = zoo_data.load(
        FLAGS.dataset, "train", FLAGS.batch_size, data_dir=FLAGS.data_dir, shuffle=True, repeat=True,
        drop_remainder=True, download=False,
    )  # fmt: skip
    loads = [_load()]

    # Fill the in-memory cache: one epoch (timed: what a run's first epoch can be fed at).
    iterator, start, cpu = iter(dataset), time.perf_counter(), time.process_time()
    epoch_batches = 60_000 // FLAGS.batch_size if FLAGS.dataset.endswith("mnist") else 100
    for _ in range(epoch_batches + 1):
        next(iterator)
    first_epoch = {
        "batches_per_s": epoch_batches / (time.perf_counter() - start),
        "cpu_ms_per_batch": 1000 * (time.process_time() - cpu) / epoch_batches,
        "load": _load(),
    }
    del iterator
    pipeline = {
        "first epoch (decode, colour, fill the cache)": first_epoch,
        "cached (every later epoch)": _time_pipeline(dataset, FLAGS.pipeline_seconds),
    }
    print(pipeline, flush=True)

    available = []
    for label, name, hyper in MODELS:
        if label not in FLAGS.models:
            continue
        if name not in zoo.MODELS:
            print(f"skipping {label}: zoo has no model {name!r}", flush=True)
            continue
        available.append((label, name, hyper))
    # The models of one setting run next to each other, so their ratio compares like with like.
    configs = []
    for arch in FLAGS.archs:
        for jit in FLAGS.jit:
            # Per-step overhead matters beside a few-millisecond mlp step, not beside a conv step.
            for spe in FLAGS.steps_per_execution if arch == "mlp" else FLAGS.steps_per_execution[:1]:
                for label, name, hyper in available:
                    configs.append(_Config(label, name, hyper, arch, jit == "on", int(spe)))

    # Warm-up round: tracing, XLA compilation, first allocations; calibrates each round's steps.
    rate = {}
    for config in configs:
        config.build(spec.image_shape)
        start = time.perf_counter()
        steps, wall, _ = config.run(dataset, 4 * config.steps_per_execution if config.arch != "mlp" else 60)
        rate[config.key] = steps / wall
        loads.append(_load())
        print(f"warm-up {config.key}: {time.perf_counter() - start:.1f} s, ~{rate[config.key]:.1f} steps/s",
              flush=True)  # fmt: skip
    for round_ in range(FLAGS.rounds):
        for config in configs:
            steps, wall, cpu = config.run(dataset, FLAGS.seconds * rate[config.key])
            config.rounds.append({"steps": steps, "wall_s": wall, "cpu_s": cpu, "load": _load()})
            loads.append(_load())
            print(f"round {round_} {config.key}: {steps / wall:.1f} steps/s, {1000 * cpu / steps:.2f} cpu ms/step, "
                  f"load {_load()}", flush=True)  # fmt: skip
    pipeline["cached, after training"] = _time_pipeline(dataset, FLAGS.pipeline_seconds)
    for config in configs:
        shutil.rmtree(config.model_dir, ignore_errors=True)

    rows = []
    for config in configs:
        rates = [r["steps"] / r["wall_s"] for r in config.rounds]
        cpus = [1000 * r["cpu_s"] / r["steps"] for r in config.rounds]
        rows.append({
            "model": config.label, "arch": config.arch, "xla": "on" if config.jit else "off",
            "steps_per_execution": config.steps_per_execution, "steps_per_s": statistics.median(rates),
            "best_steps_per_s": max(rates), "cpu_ms_per_step": statistics.median(cpus), "rounds": config.rounds,
        })  # fmt: skip
    by_key = {(r["model"], r["arch"], r["xla"], r["steps_per_execution"]): r for r in rows}
    for row in rows:
        vae = by_key.get(("VAE", row["arch"], row["xla"], row["steps_per_execution"]))
        if vae:  # per round (the two ran a few seconds apart), then the median
            row["ratio_to_vae"] = statistics.median(
                (v["steps"] / v["wall_s"]) / (r["steps"] / r["wall_s"]) for r, v in zip(row["rounds"], vae["rounds"])
            )
            row["cpu_ratio_to_vae"] = row["cpu_ms_per_step"] / vae["cpu_ms_per_step"]
    results = {
        "command": command,
        "machine": f"{_cpu_name()}, {os.cpu_count()} cores, "
        f"TensorFlow {tf.__version__}, Keras {keras.__version__}",
        "loads": loads,
        "pipeline": pipeline,
        "rows": rows,
        "summary": _summary(rows) if ("AVAE", "mlp") in {(r["model"], r["arch"]) for r in rows} else [],
    }
    os.makedirs(os.path.dirname(FLAGS.output) or ".", exist_ok=True)
    with open(FLAGS.output + ".json", "w") as f:
        json.dump(results, f, indent=2)
    with open(FLAGS.output + ".md", "w") as f:
        f.write(_markdown(results, command))
    print(_markdown(results, command))


if __name__ == "__main__":
    app.run(main)
