"""Reproduces the robust GMM-DAE paper's MNIST comparison at laptop scale (its Tables 1, 2 and 3): the report on top
of the study runner.

    python -m benchmarks.reproduce_attacks [--models=vae,robust_gmm_dae] [--runs_dir=runs]

Its runs are the study `configs/gmm_dae_attacks` (`train.study`): VAE, beta-VAE, beta-TCVAE, Lipschitz VAE, SE, AVAE,
GMM-DAE, the "Augmented" ablation and the robust GMM-DAE on MNIST, each a run named by its model (`vae`, ...,
`robust_gmm_dae`; the tables use the paper's names, `LABELS`), with the same architecture (fully connected, as the
paper uses for MNIST), latent dimension, steps, batch size, learning rate and seed. Its study.json evaluates each: the
latent-space and maximum-damage attacks (L2 PGD, lambda 1, 3, 5, 100 random test images x 10 trials), MS-SSIM as in
the paper's Table 1, FID, and the downstream classifier clean and under the latent attack (Table 3; ours is the
evaluation's linear probe on the encoder mean, the paper's an MLP). This program runs the study through the runner,
in process (`train.study.run_study`: each run trained into `<runs_dir>/gmm_dae_attacks/<run>`, evaluated into the
study's output_dir/<run>, results/gmm_dae_attacks, with the study's comparison beside), then reads what it wrote
(each run's evaluation, its step timing and the settings it trained with) and writes it beside the paper's numbers.
What is trained and how it is evaluated is the study's data: its run configs and study.json. A rerun continues:
training resumes from its checkpoints (raise train_steps in the run configs to grow the budget), and an evaluation of
the same weights with the same settings is read back.

Writes `attacks.json`, `attacks.md` and `attacks_ms_ssim.png` to --output_dir.
"""

import functools
import os

from zoo import console

console.quiet_tensorflow()  # before anything loads TensorFlow

from absl import app, flags  # noqa: E402

from benchmarks import runs  # noqa: E402
from train import study as studies  # noqa: E402
from zoo.model_dir import ModelDir  # noqa: E402

FLAGS = flags.FLAGS
STUDY = os.path.join("configs", "gmm_dae_attacks")


def define_flags():
    flags.DEFINE_string("study", STUDY, "The study of the compared models (run configs and study.json).")
    flags.DEFINE_list("models", [], "The study's runs to train and evaluate (default: all), e.g. vae,robust_gmm_dae.")
    runs.define_report_flags("attacks.{json,md} and the plot")


LAMBDAS = (1.0, 3.0, 5.0)  # the paper's L2 radii, which the study must evaluate
STAGES = ("accuracy", "decoder", "ae_attacks")  # what the tables quote: the probe, FID, the attacks
# What every run must share: the tables compare models trained alike (the budget line says it once).
TRAINED_ALIKE = ("dataset", "data_dir", "arch", "latent_dim", "batch_size", "learning_rate", "train_steps", "seed")
# The paper's model names, by the study's run names (each run is named by its model), in the paper's order. The
# paper does not give its hyper-parameters here; the run configs' are the zoo's defaults: beta 4, Lipschitz constant
# 10, SE rho 0.95 at L-inf 0.1 with PGD-5, AVAE rho 0.975, GMM-DAE 10 modes, FGSM radius 0.1, coupling alpha 0.9.
LABELS = {
    "vae": "VAE",
    "beta_vae": "beta-VAE",
    "beta_tcvae": "beta-TCVAE",
    "lipschitz_vae": "LipschitzVAE",
    "se": "SE",
    "avae": "AVAE",
    "gmm_dae": "GMM-DAE",
    "augmented_gmm_dae": "Augmented",
    "robust_gmm_dae": "Robust GMM-DAE",
}
NETWORKS = {"mlp": "fully connected networks (4 x 200)"}  # how the budget line names an architecture


def _paper_row(latent_ref_vs_adv_recon, max_damage_recon, fid, clean_accuracy=None, latent_attack_accuracy=None):
    """One of the paper's MNIST rows (as attacks.json holds it); Table 3's accuracies only for the models it lists."""
    row = {"latent_ref_vs_adv_recon": list(latent_ref_vs_adv_recon), "max_damage_recon": list(max_damage_recon)}
    row["fid"] = fid
    if clean_accuracy is not None:
        row.update(clean_accuracy=clean_accuracy, latent_attack_accuracy=latent_attack_accuracy)
    return row


# The paper's MNIST rows, by its model names: Table 1 (MS-SSIM at lambda 1/3/5, FID), Table 2 (ablation), Table 3
# (lambda 1).
PAPER = {
    "VAE": _paper_row((0.55, 0.78, 0.89), (0.64, 0.27, 0.08), 43.21, 92.16, 58.85),
    "beta-VAE": _paper_row((0.52, 0.73, 0.86), (0.65, 0.36, 0.22), 42.72),
    "beta-TCVAE": _paper_row((0.53, 0.69, 0.83), (0.73, 0.38, 0.28), 45.61, 93.02, 61.06),
    "LipschitzVAE": _paper_row((0.50, 0.68, 0.79), (0.75, 0.41, 0.33), 59.45, 90.78, 62.00),
    "SE": _paper_row((0.49, 0.62, 0.68), (0.90, 0.60, 0.54), 47.34, 93.81, 68.65),
    "AVAE": _paper_row((0.49, 0.59, 0.62), (0.80, 0.65, 0.59), 48.47),
    "GMM-DAE": _paper_row((0.54, 0.70, 0.82), (0.75, 0.37, 0.30), 38.89),
    "Augmented": _paper_row((0.47, 0.59, 0.71), (0.79, 0.56, 0.54), 40.16),
    "Robust GMM-DAE": _paper_row((0.38, 0.47, 0.60), (0.92, 0.82, 0.69), 39.37, 96.08, 91.78),
}


def label(run):
    """The run's name in the tables: the paper's name of its model, or the run's own name."""
    return LABELS.get(run.name, run.name)


def _in_paper_order(runs_):
    """The paper's order, then any other run in the study's order."""
    return sorted(runs_, key=lambda run: list(LABELS).index(run.name) if run.name in LABELS else len(LABELS))


def check(study):
    """Raises StudyError (one sentence) when the study cannot make the report: what it quotes must be evaluated, at
    the paper's lambdas, and its runs trained alike."""
    runs.require_stages(study, STAGES)
    runs.require_values(study, "ae_attacks", "lambdas", LAMBDAS, "lambda")
    differing = [key for key in TRAINED_ALIKE if len({repr(run.options.get(key)) for run in study.runs}) > 1]
    if differing:
        raise studies.StudyError(
            f"the runs of study {study.name} differ in {', '.join(differing)}: the tables compare models trained alike"
        )


def reproduce(study, models=(), **where):
    """Runs the study's runs named in `models` (default all) with the study runner (train, evaluate, the study's
    comparison), then writes the report from what they wrote; returns the report (what `attacks.json` holds).
    `where`: `runs.report_on_studies`' command (recorded in the report), runs_dir, output_dir, evaluations_dir, log."""
    check(study)
    chosen = studies.select(study, models)
    return runs.report_on_studies([(study, chosen)], functools.partial(read_report, study, chosen), write, **where)


def read_report(study, chosen, runs_dir=studies.RUNS_DIR, evaluations_dir=None):
    """The report from what the runner wrote: each chosen run's evaluation, its model directory (step timing, the
    settings it trained with) and its hyper-parameters, under the paper's names."""
    evaluations = runs.evaluations_of(study, evaluations_dir)
    models, results = {}, []
    for run in _in_paper_order(chosen):
        model_dir = studies.model_dir_of(study, run, runs_dir)
        evaluation = os.path.join(evaluations, run.name)
        results.append(ModelDir(evaluation).read_robustness())
        models[label(run)] = dict(
            _summary(results[-1]),
            model_flags=runs.hyperparameters(run),
            step_seconds=runs.step_seconds(model_dir),
            run=run.name,
            model_dir=model_dir,
            evaluation=evaluation,
        )
    trained = ModelDir(next(iter(models.values()))["model_dir"]).read_flags()  # alike for every run: `check`
    evaluated = results[0]["settings"]
    return {
        "models": models,
        "paper": PAPER,
        "fid_features": results[0]["fid_features"],
        "study": {"path": study.path, "runs": {run.name: label(run) for run in _in_paper_order(study.runs)}},
        "settings": {
            **{key: trained[key] for key in TRAINED_ALIKE},
            "lambdas": list(LAMBDAS),
            **{key: evaluated[key] for key in ("pgd_steps", "restarts", "ae_attack_examples", "ae_attack_trials")},
            "num_examples": evaluated["num_examples"],
            "evaluation_settings": evaluated,
        },
    }


def write(report, output_dir):
    """attacks.json, attacks.md and attacks_ms_ssim.png in output_dir; returns the files written."""
    stem = os.path.join(output_dir, "attacks")
    written = runs.write_results(report, _markdown(report), stem)
    _plot(report, f"{stem}_ms_ssim.png")
    return [*written, f"{stem}_ms_ssim.png"]


def _by_lambda(attack, metric):
    return [attack["by_lambda"][f"{lam:g}"][metric]["mean"] for lam in LAMBDAS]


def _summary(result):
    latent, damage = result["latent_attack"], result["max_damage_attack"]
    downstream = latent.get("downstream_accuracy") or {}
    return {
        "latent_attack": {
            "loss": _by_lambda(latent, "loss"),
            "ms_ssim_ref_vs_adv_recon": _by_lambda(latent, "ms_ssim_ref_vs_adv_recon"),
            "ms_ssim_input_vs_adv_input": _by_lambda(latent, "ms_ssim_input_vs_adv_input"),
        },
        "max_damage_attack": {
            "loss": _by_lambda(damage, "loss"),
            "ms_ssim_ref_recon_vs_adv_recon": _by_lambda(damage, "ms_ssim_ref_recon_vs_adv_recon"),
            "ms_ssim_input_vs_adv_input": _by_lambda(damage, "ms_ssim_input_vs_adv_input"),
        },
        "clean_accuracy": downstream.get("clean"),
        "latent_attack_accuracy": downstream.get("by_lambda"),
        "fid": result["fid"],
        "fid_reconstructions": result["fid_reconstructions"],
        "mse": result["mse"]["per_pixel"],
    }


def _triple(values):
    return " / ".join(f"{v:.2f}" for v in values)


def _percent(value):
    return "n/a" if value is None else f"{100 * value:.1f}"


def _fid(entry):
    """FID of prior samples, or of reconstructions (marked) for a model without a prior to sample."""
    if entry["fid"] is not None:
        return f"{entry['fid']:.1f}"
    return "n/a" if entry["fid_reconstructions"] is None else f"{entry['fid_reconstructions']:.1f} (rec.)"


def _markdown(report):
    lines = [
        "# MNIST: attacks on the autoencoder (robust GMM-DAE paper, Tables 1-3)",
        "",
        "MS-SSIM at lambda = 1 / 3 / 5 (L2 radius of the perturbation). Latent-space attack: MS-SSIM(x_r, x~_a)",
        "between the target image and the reconstruction of the attacked input (lower: the attack failed more).",
        "Maximum-damage attack: MS-SSIM(x~_r, x~_a) between the clean and the attacked reconstruction (higher:",
        "more robust). *paper* is the paper's MNIST row.",
        "",
        "| model | latent MS-SSIM(x_r, x~_a) here | paper | max-damage MS-SSIM(x~_r, x~_a) here | paper | "
        "MS-SSIM(x, x_a) latent / max-damage (lambda 1) | FID here (paper) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, entry in report["models"].items():
        paper = report["paper"].get(name)
        lines.append(
            f"| {name} | {_triple(entry['latent_attack']['ms_ssim_ref_vs_adv_recon'])} | "
            f"{_triple(paper['latent_ref_vs_adv_recon']) if paper else 'n/a'} | "
            f"{_triple(entry['max_damage_attack']['ms_ssim_ref_recon_vs_adv_recon'])} | "
            f"{_triple(paper['max_damage_recon']) if paper else 'n/a'} | "
            f"{entry['latent_attack']['ms_ssim_input_vs_adv_input'][0]:.2f} / "
            f"{entry['max_damage_attack']['ms_ssim_input_vs_adv_input'][0]:.2f} | "
            f"{_fid(entry)} ({paper['fid'] if paper else 'n/a'}) |"
        )
    lines += [
        "",
        "## Downstream classifier, clean and under the latent-space attack at lambda = 1 (Table 3)",
        "",
        "| model | clean accuracy here (paper) | under latent attack here (paper) |",
        "|---|---|---|",
    ]
    for name, entry in report["models"].items():
        paper = report["paper"].get(name) or {}
        under = (entry["latent_attack_accuracy"] or {}).get("1")
        lines.append(
            f"| {name} | {_percent(entry['clean_accuracy'])} ({paper.get('clean_accuracy', 'n/a')}) | "
            f"{_percent(under)} ({paper.get('latent_attack_accuracy', 'n/a')}) |"
        )
    left_out = [name for name in report["study"]["runs"].values() if name not in report["models"]]
    if left_out:
        lines += ["", f"Not trained in this run (`--models`): {', '.join(left_out)}."]
    s = report["settings"]
    lines += [
        "",
        f"FID features: {runs.describe_fid(report['fid_features'])}. '(rec.)': a model without a prior to sample",
        "from; its FID is of reconstructions (`fid_reconstructions` in the JSON).",
        "",
        f"Budget: {s['train_steps']} steps of batch {s['batch_size']} per model, "
        f"{NETWORKS.get(s['arch'], s['arch'] + ' networks')}, latent {s['latent_dim']}, Adam {s['learning_rate']:g}, "
        f"seed {s['seed']}, on the {s['dataset']} training images of {s['data_dir']}; attacks: L2 PGD-{s['pgd_steps']} "
        f"with {s['restarts']} restart(s), {s['ae_attack_examples']} random test images x {s['ae_attack_trials']} "
        "trials per lambda.",
        "",
        f"Runs: the study `{report['study']['path']}` (a run per model, named by it), its run configs and study.json, "
        "trained and evaluated by the study runner (`train.study`), its comparison beside its evaluations.",
        "",
        *runs.produced_by(report["command"]),
    ]
    return "\n".join(lines)


def _plot(report, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, entry in report["models"].items():
        axes[0].plot(LAMBDAS, entry["latent_attack"]["ms_ssim_ref_vs_adv_recon"], marker="o", label=name)
        axes[1].plot(LAMBDAS, entry["max_damage_attack"]["ms_ssim_ref_recon_vs_adv_recon"], marker="o", label=name)
    axes[0].set(title="latent-space attack (lower: more robust)", xlabel="lambda (L2)", ylabel="MS-SSIM(x_r, x~_a)")
    axes[1].set(title="maximum-damage attack (higher: more robust)", xlabel="lambda (L2)", ylabel="MS-SSIM(x~_r, x~_a)")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv):
    # Checks the study and the choice of runs before any training.
    runs.main_of_report(
        argv,
        "benchmarks.reproduce_attacks",
        lambda **where: reproduce(studies.read_study(FLAGS.study), FLAGS.models, **where),
    )


if __name__ == "__main__":
    define_flags()
    app.run(main)
