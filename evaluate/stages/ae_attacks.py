"""Attacks on the autoencoder itself (robust GMM-DAE paper, section 4, Table 1; `evaluate.ae_attacks_maths`).

The latent-space attack (min ||z(x + d) - z(x_t)||, x_t an image of another class of `target_task`) and the
maximum-damage attack (max ||dec(z(x + d)) - dec(z(x))||), L2 PGD with ||d|| <= lambda, over trials of
random test images; the attack loss and the MS-SSIMs of Table 1, mean and std over trials. With the
accuracy stage's probe of `target_task`, the latent attack also reports that probe's accuracy, clean and on
the attacked codes (the paper's Table 3).
"""

import dataclasses
import time
from typing import Optional

import numpy as np
import tensorflow as tf

from evaluate import ae_attacks_maths, report
from evaluate.stage_base import ALL_POSITIVE, EvaluationError, Stage, batches, stats
from zoo import data as zoo_data
from zoo.config import AT_LEAST_ONE, setting


@dataclasses.dataclass(frozen=True)
class AutoencoderAttacks(Stage):
    name = "ae_attacks"
    results = ("latent_attack", "max_damage_attack")

    lambdas: tuple[float, ...] = setting(
        (1.0, 3.0, 5.0), "L2 radii of the latent-space and maximum-damage attacks.", check=ALL_POSITIVE
    )
    ae_attack_examples: int = setting(
        100, "Random test images attacked per trial (autoencoder attacks).", check=AT_LEAST_ONE
    )
    ae_attack_trials: int = setting(
        10, "Trials of the autoencoder attacks (mean and std over trials).", check=AT_LEAST_ONE
    )
    target_task: Optional[str] = setting(
        None, "Task whose classes pick latent-attack targets; default: the first task."
    )

    def task(self, tasks):
        return self.target_task or next(iter(tasks))

    def check_inputs(self, dataset, tasks, data_dir=None):
        spec = zoo_data.get_spec(dataset, data_dir)
        if self.task(tasks) not in spec.tasks:
            raise EvaluationError(
                f"dataset {dataset!r} has no task {self.task(tasks)!r}; its tasks: {', '.join(spec.tasks)}"
            )

    def run(self, context):
        common, model, images = context.common, context.model, context.images
        target_task = self.task(context.tasks)
        labels = context.labels[target_task]
        probe = context.shared.get("probes", {}).get(target_task)
        rng = np.random.default_rng(common.seed)
        sources, targets, per_trial = self._attack_pairs(labels, len(images), rng)
        results = {}
        for a, kind in enumerate(ae_attacks_maths.ATTACKS):
            classify = None if probe is None or kind != "latent" else (lambda z: tf.matmul(z, probe[0]) + probe[1])
            run = ae_attacks_maths.make_attack(
                kind, model.encode_mean, model.decode, common.pgd_steps, common.restarts, classify=classify
            )
            downstream, by_lambda = {}, {}
            start = time.perf_counter()
            for lam_index, lam in enumerate(self.lambdas):
                progress = context.progress(f"[ae_attacks] {kind} lambda={lam:g}", len(sources))
                collected = {}
                for i, (lo, hi) in enumerate(batches(len(sources), common.batch_size)):
                    out = run(
                        tf.constant(images[sources[lo:hi]]),
                        tf.constant(images[targets[lo:hi]]),
                        tf.constant(lam, tf.float32),
                        context.seed(100 + a, lam_index, i),
                    )
                    for key, value in out.items():
                        collected.setdefault(key, []).append(value.numpy())
                    progress.update(hi - lo, f", loss so far {np.mean(np.concatenate(collected['loss'])):.3f}")
                predictions = {
                    k: np.concatenate(collected.pop(k)) for k in ae_attacks_maths.PREDICTIONS if k in collected
                }
                if predictions:
                    true_class = labels[sources]
                    downstream["clean"] = float(np.mean(predictions["clean_prediction"] == true_class))
                    downstream.setdefault("by_lambda", {})[report.epsilon_key(lam)] = float(
                        np.mean(predictions["adversarial_prediction"] == true_class)
                    )
                per_trial_means = {
                    key: np.concatenate(values).reshape(self.ae_attack_trials, per_trial).mean(axis=1)
                    for key, values in collected.items()
                }
                by_lambda[report.epsilon_key(lam)] = {key: stats(means) for key, means in per_trial_means.items()}
            seconds = time.perf_counter() - start
            context.timing[f"{kind}_attack"] = {
                "seconds": seconds,
                "examples_per_second": len(sources) * len(self.lambdas) / seconds,
            }
            results[f"{kind}_attack"] = {
                "reference": "target" if kind == "latent" else "input",
                "objective": (
                    "min ||z(x + d) - z(x_t)||_2, ||d||_2 <= lambda"
                    if kind == "latent"
                    else "max ||dec(z(x + d)) - dec(z(x))||_2, ||d||_2 <= lambda"
                ),
                "target_task": target_task if kind == "latent" else None,
                "metrics": list(ae_attacks_maths.METRICS) + ["perturbation_l2"],
                "examples_per_trial": per_trial,
                "trials": self.ae_attack_trials,
                "by_lambda": by_lambda,
            }
            if downstream:
                results[f"{kind}_attack"]["downstream_accuracy"] = dict(
                    downstream, task=target_task, classifier="linear probe on the encoder mean (accuracy stage)"
                )
        return results

    def _attack_pairs(self, labels, n_pool, rng):
        """Per trial, a random set of examples and, for each, a target of another class of the target task."""
        per_trial = min(self.ae_attack_examples, n_pool)
        sources, targets = [], []
        for _ in range(self.ae_attack_trials):
            chosen = rng.choice(n_pool, size=per_trial, replace=False)
            for i in chosen:
                others = np.flatnonzero(labels != labels[i])
                if len(others) == 0:
                    others = np.setdiff1d(np.arange(n_pool), [i]) if n_pool > 1 else np.array([i])
                targets.append(int(rng.choice(others)))
            sources.extend(int(i) for i in chosen)
        return np.array(sources), np.array(targets), per_trial
