r"""The AVAE paper's discrete 1-D illustration (section 3.1, Figure 3, appendix D), fitted as VAE and AVAE.

    python -m benchmarks.discrete_avae --output_dir=results

Fits the probability-table VAE of `zoo/toy/discrete.py` to a sparse empirical distribution by
maximising, exactly and with full-batch Adam, (a) the VAE ELBO, (b) the AVAE bound of eq. (10) and, as an
ablation, (c) the AVAE bound with the delusions' distribution also held constant in the gradient; then
(with --sweep) refits all three with one setting changed at a time. Writes

    discrete_avae_<model>.png   Figure 3's four panels for seed 0 (north west clockwise: Q(Z|Z')p(Z'),
                                decoder p(X'|Z'), Q(X'|X)p(X), encoder q(Z|X)), with pi-hat and p(X) above
    discrete_avae.json          every number, per seed and averaged, with the settings and the command
    discrete_avae.md            the table and what it shows

The headline number is how much of the latent transition Q(Z|Z')p(Z') lies on its diagonal (and within
+-1, +-2 grid steps): the paper says the AVAE's is concentrated on the diagonal and the VAE's is not.
The same numbers weighted by the codes of the data, q~(Z') = sum_x pi(x) q(Z'|x), instead of the prior
are reported too, since those are the latents the AVAE bound actually constrains.
"""

import json
import os
import sys
import textwrap
import time

from zoo import console

console.quiet_tensorflow()  # before anything loads TensorFlow

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from benchmarks import runs  # noqa: E402
from zoo.toy import discrete as dm  # noqa: E402

FLAGS = flags.FLAGS


def define_flags():
    flags.DEFINE_string("output_dir", "results", "Where the PNGs, discrete_avae.json and discrete_avae.md go.")
    flags.DEFINE_integer("n_x", 64, "Number of observation grid points N_x.", lower_bound=2)
    flags.DEFINE_integer("n_z", 32, "Number of latent grid points N_z.", lower_bound=2)
    flags.DEFINE_float("obs_spread", 0.01, "Decoder spread v in VM(X; g(z), v) (fixed, not learned).")
    flags.DEFINE_float("nu_rho", 1e-3, "Spread nu_rho of the coupling p(Z'|Z) = VM(Z'; Z, nu_rho) (paper: ~1e-3).")
    flags.DEFINE_integer("n_samples", 30, "Number of data points drawn for the empirical distribution pi-hat.")
    flags.DEFINE_integer("data_seed", 0, "Seed of the data draw.")
    flags.DEFINE_integer("seeds", 5, "Number of initialisation seeds (0..seeds-1); the figures show seed 0.")
    flags.DEFINE_enum("init", "random", ["random", "smooth"], "Initial tables: uniform random, or identity + jitter.")
    flags.DEFINE_integer("steps", 3000, "Full-batch Adam steps.", lower_bound=1)
    flags.DEFINE_float("learning_rate", 0.05, "Adam learning rate.")
    flags.DEFINE_bool(
        "ablation",
        True,
        "Also fit avae_fixed_delusions: the AVAE bound with the gradient through the delusions' distribution "
        "q~(z) p(x~|z) stopped as well (see zoo.toy.discrete.avae_terms).",
    )
    flags.DEFINE_bool("sweep", True, "Also refit every model on one-change-at-a-time variations of the settings.")
    flags.DEFINE_integer("sweep_seeds", 3, "Seeds per sweep configuration.", lower_bound=1)


# name: (objective, which factors of Q_AVAE are held constant in the gradient)
MODELS = {
    "vae": ("vae", "decoder"),
    "avae": ("avae", "decoder"),
    "avae_fixed_delusions": ("avae", "delusions"),
}
# One change at a time from the main settings.
SWEEP = [
    {"obs_spread": 0.002},
    {"obs_spread": 0.02},
    {"nu_rho": 0.02},
    {"n_samples": 1000},
    {"init": "smooth"},
]


def _plot(path, panels, pi, p_x, title):
    """Figure 3's layout: NW Q(Z|Z')p(Z'), NE p(X'|Z'), SE Q(X'|X)p(X), SW q(Z|X); pi-hat and p(X) on top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(9.0, 10.0))
    grid = fig.add_gridspec(3, 2, height_ratios=[0.9, 4, 4], hspace=0.35, wspace=0.3)
    top = fig.add_subplot(grid[0, :])
    xs = np.arange(1, len(pi) + 1)
    top.bar(xs, pi, width=1.0, color="0.6", label=r"data $\hat\pi(X)$")
    top.plot(xs, p_x, color="C3", lw=1.5, label=r"model $p(X;\theta)$")
    top.set_xlim(0.5, len(pi) + 0.5)
    top.set_xlabel("X index")
    top.legend(fontsize=8, loc="upper right")
    specs = [
        (grid[1, 0], "z_joint", r"NW: $Q(Z|Z')p(Z')$", "Z", "Z'"),
        (grid[1, 1], "decoder", r"NE: decoder $p(X'|Z')$", "X'", "Z'"),
        (grid[2, 1], "x_joint", r"SE: $Q(X'|X)p(X)$", "X'", "X"),
        (grid[2, 0], "encoder", r"SW: encoder $q(Z|X)$", "Z", "X"),
    ]
    for cell, key, name, xlabel, ylabel in specs:
        ax = fig.add_subplot(cell)
        table = panels[key]
        # Square-root colour scale so that small but non-zero mass (off-diagonal leakage) stays visible.
        ax.imshow(np.sqrt(table / table.max()), origin="lower", cmap="viridis", aspect="auto", interpolation="nearest")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel(f"{xlabel} index")
        ax.set_ylabel(f"{ylabel} index")
    fig.suptitle(title + "\n(colour: sqrt of value / max per panel)", fontsize=11)
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)


TABLE_KEYS = [
    ("z_diagonal_mass", "diag mass Q(Z\\|Z')p(Z')"),
    ("z_band1_mass", "within +-1"),
    ("z_band2_mass", "within +-2"),
    ("z_mean_circular_distance", "mean \\|Z-Z'\\| (steps)"),
    ("z_diagonal_mass_data_codes", "diag mass, data codes q~(Z')"),
    ("z_band1_mass_data_codes", "within +-1, data codes"),
    ("z_diagonal_mass_best_encoder", "diag mass, best encoder for this decoder"),
    ("data_codes_effective_number", "latents used exp H[q~(Z)]"),
    ("z_joint_asymmetry_tv", "asymmetry Z (TV)"),
    ("x_joint_asymmetry_tv", "asymmetry X (TV)"),
    ("elbo", "ELBO"),
    ("data_log_likelihood", "log-lik of data"),
]
SWEEP_KEYS = ["z_diagonal_mass", "z_band1_mass", "z_diagonal_mass_data_codes", "data_codes_effective_number", "elbo"]


def _fit_all(settings, seeds, model_names, on_fit=None):
    """Fit every named model for every seed under `settings`; returns (per-seed summaries, pi-hat)."""
    pi = dm.empirical_distribution(settings["n_x"], settings["n_samples"], settings["data_seed"])
    per_seed = {name: [] for name in model_names}
    for seed in range(seeds):
        for name in model_names:
            objective, stop_gradient = MODELS[name]
            model = dm.DiscreteVAE(
                settings["n_x"], settings["n_z"], settings["obs_spread"], seed, init=settings["init"]
            )
            trace = dm.fit(
                model,
                pi,
                objective,
                nu_rho=settings["nu_rho"],
                steps=settings["steps"],
                learning_rate=settings["learning_rate"],
                stop_gradient=stop_gradient,
            )
            summary = dm.summarise(model, pi, settings["nu_rho"])
            summary["seed"] = seed
            summary["final_objective"] = float(trace[-1])
            summary["objective_change_last_10pc_steps"] = float(trace[-1] - trace[-max(2, len(trace) // 10)])
            per_seed[name].append(summary)
            if on_fit is not None:
                on_fit(name, seed, model, summary, pi)
    return per_seed, pi


def _aggregate(per_seed):
    return {
        name: {
            key: {"mean": float(np.mean([r[key] for r in rows])), "sd": float(np.std([r[key] for r in rows]))}
            for key in rows[0]
            if key != "seed"
        }
        for name, rows in per_seed.items()
    }


def _markdown(result):
    s = result["settings"]
    agg = result["aggregate"]
    lines = [
        "# The AVAE paper's discrete 1-D example (section 3.1, Figure 3, appendix D)",
        "",
        *runs.produced_by(result["command"]),
        f"Probability-table VAE on circular grids N_x = {s['n_x']}, N_z = {s['n_z']}; von Mises decoder with fixed "
        f"spread v = {s['obs_spread']}, coupling spread nu_rho = {s['nu_rho']}, uniform prior; empirical data: "
        f"{s['n_samples']} draws (data seed {s['data_seed']}) from a 3-bump von Mises mixture, binned on the X grid "
        f"({s['data_support']} distinct cells). Exact objectives (sums over the tables, no sampling), full-batch "
        f"Adam (lr {s['learning_rate']} cosine-decayed to 0 over {s['steps']} steps), {s['init']} initial tables, "
        f"seeds 0..{s['seeds'] - 1} (mean +- sd over seeds; figures: seed 0). {s['wall_clock_seconds']:.0f} s on "
        "this machine.",
        "",
        "Models: `vae` maximises the ELBO; `avae` maximises the AVAE bound of eq. (10) with the decoder held "
        "constant as a factor of Q_AVAE (the paper's stop-gradient); `avae_fixed_delusions` (ablation, not in the "
        "paper) also holds the distribution q~(z) p(x~|z) of the delusions constant, so the extra terms only train "
        "the encoder on the delusions.",
        "",
        "Columns: diagonal mass of Figure 3's north-west panel Q(Z|Z')p(Z') (p(Z') the uniform prior), and within "
        "+-1 / +-2 latent grid steps (circular); the same with Z' drawn from the codes of the data q~(Z') = "
        "sum_x pi(x) q(Z'|x) (the latents the AVAE bound constrains); the most diagonal mass any encoder could "
        "reach with the fitted decoder, (1/N_z) sum_x max_z p(x|z); "
        "exp of the entropy of q~(Z) (how many of the N_z latents the data's codes use); total-variation "
        "asymmetry of the two joint panels (0 for an exact posterior, Prop. 2.3 / 3.1).",
        "",
        "| model | " + " | ".join(label for _, label in TABLE_KEYS) + " |",
        "|---|" + "---|" * len(TABLE_KEYS),
    ]
    for name in result["models"]:
        cells = [f"{agg[name][k]['mean']:.3f} +- {agg[name][k]['sd']:.3f}" for k, _ in TABLE_KEYS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    ref = result["identity_reference"]
    lines.append(
        "| identity tables (reference, not fitted) | " + " | ".join(f"{ref[k]:.3f}" for k, _ in TABLE_KEYS) + " |"
    )
    lines += [
        "",
        "B_AVAE (eq. 10, up to its constant) of the fitted models: "
        + ", ".join(
            f"{name} {agg[name]['avae_bound']['mean']:.2f} +- {agg[name]['avae_bound']['sd']:.2f}"
            for name in result["models"]
        )
        + f" (best seed of avae: {max(r['avae_bound'] for r in result['models']['avae']):.2f})"
        + f"; of the identity tables: {ref['avae_bound']:.2f}.",
    ]
    lines += ["", "Figures (seed 0): " + ", ".join(f"[{name}]({f})" for name, f in result["figures"].items()), ""]
    if result.get("sweep"):
        lines += [
            "## Sensitivity: one setting changed at a time",
            "",
            f"{s['sweep_seeds']} seeds each; cells are diag mass / within +-1 / diag mass on data codes / latents "
            "used / ELBO.",
            "",
            "| change | " + " | ".join(result["models"]) + " |",
            "|---|" + "---|" * len(result["models"]),
        ]
        for row in result["sweep"]:
            change = ", ".join(f"{k} = {v}" for k, v in row["change"].items())
            cells = [
                " / ".join(f"{row['aggregate'][name][k]['mean']:.2f}" for k in SWEEP_KEYS) for name in result["models"]
            ]
            lines.append(f"| {change} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Reading", "", result["note"], ""]
    return "\n".join(lines)


def main(argv):
    del argv
    console.quiet_info_logs()
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    start = time.time()
    settings = {
        "n_x": FLAGS.n_x,
        "n_z": FLAGS.n_z,
        "obs_spread": FLAGS.obs_spread,
        "nu_rho": FLAGS.nu_rho,
        "n_samples": FLAGS.n_samples,
        "data_seed": FLAGS.data_seed,
        "init": FLAGS.init,
        "steps": FLAGS.steps,
        "learning_rate": FLAGS.learning_rate,
    }
    model_names = ["vae", "avae"] + (["avae_fixed_delusions"] if FLAGS.ablation else [])
    figures = {}

    def on_fit(name, seed, model, summary, pi):
        print(
            f"seed {seed} {name}: diag {summary['z_diagonal_mass']:.3f} +-1 {summary['z_band1_mass']:.3f} "
            f"data-codes diag {summary['z_diagonal_mass_data_codes']:.3f} "
            f"latents used {summary['data_codes_effective_number']:.1f} elbo {summary['elbo']:.3f}",
            flush=True,
        )
        if seed == 0:
            decoder, encoder = model.tables()
            figure = f"discrete_avae_{name}.png"
            _plot(
                os.path.join(FLAGS.output_dir, figure),
                dm.figure3_panels(decoder, encoder),
                pi,
                dm.model_marginal(decoder).numpy(),
                f"{name}: diagonal mass of Q(Z|Z')p(Z') = {summary['z_diagonal_mass']:.2f}, "
                f"within +-1 = {summary['z_band1_mass']:.2f}; on data codes = "
                f"{summary['z_diagonal_mass_data_codes']:.2f}",
            )
            figures[name] = figure

    per_seed, pi = _fit_all(settings, FLAGS.seeds, model_names, on_fit)
    aggregate = _aggregate(per_seed)
    # Reference, not fitted: identity tables g(z) = z, mu(x) = x with a sharp encoder (sigma = 0.002), i.e. a
    # decoder that spreads the latents over the whole circle and an encoder that inverts it.
    identity = dm.DiscreteVAE(
        settings["n_x"],
        settings["n_z"],
        settings["obs_spread"],
        0,
        init="smooth",
        init_jitter=0.0,
        init_encoder_spread=0.002,
    )
    reference = dm.summarise(identity, pi, settings["nu_rho"])
    sweep = []
    if FLAGS.sweep:
        for change in SWEEP:
            print(f"sweep: {change}", flush=True)
            rows, _ = _fit_all({**settings, **change}, FLAGS.sweep_seeds, model_names)
            sweep.append({"change": change, "aggregate": _aggregate(rows)})
    settings.update(
        {
            "data_support": int((pi > 0).sum()),
            "seeds": FLAGS.seeds,
            "sweep_seeds": FLAGS.sweep_seeds,
            "optimizer": "full-batch Adam (0.9, 0.999, 1e-8), learning rate cosine-decayed to 0",
            "wall_clock_seconds": round(time.time() - start, 1),
        }
    )
    result = {
        "command": ("python -m benchmarks.discrete_avae " + " ".join(sys.argv[1:])).strip(),
        "settings": settings,
        "empirical_distribution": pi.tolist(),
        "models": per_seed,
        "aggregate": aggregate,
        "identity_reference": reference,
        "sweep": sweep,
        "figures": figures,
        "note": _note(settings, aggregate, reference, sweep, per_seed),
    }
    with open(os.path.join(FLAGS.output_dir, "discrete_avae.json"), "w") as f:
        json.dump(result, f, indent=1)
    with open(os.path.join(FLAGS.output_dir, "discrete_avae.md"), "w") as f:
        f.write(_markdown(result))
    for name, agg in aggregate.items():
        print(name, {k: round(agg[k]["mean"], 3) for k, _ in TABLE_KEYS})


def _note(settings, agg, ref, sweep, per_seed):
    """The reading of the numbers, with the numbers of this run filled in."""

    def m(name, key):
        return agg[name][key]["mean"]

    avae_bounds = [row["avae_bound"] for row in per_seed["avae"]]
    best, worst, n_seeds = max(avae_bounds), min(avae_bounds), len(avae_bounds)
    above = sum(b > ref["avae_bound"] for b in avae_bounds)

    one_step_cost = (1.0 - np.cos(2.0 * np.pi / settings["n_z"])) / settings["nu_rho"]
    exceptions = [
        ", ".join(f"{k} = {v}" for k, v in row["change"].items())
        for row in sweep
        if row["aggregate"]["avae"]["z_diagonal_mass"]["mean"] >= row["aggregate"]["vae"]["z_diagonal_mass"]["mean"]
    ]
    text = f"""\
**The paper's Figure 3 contrast does not reproduce with the paper's objective.** Weighted by the prior p(Z') as
in Figure 3, the AVAE's latent transition Q(Z|Z')p(Z') is *less* concentrated on the diagonal than the VAE's
({m("avae", "z_diagonal_mass"):.2f} vs {m("vae", "z_diagonal_mass"):.2f} on the diagonal,
{m("avae", "z_band1_mass"):.2f} vs {m("vae", "z_band1_mass"):.2f} within +-1 step) and less symmetric
(TV asymmetry {m("avae", "z_joint_asymmetry_tv"):.2f} vs {m("vae", "z_joint_asymmetry_tv"):.2f})."""
    if sweep:
        text += f""" In the sensitivity table the AVAE is
below the VAE on the diagonal in {len(sweep) - len(exceptions)} of {len(sweep)} one-change variations"""
        text += f" (not with {'; '.join(exceptions)})." if exceptions else "."
    text += f"""

The VAE half of the claim does hold: the VAE's Q(Z|Z')p(Z') is far from an identity and not symmetric, and its
encoder off the data support is still its random initialisation (rows of q(Z|X) with pi(x) = 0 receive no
gradient from the ELBO), the non-smooth encoder of the paper's Figure 8.

What the AVAE bound does instead: the round trip of the *data's* codes becomes almost exact (diagonal mass
{m("avae", "z_diagonal_mass_data_codes"):.2f} vs {m("vae", "z_diagonal_mass_data_codes"):.2f} when Z' is drawn
from q~(Z') = sum_x pi(x) q(Z'|x)), and it gets there by routing all data through a few latents: exp H[q~(Z)] =
{m("avae", "data_codes_effective_number"):.1f} of {settings["n_z"]} latents vs
{m("vae", "data_codes_effective_number"):.1f} for the VAE, at a large cost in ELBO
({m("avae", "elbo"):.2f} vs {m("vae", "elbo"):.2f}) and data log-likelihood
({m("avae", "data_log_likelihood"):.2f} vs {m("vae", "data_log_likelihood"):.2f}). The extra terms of eq. (10)
are weighted by q~(z), so latents the data are not encoded to get no gradient from them; their decoder rows stay
wherever training left them and their delusions are encoded anywhere, and Figure 3's panel weights exactly those
latents by the uniform prior. The bound rates such collapsed solutions above a diagonal one: identity tables (decoder
spreading the latents over the circle, sharp inverse encoder) reach {ref["z_diagonal_mass"]:.2f} on the diagonal
and {ref["z_band1_mass"]:.2f} within +-1 but have B_AVAE = {ref["avae_bound"]:.2f}, below the best fitted AVAE
({best:.2f}; {above} of {n_seeds} seeds above the identity), and started next to the identity (`init = smooth` in
the sensitivity table) the AVAE still collapses. The optimisation is not clean either: the fitted bounds range
from {worst:.2f} to {best:.2f} over seeds, i.e. there are poor local optima. With nu_rho = {settings["nu_rho"]:g}
a one-step error of the round trip costs (1 - cos(2 pi / N_z)) / nu_rho = {one_step_cost:.0f} nats, while the
decoder noise (v = {settings["obs_spread"]:g}) makes such errors unavoidable for a decoder that uses every latent,
so trading a few nats of ELBO for exact round trips on a few latents wins."""
    if "avae_fixed_delusions" in agg:
        text += f"""

Ablation (not the paper's objective): also holding the distribution of the delusions q~(z) p(x~|z) constant in
the gradient, so that the extra terms only teach the encoder to map each delusion back to the latent it came
from, gives the paper's qualitative picture in part: diagonal {m("avae_fixed_delusions", "z_diagonal_mass"):.2f}
and +-1 {m("avae_fixed_delusions", "z_band1_mass"):.2f} vs the VAE's {m("vae", "z_diagonal_mass"):.2f} /
{m("vae", "z_band1_mass"):.2f}, a smooth encoder and a near-diagonal, more symmetric Q(X'|X)p(X) (asymmetry
{m("avae_fixed_delusions", "x_joint_asymmetry_tv"):.2f} vs {m("vae", "x_joint_asymmetry_tv"):.2f}), at a cost
of {m("vae", "elbo") - m("avae_fixed_delusions", "elbo"):.2f} nats of ELBO. It remains far from an identity because
the decoder, trained by the ELBO alone on a sparse data set, maps runs of latents to the same X: no encoder could put
more than {m("avae_fixed_delusions", "z_diagonal_mass_best_encoder"):.2f} on the diagonal with its decoder (the
exact posterior of that decoder: {m("avae_fixed_delusions", "z_diagonal_mass_exact_posterior"):.2f}). Its Z-joint
is also less symmetric than the VAE's."""
    text += """

What would settle it: the paper gives neither N_x, N_z, v, the data set nor how the tables were fitted (Algorithm
1's pathwise gradient through a sampled z does not exist for a discrete z), so this is one faithful reading, not
necessarily the authors' setup. A 1-D example with a continuous latent trained by Algorithm 1 itself
(reparametrised z, stop-gradient delusions) is the natural next check."""
    # One line per paragraph, rewrapped (the filled-in numbers make the source's line breaks ragged).
    return "\n\n".join(textwrap.fill(" ".join(p.split()), 110) for p in text.split("\n\n"))


if __name__ == "__main__":
    define_flags()
    app.run(main)
