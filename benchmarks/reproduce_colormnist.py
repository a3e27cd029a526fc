"""Reproduces the AVAE paper's ColorMNIST comparison at laptop scale (Table 1, Figure 5, Figure 1).

    python -m benchmarks.reproduce_colormnist --data_dir=../shared/tfds --output_dir=results

Every model trains through its own entry point (`python -m train.<model>`) with the same architecture, latent
64, steps, batch size and learning rate, logging training's robustness check as it goes, then
`python -m evaluate.robustness` evaluates it: digit and colour accuracy of linear probes on the frozen encoder
mean at each radius, the worst case per example over the project's PGD and AutoAttack's APGD-CE, targeted
APGD-DLR and Square (run as AutoAttack's cascade), the gradient-masking check, test MSE and FID, and with
`--radius_examples` the median robustness radius. `--quick`: the PGD alone.
The time ratio is the median wall-clock time of a training step (from each run's step timing) relative to
the VAE's in this run. `--arch=mlp` is Figure 5's top row at the paper's 102,000 steps; `--full` uses the
paper's conv budget on the whole dataset (a GPU job). The settings are those the project's ablations found
(results/avae_plateau.md, results/mlp_learning_rate.md, results/delusion.md); the markdown names the paper's
beside them.

Not yet a study: Table 1's six runs and their evaluation are the study `configs/colormnist_table1`, which
`python -m train.study --study=configs/colormnist_table1` trains, evaluates and compares (model directories in
runs/colormnist_table1, the comparison in results/colormnist_table1), and this program reads its model list from
there; what remains here until it becomes the study's report on top of that runner: its own orchestration of the
same runs (`benchmarks.runs`, subprocesses side by side, budgets --arch=mlp, --full, --train_steps), the rho sweep
(Figure 5, left), the paper's numbers beside ours, the time ratios, the training curves and the plots.

Writes `colormnist.json`, `colormnist.md` and four PNGs to --output_dir (`colormnist_mlp*` for the MLP);
model directories and the raw evaluations go to --work_dir/<arch>. Up to `--parallel` trainings and evaluations
run side by side as separate processes. A rerun continues: training resumes from its checkpoints (so the budget
can grow across sessions), and an evaluation already made of the same weights with the same flags is read back
instead of run again (delete <work_dir>/<arch>/eval to measure again after changing the evaluation's code).
"""

import functools
import json
import os
import time

from absl import app, flags

from benchmarks import runs
from evaluate import report as evaluate_report
from evaluate import quick_check
from zoo.model_dir import ModelDir

FLAGS = flags.FLAGS


def define_flags():
    flags.DEFINE_string("data_dir", None, "tensorflow-datasets data directory holding mnist.")
    flags.DEFINE_string("output_dir", "results", "Where colormnist.{json,md} and the plots go.")
    flags.DEFINE_string("work_dir", "/tmp/robust_zoo/reproduce_colormnist", "Model directories and raw evaluations.")
    flags.DEFINE_enum(
        "arch",
        "conv",
        list(TRAIN_STEPS),
        "Encoder and decoder of every model: Table 1 and Figure 5's bottom row (conv) or Figure 5's top row (mlp).",
    )
    flags.DEFINE_bool(
        "full", False, "The paper's budget on the whole dataset (a GPU machine): overrides the sizes below."
    )
    flags.DEFINE_integer(
        "train_steps",
        None,
        "Training steps of every model (AVAE-SS: post-training steps). Default: "
        + ", ".join(f"{steps:,} ({arch})" for arch, steps in TRAIN_STEPS.items())
        + ".",
        lower_bound=1,
    )
    flags.DEFINE_integer("batch_size", 64, "Batch size of every model.")
    flags.DEFINE_float(
        "learning_rate", LEARNING_RATE, "Adam learning rate of every model (the paper: 1e-4).", lower_bound=0
    )
    flags.DEFINE_integer(
        "robustness_every",
        None,
        "Steps between training's robustness checks of Table 1's models "
        "(the accuracy-vs-step plot; 0: none). Default: an eighth of the training steps.",
        lower_bound=0,
    )
    flags.DEFINE_integer(
        "parallel",
        None,
        "Trainings and evaluations run side by side, each a process with its share "
        "of the cores. Default: 1 for conv, whose step already keeps the cores busy (two side by side "
        "took 1.3x longer on 2 cores), 2 for mlp where the machine has 2 cores or more (1.3x more "
        "steps per second on 2 cores); results/parallel_jobs.md.",
        lower_bound=1,
    )
    flags.DEFINE_integer("num_examples", 250, "Test examples attacked per model.")
    flags.DEFINE_integer("pgd_steps", 40, "PGD steps of the evaluation attack.")
    flags.DEFINE_integer("restarts", 2, "PGD restarts of the evaluation attack (the paper: 10).")
    flags.DEFINE_bool("quick", False, "The project's PGD alone instead of the worst case over the attack ensemble.")
    flags.DEFINE_integer(
        "radius_examples",
        0,
        "Test examples whose robustness radius is searched, per model of "
        "Table 1 (the rho sweep: none); each costs minutes on a CPU, as ART's attacks take one "
        "radius per call.",
    )
    flags.DEFINE_integer("sweep_examples", 200, "Test examples attacked per model of the rho sweep.")
    flags.DEFINE_list(
        "models",
        [label for label, _, _ in MODELS],
        "Table 1's models to train and evaluate (a "
        "subset where a budget allows no more); VAE is always one, as AVAE-SS post-trains it and the "
        "time ratios are relative to it.",
    )
    flags.DEFINE_list("rhos", ["0.5", "0.8", "0.9", "0.95", "0.975", "0.99"], "AVAE couplings of Figure 5 (left).")
    flags.DEFINE_integer("seed", 0, "Seed of every training run and evaluation.")


EPSILONS = (0.0, 0.1, 0.2)
CURVE_EPSILONS = (0.05, 0.1)  # training's check: Figure 5 (middle) is at 0.1; 0.05 shows short runs' progress
# Per arch: the steps that fit one session of the 2-core machine with the whole table and the rho sweep (conv),
# and the public reference's 102,000 (mlp).
TRAIN_STEPS = {"conv": 800, "mlp": 102_000}
LEARNING_RATE = 3e-4  # the ablations' choice on both archs: avae_plateau.md sections 8 and 10, mlp_learning_rate.md
# The paper's settings that differ from or are not in the table's run (appendix F, the public reference).
PAPER_SETTINGS = (
    "Adam 1e-4, 100,000 steps (the MLP: 102,000) on 60,000 training digits, probes on the whole "
    "training set, PGD-40 with 10 restarts on 10,000 test digits"
)
# Table 1's models are the study configs/colormnist_table1 (one run config per model, named by its label); this
# reads its model list from there: (label, registry name, the model's hyper-parameters), in Table 1's order.
# AVAE-SS post-trains the VAE. Paper: rho 0.975, rho_SE 0.95, PGD-5.
TABLE_1_STUDY = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "colormnist_table1"
)
TABLE_1 = ("VAE", "SE_0.1", "SE_0.2", "AVAE", "SE_0.1-AVAE", "AVAE-SS")


def _table_1_models():
    import zoo

    models = []
    for label in TABLE_1:
        with open(os.path.join(TABLE_1_STUDY, f"{label}.json")) as f:
            config = json.load(f)
        fields = {field.name for field in zoo.get_model_class(config["model"]).config_class.fields()}
        models.append((label, config["model"], {k: v for k, v in config.items() if k in fields}))
    return tuple(models)


MODELS = _table_1_models()
# The paper's Table 1 (ColorMNIST, conv): accuracy in % at eps 0 / 0.1 / 0.2, time relative to the VAE.
PAPER = {
    "VAE": {"digit": (93.8, 5.8, 0.0), "color": (100, 19.9, 2.0), "time": 1},
    "SE_0.1": {"digit": (94.3, 89.6, 1.8), "color": (100, 100, 21.8), "time": 4},
    "SE_0.2": {"digit": (95.7, 92.6, 87.3), "color": (100, 99.9, 99.9), "time": 4},
    "AVAE": {"digit": (97.3, 88.1, 54.8), "color": (100, 99.8, 87.7), "time": 1.5},
    "SE_0.1-AVAE": {"digit": (97.4, 93.6, 24.5), "color": (100, 100, 60.0), "time": 4.7},
    "AVAE-SS": {"digit": (94.1, 72.8, 20.8), "color": (100, 99.6, 56.8), "time": 1.5},
}


def _budget():
    if FLAGS.full:  # the paper: whole dataset, PGD-40 with 10 restarts (appendix F)
        steps = 100_000 if FLAGS.arch == "conv" else TRAIN_STEPS["mlp"]
        budget = dict(train_steps=steps, num_examples=10_000, restarts=10, sweep_examples=10_000, probe=60_000)
    else:
        budget = dict(
            train_steps=FLAGS.train_steps or TRAIN_STEPS[FLAGS.arch],
            num_examples=FLAGS.num_examples,
            restarts=FLAGS.restarts,
            sweep_examples=FLAGS.sweep_examples,
            probe=7_000,  # every training digit of ../shared/tfds
        )
    every = FLAGS.robustness_every
    return {**budget, "robustness_every": budget["train_steps"] // 8 if every is None else every}


def _common_flags(budget, curve=False):
    """Training flags shared by every model; `curve`: with training's robustness check (Table 1's models)."""
    steps = budget["train_steps"]
    flags_ = [
        "--dataset=color_mnist",
        f"--arch={FLAGS.arch}",
        "--latent_dim=64",
        f"--batch_size={FLAGS.batch_size}",
        f"--learning_rate={FLAGS.learning_rate:g}",
        f"--train_steps={steps}",
        f"--checkpoint_every={min(steps, max(500, steps // 20))}",
        "--eval_examples=0",
        f"--seed={FLAGS.seed}",
    ]
    if curve and budget["robustness_every"]:
        flags_ += [
            f"--robustness_every={budget['robustness_every']}",
            f"--robustness_epsilons={','.join(map(str, CURVE_EPSILONS))}",
        ]
    return flags_ + ([f"--data_dir={FLAGS.data_dir}"] if FLAGS.data_dir else [])


def _eval_flags(num_examples, budget, stages, radius_examples):
    flags_ = [
        "--dataset=color_mnist",
        f"--epsilons={','.join(map(str, EPSILONS))}",
        f"--pgd_steps={FLAGS.pgd_steps}",
        f"--restarts={budget['restarts']}",
        f"--num_examples={num_examples}",
        f"--probe_train_examples={budget['probe']}",
        f"--stages={stages}",
        f"--seed={FLAGS.seed}",
        f"--radius_examples={radius_examples}",
        "--quick" if FLAGS.quick else "--cascade",
    ]
    return flags_ + ([f"--data_dir={FLAGS.data_dir}"] if FLAGS.data_dir else [])


def _name(arch=None):
    """The results' file stem: Table 1 (conv) is colormnist, Figure 5's top row colormnist_mlp."""
    arch = arch or FLAGS.arch
    return "colormnist" if arch == "conv" else f"colormnist_{arch}"


def _training_curve(model_dir):
    """Training's robustness check of the digit probe by step, radii as the tables write them."""
    curve = quick_check.read_curve(ModelDir(model_dir).robustness_curve_file)
    return {
        str(step): {(f"{key:g}" if isinstance(key, float) else key): value for key, value in row.items()}
        for step, row in curve.items()
    }


def _cell(accuracies):
    return " / ".join(f"{100 * accuracies[f'{eps:g}']:.1f}" for eps in EPSILONS)


def _paper_cell(values):
    return " / ".join(f"{v:g}" for v in values)


def _radius_cell(radius):
    """Median robustness radius (over the digits correct clean) of the digit and colour probes."""
    return " / ".join(
        evaluate_report.format_radius(radius[task]["median_correct"], radius[task]["max_radius"])
        for task in ("digit", "color")
    )


def _markdown(report):
    budgets = report["attack_budgets"]
    settings = report["settings"]
    arch = settings.get("arch", "conv")
    cascade = evaluate_report.is_cascade({"settings": settings["evaluation_settings"]})
    how = evaluate_report.attacks_phrase(budgets, cascade)
    searched = all(entry["robustness_radius"] for entry in report["models"].values())
    paper_table = report.get("paper")
    lines = [
        "# ColorMNIST: downstream adversarial accuracy (AVAE paper, "
        + ("Table 1)" if arch == "conv" else f"Figure 5, top row: the {arch} architecture)"),
        "",
        f"Linear probes on the frozen encoder mean, attacked end to end, {how}; "
        "accuracy in % at eps 0 / 0.1 / 0.2. "
        + (
            "*paper* is Table 1 of the AVAE paper (ColorMNIST, conv, full training; PGD). "
            if paper_table
            else "The paper reports the MLP in plots only (Figure 5, top row), so the *paper* columns are empty. "
        )
        + "*masking*: `evaluate.robustness`' gradient-masking check."
        + (
            " *radius*: the median L-inf robustness radius of the digit / colour probe over the test digits correct "
            "clean (the smallest radius at which the worst case flips the probe; bisection on a fixed random subset)."
            if searched
            else ""
        ),
        "",
        "| model | digit (here) | digit (paper) | colour (here) | colour (paper) | "
        + ("radius digit / colour | " if searched else "")
        + "masking | time (here) | time (paper) | MSE | FID |",
        "|---|---|---|---|---|" + ("---|" if searched else "") + "---|---|---|---|---|",
    ]
    for label, entry in report["models"].items():
        paper = (paper_table or {}).get(label)
        paper_digit, paper_color, paper_time = (
            (_paper_cell(paper["digit"]), _paper_cell(paper["color"]), f"x{paper['time']:g}") if paper else ("", "", "")
        )
        acc = entry["adversarial_accuracy"]
        radius = f"{_radius_cell(entry['robustness_radius'])} | " if searched else ""
        lines.append(
            f"| {label} | {_cell(acc['digit'])} | {paper_digit} | {_cell(acc['color'])} | "
            f"{paper_color} | {radius}{'**flagged**' if entry['gradient_masking']['flagged'] else 'no'}"
            f" | x{entry['time_ratio']:.2f} | {paper_time} | {entry['mse']:.4f} | {entry['fid']:.2f} |"
        )
    for label, entry in report["models"].items():
        for task, masking in entry["gradient_masking"]["by_task"].items():
            if masking["flagged"]:
                lines.append(f"\n{label}, {task}: {'; '.join(masking['reasons'])}.")
    left_out = [label for label, _, _ in MODELS if label not in report["models"]]
    if left_out:
        lines.append(f"\nNot trained in this run (`--models`): {', '.join(left_out)}.")
    lines += [
        "",
        f"FID features: {runs.describe_fid(report['fid_features'])}.",
        "",
        "## AVAE accuracy against the coupling rho (Figure 5, left)",
        "",
        "| rho | digit 0.0 / 0.1 / 0.2 | colour 0.0 / 0.1 / 0.2 |",
        "|---|---|---|",
    ]
    for rho, acc in report["rho_sweep"].items():
        lines.append(f"| {rho} | {_cell(acc['digit'])} | {_cell(acc['color'])} |")
    lines += _curve_lines(report)
    lines += [
        "",
        f"Budget: {settings['train_steps']:,} training steps of batch {settings['batch_size']} per model "
        f"({arch}, latent 64, Adam {settings.get('learning_rate', 1e-4):g}, seed {settings['seed']}); "
        f"{settings['num_examples']} test digits attacked ({settings['sweep_examples']} for the rho sweep"
        + (f"; the radius on {settings['radius_examples']}" if settings["radius_examples"] else "")
        + f"); probes trained on {settings['probe_train_examples']} training digits"
        + (
            f"; {_jobs_phrase(settings['parallel'])}, {settings['wall_clock_seconds'] / 60:.0f} minutes for the last "
            "invocation (a rerun reads back what earlier ones trained and evaluated)"
            if "parallel" in settings
            else ""
        )
        + f". The paper: {report.get('paper_settings', PAPER_SETTINGS)}. Time is the median step time relative to "
        "the VAE, each measured while that model trained (one read back from an earlier invocation keeps its own: "
        "across sessions the ratio carries the shared machine's drift; `benchmarks.train_speed` times steps side by "
        "side)"
        + (" and beside other jobs here: a rough ratio" if settings.get("parallel", 1) > 1 else "")
        + ". The attacks:",
        "",
        *[evaluate_report.describe_budget(attack, budget).rstrip("\n") for attack, budget in budgets.items()],
        "",
        f"Plots: `{_name(arch)}_accuracy_vs_epsilon.png` (Figure 5 right), `{_name(arch)}_rho_sweep.png` (Figure 5 "
        f"left), "
        + (f"`{_name(arch)}_accuracy_vs_step.png` (Figure 5 middle), " if _has_curves(report) else "")
        + f"`{_name(arch)}_chains.png` (Figure 1: encode-decode chains, VAE above, AVAE below).",
        "",
        *runs.produced_by(report["command"]),
    ]
    return "\n".join(lines)


def _jobs_phrase(parallel):
    return "one job at a time" if parallel == 1 else f"{parallel} jobs side by side"


def _has_curves(report):
    return all(entry.get("training_curve") for entry in report["models"].values())


def _curve_lines(report):
    """Figure 5's middle column as a table: training's own robustness check of every model, by step."""
    if not _has_curves(report):
        return []
    curves = {label: entry["training_curve"] for label, entry in report["models"].items()}
    radii = report["settings"]["curve_epsilons"]
    steps = sorted({int(step) for curve in curves.values() for step in curve})
    lines = [
        "",
        "## Accuracy during training (Figure 5, middle)",
        "",
        f"Training's own check (`--robustness_every`): a linear digit probe fitted on the first "
        f"{quick_check.PROBE_EXAMPLES:,} training digits, clean and L-inf PGD-{quick_check.PGD_STEPS} "
        f"accuracy on the first {quick_check.TEST_EXAMPLES} test digits (one start: a weak attack, an upper "
        "bound, like for like across models and steps). Cells: clean / "
        + " / ".join(f"eps {e:g}" for e in radii)
        + " in %. AVAE-SS's steps are post-training steps of the VAE.",
        "",
        "| step | " + " | ".join(curves) + " |",
        "|---|" + "---|" * len(curves),
    ]
    for step in steps:
        cells = []
        for curve in curves.values():
            row = curve.get(str(step))
            cells.append(
                " / ".join(f"{100 * row[key]:.1f}" for key in ("clean", *(f"{e:g}" for e in radii))) if row else ""
            )
        lines.append(f"| {step:,} | " + " | ".join(cells) + " |")
    return lines


def _plot(report, chain_pngs):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stem = os.path.join(FLAGS.output_dir, _name())
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for task, ax in zip(("digit", "color"), axes):
        for label, entry in report["models"].items():
            acc = entry["adversarial_accuracy"][task]
            ax.plot(EPSILONS, [100 * acc[f"{e:g}"] for e in EPSILONS], marker="o", label=label)
        ax.set(
            title=f"{task} task", xlabel="attack radius eps (L-inf)", ylabel="adversarial accuracy (%)", ylim=(0, 101)
        )
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(f"{stem}_accuracy_vs_epsilon.png", dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    rhos = [float(r) for r in report["rho_sweep"]]
    for task, ax in zip(("digit", "color"), axes):
        for eps in EPSILONS:
            ax.plot(
                rhos,
                [100 * report["rho_sweep"][r][task][f"{eps:g}"] for r in report["rho_sweep"]],
                marker="o",
                label=f"eps={eps}",
            )
        ax.set(title=f"AVAE, {task} task", xlabel="coupling rho", ylabel="adversarial accuracy (%)", ylim=(0, 101))
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(f"{stem}_rho_sweep.png", dpi=120)
    plt.close(fig)

    if _has_curves(report):  # Figure 5, middle: robust accuracy of the digit probe as training goes
        columns = ["clean", *(f"{eps:g}" for eps in report["settings"]["curve_epsilons"])]
        fig, axes = plt.subplots(1, len(columns), figsize=(5 * len(columns), 4), squeeze=False)
        for column, ax in zip(columns, axes[0]):
            for label, entry in report["models"].items():
                curve = entry["training_curve"]
                ax.plot(
                    [int(step) for step in curve],
                    [100 * row[column] for row in curve.values()],
                    marker="o",
                    label=label,
                )
            attack = f"training's PGD-{quick_check.PGD_STEPS} check"
            title = "clean" if column == "clean" else f"eps={column} ({attack})"
            ax.set(title=f"digit task, {title}", xlabel="training step", ylabel="accuracy (%)", ylim=(0, 101))
            ax.grid(alpha=0.3)
        axes[0][0].legend()
        fig.tight_layout()
        fig.savefig(f"{stem}_accuracy_vs_step.png", dpi=120)
        plt.close(fig)

    fig, axes = plt.subplots(len(chain_pngs), 1, figsize=(10, 4 * len(chain_pngs)), squeeze=False)
    for ax, (label, png) in zip(axes[:, 0], chain_pngs.items()):
        ax.imshow(plt.imread(png))
        ax.set_title(f"{label}: encode-decode chain (each row: a test digit, then decoder(encoder(.)) iterated)")
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(f"{stem}_chains.png", dpi=120)
    plt.close(fig)


def _parallel():
    """--parallel, or its default for --arch (results/parallel_jobs.md)."""
    if FLAGS.parallel is not None:
        return FLAGS.parallel
    return min(2, os.cpu_count() or 1) if FLAGS.arch == "mlp" else 1


def _threads():
    """TensorFlow threads of each process: the cores shared among the processes run side by side."""
    parallel = _parallel()
    return max(1, (os.cpu_count() or 1) // parallel) if parallel > 1 else None


def _chosen_models():
    """The entries of MODELS that --models names, in Table 1's order; a name not there is an error naming them."""
    labels = [label for label, _, _ in MODELS]
    unknown = [label for label in FLAGS.models if label not in labels]
    if unknown or "VAE" not in FLAGS.models:
        raise app.UsageError(
            f"--models: {', '.join(unknown) or 'VAE is missing'}; choose among {', '.join(labels)} (VAE always)"
        )
    return [model for model in MODELS if model[0] in FLAGS.models]


def _jobs(budget, work):
    """Every training and evaluation as (key, function, keys of the jobs it waits for), in order of preference."""
    threads, jobs = _threads(), []

    def train(label, name, model_flags, init_from=None, curve=False):
        """Trains `label`; init_from: the label of the model it starts from."""
        start = runs.model_dir_of(work, init_from) if init_from else None
        train_flags = _common_flags(budget, curve)
        run = functools.partial(runs.train, work, label, name, train_flags, model_flags, start, threads)
        jobs.append((f"train {label}", run, [f"train {init_from}"] if init_from else []))

    def evaluate(key, label, model_label, num_examples, stages, radius_examples):
        """Evaluates the model trained as `model_label` into eval/`label`."""
        eval_flags = _eval_flags(num_examples, budget, stages, radius_examples)
        run = functools.partial(runs.evaluate, work, label, runs.model_dir_of(work, model_label), eval_flags, threads)
        jobs.append((key, run, [f"train {model_label}"]))

    for label, name, model_flags in _chosen_models():
        train(label, name, model_flags, init_from="VAE" if name == "avae_ss" else None, curve=True)
        stages = "accuracy,decoder,chains"
        evaluate(f"eval {label}", label, label, budget["num_examples"], stages, FLAGS.radius_examples)

    def sweep_label(rho):
        """Table 1's AVAE, where it is trained, is the sweep's model at its rho (evaluated on the sweep's digits)."""
        return "AVAE" if float(rho) == dict(MODELS[3][2])["rho"] and "AVAE" in FLAGS.models else f"AVAE_rho{rho}"

    for rho in FLAGS.rhos:
        if sweep_label(rho) != "AVAE":
            train(sweep_label(rho), "avae", {"rho": rho})
    for rho in FLAGS.rhos:
        model_label = sweep_label(rho)
        evaluate(f"sweep {rho}", f"AVAE_rho{rho}", model_label, budget["sweep_examples"], "accuracy", 0)
    return jobs


def main(argv):
    del argv
    budget = _budget()
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    started = time.time()
    work = os.path.join(FLAGS.work_dir, FLAGS.arch)
    done = runs.run_jobs(_jobs(budget, work), _parallel())
    chosen = [label for label, _, _ in _chosen_models()]
    model_dirs = {label: done[f"train {label}"] for label in chosen}
    results = {label: done[f"eval {label}"][0] for label in chosen}
    eval_dirs = {label: done[f"eval {label}"][1] for label in chosen}
    rho_sweep = {rho: done[f"sweep {rho}"][0]["adversarial_accuracy"] for rho in FLAGS.rhos}
    vae_step = runs.step_seconds(model_dirs["VAE"])
    curves = {label: _training_curve(model_dirs[label]) for label in model_dirs if budget["robustness_every"]}

    first = next(iter(results.values()))
    report = {
        "models": {
            label: {
                "adversarial_accuracy": result["adversarial_accuracy"],
                "robustness_radius": result["robustness_radius"],
                "gradient_masking": result["gradient_masking"],
                "mse": result["mse"]["per_pixel"],
                "fid": result["fid"],
                "time_ratio": runs.step_seconds(model_dirs[label]) / vae_step,
                "step_seconds": runs.step_seconds(model_dirs[label]),
                "model_flags": dict(MODELS[[m[0] for m in MODELS].index(label)][2]),
                "training_curve": curves.get(label),
            }
            for label, result in results.items()
        },
        "rho_sweep": rho_sweep,
        "paper": PAPER if FLAGS.arch == "conv" else None,  # Table 1 is conv; the MLP is in Figure 5's plots only
        "paper_settings": PAPER_SETTINGS,
        "fid_features": first["fid_features"],
        "attack_budgets": first["attack_budgets"],
        "settings": {
            **{k: v for k, v in budget.items() if k != "probe"},
            "probe_train_examples": budget["probe"],
            "batch_size": FLAGS.batch_size,
            "pgd_steps": FLAGS.pgd_steps,
            "quick": FLAGS.quick,
            "radius_examples": FLAGS.radius_examples,
            "epsilons": list(EPSILONS),
            "curve_epsilons": list(CURVE_EPSILONS),
            "arch": FLAGS.arch,
            "latent_dim": 64,
            "learning_rate": FLAGS.learning_rate,
            "parallel": _parallel(),
            "seed": FLAGS.seed,
            "full": FLAGS.full,
            "wall_clock_seconds": round(time.time() - started),
            "evaluation_settings": first["settings"],
        },
        "command": runs.command_line("benchmarks.reproduce_colormnist"),
    }
    stem = os.path.join(FLAGS.output_dir, _name())
    with open(f"{stem}.json", "w") as f:
        json.dump(report, f, indent=2)
    with open(f"{stem}.md", "w") as f:
        f.write(_markdown(report))
    _plot(
        report, {label: os.path.join(eval_dirs[label], "chain.png") for label in ("VAE", "AVAE") if label in eval_dirs}
    )
    print(f"wrote {stem}.json and {stem}.md in {time.time() - started:.0f} s")


if __name__ == "__main__":
    define_flags()
    app.run(main)
