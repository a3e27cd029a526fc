"""Controlled robustness ablations (issue 11): the supervised positive controls, which the study runner cannot train.

The ablations themselves (18 runs, one change each from mlp_avae, mlp_vae or conv_avae: the same data, seed,
precision and budget) are the study `configs/robustness_ablations/` (one run config per file, and study.json: the
linear digit probe and PGD that measure them), run by the one study runner:

    python -m train.study --study=configs/robustness_ablations [--only=mlp_avae,mlp_avae_obs_var_0.1]

What stays here is what the runner does not do: the supervised positive controls, trained here by Madry PGD
adversarial training (`zoo.attacks.pgd`), which are no registered model: a linear head on the 4x200 MLP
(`adversarial_classifier`) or on the conv encoder's mean (`conv_adversarial_classifier`):

    python -m benchmarks.robustness_ablations --configs=adversarial_classifier --train_steps=20000 \\
        --data_dir=../shared/tfds --runs_dir=/tmp/robust_zoo/ablations

After training, a classifier is measured as the training's own robustness check measures an encoder, with more
care (`evaluate.quick_check.quick_robustness`): a linear digit probe (`evaluate.probes`, `--scaling`) on the
features its head reads, fitted on the first `--probe_examples` training digits, then its clean accuracy and its
accuracy under L-inf PGD (`evaluate.worst_case.make_pgd_correct`, `--pgd_steps`, `--restarts`) on the first
`--num_examples` test digits (`--attacked_split=train`: on training digits instead); its own head is attacked the
same way (`head_accuracy`).

Rows go to <output_dir>/robustness_ablations.json (keyed by run name; a rerun replaces its row, other rows
stay: those of the ablations measured before they became a study are kept) and <output_dir>/robustness_ablations.md,
each with the commands. `--evaluate_only` re-measures trained classifiers.
"""

import json
import os
import sys
import time

from zoo import console

console.quiet_tensorflow()  # before anything loads TensorFlow

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from benchmarks import runs  # noqa: E402
from zoo.model_dir import ModelDir  # noqa: E402

FLAGS = flags.FLAGS

DATASET = "color_mnist"
TASK = "digit"
RESULTS_NAME = "robustness_ablations"
MEASURED_BY = "benchmarks.robustness_ablations: zoo.load, evaluate.quick_check.quick_robustness"

# The supervised positive controls, name: architecture.
CLASSIFIERS = {"adversarial_classifier": "mlp", "conv_adversarial_classifier": "conv"}
CLASSIFIER_LATENT_DIM = 64  # conv: the width of the mean head, as the encoders'
CLASSIFIER_EPSILON = 0.1  # the training radius, reached after --ramp_steps
CLASSIFIER_PGD_STEPS = 7  # PGD steps of the training attack


def define_flags():
    flags.DEFINE_list(
        "configs",
        ["adversarial_classifier"],
        f"Classifiers to run: {', '.join(CLASSIFIERS)} (the ablations: python -m train.study, see above).",
    )
    flags.DEFINE_integer("train_steps", 20_000, "Training steps of every config (the shared budget).", lower_bound=1)
    flags.DEFINE_string("data_dir", None, "tensorflow-datasets data directory holding mnist (prepared: no download).")
    flags.DEFINE_string("runs_dir", "/tmp/robust_zoo/ablations", "Model directories go to <runs_dir>/<run name>.")
    flags.DEFINE_string("name_suffix", "", "Appended to each config's run name (e.g. a budget or a variant).")
    flags.DEFINE_string("output_dir", "results", f"Where {RESULTS_NAME}.json and .md go (rows are merged).")
    flags.DEFINE_list("epsilons", ["0.02", "0.05", "0.1"], "L-inf radii of the attacks.")
    flags.DEFINE_integer(
        "num_examples", 500, "Digits attacked (the first N of the test split; see --attacked_split).", lower_bound=1
    )
    flags.DEFINE_enum(
        "attacked_split",
        "test",
        ["test", "train"],
        "Digits attacked. train: the --num_examples training digits "
        "after the probe's, which the encoder was trained on (the robust generalisation gap, next to a test row).",
    )
    flags.DEFINE_integer(
        "probe_examples",
        2_000,
        "Training digits the probe is fitted on (the first N; training's check fits 2,000).",
        lower_bound=1,
    )
    flags.DEFINE_integer("pgd_steps", 20, "PGD steps.", lower_bound=1)
    flags.DEFINE_integer("restarts", 2, "PGD random restarts (the worst case is kept).", lower_bound=1)
    flags.DEFINE_enum("scaling", "dimension", ["dimension", "global"], "Probe feature scaling (evaluate.probes).")
    flags.DEFINE_bool("evaluate_only", False, "Measure the trained models again without training.")
    flags.DEFINE_integer("ramp_steps", 3000, "Classifier: steps over which the training radius grows to 0.1.")
    flags.DEFINE_float("classifier_learning_rate", 1e-3, "Classifier: Adam learning rate.")
    flags.DEFINE_integer("seed", 0, "Seed of training, probe and attacks.")


# ---------------------------------------------------------------------------------------------- classifier


def build_classifier(image_shape, arch, num_classes=10):
    """A linear head (its last layer) on the architecture's features.

    mlp: the encoder's 4x200 ReLU MLP, features its last hidden layer. conv: the conv encoder
    (`zoo.networks`), features its mean head, the very layer the encoders' probes read.
    """
    import keras
    from keras import layers

    from zoo import networks

    images = keras.Input(image_shape)
    if arch == "mlp":
        x = layers.Flatten()(images)
        for _ in range(4):
            x = layers.Dense(200, activation="relu")(x)
    else:
        encoder = networks.build_encoder(arch, image_shape, CLASSIFIER_LATENT_DIM)
        x = keras.Model(encoder.input, encoder.outputs[0])(images)  # z_mean only: z_log_var is not trained
    return keras.Model(images, layers.Dense(num_classes, name="head")(x), name="classifier")


def classifier_config(name, train_steps, ramp_steps, learning_rate, seed):
    """The classifier's config.json: what was trained (the ModelDir identity keys, and its recipe)."""
    from zoo import data as zoo_data

    arch = CLASSIFIERS[name]
    return {
        "model": name,
        "arch": arch,
        "dataset": DATASET,
        "latent_dim": 200 if arch == "mlp" else CLASSIFIER_LATENT_DIM,
        "image_shape": list(zoo_data.get_spec(DATASET).image_shape),
        "train_steps": train_steps,
        "epsilon": CLASSIFIER_EPSILON,
        "ramp_steps": ramp_steps,
        "pgd_steps": CLASSIFIER_PGD_STEPS,
        "learning_rate": learning_rate,
        "seed": seed,
    }


def train_adversarial_classifier(model_dir, data_dir, config, batch_size=64):
    """Madry et al. (2018) adversarial training: minimise the cross-entropy of the PGD-maximised input.

    The radius grows linearly from 0 to `config["epsilon"]` over the first `config["ramp_steps"]` steps (at
    full radius from the start, training stays at chance). Saves the classifier as the model directory's
    model (`ModelDir`), beside `config`; returns it. An existing trained classifier is loaded instead.
    """
    import keras
    import tensorflow as tf

    import zoo
    from zoo import attacks
    from zoo import data as zoo_data

    directory = ModelDir(model_dir)
    if directory.has_model():
        return zoo.load(directory)
    directory.prepare(config)
    seed, ramp_steps, epsilon = config["seed"], config["ramp_steps"], config["epsilon"]
    keras.utils.set_random_seed(seed)
    classifier = build_classifier(tuple(config["image_shape"]), config["arch"])
    optimizer = keras.optimizers.Adam(config["learning_rate"])
    data = zoo_data.training_batches(DATASET, batch_size, data_dir=data_dir, seed=seed, download=False)

    def cross_entropy(x, y):
        return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=classifier(x, training=True))

    @tf.function(
        jit_compile=config["arch"] == "mlp"
    )  # XLA makes the conv step slower on CPU (results/speed_defaults.md)
    def step(x, y, radius, attack_seed):
        x_adv = attacks.pgd(lambda inputs: cross_entropy(inputs, y), x, radius, config["pgd_steps"], seed=attack_seed)
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(cross_entropy(x_adv, y))
        variables = classifier.trainable_variables
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    start = time.perf_counter()
    for i, (x, labels) in enumerate(data.take(config["train_steps"])):
        radius = epsilon * min(1.0, i / ramp_steps) if ramp_steps else epsilon
        loss = step(x, labels[TASK], tf.constant(radius, tf.float32), tf.constant([seed, i], tf.int32))
        if (i + 1) % 1000 == 0:
            print(
                f"step {i + 1}: radius {radius:.3f}, adversarial loss {float(loss):.3f}, "
                f"{(i + 1) / (time.perf_counter() - start):.1f} steps/s",
                flush=True,
            )
    classifier.save(directory.model_file)
    return classifier


def classifier_command(name, train_steps, ramp_steps, learning_rate):
    return (
        f"python -m benchmarks.robustness_ablations --configs={name} --train_steps={train_steps} "
        f"(epsilon {CLASSIFIER_EPSILON} ramped over {ramp_steps} steps, PGD-{CLASSIFIER_PGD_STEPS}, "
        f"Adam {learning_rate})"
    )


# ---------------------------------------------------------------------------------------------- measurement


def measure(encode_mean, check_data, epsilons, pgd_steps, restarts, seed, scaling):
    """{"clean": a, "<eps>": a, ...}: the quick robustness check (linear probe, then end-to-end L-inf PGD)."""
    from evaluate import quick_check

    result = quick_check.quick_robustness(
        encode_mean, check_data, epsilons, pgd_steps, seed, restarts=restarts, scaling=scaling
    )
    return {"clean": result["clean"], **{f"{epsilon:g}": accuracy for epsilon, accuracy in result["pgd"].items()}}


def head_accuracy(classifier, check_data, epsilons, pgd_steps, restarts, seed):
    """The classifier's own head (no probe) attacked the same way: {"clean": a, "<eps>": a, ...}."""
    import tensorflow as tf

    from evaluate import worst_case

    test_images, test_labels = check_data[4:]
    logits_fn = lambda x: classifier(x, training=False)  # noqa: E731
    x, y = tf.constant(test_images), tf.constant(test_labels)
    result = {"clean": float(np.mean(np.argmax(logits_fn(x).numpy(), axis=-1) == test_labels))}
    pgd_correct = worst_case.make_pgd_correct(logits_fn, pgd_steps, restarts)
    for i, epsilon in enumerate(epsilons):
        correct = pgd_correct(x, y, tf.constant(epsilon, tf.float32), tf.constant([seed, i]))
        result[f"{epsilon:g}"] = float(np.mean(correct))
    return result


# ---------------------------------------------------------------------------------------------- results


def results_paths(output_dir):
    return os.path.join(output_dir, f"{RESULTS_NAME}.json"), os.path.join(output_dir, f"{RESULTS_NAME}.md")


def read_results(json_path):
    if not os.path.exists(json_path):
        return {}
    with open(json_path) as f:
        return json.load(f)


# Where the rows without a `measured_by` came from (the benchmark before its port to `python -m train.<model>`).
KEPT_ROWS_NOTE = (
    "Rows marked as kept from an earlier version were measured with the research tree (commit 12f335d plus an "
    "uncommitted research patch, in the older command-line layout: `zoo/<name>.py`, `train/common.py`, "
    "`evaluate.probes.robust_accuracy`); their commands below are that tree's. Re-measured with today's program, "
    "`mlp_vae_10k` gives the same row (500 examples: 71.0 / 13.0 / 0.2 / 0.0 %), and the global-probe rows of "
    "`mlp_vae_10k` and `mlp_avae_10k` agree within 0.2 points. That research classifier was saved as "
    "`classifier.keras`, which `--evaluate_only` does not read; re-measured by hand with the same functions it gives "
    "98.0 / 95.6 / 88.4 / 61.4 % (probe) and the same head numbers."
)


def markdown(rows, command):
    epsilons = sorted({k for row in rows.values() for k in row["accuracy"] if k != "clean"}, key=float)
    lines = [
        "# Robustness ablations (issue 11)",
        "",
        "Linear digit probe on the frozen encoder mean (classifier: the features its head reads; `head`: its own "
        "head), fitted on the first training digits (as many as the split has, up to `probe digits`); L-inf PGD on "
        "the first test digits of ColorMNIST (rows marked "
        "`attacked: training digits`: on the training digits after the probe's, which the encoder was trained on). "
        "Written by `python -m benchmarks.robustness_ablations`; each row's commands are below the table.",
        "",
        "| run | steps | probe scaling | probe digits | attacked digits | PGD | clean | "
        + " | ".join(f"eps {e}" for e in epsilons)
        + " |",
        "|---|---|---|---|---|---|---|" + "---|" * len(epsilons),
    ]
    for name, row in sorted(rows.items()):
        acc = row["accuracy"]
        cells = [f"{100 * acc[k]:.1f} %" if k in acc else "" for k in ["clean", *epsilons]]
        lines.append(
            f"| {name} | {row['steps']} | {row['scaling']} | {row['probe_examples']} | {row['num_examples']} "
            f"| {row['pgd_steps']}x{row['restarts']} | " + " | ".join(cells) + " |"
        )
    heads = {name: row["head_accuracy"] for name, row in sorted(rows.items()) if "head_accuracy" in row}
    if heads:
        lines += ["", "A classifier's own head, attacked the same way:", ""]
        for name, acc in heads.items():
            lines.append(f"- `{name}`: " + ", ".join(f"{k} {100 * v:.1f} %" for k, v in acc.items()))
    if any(not row.get("measured_by") for row in rows.values()):
        lines += ["", KEPT_ROWS_NOTE]
    lines += ["", "## Commands", ""]
    for name, row in sorted(rows.items()):
        by = "" if row.get("measured_by") else " (a row kept from an earlier version of this benchmark)"
        lines += [f"- `{name}`: train `{row['train_command']}`; measure `{row['measure_command']}`{by}"]
    lines += ["", *runs.produced_by(command)]
    return "\n".join(lines)


def write_results(rows, output_dir, command):
    """Writes every row (a dict keyed by run name) to the JSON file and the Markdown table."""
    json_path, md_path = results_paths(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    with open(json_path, "w") as f:
        json.dump(rows, f, indent=2, sort_keys=True)
    with open(md_path, "w") as f:
        f.write(markdown(rows, command))


# ---------------------------------------------------------------------------------------------- main


def run_config(config, model_dir, check_data, epsilons, previous):
    """Trains (unless --evaluate_only) and measures one classifier; returns its row."""
    import keras

    import zoo

    start = time.perf_counter()
    command = classifier_command(config, FLAGS.train_steps, FLAGS.ramp_steps, FLAGS.classifier_learning_rate)
    if FLAGS.evaluate_only:
        classifier = zoo.load(model_dir)  # FileNotFoundError naming the file when it was never trained
        command = previous.get("train_command", command)
    else:
        recipe = classifier_config(
            config, FLAGS.train_steps, FLAGS.ramp_steps, FLAGS.classifier_learning_rate, FLAGS.seed
        )
        classifier = train_adversarial_classifier(model_dir, FLAGS.data_dir, recipe)
    features = keras.Model(classifier.inputs, classifier.layers[-1].input)  # what the linear head reads
    encode_mean = lambda x: features(x, training=False)  # noqa: E731
    steps = ModelDir(model_dir).read_config().get("train_steps")
    train_seconds = time.perf_counter() - start
    accuracy = measure(encode_mean, check_data, epsilons, FLAGS.pgd_steps, FLAGS.restarts, FLAGS.seed, FLAGS.scaling)
    row = {
        "config": config,
        "model_dir": model_dir,
        "steps": steps,
        "accuracy": accuracy,
        "scaling": FLAGS.scaling,
        # The counts used, not the flags: a split smaller than asked for gives fewer (the shared MNIST: 7,000).
        "num_examples": len(check_data[4]),
        "probe_examples": len(check_data[2]),
        "pgd_steps": FLAGS.pgd_steps,
        "restarts": FLAGS.restarts,
        "attacked_split": FLAGS.attacked_split,
        "train_command": command,
        "measure_command": runs.command_line("benchmarks.robustness_ablations"),
        "measured_by": MEASURED_BY,
    }
    row["head_accuracy"] = head_accuracy(classifier, check_data, epsilons, FLAGS.pgd_steps, FLAGS.restarts, FLAGS.seed)
    row["seconds"] = time.perf_counter() - start - train_seconds
    return row


def main(argv):
    if len(argv) > 1:
        sys.exit(f"error: unexpected arguments: {argv[1:]}")
    unknown = [c for c in FLAGS.configs if c not in CLASSIFIERS]
    if unknown:
        sys.exit(
            f"error: unknown classifier(s) {unknown}; choose from {', '.join(CLASSIFIERS)} (the ablations are the "
            "study configs/robustness_ablations: python -m train.study --study=configs/robustness_ablations)"
        )
    console.quiet_info_logs()
    from evaluate import quick_check

    epsilons = [float(e) for e in FLAGS.epsilons]
    try:
        check_data = quick_check.load_check_data(
            DATASET,
            FLAGS.data_dir,
            False,
            probe_examples=FLAGS.probe_examples,
            test_examples=FLAGS.num_examples,
            attacked_split=FLAGS.attacked_split,
        )
    except ValueError as error:  # too few training digits for the probe and the attacked ones
        sys.exit(f"error: {error}")
    assert check_data[0] == TASK, check_data[0]
    json_path, _ = results_paths(FLAGS.output_dir)
    command = runs.command_line("benchmarks.robustness_ablations")
    for config in FLAGS.configs:
        name = config + FLAGS.name_suffix
        key = name if FLAGS.scaling == "dimension" else f"{name} ({FLAGS.scaling} probe)"
        key += " (attacked: training digits)" if FLAGS.attacked_split == "train" else ""
        model_dir = os.path.join(FLAGS.runs_dir, name)
        try:
            row = run_config(config, model_dir, check_data, epsilons, read_results(json_path).get(key, {}))
        except FileNotFoundError as error:
            sys.exit(f"error: {error}")
        rows = read_results(json_path)
        rows[key] = row
        write_results(rows, FLAGS.output_dir, command)
        print(
            f"[{key}] step {row['steps']}: "
            + ", ".join(f"{k} {100 * v:.1f} %" for k, v in row["accuracy"].items())
            + (f"; head: {row['head_accuracy']}" if "head_accuracy" in row else ""),
            flush=True,
        )
    print(f"wrote {', '.join(results_paths(FLAGS.output_dir))}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
