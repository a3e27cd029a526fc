"""Reproduces the AVAE paper's ColorMNIST comparison at laptop scale (Table 1, Figure 5, Figure 1).

    python -m benchmarks.reproduce_colormnist --data_dir=../shared/tfds --output_dir=results

Every model trains through its own entry point (`python -m train.<model>`) with the conv architecture,
latent 64 and the same steps and batch size, then `python -m evaluate.robustness` evaluates it: digit and
colour accuracy of linear probes on the frozen encoder mean at each radius, the worst case per example over
the project's PGD and AutoAttack's APGD-CE, targeted APGD-DLR and Square (run as AutoAttack's cascade),
the gradient-masking check, test MSE and FID, and with `--radius_examples` the median robustness radius.
`--quick`: the PGD alone.
The time ratio is the median wall-clock time of a training step (from each run's step timing) relative to
the VAE's in this run. `--full` uses the paper's budget on the whole dataset (a GPU job).

Writes `colormnist.json`, `colormnist.md` and three PNGs to --output_dir; model directories and the raw
evaluations go to --work_dir. A rerun continues: training resumes from its checkpoints, and an evaluation
already made of the same weights with the same flags is read back instead of run again (delete
<work_dir>/eval to measure again after changing the evaluation's code).
"""

import json
import os
import time

from absl import app, flags

from benchmarks import runs
from evaluate import report as evaluate_report

FLAGS = flags.FLAGS


def define_flags():
    flags.DEFINE_string("data_dir", None, "tensorflow-datasets data directory holding mnist.")
    flags.DEFINE_string("output_dir", "results", "Where colormnist.{json,md} and the plots go.")
    flags.DEFINE_string("work_dir", "/tmp/robust_zoo/reproduce_colormnist", "Model directories and raw evaluations.")
    flags.DEFINE_bool("full", False, "The paper's budget on the whole dataset (a GPU machine): overrides the sizes below.")
    flags.DEFINE_integer("train_steps", 800, "Training steps of every model (AVAE-SS: post-training steps).")
    flags.DEFINE_integer("batch_size", 64, "Batch size of every model.")
    flags.DEFINE_integer("num_examples", 250, "Test examples attacked per model.")
    flags.DEFINE_integer("pgd_steps", 40, "PGD steps of the evaluation attack.")
    flags.DEFINE_integer("restarts", 2, "PGD restarts of the evaluation attack (the paper: 10).")
    flags.DEFINE_bool("quick", False, "The project's PGD alone instead of the worst case over the attack ensemble.")
    flags.DEFINE_integer("radius_examples", 0, "Test examples whose robustness radius is searched, per model of "
                         "Table 1 (the rho sweep: none); each costs minutes on a CPU, as ART's attacks take one "
                         "radius per call.")  # fmt: skip
    flags.DEFINE_integer("sweep_examples", 200, "Test examples attacked per model of the rho sweep.")
    flags.DEFINE_list("rhos", ["0.5", "0.8", "0.9", "0.95", "0.975", "0.99"], "AVAE couplings of Figure 5 (left).")
    flags.DEFINE_integer("seed", 0, "Seed of every training run and evaluation.")


EPSILONS = (0.0, 0.1, 0.2)
# (label, registry name, model flags); AVAE-SS post-trains the VAE. Paper: rho 0.975, rho_SE 0.95, PGD-5.
MODELS = (
    ("VAE", "vae", {}),
    ("SE_0.1", "se", {"rho": 0.95, "se_epsilon": 0.1, "pgd_steps": 5}),
    ("SE_0.2", "se", {"rho": 0.95, "se_epsilon": 0.2, "pgd_steps": 5}),
    ("AVAE", "avae", {"rho": 0.975}),
    ("SE_0.1-AVAE", "se_avae", {"rho": 0.975, "rho_se": 0.95, "se_epsilon": 0.1, "pgd_steps": 5}),
    ("AVAE-SS", "avae_ss", {"rho": 0.975}),
)
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
        return dict(train_steps=100_000, num_examples=10_000, restarts=10, sweep_examples=10_000, probe=60_000)
    return dict(
        train_steps=FLAGS.train_steps,
        num_examples=FLAGS.num_examples,
        restarts=FLAGS.restarts,
        sweep_examples=FLAGS.sweep_examples,
        probe=7_000,  # every training digit of ../shared/tfds
    )


def _common_flags(budget):
    flags_ = ["--dataset=color_mnist", "--arch=conv", "--latent_dim=64", f"--batch_size={FLAGS.batch_size}",
              f"--train_steps={budget['train_steps']}", f"--checkpoint_every={min(500, budget['train_steps'])}",
              "--eval_examples=0", f"--seed={FLAGS.seed}"]  # fmt: skip
    return flags_ + ([f"--data_dir={FLAGS.data_dir}"] if FLAGS.data_dir else [])


def _eval_flags(num_examples, budget, stages, radius_examples):
    flags_ = ["--dataset=color_mnist", f"--epsilons={','.join(map(str, EPSILONS))}", f"--pgd_steps={FLAGS.pgd_steps}",
              f"--restarts={budget['restarts']}", f"--num_examples={num_examples}",
              f"--probe_train_examples={budget['probe']}", f"--stages={stages}", f"--seed={FLAGS.seed}",
              f"--radius_examples={radius_examples}", "--quick" if FLAGS.quick else "--cascade"]  # fmt: skip
    return flags_ + ([f"--data_dir={FLAGS.data_dir}"] if FLAGS.data_dir else [])


def _cell(accuracies):
    return " / ".join(f"{100 * accuracies[f'{eps:g}']:.1f}" for eps in EPSILONS)


def _paper_cell(values):
    return " / ".join(f"{v:g}" for v in values)


def _radius_cell(radius):
    """Median robustness radius (over the digits correct clean) of the digit and colour probes."""
    return " / ".join(evaluate_report.format_radius(radius[task]["median_correct"], radius[task]["max_radius"])
                      for task in ("digit", "color"))  # fmt: skip


def _markdown(report):
    budgets = report["attack_budgets"]
    settings = report["settings"]
    cascade = evaluate_report.is_cascade({"settings": settings["evaluation_settings"]})
    how = evaluate_report.attacks_phrase(budgets, cascade)
    searched = all(entry["robustness_radius"] for entry in report["models"].values())
    lines = [
        "# ColorMNIST: downstream adversarial accuracy (AVAE paper, Table 1)",
        "",
        f"Linear probes on the frozen encoder mean, attacked end to end, {how}; "
        "accuracy in % at eps 0 / 0.1 / 0.2. *paper* is Table 1 of the AVAE paper (ColorMNIST, conv, full "
        "training; PGD). *masking*: `evaluate.robustness`' gradient-masking check."
        + (" *radius*: the median L-inf robustness radius of the digit / colour probe over the test digits correct "
           "clean (the smallest radius at which the worst case flips the probe; bisection on a fixed random subset)."
           if searched else ""),
        "",
        "| model | digit (here) | digit (paper) | colour (here) | colour (paper) | "
        + ("radius digit / colour | " if searched else "") + "masking | time (here) | time (paper) | MSE | FID |",
        "|---|---|---|---|---|" + ("---|" if searched else "") + "---|---|---|---|---|",
    ]  # fmt: skip
    for label, entry in report["models"].items():
        paper = PAPER[label]
        acc = entry["adversarial_accuracy"]
        radius = f"{_radius_cell(entry['robustness_radius'])} | " if searched else ""
        lines.append(
            f"| {label} | {_cell(acc['digit'])} | {_paper_cell(paper['digit'])} | {_cell(acc['color'])} | "
            f"{_paper_cell(paper['color'])} | {radius}{'**flagged**' if entry['gradient_masking']['flagged'] else 'no'}"
            f" | x{entry['time_ratio']:.2f} | x{paper['time']:g} | {entry['mse']:.4f} | {entry['fid']:.2f} |"
        )
    for label, entry in report["models"].items():
        for task, masking in entry["gradient_masking"]["by_task"].items():
            if masking["flagged"]:
                lines.append(f"\n{label}, {task}: {'; '.join(masking['reasons'])}.")
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
    lines += [
        "",
        f"Budget: {settings['train_steps']} training steps of batch {settings['batch_size']} per model "
        f"(conv, latent 64, Adam 1e-4, seed {settings['seed']}); {settings['num_examples']} test digits attacked "
        f"({settings['sweep_examples']} for the rho sweep"
        + (f"; the radius on {settings['radius_examples']}" if settings["radius_examples"] else "")
        + f"); probes trained on {settings['probe_train_examples']} training digits. Time is the median step time "
        "relative to the VAE, measured in this run. The attacks:",
        "",
        *[evaluate_report.describe_budget(attack, budget).rstrip("\n") for attack, budget in budgets.items()],
        "",
        "Plots: `colormnist_accuracy_vs_epsilon.png` (Figure 5 right), `colormnist_rho_sweep.png` "
        "(Figure 5 left), `colormnist_chains.png` (Figure 1: encode-decode chains, VAE above, AVAE below).",
        "",
        *runs.produced_by(report["command"]),
    ]
    return "\n".join(lines)


def _plot(report, chain_pngs):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = FLAGS.output_dir
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for task, ax in zip(("digit", "color"), axes):
        for label, entry in report["models"].items():
            acc = entry["adversarial_accuracy"][task]
            ax.plot(EPSILONS, [100 * acc[f"{e:g}"] for e in EPSILONS], marker="o", label=label)
        ax.set(title=f"{task} task", xlabel="attack radius eps (L-inf)", ylabel="adversarial accuracy (%)", ylim=(0, 101))
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "colormnist_accuracy_vs_epsilon.png"), dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    rhos = [float(r) for r in report["rho_sweep"]]
    for task, ax in zip(("digit", "color"), axes):
        for eps in EPSILONS:
            ax.plot(rhos, [100 * report["rho_sweep"][r][task][f"{eps:g}"] for r in report["rho_sweep"]], marker="o",
                    label=f"eps={eps}")  # fmt: skip
        ax.set(title=f"AVAE, {task} task", xlabel="coupling rho", ylabel="adversarial accuracy (%)", ylim=(0, 101))
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "colormnist_rho_sweep.png"), dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(len(chain_pngs), 1, figsize=(10, 4 * len(chain_pngs)))
    for ax, (label, png) in zip(axes, chain_pngs.items()):
        ax.imshow(plt.imread(png))
        ax.set_title(f"{label}: encode-decode chain (each row: a test digit, then decoder(encoder(.)) iterated)")
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "colormnist_chains.png"), dpi=120)
    plt.close(fig)


def main(argv):
    del argv
    budget = _budget()
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    started = time.time()
    model_dirs, results, eval_dirs = {}, {}, {}
    work = FLAGS.work_dir
    for label, name, model_flags in MODELS:
        init_from = model_dirs["VAE"] if name == "avae_ss" else None
        model_dirs[label] = runs.train(work, label, name, _common_flags(budget), model_flags, init_from)
        eval_flags = _eval_flags(budget["num_examples"], budget, "accuracy,decoder,chains", FLAGS.radius_examples)
        results[label], eval_dirs[label] = runs.evaluate(work, label, model_dirs[label], eval_flags)
    vae_step = runs.step_seconds(model_dirs["VAE"])
    rho_sweep = {}
    for rho in FLAGS.rhos:
        label = f"AVAE_rho{rho}"
        if float(rho) == MODELS[3][2]["rho"]:
            model_dir = model_dirs["AVAE"]
        else:
            model_dir = runs.train(work, label, "avae", _common_flags(budget), {"rho": rho})
        result, _ = runs.evaluate(work, label, model_dir, _eval_flags(budget["sweep_examples"], budget, "accuracy", 0))
        rho_sweep[rho] = result["adversarial_accuracy"]

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
            }
            for label, result in results.items()
        },
        "rho_sweep": rho_sweep,
        "paper": PAPER,
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
            "arch": "conv",
            "latent_dim": 64,
            "learning_rate": 1e-4,
            "seed": FLAGS.seed,
            "full": FLAGS.full,
            "wall_clock_seconds": round(time.time() - started),
            "evaluation_settings": first["settings"],
        },
        "command": runs.command_line("benchmarks.reproduce_colormnist"),
    }
    with open(os.path.join(FLAGS.output_dir, "colormnist.json"), "w") as f:
        json.dump(report, f, indent=2)
    with open(os.path.join(FLAGS.output_dir, "colormnist.md"), "w") as f:
        f.write(_markdown(report))
    _plot(report, {label: os.path.join(eval_dirs[label], "chain.png") for label in ("VAE", "AVAE")})
    print(f"wrote {FLAGS.output_dir}/colormnist.json and colormnist.md in {time.time() - started:.0f} s")


if __name__ == "__main__":
    define_flags()
    app.run(main)
