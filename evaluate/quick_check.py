"""The quick robustness check training runs: the end-of-training summary and the robustness curve.

The evaluation protocol in small (`evaluate.probes`, `zoo.attacks.pgd`): a linear probe fitted on the
encoder mean of a fixed subset of training images, then its clean accuracy and its accuracy under
end-to-end L-inf PGD on a fixed subset of test images. It costs seconds, so training can print it at
the end and, with `robustness_every`, log it as it goes (`train.callbacks.RobustnessMonitor`: TensorBoard
and `robustness_curve.csv`, written and read here), the AVAE paper's Figure 5 middle column.
`python -m evaluate.robustness` is the full protocol.
"""

import csv
import os
import time

import numpy as np
import tensorflow as tf

from evaluate import probes, worst_case
from zoo import data as zoo_data
from zoo.model_dir import atomic_open

PROBE_EXAMPLES = 2000  # training images the probe is fitted on
TEST_EXAMPLES = 500  # test images it is measured on
PGD_STEPS = 10


def load_check_data(
    dataset, data_dir, download, probe_examples=PROBE_EXAMPLES, test_examples=TEST_EXAMPLES, attacked_split=None
):
    """(task, num_classes, probe images, probe labels, attacked images, attacked labels), or None without labels.

    The task is the dataset's first (ColorMNIST: digit); the probe's images are the first training examples
    and the attacked ones the first of `attacked_split` (default: the dataset's `check_split`, its validation
    digits where it has them, else its test digits), so every check of a run, and of every run, sees the same
    images. `attacked_split="train"` attacks the `test_examples` training examples that follow the probe's
    instead: images the encoder was trained on but the probe was not fitted on, which measures the robust
    generalisation gap (accuracy on trained digits minus accuracy on unseen ones).
    """
    spec = zoo_data.get_spec(dataset, data_dir)
    attacked_split = attacked_split or spec.check_split
    if attacked_split not in spec.splits:
        raise ValueError(f"attacked_split must be one of {', '.join(map(repr, spec.splits))}, not {attacked_split!r}")
    if not spec.tasks:
        return None
    task, classes = next(iter(spec.tasks.items()))

    def arrays(split, n):
        images, labels = [], []
        for x, y in zoo_data.load(dataset, split, 256, data_dir=data_dir, take=n, download=download):
            images.append(x.numpy())
            labels.append(y[task].numpy())
        return np.concatenate(images), np.concatenate(labels).astype(np.int32)

    if attacked_split != "train":
        return (task, classes, *arrays("train", probe_examples), *arrays(attacked_split, test_examples))
    images, labels = arrays("train", probe_examples + test_examples)
    if len(images) < probe_examples + test_examples:
        raise ValueError(
            f"the {dataset} training split has {len(images)} examples, fewer than the "
            f"{probe_examples} probe + {test_examples} attacked ones asked for"
        )
    return (
        task,
        classes,
        images[:probe_examples],
        labels[:probe_examples],
        images[probe_examples:],
        labels[probe_examples:],
    )


def quick_robustness(encode_mean, check_data, epsilons, pgd_steps=PGD_STEPS, seed=0, restarts=1, scaling="dimension"):
    """{"task", "clean", "pgd": {epsilon: accuracy}, "examples", "seconds"} of a fresh linear probe.

    `restarts` (PGD random restarts, the worst case kept) and `scaling` (`probes.train_linear_probe`) are
    for the benchmarks that measure more carefully (`benchmarks.robustness_ablations`).
    """
    started = time.perf_counter()
    task, classes, train_images, train_labels, test_images, test_labels = check_data
    features = probes.encode_in_batches(encode_mean, train_images, 256)
    probe = probes.train_linear_probe(features, train_labels, classes, seed=seed, scaling=scaling)
    w, b = (tf.constant(v) for v in probe)
    logits_fn = probes.probe_logits(encode_mean, w, b)
    x, y = tf.constant(test_images), tf.constant(test_labels)
    clean = float(np.mean(np.argmax(logits_fn(x).numpy(), axis=-1) == test_labels))
    pgd_correct = worst_case.make_pgd_correct(logits_fn, pgd_steps, restarts=restarts)
    pgd = {
        float(epsilon): float(np.mean(pgd_correct(x, y, tf.constant(epsilon, tf.float32), tf.constant([seed, i]))))
        for i, epsilon in enumerate(epsilons)
    }
    return {
        "task": task,
        "clean": clean,
        "pgd": pgd,
        "examples": len(test_images),
        "seconds": time.perf_counter() - started,
    }


def append_curve_row(csv_path, step, result, epsilons):
    """Appends the check `result` of optimizer step `step` to the curve CSV, with a header row when it is new."""
    new_file = not os.path.exists(csv_path)
    with atomic_open(csv_path, "a") as f:
        writer = csv.writer(f)
        if new_file:
            writer.writerow(["step", "task", "clean", *(f"pgd_eps_{e:g}" for e in epsilons), "seconds"])
        writer.writerow(
            [
                step,
                result["task"],
                f"{result['clean']:.4f}",
                *(f"{result['pgd'][float(e)]:.4f}" for e in epsilons),
                f"{result['seconds']:.2f}",
            ]
        )


def read_curve(csv_path):
    """The rows `append_curve_row` wrote, by step: {step: {"clean": accuracy, epsilon: PGD accuracy, "seconds": cost}}.

    A resumed run checks again the steps after its last checkpoint; the latest row of a step wins.
    """
    curve = {}
    with open(csv_path, newline="") as f:
        for row in csv.DictReader(f):
            radii = {float(key[len("pgd_eps_") :]): float(v) for key, v in row.items() if key.startswith("pgd_eps_")}
            curve[int(row["step"])] = {"clean": float(row["clean"]), **radii, "seconds": float(row["seconds"])}
    return dict(sorted(curve.items()))
