"""The margin of robustness (Camuto et al.): the bound and the empirical margin (`evaluate.margin_maths`)."""

import dataclasses
import math
import os
from typing import Optional

import numpy as np
import tensorflow as tf

from evaluate import margin_maths, report
from evaluate.stage_base import EvaluationError, Stage, batches
from zoo.config import AT_LEAST_ONE, POSITIVE, setting


@dataclasses.dataclass(frozen=True)
class Margin(Stage):
    name = "margin"
    results = ("margin",)

    margin_examples: int = setting(100, "Test examples for the margin of robustness.", check=AT_LEAST_ONE)
    margin_r: Optional[float] = setting(
        None, "r of r-robustness (L2 in pixel space); default 0.1 * sqrt(pixel values).", check=POSITIVE
    )
    margin_samples: int = setting(128, "Posterior samples estimating p(r-robust).", check=AT_LEAST_ONE)
    margin_attack_samples: int = setting(
        8, "Posterior noise draws the maximum-damage attack ascends (their mean).", check=AT_LEAST_ONE
    )
    margin_search_steps: int = setting(8, "Bisection steps of the empirical margin search.", check=AT_LEAST_ONE)
    margin_min_radius: float = setting(1e-3, "Smallest L2 radius the margin search tries.", check=POSITIVE)
    margin_max_radius: float = setting(10.0, "Largest L2 radius the margin search tries.", check=POSITIVE)

    def check(self):
        if not self.margin_min_radius < self.margin_max_radius:
            raise EvaluationError("margin radii must satisfy 0 < margin_min_radius < margin_max_radius")

    def run(self, context):
        common, model, images, log = context.common, context.model, context.images, context.log
        rng = np.random.default_rng(common.seed + 1)
        chosen = np.sort(rng.choice(len(images), size=min(self.margin_examples, len(images)), replace=False))
        x_all = images[chosen]
        pixels = int(np.prod(images.shape[1:]))
        r = self.margin_r if self.margin_r is not None else 0.1 * math.sqrt(pixels)
        # A deterministic encoder has a posterior stddev of zero (e.g. a point-mass posterior): then
        # r-robustness needs no sampling, the attack has no noise to go through and the bound does not apply.
        stochastic = float(np.max(model.stddev(tf.constant(x_all[:8])))) > 0
        samples = self.margin_samples if stochastic else 1
        stddev = model.stddev if stochastic else None
        robust_at = tf.function(
            margin_maths.make_robust_at(
                model.encode_mean,
                model.decode,
                stddev,
                r,
                samples,
                common.pgd_steps,
                common.restarts,
                self.margin_attack_samples,
            ),
            reduce_retracing=True,
        )

        @tf.function(reduce_retracing=True, autograph=False)  # plain Python control flow only
        def clean_statistics(x, seed):
            z = model.encode_mean(x)
            sd = stddev(x) if stochastic else None
            p = margin_maths.robust_probability(model.decode, z, sd, model.decode(z), r, samples, seed)
            min_sd = tf.reduce_min(sd, axis=1) if stochastic else tf.zeros(tf.shape(x)[:1])
            return p, min_sd, margin_maths.jacobian_frobenius(model.encode_mean, x)

        p_all, min_sd_all, jac_all, lo_all, hi_all = [], [], [], [], []
        progress = context.progress("[margin] bisection", len(x_all))
        for i, (lo, hi) in enumerate(batches(len(x_all), common.batch_size)):
            x = tf.constant(x_all[lo:hi])
            sample_seed = context.seed(200, i)  # the same posterior noise at x and at every x + d
            p, min_sd, jac = (v.numpy() for v in clean_statistics(x, sample_seed))
            bracket = margin_maths.empirical_margin(
                robust_at,
                x,
                p > 0.5,
                self.margin_min_radius,
                self.margin_max_radius,
                self.margin_search_steps,
                context.seed(300, i),
                sample_seed,
            )
            p_all.append(p)
            min_sd_all.append(min_sd)
            jac_all.append(jac)
            lo_all.append(bracket[0])
            hi_all.append(bracket[1])
            progress.update(hi - lo)
        p, min_sd, jac = np.concatenate(p_all), np.concatenate(min_sd_all), np.concatenate(jac_all)
        lo, hi = np.concatenate(lo_all), np.concatenate(hi_all)
        context.timing["margin"] = {"seconds": progress.seconds, "examples_per_second": len(x_all) / progress.seconds}
        reason = None
        if not stochastic or not np.any(min_sd > 0):
            reason = "the posterior standard deviation is zero (deterministic encoder)"
        bound_info = {"applicable": reason is None, "reason": reason}
        per_example = {
            "p_clean": p.tolist(),
            "min_stddev": min_sd.tolist(),
            "jacobian_frobenius": jac.tolist(),
            "empirical_lo": lo.tolist(),
            "empirical_hi": [None if np.isinf(h) else float(h) for h in hi],
        }
        attack = (
            "L2 PGD maximising the mean over {k} fixed posterior draws eta of ||g(mu(x + d) + sigma(x + d) eta) "
            "- g(mu(x))||_2 (Camuto et al.'s maximum-damage attack, through the posterior noise)".format(
                k=self.margin_attack_samples
            )
            if stochastic
            else "L2 PGD maximising ||g(mu(x + d)) - g(mu(x))||_2 (deterministic encoder: no posterior noise)"
        )
        result = {
            "r": r,
            "r_rule": "given" if self.margin_r is not None else "0.1 * sqrt(number of pixel values) (RMS change 0.1)",
            "norm": "l2",
            "examples": len(x_all),
            "samples": samples,
            "clean_robust_fraction": float(np.mean(p > 0.5)),
            "p_clean_mean": float(np.mean(p)),
            "jacobian_frobenius_median": float(np.median(jac)),
            "empirical": {
                "median_lo": float(np.median(lo)),
                "median_hi": float(np.median(hi)) if np.isfinite(np.median(hi)) else None,
                "censored_fraction": float(np.mean(np.isinf(hi))),
                "broken_at_min_radius_fraction": float(np.mean((hi == self.margin_min_radius))),
                "min_radius": self.margin_min_radius,
                "max_radius": self.margin_max_radius,
                "search_steps": self.margin_search_steps,
                "attack": attack + "; r-robust if p > 1/2 at x + d",
                "attack_samples": self.margin_attack_samples if stochastic else 0,
            },
            "bound": bound_info,
            "bound_holds": "bound <= the smallest radius at which the attack broke r-robustness (hi)",
        }
        if reason is None:
            bound = np.maximum(
                margin_maths.margin_bound(min_sd, margin_maths.clip_probability(p, samples), jac).numpy(), 0.0
            )
            holds = bound <= hi
            bound_info.update({"median": float(np.median(bound)), "mean": float(np.mean(bound))})
            result["bound_holds_fraction"] = float(np.mean(holds))
            positive = bound > 0  # examples r-robust unperturbed, where the bound says something
            bound_info["positive_fraction"] = float(np.mean(positive))
            result["bound_holds_fraction_where_positive"] = float(np.mean(holds[positive])) if positive.any() else None
            per_example["bound"] = bound.tolist()
            report.plot_margin(bound, lo, hi, os.path.join(context.output_dir, "margin.png"))
            log(
                f"[margin] r={r:.3f}: bound median {bound_info['median']:.4g}, empirical margin median "
                f"{result['empirical']['median_lo']:.4g}, bound holds for "
                f"{100 * result['bound_holds_fraction']:.0f}%"
            )
        else:
            result["bound_holds_fraction"] = None
            log(
                f"[margin] r={r:.3f}: bound skipped ({reason}); empirical margin median "
                f"{result['empirical']['median_lo']:.4g}"
            )
        result["per_example"] = per_example
        return {"margin": result}
