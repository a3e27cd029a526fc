r"""The AVAE paper's appendix B: encode-decode transition kernels of probabilistic PCA, checked and iterated.

    python -m benchmarks.ppca_chains --output_dir=results

pPCA is the VAE with p(Z) = N(0, I), p(X|Z) = N(X; W Z, v I) and a linear-Gaussian encoder. With
M = W^T W + v I the exact posterior is q*(Z|X=x) = N(Z; M^{-1} W^T x, v M^{-1}), and appendix B states

    Q(X'|X=x) = N(X'; P x, v (P + I)),           P = W M^{-1} W^T,
    Q(Z'|Z=z) = N(Z'; J z, S),                    J = M^{-1} W^T W,   S = v (J + I) M^{-1}.

This script (1) compares those closed forms with Monte Carlo estimates of the encode-decode transitions,
(2) iterates the chain x -> z ~ q(Z|x) -> x' ~ p(X|z) from the model marginal p(X) = N(0, W W^T + v I)
with the exact encoder and with encoders whose mean map is perturbed to M^{-1} W^T + Delta, and tracks the
2-Wasserstein distance (appendix E's formula) between the chain's marginal and p(X): zero at every step for
the exact encoder (Prop. 2.3: Q(X'|X) is p(X)-invariant), growing for the perturbed ones, and (3) in the
PCA limit v = 0 iterates the noise-free map x -> W (E x) from a point, which is the projection P_W (x_1 =
x_2 = ...) for the exact encoder and drifts for the perturbed one. Writes ppca_chains.png, .json and .md.

The maths (numpy) is `zoo/toy/ppca.py`.
"""

import json
import os
import sys
import time

import numpy as np
from absl import app, flags

from benchmarks import runs
from zoo.toy import ppca

FLAGS = flags.FLAGS


def define_flags():
    flags.DEFINE_string("output_dir", "results", "Where ppca_chains.png, .json and .md go.")
    flags.DEFINE_integer("obs_dim", 6, "Observation dimension D.", lower_bound=1)
    flags.DEFINE_integer("latent_dim", 2, "Latent dimension d.", lower_bound=1)
    flags.DEFINE_float("obs_var", 0.1, "Observation noise variance v.")
    flags.DEFINE_integer("mc_samples", 200_000, "Monte Carlo samples per transition check.", lower_bound=100)
    flags.DEFINE_integer("chains", 20_000, "Parallel Monte Carlo chains for the drift plot.", lower_bound=10)
    flags.DEFINE_integer("chain_steps", 40, "Encode-decode steps per chain.", lower_bound=1)
    flags.DEFINE_list(
        "perturbations", ["0.02", "0.05", "0.1", "0.3"], "Spectral norms of W Delta for the perturbed encoders."
    )
    flags.DEFINE_integer("seed", 0, "Seed of W, Delta and the Monte Carlo draws.")


def _check_kernels(w, v, n, rng):
    """Closed form (paper) vs general formula vs Monte Carlo, for one x and one z."""
    enc_mean, enc_cov = ppca.exact_encoder(w, v)
    x = rng.standard_normal(w.shape[0])
    z = rng.standard_normal(w.shape[1])
    out = {}
    for name, paper, general, sampler, point in [
        ("x_kernel", ppca.paper_x_kernel(w, v), ppca.x_kernel(w, v, enc_mean, enc_cov), ppca.sample_x_transition, x),
        ("z_kernel", ppca.paper_z_kernel(w, v), ppca.z_kernel(w, v, enc_mean, enc_cov), ppca.sample_z_transition, z),
    ]:
        mean_map, cov = paper
        draws = sampler(w, v, enc_mean, enc_cov, point, n, rng)
        mc_mean, mc_cov = draws.mean(axis=0), np.cov(draws, rowvar=False)
        mean = mean_map @ point
        # Standard errors of the Monte Carlo estimates: sqrt(diag cov / n) and sqrt((c_ij^2 + c_ii c_jj) / n).
        se_mean = np.sqrt(np.diag(cov) / n)
        se_cov = np.sqrt((cov**2 + np.outer(np.diag(cov), np.diag(cov))) / n)
        out[name] = {
            "closed_form_mean": mean.tolist(),
            "monte_carlo_mean": mc_mean.tolist(),
            "closed_form_cov": cov.tolist(),
            "monte_carlo_cov": mc_cov.tolist(),
            "paper_vs_general_formula_max_abs_diff": float(
                max(np.abs(mean_map - general[0]).max(), np.abs(cov - general[1]).max())
            ),
            "mean_max_abs_error": float(np.abs(mc_mean - mean).max()),
            "cov_max_abs_error": float(np.abs(mc_cov - cov).max()),
            "mean_max_error_in_standard_errors": float((np.abs(mc_mean - mean) / se_mean).max()),
            "cov_max_error_in_standard_errors": float((np.abs(mc_cov - cov) / se_cov).max()),
        }
    j, s = ppca.paper_z_kernel(w, v)
    p, cov_x = ppca.paper_x_kernel(w, v)
    c = ppca.model_covariance(w, v)
    out["invariance"] = {
        "p(Z) under Q(Z'|Z): max |J J^T + S - I|": float(np.abs(j @ j.T + s - np.eye(w.shape[1])).max()),
        "p(X) under Q(X'|X): max |P C P^T + v(P + I) - C|": float(np.abs(p @ c @ p.T + cov_x - c).max()),
    }
    return out


def _chains(w, v, sizes, chains, steps, rng):
    """Closed-form and Monte Carlo W2(chain marginal at t, p(X)) for the exact and the perturbed encoders."""
    enc_mean, enc_cov = ppca.exact_encoder(w, v)
    c = ppca.model_covariance(w, v)
    zero = np.zeros(w.shape[0])
    x0 = rng.multivariate_normal(zero, c, size=chains)
    checkpoints = sorted({0, 1, 2, 5, 10, 20, steps} & set(range(steps + 1)))
    direction = rng.standard_normal(enc_mean.shape)
    out = {}
    for size in [0.0] + sizes:
        delta = ppca.scaled_perturbation(w, direction, size)
        mean_map, noise = ppca.x_kernel(w, v, enc_mean + delta, enc_cov)
        means, covs = ppca.marginal_path(mean_map, noise, zero, c, steps)
        states = ppca.simulate_chains(w, v, enc_mean + delta, enc_cov, x0, steps, rng)
        mc = {t: ppca.wasserstein2(states[t].mean(0), np.cov(states[t], rowvar=False), zero, c) for t in checkpoints}
        out["exact" if size == 0 else f"perturbed_{size:g}"] = {
            "norm_W_delta": size,
            "spectral_radius_of_mean_map": float(np.abs(np.linalg.eigvals(mean_map)).max()),
            "w2_closed_form": [ppca.wasserstein2(m, s, zero, c) for m, s in zip(means, covs)],
            "w2_monte_carlo": {str(t): value for t, value in mc.items()},
        }
    # The Monte Carlo floor: W2 between p(X) and the Gaussian fitted to `chains` fresh draws from it.
    fresh = rng.multivariate_normal(zero, c, size=chains)
    out["monte_carlo_floor_w2"] = ppca.wasserstein2(fresh.mean(0), np.cov(fresh, rowvar=False), zero, c)
    return out, direction


def _noise_free(w, direction, sizes, steps, rng):
    """PCA limit v = 0: iterate x -> W (E x) from x_0; report |x_t - x_1| / |x_1| (0 for the projection)."""
    enc_mean = np.linalg.solve(w.T @ w, w.T)
    x0 = rng.standard_normal(w.shape[0])
    out = {}
    for size in [0.0] + sizes:
        delta = ppca.scaled_perturbation(w, direction, size)
        a = w @ (enc_mean + delta)
        xs = [x0]
        for _ in range(steps):
            xs.append(a @ xs[-1])
        x1 = xs[1]
        # Distance from the range of W: the chain never leaves it after the first step (decoder means W z).
        p_w = w @ enc_mean
        out["exact" if size == 0 else f"perturbed_{size:g}"] = {
            "relative_drift": [float(np.linalg.norm(x - x1) / np.linalg.norm(x1)) for x in xs[1:]],
            "max_distance_from_range_W_after_step_1": float(max(np.linalg.norm(x - p_w @ x) for x in xs[1:])),
            "latent_map_eigenvalues": [
                f"{e.real:.4f}" if abs(e.imag) < 1e-12 else f"{e.real:.4f}{e.imag:+.4f}i"
                for e in np.linalg.eigvals(np.eye(w.shape[1]) + delta @ w)
            ],
        }
    return out


def _plot(path, result, steps):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    ax = axes[0]
    for name, marker in [("x_kernel", "o"), ("z_kernel", "s")]:
        k = result["kernels"][name]
        label = "Q(X'|X)" if name == "x_kernel" else "Q(Z'|Z)"
        ax.scatter(k["closed_form_mean"], k["monte_carlo_mean"], marker=marker, s=22, label=f"{label} mean")
        ax.scatter(
            np.ravel(k["closed_form_cov"]),
            np.ravel(k["monte_carlo_cov"]),
            marker=marker,
            s=22,
            facecolors="none",
            edgecolors="k" if name == "x_kernel" else "C3",
            label=f"{label} covariance",
        )
    lims = ax.get_xlim()
    ax.plot(lims, lims, color="0.5", lw=1, zorder=0)
    ax.set_xlabel("closed form (appendix B)")
    ax.set_ylabel(f"Monte Carlo ({result['settings']['mc_samples']:,} draws)")
    ax.set_title("transition kernels: closed form vs Monte Carlo", fontsize=10)
    ax.legend(fontsize=7)

    ax = axes[1]
    ts = np.arange(steps + 1)
    for i, (name, run) in enumerate(result["chains"].items()):
        if not isinstance(run, dict):
            continue
        label = "exact posterior" if name == "exact" else f"perturbed, |W Delta| = {run['norm_W_delta']:g}"
        ax.plot(ts, run["w2_closed_form"], color=f"C{i}", label=label)
        mc_t = [int(t) for t in run["w2_monte_carlo"]]
        ax.plot(mc_t, list(run["w2_monte_carlo"].values()), "x", color=f"C{i}")
    ax.axhline(
        result["chains"]["monte_carlo_floor_w2"],
        color="0.6",
        ls=":",
        lw=1,
        label="Monte Carlo floor (fresh draws of p(X))",
    )
    ax.set_xlabel("encode-decode step t")
    ax.set_ylabel("W2(marginal of x_t, p(X))")
    ax.set_title(
        f"chains started in p(X), v = {result['settings']['obs_var']:g}\n(lines: closed form; x: Monte Carlo chains)",
        fontsize=10,
    )
    ax.legend(fontsize=7)

    ax = axes[2]
    for i, (name, run) in enumerate(result["noise_free"].items()):
        label = "exact (projection)" if name == "exact" else f"perturbed, |W Delta| = {name.split('_')[1]}"
        drift = np.asarray(run["relative_drift"])
        ax.plot(np.arange(1, len(drift) + 1), drift, color=f"C{i}", label=label)
    ax.set_xlabel("encode-decode step t")
    ax.set_ylabel("|x_t - x_1| / |x_1|")
    ax.set_title("PCA limit v = 0, noise-free iteration from one x_0", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _markdown(result):
    s = result["settings"]
    k = result["kernels"]
    ch = result["chains"]
    lines = [
        "# Appendix B of the AVAE paper: probabilistic PCA transition kernels and encode-decode chains",
        "",
        *runs.produced_by(result["command"]),
        f"W: random {s['obs_dim']}x{s['latent_dim']} loadings (seed {s['seed']}, squared column norms 2, 1, ...), "
        f"observation variance v = {s['obs_var']}. {s['wall_clock_seconds']:.0f} s on this machine. "
        "Plot: [ppca_chains.png](ppca_chains.png).",
        "",
        "## 1. Closed-form kernels vs Monte Carlo",
        "",
        f"One random x (resp. z), {s['mc_samples']:,} encode-decode draws. Errors are the largest over entries; "
        "'in SE' divides each entry's error by its Monte Carlo standard error.",
        "",
        "| kernel | paper formula vs generic formula | mean max abs error (in SE) | covariance max abs error (in SE) |",
        "|---|---|---|---|",
    ]
    for name, label in [("x_kernel", "Q(X'\\|X) = N(P x, v(P + I))"), ("z_kernel", "Q(Z'\\|Z) = N(J z, S)")]:
        r = k[name]
        lines.append(
            f"| {label} | {r['paper_vs_general_formula_max_abs_diff']:.1e} | {r['mean_max_abs_error']:.4f} "
            f"({r['mean_max_error_in_standard_errors']:.1f}) | {r['cov_max_abs_error']:.4f} "
            f"({r['cov_max_error_in_standard_errors']:.1f}) |"
        )
    lines += [""] + [f"- invariance, {key}: {value:.1e}" for key, value in k["invariance"].items()]
    lines += [
        "",
        "## 2. Chains started in p(X): exact vs perturbed encoder",
        "",
        f"{s['chains']:,} chains, {s['chain_steps']} steps; encoder mean map M^-1 W^T + Delta with one random "
        "direction Delta scaled to the given spectral norm of W Delta, encoder covariance unchanged. "
        f"Monte Carlo floor (W2 of a Gaussian fitted to {s['chains']:,} fresh draws of p(X)): "
        f"{ch['monte_carlo_floor_w2']:.3f}.",
        "",
        "| encoder | spectral radius of W E | W2 at t = 1 | t = 10 | t = last (closed form) | t = last (Monte Carlo) |",
        "|---|---|---|---|---|---|",
    ]
    for name, run in ch.items():
        if not isinstance(run, dict):
            continue
        w2 = run["w2_closed_form"]
        last_mc = run["w2_monte_carlo"][str(len(w2) - 1)]
        lines.append(
            f"| {name} | {run['spectral_radius_of_mean_map']:.4f} | {w2[1]:.4f} | {w2[min(10, len(w2) - 1)]:.4f} | "
            f"{w2[-1]:.4f} | {last_mc:.4f} |"
        )
    lines += [
        "",
        "## 3. PCA limit (v = 0), noise-free iteration",
        "",
        "| encoder | \\|x_t - x_1\\| / \\|x_1\\| at t = 10 | at t = last | max distance from range(W) after step 1 | "
        "eigenvalues of I + Delta W |",
        "|---|---|---|---|---|",
    ]
    for name, run in result["noise_free"].items():
        d = run["relative_drift"]
        lines.append(
            f"| {name} | {d[min(9, len(d) - 1)]:.2e} | {d[-1]:.2e} | {run['max_distance_from_range_W_after_step_1']:.1e} "
            f"| {', '.join(run['latent_map_eigenvalues'])} |"
        )
    lines += ["", "## Reading", "", result["note"], ""]
    return "\n".join(lines)


NOTE = """\
The closed forms of appendix B agree with the Monte Carlo estimates to within a few standard errors, the
paper's expressions for P, v(P + I), J and S coincide with the generic linear-Gaussian formulas to rounding,
and p(X), p(Z) are invariant under the exact kernels to rounding (Prop. 2.3 / 3.1). Started in p(X), the
chain with the exact posterior stays in p(X) (W2 is zero in closed form at every step and of the size of
the Monte Carlo floor in simulation), while the same chain with a perturbed encoder mean leaves it, by an
amount that grows with the size of the perturbation and, once the spectral radius of W E exceeds 1,
without bound.

One precision on the paper's wording: the decoder mean is always W z, so after the first step the
noise-free chain never leaves range(W) (column 'max distance from range(W)' is rounding), perturbed or not.
What a perturbed encoder breaks is that the points of range(W) are fixed (P_W x = x): the chain drifts
*within* the subspace, x_t = W (I + Delta W)^(t-1) z_1, at a rate set by the eigenvalues of I + Delta W
(one plus the non-zero spectrum of W Delta), the linear analogue of the drifting chains of Figure 1."""


def main(argv):
    del argv
    start = time.time()
    rng = np.random.default_rng(FLAGS.seed)
    sizes = [float(x) for x in FLAGS.perturbations]
    w = ppca.make_loadings(FLAGS.obs_dim, FLAGS.latent_dim, rng)
    kernels = _check_kernels(w, FLAGS.obs_var, FLAGS.mc_samples, rng)
    chains, direction = _chains(w, FLAGS.obs_var, sizes, FLAGS.chains, FLAGS.chain_steps, rng)
    noise_free = _noise_free(w, direction, sizes, FLAGS.chain_steps, rng)
    result = {
        "command": ("python -m benchmarks.ppca_chains " + " ".join(sys.argv[1:])).strip(),
        "settings": {
            "obs_dim": FLAGS.obs_dim,
            "latent_dim": FLAGS.latent_dim,
            "obs_var": FLAGS.obs_var,
            "mc_samples": FLAGS.mc_samples,
            "chains": FLAGS.chains,
            "chain_steps": FLAGS.chain_steps,
            "perturbations": sizes,
            "seed": FLAGS.seed,
            "wall_clock_seconds": round(time.time() - start, 1),
        },
        "W": w.tolist(),
        "kernels": kernels,
        "chains": chains,
        "noise_free": noise_free,
        "note": NOTE,
    }
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    _plot(os.path.join(FLAGS.output_dir, "ppca_chains.png"), result, FLAGS.chain_steps)
    with open(os.path.join(FLAGS.output_dir, "ppca_chains.json"), "w") as f:
        json.dump(result, f, indent=1)
    with open(os.path.join(FLAGS.output_dir, "ppca_chains.md"), "w") as f:
        f.write(_markdown(result))
    print(_markdown(result))


if __name__ == "__main__":
    define_flags()
    app.run(main)
