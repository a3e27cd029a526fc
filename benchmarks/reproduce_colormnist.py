"""Reproduces the AVAE paper's ColorMNIST comparison at laptop scale (Table 1, Figure 5, Figure 1): the report on
top of the study runner.

    python -m benchmarks.reproduce_colormnist [--models=VAE,AVAE] [--rhos=0.9,0.975] [--runs_dir=runs]

Its runs are two studies (`train.study`): Table 1, `configs/colormnist_table1` (the six models with the same
architecture, latent 64, steps, batch size and learning rate, logging training's robustness check as they go;
AVAE-SS post-trains the VAE), and the AVAE's rho sweep of Figure 5 (left), `configs/colormnist_rho_sweep` (Table 1's
AVAE but for rho, without the check; its AVAE at Table 1's rho is a run of its own). This program runs both through
the runner, in process (`train.study.run_study`: each run trained into `<runs_dir>/<study>/<run>`, evaluated into the
study's `output_dir/<run>`, results/colormnist_table1 and results/colormnist_rho_sweep, with the study's comparison
beside), then reads what they wrote: each model's evaluation (digit and colour accuracy of linear probes on the
frozen encoder mean at each radius, the worst case per example over the project's PGD and AutoAttack's cascade,
the gradient-masking check, test MSE and FID, the chains), its step timing (the time ratio: the median wall-clock
time of a training step relative to the VAE's) and its training curve (Figure 5, middle), and writes them beside
the paper's numbers. What is trained and how it is evaluated is the studies' data: their run configs and
study.json. A rerun continues: training resumes from its checkpoints (raise train_steps in the run configs to
grow the budget), and an evaluation of the same weights with the same settings is read back.

Figure 5's top row, the MLP at the public reference's 102,000 steps, is the pair of studies `configs/colormnist_mlp`
and `configs/colormnist_mlp_rho_sweep`:

    python -m benchmarks.reproduce_colormnist --study=configs/colormnist_mlp --sweep_study=configs/colormnist_mlp_rho_sweep

The paper's whole budget (100,000 conv steps on the whole dataset, PGD with 10 restarts on 10,000 test digits;
`--full` before) is no study: copy configs/colormnist_table1 and raise its budgets for a GPU machine. Runs go one
after the other in this process (no `--parallel`). The settings are those the project's ablations found
(results/avae_plateau.md, results/mlp_learning_rate.md, results/delusion.md); the markdown names the paper's beside
them.

Writes `colormnist.json`, `colormnist.md` and four PNGs to --output_dir (`colormnist_mlp*` for the MLP).
"""

import functools
import os

from zoo import console

console.quiet_tensorflow()  # before anything loads TensorFlow

from absl import app, flags  # noqa: E402

from benchmarks import runs  # noqa: E402
from evaluate import quick_check  # noqa: E402
from evaluate import report as evaluate_report  # noqa: E402
from train import study as studies  # noqa: E402
from zoo.model_dir import ModelDir  # noqa: E402

FLAGS = flags.FLAGS
TABLE_1_STUDY = os.path.join("configs", "colormnist_table1")
RHO_SWEEP_STUDY = os.path.join("configs", "colormnist_rho_sweep")
REFERENCE = "VAE"  # the time ratios are relative to it, and AVAE-SS post-trains it


def define_flags():
    flags.DEFINE_string(
        "study", TABLE_1_STUDY, "Table 1's study (Figure 5's top row: configs/colormnist_mlp), run by train.study."
    )
    flags.DEFINE_string(
        "sweep_study",
        RHO_SWEEP_STUDY,
        "The AVAE's rho sweep (Figure 5, left; the MLP's: configs/colormnist_mlp_rho_sweep), run by train.study.",
    )
    flags.DEFINE_list(
        "models",
        [],
        "Table 1's runs to train and evaluate (default: all); VAE is always one, as AVAE-SS post-trains it and "
        "the time ratios are relative to it.",
    )
    flags.DEFINE_list("rhos", [], "The rho sweep's couplings to train and evaluate (default: all of its runs).")
    runs.define_report_flags("colormnist.{json,md} and the plots")


EPSILONS = (0.0, 0.1, 0.2)  # the radii of the paper's Table 1, which both studies must evaluate
TABLE_STAGES = ("accuracy", "decoder")  # what the table quotes (chains: Figure 1, when evaluated)
# The paper's settings that differ from or are not in the table's run (appendix F, the public reference).
PAPER_SETTINGS = (
    "Adam 1e-4, 100,000 steps (the MLP: 102,000) on 60,000 training digits, probes on the whole "
    "training set, PGD-40 with 10 restarts on 10,000 test digits"
)
# The paper's Table 1 (ColorMNIST, conv), by the study's run names: accuracy in % at eps 0 / 0.1 / 0.2, time
# relative to the VAE. Paper: rho 0.975, rho_SE 0.95, PGD-5.
PAPER = {
    "VAE": {"digit": (93.8, 5.8, 0.0), "color": (100, 19.9, 2.0), "time": 1},
    "SE_0.1": {"digit": (94.3, 89.6, 1.8), "color": (100, 100, 21.8), "time": 4},
    "SE_0.2": {"digit": (95.7, 92.6, 87.3), "color": (100, 99.9, 99.9), "time": 4},
    "AVAE": {"digit": (97.3, 88.1, 54.8), "color": (100, 99.8, 87.7), "time": 1.5},
    "SE_0.1-AVAE": {"digit": (97.4, 93.6, 24.5), "color": (100, 100, 60.0), "time": 4.7},
    "AVAE-SS": {"digit": (94.1, 72.8, 20.8), "color": (100, 99.6, 56.8), "time": 1.5},
}


def _name(arch):
    """The results' file stem: Table 1 (conv) is colormnist, Figure 5's top row colormnist_mlp."""
    return "colormnist" if arch == "conv" else f"colormnist_{arch}"


def _rho(run):
    return f"{float(run.options['rho']):g}"


def check(table, sweep):
    """Raises StudyError (one sentence) when the two studies cannot make the report: what it quotes must be
    evaluated, at the paper's radii, and every run of the sweep must set its rho."""
    for study, needed in ((table, TABLE_STAGES), (sweep, ("accuracy",))):
        runs.require_stages(study, needed)
        runs.require_values(study, "accuracy", "epsilons", EPSILONS, "eps")
    if REFERENCE not in [run.name for run in table.runs]:
        raise studies.StudyError(f"study {table.name} has no run {REFERENCE}, the time ratios' reference")
    unset = [run.name for run in sweep.runs if "rho" not in run.options]
    if unset:
        raise studies.StudyError(f"the rho sweep {sweep.name} has runs that set no rho: {', '.join(unset)}")


def choose(table, sweep, models=(), rhos=()):
    """(Table 1's runs named in `models`, the sweep's runs at `rhos`), each default all, in their studies' order;
    raises StudyError naming the choices."""
    chosen = studies.select(table, models)
    if REFERENCE not in [run.name for run in chosen]:
        raise studies.StudyError(
            f"--models must include {REFERENCE} (AVAE-SS post-trains it, the time ratios are relative to it)"
        )
    by_rho = {_rho(run): run for run in sweep.runs}
    try:
        wanted = [f"{float(rho):g}" for rho in rhos]
    except ValueError:
        raise studies.StudyError(f"--rhos must be numbers, got {', '.join(rhos)}") from None
    unknown = [rho for rho in wanted if rho not in by_rho]
    if unknown:
        raise studies.StudyError(
            f"the rho sweep {sweep.name} has no run at rho {', '.join(unknown)}; its couplings: {', '.join(by_rho)}"
        )
    swept = [run for run in sweep.runs if not wanted or _rho(run) in wanted]
    return chosen, tuple(sorted(swept, key=lambda run: float(run.options["rho"])))


def _in_table_order(runs_):
    """Table 1's order (the paper's), then any other run in the study's order."""
    return sorted(runs_, key=lambda run: list(PAPER).index(run.name) if run.name in PAPER else len(PAPER))


def reproduce(table, sweep, models=(), rhos=(), **where):
    """Runs the chosen runs of both studies with the study runner (train, evaluate, each study's comparison), then
    writes the report from what they wrote; returns the report (what `<output_dir>/colormnist*.json` holds).
    `where`: `runs.report_on_studies`' command (recorded in the report), runs_dir, output_dir, evaluations_dir, log."""
    check(table, sweep)
    table_runs, sweep_runs = choose(table, sweep, models, rhos)
    chosen = [(table, table_runs), (sweep, sweep_runs)]
    read = functools.partial(read_report, table, sweep, table_runs, sweep_runs)
    return runs.report_on_studies(chosen, read, write, **where)


def read_report(table, sweep, table_runs, sweep_runs, runs_dir=studies.RUNS_DIR, evaluations_dir=None):
    """The report from what the runner wrote: the model directories (step timing, training curve, the settings
    each trained with) and the evaluations of both studies."""
    model_dirs = {run.name: ModelDir(studies.model_dir_of(table, run, runs_dir)) for run in table_runs}
    evaluations = {run.name: os.path.join(runs.evaluations_of(table, evaluations_dir), run.name) for run in table_runs}
    results = {name: ModelDir(path).read_robustness() for name, path in evaluations.items()}
    sweep_dir = runs.evaluations_of(sweep, evaluations_dir)
    sweep_results = {_rho(run): ModelDir(os.path.join(sweep_dir, run.name)).read_robustness() for run in sweep_runs}
    step_seconds = {name: runs.step_seconds(directory) for name, directory in model_dirs.items()}
    trained = model_dirs[REFERENCE].read_flags()  # every setting the VAE trained with
    evaluated = results[REFERENCE]["settings"]
    models = {}
    for run in _in_table_order(table_runs):
        result, directory = results[run.name], model_dirs[run.name]
        models[run.name] = {
            "adversarial_accuracy": result["adversarial_accuracy"],
            "robustness_radius": result["robustness_radius"],
            "gradient_masking": result["gradient_masking"],
            "mse": result["mse"]["per_pixel"],
            "fid": result["fid"],
            "time_ratio": step_seconds[run.name] / step_seconds[REFERENCE],
            "step_seconds": step_seconds[run.name],
            "model_flags": runs.hyperparameters(run),
            "training_curve": _training_curve(directory) if os.path.exists(directory.robustness_curve_file) else None,
            "model_dir": directory.path,
            "evaluation": evaluations[run.name],
        }
    arch = trained["arch"]
    return {
        "models": models,
        "rho_sweep": {rho: result["adversarial_accuracy"] for rho, result in sweep_results.items()},
        "paper": PAPER if arch == "conv" else None,  # Table 1 is conv; the MLP is in Figure 5's plots only
        "paper_settings": PAPER_SETTINGS,
        "fid_features": results[REFERENCE]["fid_features"],
        "attack_budgets": results[REFERENCE]["attack_budgets"],
        "studies": {
            "table": {"path": table.path, "runs": [run.name for run in _in_table_order(table.runs)]},
            "rho_sweep": {"path": sweep.path, "runs": [run.name for run in sweep.runs]},
        },
        "settings": {
            "train_steps": trained["train_steps"],
            "batch_size": trained["batch_size"],
            "learning_rate": trained["learning_rate"],
            "seed": trained["seed"],
            "arch": arch,
            "latent_dim": trained["latent_dim"],
            "robustness_every": trained["robustness_every"],
            "curve_epsilons": [float(eps) for eps in trained["robustness_epsilons"].split(",")],
            "num_examples": evaluated["num_examples"],
            "sweep_examples": next(iter(sweep_results.values()))["settings"]["num_examples"],
            "pgd_steps": evaluated["pgd_steps"],
            "restarts": evaluated["restarts"],
            "quick": evaluated["quick"],
            "radius_examples": evaluated["radius_examples"],
            "probe_train_examples": evaluated["probe_train_examples"],
            "epsilons": list(EPSILONS),
            "evaluation_settings": evaluated,
        },
    }


def write(report, output_dir):
    """colormnist*.json, .md and the plots in output_dir; returns the files written."""
    stem = os.path.join(output_dir, _name(report["settings"]["arch"]))
    written = runs.write_results(report, _markdown(report), stem)
    chains = {
        label: os.path.join(report["models"][label]["evaluation"], "chain.png")
        for label in ("VAE", "AVAE")
        if label in report["models"]
    }
    return [*written, *_plot(report, {k: v for k, v in chains.items() if os.path.exists(v)}, stem)]


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
    table_study = report["studies"]["table"]
    left_out = [label for label in table_study["runs"] if label not in report["models"]]
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
        f"({arch}, latent {settings.get('latent_dim', 64)}, Adam {settings.get('learning_rate', 1e-4):g}, "
        f"seed {settings['seed']}); "
        f"{settings['num_examples']} test digits attacked ({settings['sweep_examples']} for the rho sweep"
        + (f"; the radius on {settings['radius_examples']}" if settings["radius_examples"] else "")
        + f"); probes trained on {settings['probe_train_examples']} training digits"
        + (
            f"; {settings['wall_clock_seconds'] / 60:.0f} minutes for the last invocation, one run after the "
            "other (a rerun reads back what earlier ones trained and evaluated)"
            if "wall_clock_seconds" in settings
            else ""
        )
        + f". The paper: {report.get('paper_settings', PAPER_SETTINGS)}. Time is the median step time relative to "
        "the VAE, each measured while that model trained (one read back from an earlier invocation keeps its own: "
        "across sessions the ratio carries the shared machine's drift; `benchmarks.train_speed` times steps side by "
        "side). The attacks:",
        "",
        *[evaluate_report.describe_budget(attack, budget).rstrip("\n") for attack, budget in budgets.items()],
        "",
        f"Plots: `{_name(arch)}_accuracy_vs_epsilon.png` (Figure 5 right), `{_name(arch)}_rho_sweep.png` (Figure 5 "
        f"left), "
        + (f"`{_name(arch)}_accuracy_vs_step.png` (Figure 5 middle), " if _has_curves(report) else "")
        + f"`{_name(arch)}_chains.png` (Figure 1: encode-decode chains, VAE above, AVAE below).",
        "",
        f"Runs: the studies `{table_study['path']}` (Table 1) and `{report['studies']['rho_sweep']['path']}` (the "
        "rho sweep), their run configs and study.json, trained and evaluated by the study runner (`train.study`), "
        "each study's comparison beside its evaluations.",
        "",
        *runs.produced_by(report["command"]),
    ]
    return "\n".join(lines)


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


def _plot(report, chain_pngs, stem):
    """The plots of Figure 5 (right, left, middle) and Figure 1 (the chains of `chain_pngs`, {label: png}) as
    <stem>_*.png; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
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
    written.append(f"{stem}_accuracy_vs_epsilon.png")
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
    written.append(f"{stem}_rho_sweep.png")
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
        written.append(f"{stem}_accuracy_vs_step.png")
        plt.close(fig)

    if not chain_pngs:  # the chains stage was not run
        return written
    fig, axes = plt.subplots(len(chain_pngs), 1, figsize=(10, 4 * len(chain_pngs)), squeeze=False)
    for ax, (label, png) in zip(axes[:, 0], chain_pngs.items()):
        ax.imshow(plt.imread(png))
        ax.set_title(f"{label}: encode-decode chain (each row: a test digit, then decoder(encoder(.)) iterated)")
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(f"{stem}_chains.png", dpi=120)
    plt.close(fig)
    return [*written, f"{stem}_chains.png"]


def main(argv):
    def make_report(**where):
        table, sweep = studies.read_study(FLAGS.study), studies.read_study(FLAGS.sweep_study)
        reproduce(table, sweep, FLAGS.models, FLAGS.rhos, **where)  # checks both studies and the choice of runs first

    runs.main_of_report(argv, "benchmarks.reproduce_colormnist", make_report)


if __name__ == "__main__":
    define_flags()
    app.run(main)
