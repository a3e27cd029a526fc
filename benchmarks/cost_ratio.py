"""Wall-clock cost of one training step relative to the VAE: VAE, AVAE, SE^5, SE-AVAE and AVAE-SS.

The AVAE paper reports these ratios in its Tables 1 (ColorMNIST, ConvNet) and 2 (CelebA). Here every
model is built by `zoo.training.build_model` and trained by `keras.Model.fit`, i.e. through the real
training step, on the real ColorMNIST pipeline of `zoo.data` (AVAE-SS on batches that carry only the
batch size, as `python -m train.avae_ss` feeds it). The models run side by side: after a warm-up
(tracing), `--rounds` rounds each train every model for `--steps` steps in turn, so a change of
machine load hits all of them alike; a model's cost is its median step time over all rounds.

    python -m benchmarks.cost_ratio --data_dir=../shared/tfds

writes results/cost_ratio.md (the table and the command) and results/cost_ratio.json.
"""

import json
import os
import platform
import shlex
import statistics
import sys

from absl import app, flags

from benchmarks import runs

FLAGS = flags.FLAGS

# (label, registry name, extra hyper-parameters): the rows of the paper's tables.
MODELS = (
    ("VAE", "vae", {}),
    ("AVAE", "avae", {}),
    ("SE^5", "se", {"pgd_steps": 5}),
    ("SE^5-AVAE", "se_avae", {"pgd_steps": 5}),
    ("AVAE-SS", "avae_ss", {}),
)
# The paper's ratios: Table 1 (ColorMNIST, ConvNet; SE_0.1^5, SE_0.1-AVAE) and Table 2 (CelebA).
PAPER = {
    "VAE": ("x1", "x1"),
    "AVAE": ("x1.5", "x2.2"),
    "SE^5": ("x4", "x3.1"),
    "SE^5-AVAE": ("x4.7", "x4.3"),
    "AVAE-SS": ("x1.5", "x2.2"),
}

flags.DEFINE_list("archs", ["mlp", "conv"], "Architectures to time.")
flags.DEFINE_string("dataset", "color_mnist", "Dataset whose training pipeline feeds the models.")
flags.DEFINE_string("data_dir", None, "tensorflow-datasets data directory.")
flags.DEFINE_integer("batch_size", 64, "Batch size.")
flags.DEFINE_integer("latent_dim", 64, "Latent dimension (the paper's 64).")
flags.DEFINE_integer("warmup", 3, "Untimed steps per model before timing (tracing, first allocations).")
flags.DEFINE_integer("steps", 10, "Timed steps per model and round.")
flags.DEFINE_integer("rounds", 3, "Rounds over all models.")
flags.DEFINE_bool("jit_compile", False, "Compile the training steps with XLA.")
flags.DEFINE_string("output", "results/cost_ratio", "Output path without extension (.md and .json are written).")


def _datasets():
    import tensorflow as tf

    from zoo import data

    real = data.load(FLAGS.dataset, "train", FLAGS.batch_size, data_dir=FLAGS.data_dir, shuffle=True, repeat=True,
                     drop_remainder=True, download=False)  # fmt: skip
    size_only = tf.data.Dataset.from_tensors(tf.zeros([0])).repeat().batch(FLAGS.batch_size, drop_remainder=True)
    return real, size_only, data.get_spec(FLAGS.dataset).image_shape


def measure():
    """{arch: {label: [seconds of each timed step]}}."""
    import keras
    import tensorflow as tf

    from zoo import registry, training

    real, size_only, image_shape = _datasets()
    timings = {}
    for arch in FLAGS.archs:
        models = {}
        for label, name, extra in MODELS:
            keras.utils.set_random_seed(0)
            model = training.build_model(
                name, tf.distribute.get_strategy(), jit_compile=FLAGS.jit_compile, image_shape=image_shape, arch=arch,
                latent_dim=FLAGS.latent_dim, **extra,
            )  # fmt: skip
            dataset = real if registry.get_model_class(name).needs_data else size_only
            model.fit(dataset, steps_per_epoch=FLAGS.warmup, epochs=1, verbose=0)
            models[label] = (model, dataset)
        timings[arch] = {label: [] for label in models}
        for _ in range(FLAGS.rounds):
            for label, (model, dataset) in models.items():
                timer = training.StepTimer()
                model.fit(dataset, steps_per_epoch=FLAGS.steps, epochs=1, verbose=0, callbacks=[timer])
                timings[arch][label].extend(seconds for _, seconds in timer.rows)
        print(arch, {label: f"{1000 * statistics.median(s):.1f} ms" for label, s in timings[arch].items()})
    return timings


def report(timings, command):
    import keras
    import tensorflow as tf

    medians = {arch: {label: statistics.median(s) for label, s in by_model.items()} for arch, by_model in timings.items()}
    archs = list(timings)
    header = "| model | " + " | ".join(f"{arch} ms/step | {arch} ratio" for arch in archs)
    header += " | paper Table 1 (ColorMNIST conv) | paper Table 2 (CelebA) |"
    lines = [header, "|---" * (1 + 2 * len(archs) + 2) + "|"]
    for label, _, _ in MODELS:
        cells = []
        for arch in archs:
            cells += [f"{1000 * medians[arch][label]:.1f}", f"x{medians[arch][label] / medians[arch]['VAE']:.2f}"]
        lines.append(f"| {label} | " + " | ".join(cells + list(PAPER[label])) + " |")
    setup = (
        f"{FLAGS.dataset} batches of {FLAGS.batch_size}, latent_dim {FLAGS.latent_dim}, jit_compile={FLAGS.jit_compile}; "
        f"median of {FLAGS.rounds} x {FLAGS.steps} timed steps per model after {FLAGS.warmup} warm-up steps; "
        f"TensorFlow {tf.__version__}, Keras {keras.__version__}, {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), no GPU"
    )  # fmt: skip
    markdown = "\n".join(
        [
            "# Training cost relative to the VAE",
            "",
            "Wall-clock time of one training step (the real `train_step` through `keras.Model.fit`), relative to the VAE",
            "in the same run. SE^5 and SE^5-AVAE select their auxiliary input with a 5-step L-inf PGD attack",
            "(`zoo/attacks.py`); AVAE-SS draws its inputs from the prior and the frozen decoder.",
            "",
            f"Setup: {setup}.",
            "",
            *lines,
            "",
            *runs.produced_by(command),
        ]
    )
    with open(FLAGS.output + ".md", "w") as f:
        f.write(markdown)
    with open(FLAGS.output + ".json", "w") as f:
        json.dump({"command": command, "setup": setup, "median_seconds": medians, "step_seconds": timings, "paper": PAPER},
                  f, indent=2)  # fmt: skip
    print(markdown)


def main(argv):
    if len(argv) > 1:
        sys.exit(f"error: unexpected arguments: {argv[1:]}")
    command = "python -m benchmarks.cost_ratio " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    os.makedirs(os.path.dirname(FLAGS.output) or ".", exist_ok=True)
    report(measure(), command.strip())


if __name__ == "__main__":
    app.run(main)
