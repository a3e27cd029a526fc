"""Robustness evaluation of trained models: the papers' protocol as one command (issue 4).

    python -m evaluate.robustness --model_dir=M --dataset=color_mnist --data_dir=D \
        --epsilons=0,0.1,0.2 --pgd_steps=40 --restarts=10 --num_examples=N --output_dir=O

writes O/robustness.json, O/robustness.md and PNG plots. `--dataset` defaults
to the one in M/config.json. Several models side by side:

    python -m evaluate.robustness --model_dir=M1 --model_dir=M2 ... --output_dir=O

evaluates each into O/<name of its directory>/ and writes O/comparison.md and
O/comparison_*.png; results already computed are compared without rerunning:

    python -m evaluate.robustness --compare=O1/robustness.json,O2/robustness.json --output_dir=O

This is the only module that reads flags; see `evaluate.pipeline` for the library.
"""

import os
import sys

from absl import app, flags

FLAGS = flags.FLAGS

flags.DEFINE_multi_string("model_dir", None, "Trained model directory (model.keras, config.json); repeat to compare.")
flags.DEFINE_list("compare", None, "robustness.json files to compare side by side (no evaluation).")
flags.DEFINE_list("labels", None, "Names of the compared models in plots and tables (default: directory names).")
flags.DEFINE_string("dataset", None, "Dataset; default: the one in model_dir/config.json.")
flags.DEFINE_string("data_dir", None, "tensorflow-datasets data directory.")
flags.DEFINE_bool("download", True, "Let tensorflow-datasets download data that is not prepared in data_dir.")
flags.DEFINE_string("output_dir", None, "Where robustness.json, the table and the plots go.")
flags.DEFINE_string("epsilons", "0,0.1,0.2", "L-inf radii of the downstream attack (0: clean accuracy).")
flags.DEFINE_integer("pgd_steps", 40, "PGD steps of every attack.")
flags.DEFINE_integer("restarts", 10, "PGD random restarts of every attack (the worst case is kept).")
flags.DEFINE_integer("num_examples", 1000, "Test examples evaluated (the first N of the test split).")
flags.DEFINE_integer("batch_size", 100, "Examples per attack batch.")
flags.DEFINE_list("tasks", None, "Tasks to probe; default: every task of the dataset.")
flags.DEFINE_integer("probe_train_examples", 10000, "Training examples for the linear probes.")
flags.DEFINE_integer("probe_epochs", 30, "Epochs of linear-probe training.")
flags.DEFINE_string("lambdas", "1,3,5", "L2 radii of the latent-space and maximum-damage attacks.")
flags.DEFINE_integer("ae_attack_examples", 100, "Random test images attacked per trial (autoencoder attacks).")
flags.DEFINE_integer("ae_attack_trials", 10, "Trials of the autoencoder attacks (mean and std over trials).")
flags.DEFINE_string("target_task", None, "Task whose classes pick latent-attack targets; default: the first task.")
flags.DEFINE_integer("margin_examples", 100, "Test examples for the margin of robustness.")
flags.DEFINE_float("margin_r", None, "r of r-robustness (L2 in pixel space); default 0.1 * sqrt(pixel values).")
flags.DEFINE_integer("margin_samples", 128, "Posterior samples estimating p(r-robust).")
flags.DEFINE_integer("margin_search_steps", 8, "Bisection steps of the empirical margin search.")
flags.DEFINE_float("margin_min_radius", 1e-3, "Smallest L2 radius the margin search tries.")
flags.DEFINE_float("margin_max_radius", 10.0, "Largest L2 radius the margin search tries.")
flags.DEFINE_integer("chain_steps", 10, "Encode-decode iterations of the chains.")
flags.DEFINE_integer("chain_examples", 8, "Test images in the chain grid.")
flags.DEFINE_enum("fid_features", "auto", ["auto", "inception", "classifier"], "FID feature extractor.")
flags.DEFINE_string("fid_cache_dir", None, "Cache of FID classifiers; default ~/.cache/robust_zoo/fid_classifiers.")
flags.DEFINE_integer("fid_classifier_train_examples", 10000, "Training examples of the FID classifier.")
flags.DEFINE_integer("fid_classifier_epochs", 3, "Epochs of the FID classifier.")
flags.DEFINE_list("stages", ["accuracy", "decoder", "ae_attacks", "margin", "chains"], "Stages to run.")
flags.DEFINE_integer("seed", 0, "Seed of attacks, probes and example selection.")


def _fail(message):
    """One clear line on stderr, no traceback."""
    sys.exit(f"error: {message}")


def _numbers(flag_name, text):
    values = []
    for item in text.split(","):
        item = item.strip()
        try:
            values.append(float(item))
        except ValueError:
            _fail(f"--{flag_name} must be comma-separated numbers, got {item!r} in {text!r}")
    if not values:
        _fail(f"--{flag_name} is empty")
    return tuple(values)


def _labels(paths, given):
    if given:
        if len(given) != len(paths):
            _fail(f"--labels has {len(given)} names for {len(paths)} models")
        return list(given)
    labels = []
    for path in paths:
        base = os.path.basename(os.path.normpath(path))
        if base == "robustness.json":
            base = os.path.basename(os.path.dirname(os.path.abspath(path)))
        label, k = base, 2
        while label in labels:
            label, k = f"{base}_{k}", k + 1
        labels.append(label)
    return labels


def _settings():
    epsilons, lambdas = _numbers("epsilons", FLAGS.epsilons), _numbers("lambdas", FLAGS.lambdas)
    for model_dir in FLAGS.model_dir:  # checked before TensorFlow is imported: bad input fails fast
        if not os.path.exists(os.path.join(model_dir, "model.keras")):
            _fail(f"no trained model in {model_dir!r} (expected {os.path.join(model_dir, 'model.keras')})")

    from evaluate import pipeline

    return pipeline.Settings(
        epsilons=epsilons,
        pgd_steps=FLAGS.pgd_steps,
        restarts=FLAGS.restarts,
        num_examples=FLAGS.num_examples,
        batch_size=FLAGS.batch_size,
        tasks=tuple(FLAGS.tasks) if FLAGS.tasks else None,
        probe_train_examples=FLAGS.probe_train_examples,
        probe_epochs=FLAGS.probe_epochs,
        lambdas=lambdas,
        ae_attack_examples=FLAGS.ae_attack_examples,
        ae_attack_trials=FLAGS.ae_attack_trials,
        target_task=FLAGS.target_task,
        margin_examples=FLAGS.margin_examples,
        margin_r=FLAGS.margin_r,
        margin_samples=FLAGS.margin_samples,
        margin_search_steps=FLAGS.margin_search_steps,
        margin_min_radius=FLAGS.margin_min_radius,
        margin_max_radius=FLAGS.margin_max_radius,
        chain_steps=FLAGS.chain_steps,
        chain_examples=FLAGS.chain_examples,
        fid_features=FLAGS.fid_features,
        fid_cache_dir=FLAGS.fid_cache_dir,
        fid_classifier_train_examples=FLAGS.fid_classifier_train_examples,
        fid_classifier_epochs=FLAGS.fid_classifier_epochs,
        stages=tuple(FLAGS.stages),
        seed=FLAGS.seed,
        download=FLAGS.download,
    )


def _compare(paths, output_dir):
    from evaluate import report

    results = []
    for path in paths:
        if os.path.isdir(path):
            path = os.path.join(path, report.JSON_FILE)
        if not os.path.exists(path):
            _fail(f"no results to compare at {path!r}")
        try:
            results.append(report.read_json(path))
        except ValueError as error:
            _fail(f"{path!r} is not a robustness.json ({error})")
    written = report.write_comparison(results, _labels(paths, FLAGS.labels), output_dir)
    print("comparison written: " + ", ".join(written))


def main(argv):
    if len(argv) > 1:
        _fail(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS.output_dir:
        _fail("--output_dir is required")
    if FLAGS.compare:
        if FLAGS.model_dir:
            _fail("give either --model_dir (evaluate) or --compare (existing results), not both")
        _compare(FLAGS.compare, FLAGS.output_dir)
        return
    if not FLAGS.model_dir:
        _fail("--model_dir is required (or --compare=results.json,... to compare existing results)")
    settings = _settings()

    from evaluate import pipeline, report
    from zoo import data as zoo_data

    model_dirs = FLAGS.model_dir
    labels = _labels(model_dirs, FLAGS.labels)
    results = []
    try:
        settings.check()
        for model_dir, label in zip(model_dirs, labels):
            output_dir = FLAGS.output_dir if len(model_dirs) == 1 else os.path.join(FLAGS.output_dir, label)
            result = pipeline.evaluate_model(
                model_dir, output_dir, settings, dataset=FLAGS.dataset, data_dir=FLAGS.data_dir
            )
            results.append(result)
            print(f"results for {label}: {os.path.join(output_dir, report.JSON_FILE)}")
            print(report.accuracy_table(result))
    except (pipeline.EvaluationError, zoo_data.DataUnavailableError) as error:
        _fail(str(error))
    if len(results) > 1:
        written = report.write_comparison(results, labels, FLAGS.output_dir)
        print("comparison written: " + ", ".join(written))


if __name__ == "__main__":
    app.run(main)
