"""Does bfloat16 training reach where float32 training does? (issue 12)

    python -m benchmarks.precision --models=vae,avae --arch=mlp --train_steps=20000 --data_dir=../shared/tfds

Every model trains through `python -m train.<model>` (`benchmarks.runs.run`, its output in
<runs_dir>/logs/) in float32, then in each of `--precisions` (mixed_bfloat16 by default), the commands the
same (dataset, seed, data order, steps, speed settings) but for `--precision`; then in float32 once more
with the next seed (another initialisation, data order and noise), whose gaps to the first float32 run are
the yardstick of "within noise": a mixed-precision run's trajectory parts from float32's within a few steps,
as another seed's does. Each trained model is then measured the same way, in float32 (the model built
under float32 and given the trained weights, so the comparison is of where training went, not of the
arithmetic that evaluates it):

- the test ELBO and its two terms on the first `--eval_examples` test images (`model.evaluate`, the same
  posterior draws for every model: they come from the model's seed), and the relative gap to float32's ELBO,
  which the issue asks to be within 1 %;
- the quick robustness check with more care (`evaluate.quick_check.quick_robustness`): a linear probe on
  the encoder mean fitted on the first `--probe_examples` training digits, clean accuracy and L-inf PGD
  (`--pgd_steps`, `--restarts`) on the first `--num_examples` test digits, with each gap to float32 against
  its sampling error.

A mixed-precision run's ELBO is also measured in its own precision (the model rebuilt under its training
policy), as its `--summary` would print it. On a CPU without AVX512-BF16 or AMX bfloat16 is emulated: the
numbers are the same as on one with them (products of bfloat16 values are exact in float32, the
accumulation is float32 in both), only slower. Rows go to <output_dir>/precision.{json,md}.

Not yet a study (issue 42): its runs (model x precision, and float32 with the next seed) would be run configs
of a study folder like configs/robustness_ablations, which `python -m train.study` trains; what keeps its own
orchestration here is its measurement, which the evaluate pipeline that the runner calls does not make (the
ELBO in float32 and in the training precision, and the gaps to the float32 run against seed noise).
"""

import json
import math
import os
import shlex
import sys

from zoo import console

console.quiet_tensorflow()  # before anything loads TensorFlow

from absl import app, flags  # noqa: E402

from benchmarks import runs  # noqa: E402

FLAGS = flags.FLAGS
DATASET = "color_mnist"
RESULTS_NAME = "precision"
REFERENCE = "float32"
MIXED_PRECISIONS = ("mixed_bfloat16", "mixed_float16")
ELBO_TOLERANCE = 0.01  # the "test ELBO within 1 % of float32"


def define_flags():
    flags.DEFINE_list("models", ["vae", "avae"], "Models to train in each precision.")
    flags.DEFINE_enum("arch", "mlp", ["mlp", "conv"], "Architecture of every model.")
    flags.DEFINE_list(
        "precisions", ["mixed_bfloat16"], f"Precisions compared with float32: {', '.join(MIXED_PRECISIONS)}."
    )
    flags.DEFINE_integer("train_steps", 20_000, "Training steps of every run.", lower_bound=1)
    flags.DEFINE_string("data_dir", None, "tensorflow-datasets data directory holding mnist (prepared: no download).")
    flags.DEFINE_string(
        "runs_dir",
        "/tmp/robust_zoo/precision",
        "Model directories: <runs_dir>/<model>_<arch>_<precision>[_seed+1]; "
        "a rerun with more --train_steps continues them.",
    )
    flags.DEFINE_string("output_dir", "results", f"Where {RESULTS_NAME}.json and .md go (rows are merged).")
    flags.DEFINE_integer("eval_examples", 1000, "Test images of the ELBO (the first N).", lower_bound=1)
    flags.DEFINE_integer("probe_examples", 2000, "Training digits the probe is fitted on (the first N).", lower_bound=1)
    flags.DEFINE_integer("num_examples", 1000, "Test digits attacked (the first N).", lower_bound=1)
    flags.DEFINE_list("epsilons", ["0.05", "0.1"], "L-inf radii of the attacks.")
    flags.DEFINE_integer("pgd_steps", 20, "PGD steps.", lower_bound=1)
    flags.DEFINE_integer("restarts", 2, "PGD random restarts (the worst case is kept).", lower_bound=1)
    flags.DEFINE_integer("seed", 0, "Seed of training, probe and attacks.")


def run_name(model, arch, precision, seed_offset):
    return f"{model}_{arch}_{variant(precision, seed_offset)}"


def variant(precision, seed_offset):
    """What a run changes: its precision, and its seed when not the first."""
    return precision + (f"_seed+{seed_offset}" if seed_offset else "")


def train_args(model, arch, precision, model_dir, train_steps, data_dir, seed):
    """The arguments of `python -m` that train one run; runs of one model differ in `--precision` or `--seed`."""
    return [
        f"train.{model}",
        f"--dataset={DATASET}",
        *([f"--data_dir={data_dir}"] if data_dir else []),
        "--nodownload",
        f"--arch={arch}",
        f"--precision={precision}",
        f"--model_dir={model_dir}",
        f"--train_steps={train_steps}",
        f"--seed={seed}",
        "--eval_examples=0",
        "--checkpoint_every=2000",
        "--nosummary",
    ]


def elbo_terms(model, test_data):
    """{"elbo", "log_likelihood", "kl"} of `model` on `test_data` (batch means over the images)."""
    metrics = model.evaluate(test_data, verbose=0, return_dict=True)
    return {key: float(metrics[key]) for key in ("elbo", "log_likelihood", "kl")}


def load_in_precision(model_dir, precision):
    """The trained model of `model_dir`, its layers computing in `precision` (a Keras dtype policy)."""
    import keras

    import zoo

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)
    try:
        return zoo.load(model_dir)
    finally:
        keras.config.set_dtype_policy(previous)


def measure(model_dir, precision, test_data, check_data, epsilons, pgd_steps, restarts, seed):
    """One row: the test ELBO in float32 (and in `precision`), the probe's clean and PGD accuracy in float32,
    measured as `benchmarks.robustness_ablations` measures its rows."""
    from benchmarks import robustness_ablations

    model = load_in_precision(model_dir, REFERENCE)
    row = {"test": elbo_terms(model, test_data)}
    if precision != REFERENCE:
        row["test_own_precision"] = elbo_terms(load_in_precision(model_dir, precision), test_data)
    row["accuracy"] = robustness_ablations.measure(
        lambda x: model(x, training=False), check_data, epsilons, pgd_steps, restarts, seed, "dimension"
    )
    row["attacked_examples"] = len(check_data[4])
    return row


def compare(row, reference):
    """The gaps of `row` to the float32 row of its model: the ELBO's, relative, and each accuracy's in points
    with its sampling error on these digits (two independent binomial proportions: an upper bound)."""
    elbo, reference_elbo = row["test"]["elbo"], reference["test"]["elbo"]
    relative = (elbo - reference_elbo) / abs(reference_elbo)
    gaps = {}
    for key, accuracy in row["accuracy"].items():
        ref = reference["accuracy"][key]
        error = math.sqrt((accuracy * (1 - accuracy) + ref * (1 - ref)) / row["attacked_examples"])
        gaps[key] = {
            "points": 100 * (accuracy - ref),
            "standard_error_points": 100 * error,
            "within_2_standard_errors": abs(accuracy - ref) <= 2 * error + 1e-12,
        }
    return {
        "elbo_relative_gap": relative,
        "elbo_within_1_percent": abs(relative) <= ELBO_TOLERANCE,
        "accuracy_gaps": gaps,
    }


def markdown(rows, command):
    epsilons = sorted({k for row in rows.values() for k in row["accuracy"] if k != "clean"}, key=float)
    lines = [
        "# bfloat16 training against float32 (issue 12)",
        "",
        "Each model trained by `python -m train.<model>` in each precision, the commands the same but for "
        "`--precision`; all measured in float32: the test ELBO (nats per image) on the first test images, and a "
        "linear digit probe on the encoder mean (fitted on the first 2,000 training digits) with its clean and "
        "L-inf PGD accuracy on the first test digits. `ELBO gap`: relative to float32's (the issue asks for at "
        "most 1 %); accuracy gaps in points, with their sampling error on these digits (+-1 standard error). The "
        "`float32_seed+1` row is float32 trained from the next seed: its gaps are what another training run "
        "alone moves, the yardstick for the mixed-precision rows (side by side below the table). `ELBO (own "
        "precision)`: the mixed-precision model evaluated in the precision it trained in, as its `--summary` "
        "prints it.",
        "",
        "| run | steps | ELBO | log-likelihood | KL | ELBO (own precision) | ELBO gap | clean | "
        + " | ".join(f"PGD eps {e}" for e in epsilons)
        + " |",
        "|---|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * len(epsilons),
    ]
    for name, row in sorted(rows.items()):
        test, own, comparison = row["test"], row.get("test_own_precision"), row.get("comparison")
        cells = [
            name,
            str(row["steps"]),
            f"{test['elbo']:.1f}",
            f"{test['log_likelihood']:.1f}",
            f"{test['kl']:.1f}",
            f"{own['elbo']:.1f}" if own else "",
            f"{100 * comparison['elbo_relative_gap']:+.2f} %" if comparison else "",
        ]
        for key in ["clean", *epsilons]:
            cell = f"{100 * row['accuracy'][key]:.1f} %"
            if comparison:
                gap = comparison["accuracy_gaps"][key]
                cell += f" ({gap['points']:+.1f} +- {gap['standard_error_points']:.1f})"
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", *verdicts(rows), "", "## Commands", ""]
    lines += [f"- `{name}`: `{row['train_command']}`" for name, row in sorted(rows.items())]
    # Rows are merged over runs of this benchmark (one per architecture, say): every command that measured one.
    commands = sorted({row["measure_command"] for row in rows.values()} | {command})
    lines += ["", *runs.produced_by("\n".join(commands))]
    return "\n".join(lines)


def _percent(fraction):
    return f"{100 * fraction:+.2f} %"


def _points(points):
    return f"{points:+.1f}"


def _beside(value, seed_value, text):
    """`text(value)`, and the next seed's beside it when there is one."""
    return text(value) + ("" if seed_value is None else f" (next seed {text(seed_value)})")


def verdicts(rows):
    """One line per mixed-precision row: its ELBO gap against the 1 % asked for, and each gap beside the next
    float32 seed's, what another run alone moves it (one seed: a scale, not a test)."""
    lines = []
    for name, row in sorted(rows.items()):
        precision = next((p for p in MIXED_PRECISIONS if name.endswith(f"_{p}")), None)
        if precision is None:
            continue
        comparison = row["comparison"]
        seed = rows.get(name[: -len(precision)] + variant(REFERENCE, 1), {}).get("comparison")
        elbo = _beside(comparison["elbo_relative_gap"], seed and seed["elbo_relative_gap"], _percent)
        within = "within" if comparison["elbo_within_1_percent"] else "**not** within"
        accuracy = []
        for key in sorted(comparison["accuracy_gaps"], key=lambda key: -1.0 if key == "clean" else float(key)):
            seed_points = seed["accuracy_gaps"][key]["points"] if seed else None
            accuracy.append(f"{key} " + _beside(comparison["accuracy_gaps"][key]["points"], seed_points, _points))
        lines.append(f"- `{name}`: ELBO {elbo}, {within} 1 %; accuracy gaps (points): {', '.join(accuracy)}")
    return lines


def main(argv):
    if len(argv) > 1:
        sys.exit(f"error: unexpected arguments: {argv[1:]}")
    unknown = [p for p in FLAGS.precisions if p not in MIXED_PRECISIONS]
    if unknown:
        sys.exit(f"error: unknown precision(s) {unknown}; choose from {', '.join(MIXED_PRECISIONS)}")
    console.quiet_info_logs()
    import zoo
    from evaluate import quick_check
    from zoo import data as zoo_data

    unknown = [m for m in FLAGS.models if m not in zoo.MODELS]
    if unknown:
        sys.exit(f"error: unknown model(s) {unknown}; choose from {', '.join(sorted(zoo.MODELS))}")
    epsilons = [float(e) for e in FLAGS.epsilons]
    test_data = zoo_data.load(DATASET, "test", 64, data_dir=FLAGS.data_dir, take=FLAGS.eval_examples, download=False)
    check_data = quick_check.load_check_data(
        DATASET, FLAGS.data_dir, False, probe_examples=FLAGS.probe_examples, test_examples=FLAGS.num_examples
    )
    json_path, md_path = (os.path.join(FLAGS.output_dir, f"{RESULTS_NAME}.{ext}") for ext in ("json", "md"))
    rows = {}
    if os.path.exists(json_path):
        with open(json_path) as f:
            rows = json.load(f)
    command = runs.command_line("benchmarks.precision")
    for model in FLAGS.models:
        for precision, seed_offset in [(REFERENCE, 0), *((p, 0) for p in FLAGS.precisions), (REFERENCE, 1)]:
            name = run_name(model, FLAGS.arch, precision, seed_offset)
            model_dir = os.path.join(FLAGS.runs_dir, name)
            args = train_args(
                model, FLAGS.arch, precision, model_dir, FLAGS.train_steps, FLAGS.data_dir, FLAGS.seed + seed_offset
            )
            runs.run(args, os.path.join(FLAGS.runs_dir, "logs", f"{name}.log"))
            row = measure(
                model_dir, precision, test_data, check_data, epsilons, FLAGS.pgd_steps, FLAGS.restarts, FLAGS.seed
            )
            row.update(
                steps=FLAGS.train_steps, train_command=shlex.join(["python", "-m", *args]), measure_command=command
            )
            if name != run_name(model, FLAGS.arch, REFERENCE, 0):
                row["comparison"] = compare(row, rows[run_name(model, FLAGS.arch, REFERENCE, 0)])
            rows[name] = row
            os.makedirs(FLAGS.output_dir, exist_ok=True)
            with open(json_path, "w") as f:
                json.dump(rows, f, indent=2, sort_keys=True)
            with open(md_path, "w") as f:
                f.write(markdown(rows, command))
            print(
                f"[{name}] test ELBO {row['test']['elbo']:.1f}, "
                + ", ".join(f"{k} {100 * v:.1f} %" for k, v in row["accuracy"].items()),
                flush=True,
            )
    print(f"wrote {json_path}, {md_path}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
