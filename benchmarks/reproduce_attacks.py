"""Reproduces the robust GMM-DAE paper's MNIST comparison at laptop scale (its Tables 1, 2 and 3).

    python -m benchmarks.reproduce_attacks --data_dir=../shared/tfds --output_dir=results

Trains VAE, beta-VAE, beta-TCVAE, Lipschitz VAE, SE, AVAE, GMM-DAE, the "Augmented" ablation and the
robust GMM-DAE on MNIST with the same architecture (fully connected, as the paper uses for MNIST), steps
and batch size, each through `python -m train.<model>`; then `python -m evaluate.robustness` runs the
latent-space and maximum-damage attacks (L2 PGD, lambda 1, 3, 5, 100 random test images x 10 trials),
MS-SSIM as in the paper's Table 1, FID, and the downstream classifier clean and under the latent attack
(Table 3; ours is the evaluation's linear probe on the encoder mean, the paper's an MLP).

Writes `attacks.json`, `attacks.md` and `attacks_ms_ssim.png` to --output_dir.
"""

import json
import os
import time

from absl import app, flags

from benchmarks import runs

FLAGS = flags.FLAGS


def define_flags():
    flags.DEFINE_string("data_dir", None, "tensorflow-datasets data directory holding mnist.")
    flags.DEFINE_string("output_dir", "results", "Where attacks.{json,md} and the plot go.")
    flags.DEFINE_string("work_dir", "/tmp/robust_zoo/reproduce_attacks", "Model directories and raw evaluations.")
    flags.DEFINE_integer("train_steps", 2000, "Training steps of every model.")
    flags.DEFINE_integer("batch_size", 64, "Batch size of every model.")
    flags.DEFINE_integer("latent_dim", 16, "Latent dimension of every model.")
    flags.DEFINE_integer("pgd_steps", 40, "L2 PGD steps of the autoencoder attacks.")
    flags.DEFINE_integer("restarts", 1, "PGD restarts of the autoencoder attacks.")
    flags.DEFINE_integer("ae_attack_examples", 100, "Random test images attacked per trial (the paper: 100).")
    flags.DEFINE_integer("ae_attack_trials", 10, "Trials (the paper: 10).")
    flags.DEFINE_integer("num_examples", 1000, "Test images: the pool attacked and the FID / accuracy set.")
    flags.DEFINE_integer("seed", 0, "Seed of every training run and evaluation.")


LAMBDAS = (1.0, 3.0, 5.0)
# (label, registry name, model flags). The paper does not give its hyper-parameters here; ours are the
# zoo's defaults: beta 4, Lipschitz constant 10, SE rho 0.95 at L-inf 0.1 with PGD-5, AVAE rho 0.975,
# GMM-DAE 10 modes, FGSM radius 0.1, coupling alpha 0.9.
MODELS = (
    ("VAE", "vae", {}),
    ("beta-VAE", "beta_vae", {"beta": 4.0}),
    ("beta-TCVAE", "beta_tcvae", {"beta": 4.0}),
    ("LipschitzVAE", "lipschitz_vae", {"lipschitz": 10.0}),
    ("SE", "se", {"rho": 0.95, "se_epsilon": 0.1, "pgd_steps": 5}),
    ("AVAE", "avae", {"rho": 0.975}),
    ("GMM-DAE", "gmm_dae", {}),
    ("Augmented", "augmented_gmm_dae", {}),
    ("Robust GMM-DAE", "robust_gmm_dae", {"alpha": 0.9}),
)
# The paper's MNIST rows: Table 1 (MS-SSIM at lambda 1/3/5, FID), Table 2 (ablation), Table 3 (lambda 1).
PAPER = {
    "VAE": {
        "latent_ref_vs_adv_recon": (0.55, 0.78, 0.89),
        "max_damage_recon": (0.64, 0.27, 0.08),
        "fid": 43.21,
        "clean_accuracy": 92.16,
        "latent_attack_accuracy": 58.85,
    },
    "beta-VAE": {"latent_ref_vs_adv_recon": (0.52, 0.73, 0.86), "max_damage_recon": (0.65, 0.36, 0.22), "fid": 42.72},
    "beta-TCVAE": {
        "latent_ref_vs_adv_recon": (0.53, 0.69, 0.83),
        "max_damage_recon": (0.73, 0.38, 0.28),
        "fid": 45.61,
        "clean_accuracy": 93.02,
        "latent_attack_accuracy": 61.06,
    },
    "LipschitzVAE": {
        "latent_ref_vs_adv_recon": (0.50, 0.68, 0.79),
        "max_damage_recon": (0.75, 0.41, 0.33),
        "fid": 59.45,
        "clean_accuracy": 90.78,
        "latent_attack_accuracy": 62.00,
    },
    "SE": {
        "latent_ref_vs_adv_recon": (0.49, 0.62, 0.68),
        "max_damage_recon": (0.90, 0.60, 0.54),
        "fid": 47.34,
        "clean_accuracy": 93.81,
        "latent_attack_accuracy": 68.65,
    },
    "AVAE": {"latent_ref_vs_adv_recon": (0.49, 0.59, 0.62), "max_damage_recon": (0.80, 0.65, 0.59), "fid": 48.47},
    "GMM-DAE": {"latent_ref_vs_adv_recon": (0.54, 0.70, 0.82), "max_damage_recon": (0.75, 0.37, 0.30), "fid": 38.89},
    "Augmented": {"latent_ref_vs_adv_recon": (0.47, 0.59, 0.71), "max_damage_recon": (0.79, 0.56, 0.54), "fid": 40.16},
    "Robust GMM-DAE": {
        "latent_ref_vs_adv_recon": (0.38, 0.47, 0.60),
        "max_damage_recon": (0.92, 0.82, 0.69),
        "fid": 39.37,
        "clean_accuracy": 96.08,
        "latent_attack_accuracy": 91.78,
    },
}


def _common_flags():
    flags_ = [
        "--dataset=mnist",
        "--arch=mlp",
        f"--latent_dim={FLAGS.latent_dim}",
        f"--batch_size={FLAGS.batch_size}",
        f"--train_steps={FLAGS.train_steps}",
        f"--checkpoint_every={min(1000, FLAGS.train_steps)}",
        "--eval_examples=0",
        f"--seed={FLAGS.seed}",
    ]
    return flags_ + ([f"--data_dir={FLAGS.data_dir}"] if FLAGS.data_dir else [])


def _eval_flags():
    # Epsilon 0 alone: the probes' clean accuracy, no L-inf attack, so no robustness radius either.
    flags_ = [
        "--dataset=mnist",
        "--epsilons=0",
        f"--lambdas={','.join(map(str, LAMBDAS))}",
        f"--pgd_steps={FLAGS.pgd_steps}",
        f"--restarts={FLAGS.restarts}",
        f"--num_examples={FLAGS.num_examples}",
        f"--ae_attack_examples={FLAGS.ae_attack_examples}",
        f"--ae_attack_trials={FLAGS.ae_attack_trials}",
        "--probe_train_examples=7000",
        "--stages=accuracy,decoder,ae_attacks",
        f"--seed={FLAGS.seed}",
        "--radius_examples=0",
    ]
    return flags_ + ([f"--data_dir={FLAGS.data_dir}"] if FLAGS.data_dir else [])


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
    for label, entry in report["models"].items():
        paper = PAPER[label]
        lines.append(
            f"| {label} | {_triple(entry['latent_attack']['ms_ssim_ref_vs_adv_recon'])} | "
            f"{_triple(paper['latent_ref_vs_adv_recon'])} | "
            f"{_triple(entry['max_damage_attack']['ms_ssim_ref_recon_vs_adv_recon'])} | "
            f"{_triple(paper['max_damage_recon'])} | "
            f"{entry['latent_attack']['ms_ssim_input_vs_adv_input'][0]:.2f} / "
            f"{entry['max_damage_attack']['ms_ssim_input_vs_adv_input'][0]:.2f} | "
            f"{_fid(entry)} ({paper['fid']}) |"
        )
    lines += [
        "",
        "## Downstream classifier, clean and under the latent-space attack at lambda = 1 (Table 3)",
        "",
        "| model | clean accuracy here (paper) | under latent attack here (paper) |",
        "|---|---|---|",
    ]
    for label, entry in report["models"].items():
        paper = PAPER[label]
        under = (entry["latent_attack_accuracy"] or {}).get("1")
        lines.append(
            f"| {label} | {_percent(entry['clean_accuracy'])} ({paper.get('clean_accuracy', 'n/a')}) | "
            f"{_percent(under)} ({paper.get('latent_attack_accuracy', 'n/a')}) |"
        )
    s = report["settings"]
    lines += [
        "",
        f"FID features: {runs.describe_fid(report['fid_features'])}. '(rec.)': a model without a prior to sample",
        "from; its FID is of reconstructions (`fid_reconstructions` in the JSON).",
        "",
        f"Budget: {s['train_steps']} steps of batch {s['batch_size']} per model, fully connected networks "
        f"(4 x 200), latent {s['latent_dim']}, Adam 1e-4, seed {s['seed']}, on the 7,000 MNIST training digits of "
        f"../shared/tfds; attacks: L2 PGD-{s['pgd_steps']} with {s['restarts']} restart(s), "
        f"{s['ae_attack_examples']} random test images x {s['ae_attack_trials']} trials per lambda.",
        "",
        *runs.produced_by(report["command"]),
    ]
    return "\n".join(lines)


def _plot(report):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for label, entry in report["models"].items():
        axes[0].plot(LAMBDAS, entry["latent_attack"]["ms_ssim_ref_vs_adv_recon"], marker="o", label=label)
        axes[1].plot(LAMBDAS, entry["max_damage_attack"]["ms_ssim_ref_recon_vs_adv_recon"], marker="o", label=label)
    axes[0].set(title="latent-space attack (lower: more robust)", xlabel="lambda (L2)", ylabel="MS-SSIM(x_r, x~_a)")
    axes[1].set(title="maximum-damage attack (higher: more robust)", xlabel="lambda (L2)", ylabel="MS-SSIM(x~_r, x~_a)")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(FLAGS.output_dir, "attacks_ms_ssim.png"), dpi=120)
    plt.close(fig)


def main(argv):
    del argv
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    started = time.time()
    summaries, fid_features = {}, None
    for label, name, model_flags in MODELS:
        model_dir = runs.train(FLAGS.work_dir, label, name, _common_flags(), model_flags)
        result, _ = runs.evaluate(FLAGS.work_dir, label, model_dir, _eval_flags())
        summaries[label] = dict(_summary(result), model_flags=model_flags, step_seconds=runs.step_seconds(model_dir))
        fid_features = result["fid_features"]
    report = {
        "models": summaries,
        "paper": PAPER,
        "fid_features": fid_features,
        "settings": {
            "dataset": "mnist",
            "arch": "mlp",
            "latent_dim": FLAGS.latent_dim,
            "train_steps": FLAGS.train_steps,
            "batch_size": FLAGS.batch_size,
            "learning_rate": 1e-4,
            "lambdas": list(LAMBDAS),
            "pgd_steps": FLAGS.pgd_steps,
            "restarts": FLAGS.restarts,
            "ae_attack_examples": FLAGS.ae_attack_examples,
            "ae_attack_trials": FLAGS.ae_attack_trials,
            "num_examples": FLAGS.num_examples,
            "seed": FLAGS.seed,
            "wall_clock_seconds": round(time.time() - started),
        },
        "command": runs.command_line("benchmarks.reproduce_attacks"),
    }
    with open(os.path.join(FLAGS.output_dir, "attacks.json"), "w") as f:
        json.dump(report, f, indent=2)
    with open(os.path.join(FLAGS.output_dir, "attacks.md"), "w") as f:
        f.write(_markdown(report))
    _plot(report)
    print(f"wrote {FLAGS.output_dir}/attacks.json and attacks.md in {time.time() - started:.0f} s")


if __name__ == "__main__":
    define_flags()
    app.run(main)
