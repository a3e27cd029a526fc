"""Downstream adversarial accuracy (AVAE paper, section 4), worst case over an attack ensemble (AutoAttack).

i) the encoder is frozen and its mean f_mu(x) is the representation; ii) a linear probe per task is trained
on it normally (no attacks); iii) encoder + probe are attacked end to end with every attack of `attacks`
(`evaluate.worst_case`: the project's PGD, ART's APGD-CE, targeted APGD-DLR and the gradient-free Square),
L-inf, pixels in [0, 1]. An example is robust only if every attack failed: `adversarial_accuracy` is that
worst case (what reports quote), `adversarial_accuracy_per_attack` each attack alone, or, with `cascade`,
after each attack of AutoAttack's cascade and every one before it (the same worst case for less). `quick`
runs the project's PGD only (the cheap monitoring check, not a robustness claim).

Also, on a fixed random subset: the robustness radius per example (`worst_case.robustness_radius`), and
the gradient-masking check: flagged when the gradient-free attack breaks examples every gradient attack
left intact, or when the worst case leaves accuracy above `masking_tolerance` at `radius_max` (at L-inf
0.5 the image can be moved to a uniform grey, so a classifier that keeps its accuracy there is not robust
but unattackable by gradients).
"""

import dataclasses
import os
import time
from typing import Optional

import numpy as np
import tensorflow as tf

from evaluate import probes, report, worst_case
from evaluate.stage_base import ALL_NON_NEGATIVE, NOT_EMPTY, EvaluationError, Stage
from zoo.config import AT_LEAST_ONE, FRACTION, NON_NEGATIVE, POSITIVE, setting


@dataclasses.dataclass(frozen=True)
class Accuracy(Stage):
    name = "accuracy"
    results = (
        "adversarial_accuracy",
        "adversarial_accuracy_per_attack",
        "probes",
        "robustness_radius",
        "gradient_masking",
        "attack_budgets",
    )

    epsilons: tuple[float, ...] = setting(
        (0.0, 0.1, 0.2), "L-inf radii of the downstream attack (0: clean accuracy).", check=ALL_NON_NEGATIVE
    )
    attacks: Optional[tuple[str, ...]] = setting(
        None,
        "Attacks whose worst case per example is reported (pgd: the project's PGD; apgd-ce, apgd-dlr, square: "
        "ART's AutoAttack components); default: all of them, or pgd alone with quick.",
        choices=worst_case.ATTACKS,
        check=NOT_EMPTY,
    )
    quick: bool = setting(False, "Only the project's PGD: a fast check, not the reported worst case.")
    cascade: bool = setting(
        False,
        "Run the attacks as AutoAttack's cascade (gradient attacks, then Square), each only on the examples "
        "every earlier one left correct: the same worst case, far cheaper where the first attacks break most "
        "examples; per-attack accuracy then counts every earlier attack too.",
    )
    apgd_steps: int = setting(100, "Iterations of each APGD run (AutoAttack: 100).", check=AT_LEAST_ONE)
    apgd_restarts: int = setting(1, "Random starts of each APGD run (AutoAttack standard: 1).", check=AT_LEAST_ONE)
    dlr_targets: int = setting(
        9, "Target classes of the targeted APGD-DLR, most likely first (AutoAttack: 9).", check=AT_LEAST_ONE
    )
    square_queries: int = setting(5000, "Queries of the Square attack (AutoAttack: 5000).", check=AT_LEAST_ONE)
    square_restarts: int = setting(1, "Restarts of the Square attack.", check=AT_LEAST_ONE)
    radius_examples: int = setting(
        100, "Random test examples whose robustness radius is searched (0: none).", check=NON_NEGATIVE
    )
    radius_max: float = setting(
        0.5, "Largest L-inf radius of the radius search; also the masking check's radius.", check=POSITIVE
    )
    radius_search_steps: int = setting(
        7, "Bisection steps of the radius search (resolution radius_max / 2^steps).", check=AT_LEAST_ONE
    )
    masking_tolerance: float = setting(
        0.02, "Gradient masking is flagged above this fraction of examples.", check=FRACTION
    )
    probe_train_examples: int = setting(10000, "Training examples for the linear probes.", check=AT_LEAST_ONE)
    probe_epochs: int = setting(30, "Epochs of linear-probe training.", check=AT_LEAST_ONE)

    def check(self):
        if self.quick and self.attacks is not None:
            raise EvaluationError("quick runs the project's PGD only; give either quick or a list of attacks")

    @property
    def attack_names(self):
        if self.attacks is not None:
            return self.attacks
        return worst_case.QUICK if self.quick else worst_case.ATTACKS

    def budgets(self, common):
        return worst_case.Budgets(
            pgd_steps=common.pgd_steps,
            pgd_restarts=common.restarts,
            apgd_steps=self.apgd_steps,
            apgd_restarts=self.apgd_restarts,
            dlr_targets=self.dlr_targets,
            square_queries=self.square_queries,
            square_restarts=self.square_restarts,
        )

    def run(self, context):
        common, model, log = context.common, context.model, context.log
        train_images, train_labels = context.load_arrays("train", self.probe_train_examples)
        train_features = probes.encode_in_batches(model.encode_mean, train_images, common.batch_size)
        del train_images
        budgets = self.budgets(common)
        rng = np.random.default_rng(common.seed + 2)
        radius_subset = np.sort(
            rng.choice(len(context.images), min(self.radius_examples, len(context.images)), replace=False)
        )
        worst, per_attack, probe_info, radius, masking, skipped, suites = {}, {}, {}, {}, {}, {}, {}
        attacked, attack_seconds, radius_seconds = 0, 0.0, 0.0
        for t, (task, classes) in enumerate(context.tasks.items()):
            w, b = probes.train_linear_probe(
                train_features, train_labels[task], classes, epochs=self.probe_epochs, seed=common.seed
            )
            train_accuracy = float(np.mean(np.argmax(train_features @ w + b, axis=1) == train_labels[task]))
            probe_info[task] = {
                "classes": classes,
                "train_accuracy": train_accuracy,
                "train_examples": len(train_features),
            }
            log(f"[accuracy] probe {task}: train accuracy {train_accuracy:.3f} on {len(train_features)} examples")
            context.shared.setdefault("probes", {})[task] = (tf.constant(w), tf.constant(b))
            if classes not in suites:
                suites[classes] = self._suite(model, train_features.shape[1], classes, budgets, common)
            suite, probe = suites[classes]
            probe[0].assign(w)
            probe[1].assign(b)
            for attack, reason in suite.skipped.items():
                skipped.setdefault(attack, {})[task] = reason
                log(f"[accuracy] {task}: {attack} skipped ({reason})")
            y = context.labels[task].astype(np.int64)
            order = suite.cascade_order if self.cascade else suite.attacks
            worst[task], per_attack[task], gradient_free_only = {}, {a: {} for a in order}, {}
            for e, epsilon in enumerate(self.epsilons):
                key = report.epsilon_key(epsilon)
                if epsilon == 0:
                    clean = suite.clean_correct(context.images, y)
                    worst[task][key] = float(np.mean(clean))
                    for attack in order:
                        per_attack[task][attack][key] = worst[task][key]
                    log(f"[accuracy] {task} clean: {worst[task][key]:.3f}")
                    continue
                progress = _AttackProgress(context, f"[accuracy] {task} eps={epsilon:g}")
                correct = suite.correct(
                    context.images, y, epsilon, salt=1000 * t + e, progress=progress.update, cascade=self.cascade
                )
                attacked += progress.done
                attack_seconds += progress.seconds
                for attack, ok in correct.items():
                    per_attack[task][attack][key] = float(np.mean(ok))
                worst[task][key] = float(np.mean(worst_case.worst_case(correct)))
                gradient_free_only[key] = worst_case.gradient_free_only(correct, cascade=self.cascade)
                log(
                    f"[accuracy] {task} eps={epsilon:g}: worst case {worst[task][key]:.3f} ("
                    + ", ".join(
                        f"{'+' if self.cascade and i else ''}{a} {per_attack[task][a][key]:.3f}"
                        for i, a in enumerate(order)
                    )
                    + ")"
                )
            if len(radius_subset):
                start = time.perf_counter()
                radii = worst_case.robustness_radius(
                    suite,
                    context.images[radius_subset],
                    y[radius_subset],
                    self.radius_max,
                    self.radius_search_steps,
                    salt=1000 * t + 500,
                    log=lambda line, task=task: log(f"[accuracy] {task} radius search {line}"),
                )
                radius[task] = dict(
                    worst_case.radius_summary(radii, self.radius_max, self.radius_search_steps),
                    subset_seed=common.seed + 2,
                )
                radius_seconds += time.perf_counter() - start
                log(
                    f"[accuracy] {task}: median robustness radius "
                    f"{report.format_radius(radius[task]['median_correct'], self.radius_max)} over the examples "
                    f"correct clean, {report.format_radius(radius[task]['median'], self.radius_max)} over all "
                    f"{len(radii)} (worst case over {', '.join(suite.attacks)})"
                )
            masking[task] = self._masking(gradient_free_only, radius.get(task))
        context.timing["adversarial_accuracy"] = {
            "seconds": attack_seconds,
            "examples_per_second": attacked / attack_seconds if attacked else None,
            "note": "examples through one attack per second (every attack of the ensemble counts), tracing included",
        }
        if radius:
            context.timing["robustness_radius"] = {
                "seconds": radius_seconds,
                "examples_per_second": len(radius_subset) * len(radius) / radius_seconds,
            }
        if radius:
            report.plot_radius(
                {"robustness_radius": radius, "model": model.name}, os.path.join(context.output_dir, "radius.png")
            )
        flagged = [task for task, m in masking.items() if m["flagged"]]
        if flagged:
            log(
                f"[accuracy] WARNING: possible gradient masking on {', '.join(flagged)}: "
                + "; ".join(r for t in flagged for r in masking[t]["reasons"])
            )
        budgets_record = {attack: budgets.describe(attack) for attack in self.attack_names}
        for attack, tasks in skipped.items():
            budgets_record[attack]["skipped_tasks"] = tasks
        return {
            "adversarial_accuracy": worst,
            "adversarial_accuracy_per_attack": per_attack,
            "probes": probe_info,
            "robustness_radius": radius or None,
            "gradient_masking": {
                "flagged": bool(flagged),
                "tolerance": self.masking_tolerance,
                "large_radius": self.radius_max,
                "criteria": [
                    "gradient_free_only: fraction of examples the gradient-free attack broke and no gradient attack "
                    "did, at each epsilon (null when the run had no gradient-free attack or no gradient attack)",
                    "accuracy_at_large_radius: worst-case accuracy at large_radius on the radius subset",
                ],
                "by_task": masking,
            },
            "attack_budgets": budgets_record,
        }

    def _suite(self, model, dim, classes, budgets, common):
        """The attacks on encoder + a linear probe held in variables, and the variables (W, b).

        Each task assigns its probe to the variables, so one trace of every attack serves all tasks with the same
        number of classes (CelebA's 17 attributes trace once).
        """
        w = tf.Variable(tf.zeros([dim, classes]), trainable=False)
        b = tf.Variable(tf.zeros([classes]), trainable=False)
        suite = worst_case.AttackSuite(
            probes.probe_logits(model.encode_mean, w, b),
            classes,
            model.image_shape,
            self.attack_names,
            budgets,
            common.batch_size,
            seed=common.seed,
        )
        return suite, (w, b)

    def _masking(self, gradient_free_only, radius):
        reasons = []
        for key, fraction in gradient_free_only.items():
            if fraction is not None and fraction > self.masking_tolerance:
                reasons.append(
                    f"at eps={key} the gradient-free attack broke {100 * fraction:.1f}% of examples that "
                    "every gradient attack left intact"
                )
        large = radius["accuracy_at_max_radius"] if radius else None
        if large is not None and large > self.masking_tolerance:
            reasons.append(f"worst-case accuracy {100 * large:.1f}% at eps={self.radius_max:g}, where it should be ~0")
        return {
            "flagged": bool(reasons),
            "reasons": reasons,
            "gradient_free_only": gradient_free_only,
            "accuracy_at_large_radius": large,
        }


class _AttackProgress:
    """Progress of an attack ensemble: one bar per attack, with examples/s."""

    def __init__(self, context, label):
        self.context, self.label = context, label
        self.bars = {}
        self.done = 0
        self.start = time.perf_counter()

    def update(self, attack, count, total):
        if count == 0:  # the attack starts
            self.bars[attack] = self.context.progress(f"{self.label} {attack}", total)
            return
        self.bars[attack].update(count)
        self.done += count

    @property
    def seconds(self):
        return time.perf_counter() - self.start
