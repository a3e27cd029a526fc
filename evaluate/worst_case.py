"""Accuracy under an ensemble of L-inf attacks, worst case per example (the AutoAttack protocol).

Croce and Hein (ICML 2020) showed that PGD alone overestimates robustness, most of all for models that mask
gradients (smooth, stochastic or quantising ones); their standard is the worst case per example over
complementary attacks, among them a gradient-free one. The attacks, by name:

- "pgd": the project's own L-inf PGD (`zoo.attacks.pgd`, the attack training uses): cross-entropy, random
  start, restarts keeping the worst case; cheap, and a check on the others.
- "apgd-ce": Auto-PGD on cross-entropy, untargeted (IBM's Adversarial Robustness Toolbox, ART,
  `AutoProjectedGradientDescent`), first step 2 eps as in the AutoAttack paper.
- "apgd-dlr": Auto-PGD on ART's difference-of-logits-ratio loss, targeted at each of the `dlr_targets`
  highest-scoring wrong classes of the clean input in turn (AutoAttack's APGD-T). The loss needs at least
  three classes; tasks with fewer skip it.
- "square": ART's `SquareAttack`, a gradient-free random search on the logit margin (Andriushchenko et al.,
  ECCV 2020). It cannot be fooled by a useless gradient, so it exposes gradient masking.

An example counts as robust at eps only when it is classified correctly clean and after every attack that
ran; the accuracy over those examples is the worst-case accuracy that reports quote. Examples already
misclassified clean are not attacked (they count as broken for every attack).

`robustness_radius` bisects eps per example to the smallest radius at which the worst case flips the
prediction. ART attacks take one scalar eps, so every bisection step groups the examples by their radius.

Randomness: the project's PGD is seeded statelessly; ART draws from NumPy's global generator, which is
seeded per call and restored afterwards, so a run is repeatable and leaves the caller's generator alone.
"""

import contextlib
import dataclasses
import logging
import math
import time
import warnings

import keras
import numpy as np
import tensorflow as tf

from evaluate.stage_base import mix_seeds
from zoo import attacks as zoo_attacks

ATTACKS = ("pgd", "apgd-ce", "apgd-dlr", "square")
GRADIENT_FREE = ("square",)
QUICK = ("pgd",)
MISCLASSIFIED_BONUS = 100.0
DLR_MIN_CLASSES = 3  # the DLR loss divides by z_1 - z_3, the gap between the largest and third-largest logit


def _art():
    """ART's TensorFlow classifier and the two attack classes (imported late: ART is slow to import)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "PyTorch not found": ART's certification modules, unused here
        from art.attacks.evasion import AutoProjectedGradientDescent, SquareAttack
        from art.estimators.classification import TensorFlowV2Classifier
    return TensorFlowV2Classifier, AutoProjectedGradientDescent, SquareAttack


def art_version():
    from importlib import metadata

    return metadata.version("adversarial-robustness-toolbox")


@dataclasses.dataclass(frozen=True)
class Budgets:
    """The effort of each attack; recorded in robustness.json beside the numbers it produced."""

    pgd_steps: int = 40
    pgd_restarts: int = 10
    apgd_steps: int = 100
    apgd_restarts: int = 1
    dlr_targets: int = 9
    square_queries: int = 5000
    square_restarts: int = 1

    def describe(self, attack):
        if attack == "pgd":
            return {
                "implementation": "zoo.attacks.pgd",
                "loss": "cross-entropy",
                "steps": self.pgd_steps,
                "restarts": self.pgd_restarts,
                "step_size": "2.5 eps / steps",
                "random_start": True,
            }
        if attack == "apgd-ce":
            return {
                "implementation": f"art {art_version()} AutoProjectedGradientDescent",
                "loss": "cross_entropy",
                "targeted": False,
                "iterations": self.apgd_steps,
                "restarts": self.apgd_restarts,
                "first_step": "2 eps",
            }
        if attack == "apgd-dlr":
            return {
                "implementation": f"art {art_version()} AutoProjectedGradientDescent",
                "loss": "difference_logits_ratio",
                "targeted": True,
                "target_classes": self.dlr_targets,
                "iterations": self.apgd_steps,
                "restarts": self.apgd_restarts,
                "first_step": "2 eps",
                "min_classes": DLR_MIN_CLASSES,
            }
        if attack == "square":
            return {
                "implementation": f"art {art_version()} SquareAttack",
                "loss": "logit margin",
                "queries": self.square_queries,
                "restarts": self.square_restarts,
                "p_init": 0.8,
            }
        raise ValueError(f"unknown attack {attack!r}; choose one of: {', '.join(ATTACKS)}")


def attack_objective(logits_fn, labels):
    """Cross-entropy of the true class (+ MISCLASSIFIED_BONUS where already misclassified), per example.

    The bonus has no gradient, so the ascent is plain cross-entropy PGD; it makes PGD's "keep the best
    iterate and the best restart" rule prefer any misclassified input over every correctly classified one
    (a correct input has cross-entropy <= log K < 100), so an example counts as broken when any visited
    iterate of any restart broke it.
    """

    def objective(x_adv):
        logits = logits_fn(x_adv)
        cross_entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
        wrong = tf.cast(tf.not_equal(tf.argmax(logits, axis=-1, output_type=labels.dtype), labels), logits.dtype)
        return cross_entropy + MISCLASSIFIED_BONUS * tf.stop_gradient(wrong)

    return objective


def make_pgd_correct(logits_fn, steps, restarts):
    """A tf.function (x, labels, epsilon, seed) -> [batch] bool: still correct after the project's L-inf PGD.

    `epsilon` is a scalar or one radius per example [batch] (`zoo.attacks.pgd` takes either).
    """

    @tf.function(reduce_retracing=True)
    def pgd_correct(x, labels, epsilon, seed):
        # Always one radius per example: a retrace relaxed over a scalar and a vector would lose the rank.
        epsilon = tf.reshape(tf.broadcast_to(tf.cast(epsilon, x.dtype), tf.shape(x)[:1]), [-1])
        x_adv = zoo_attacks.pgd(
            attack_objective(logits_fn, labels),
            x,
            epsilon,
            steps,
            norm="linf",
            restarts=restarts,
            random_start=True,
            seed=seed,
            clip_min=0.0,
            clip_max=1.0,
        )
        return tf.equal(tf.argmax(logits_fn(x_adv), axis=-1, output_type=labels.dtype), labels)

    return pgd_correct


@contextlib.contextmanager
def _art_call(seed):
    """ART's randomness from `seed` (NumPy's global generator, restored afterwards), without its retracing noise.

    ART's classifier is a tf.function that sees a new batch size each time an attack drops the examples it
    already broke, and TensorFlow warns about every such retrace.
    """
    state = np.random.get_state()
    np.random.seed(seed % (2**32))
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        np.random.set_state(state)
        logger.setLevel(level)


class _Logits:
    """The callable ART wraps: logits of a batch, with the `training` argument ART passes."""

    def __init__(self, logits_fn):
        self._logits = tf.function(logits_fn, reduce_retracing=True)

    def __call__(self, x, training=False):
        return self._logits(tf.convert_to_tensor(x, tf.float32))


class DifferenceLogitsRatio:
    """ART's difference-of-logits-ratio loss, vectorised: -(z_y - z_i) / (z_1 - z_3 + 1e-12) per example.

    z_y is the logit of the label y (the target class in a targeted attack), z_i the largest other logit,
    z_1 and z_3 the largest and third-largest logits. ART's own TensorFlow version of this loss (inside
    `AutoProjectedGradientDescent`) loops over the batch in Python with O(batch^2) gathers, which makes a
    targeted APGD run minutes per batch on a CPU; the values are the same (the 1e-12 is the AutoAttack
    reference code's guard against z_1 = z_3). ART reads and sets `reduction` ("none", "sum",
    "sum_over_batch_size"; ART's own default "mean").
    """

    def __init__(self):
        self.reduction = "mean"

    def __call__(self, y_true, y_pred, *args, **kwargs):
        dlr = _dlr(tf.convert_to_tensor(y_true, tf.float32), tf.convert_to_tensor(y_pred, tf.float32))
        if self.reduction == "none":
            return dlr
        if self.reduction == "sum":
            return tf.reduce_sum(dlr)
        return tf.reduce_mean(dlr)


@tf.function(reduce_retracing=True)  # ART calls the loss twice per APGD iteration
def _dlr(y_true, y_pred):
    label = tf.argmax(y_true, axis=1, output_type=tf.int32)
    z_y = tf.gather(y_pred, label, axis=1, batch_dims=1)
    is_label = tf.one_hot(label, tf.shape(y_pred)[1], on_value=True, off_value=False)
    z_i = tf.reduce_max(tf.where(is_label, tf.constant(-np.inf, y_pred.dtype), y_pred), axis=1)
    top = tf.math.top_k(y_pred, k=DLR_MIN_CLASSES).values
    return -(z_y - z_i) / (top[:, 0] - top[:, 2] + 1e-12)


class AttackSuite:
    """The attacks of one classifier x -> logits, run on numpy batches.

    `correct(x, y, epsilon)` returns {attack: [n] bool}, correct after that attack (False where wrong clean).
    """

    def __init__(self, logits_fn, num_classes, image_shape, attacks, budgets, batch_size, seed=0):
        unknown = [a for a in attacks if a not in ATTACKS]
        if unknown:
            raise ValueError(f"unknown attack(s) {', '.join(unknown)}; choose one of: {', '.join(ATTACKS)}")
        self.logits_fn = logits_fn
        self.num_classes = int(num_classes)
        self.image_shape = tuple(image_shape)
        self.budgets = budgets
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        # Attacks that cannot run on this classifier, with why (the DLR loss needs three classes).
        self.skipped = {}
        if "apgd-dlr" in attacks and self.num_classes < DLR_MIN_CLASSES:
            self.skipped["apgd-dlr"] = f"needs at least {DLR_MIN_CLASSES} classes, the task has {self.num_classes}"
        self.attacks = tuple(a for a in attacks if a not in self.skipped)
        self._predict = tf.function(logits_fn, reduce_retracing=True)
        self._pgd = make_pgd_correct(logits_fn, budgets.pgd_steps, budgets.pgd_restarts) if "pgd" in attacks else None
        self._classifiers = {}

    def classifier(self, loss="cross_entropy"):
        """ART's view of the classifier with `loss` ("cross_entropy" or "dlr"), built on first use."""
        if loss not in self._classifiers:
            classifier_class, _, _ = _art()
            loss_object = (
                DifferenceLogitsRatio() if loss == "dlr" else keras.losses.CategoricalCrossentropy(from_logits=True)
            )
            self._classifiers[loss] = classifier_class(
                _Logits(self.logits_fn),
                nb_classes=self.num_classes,
                input_shape=self.image_shape,
                loss_object=loss_object,
                clip_values=(0.0, 1.0),
            )
        return self._classifiers[loss]

    def logits(self, x):
        return np.concatenate(
            [self._predict(tf.constant(x[i : i + self.batch_size])).numpy() for i in range(0, len(x), self.batch_size)]
        )

    def clean_correct(self, x, y):
        return np.argmax(self.logits(x), axis=1) == y

    @property
    def cascade_order(self):
        """The attacks in AutoAttack's cascade order: the gradient attacks, then the gradient-free ones."""
        gradient = tuple(a for a in self.attacks if a not in GRADIENT_FREE)
        return gradient + tuple(a for a in self.attacks if a in GRADIENT_FREE)

    def correct(self, x, y, epsilon, salt=0, progress=None, cascade=False):
        """{attack: [n] bool} after each attack at `epsilon` (a number or one radius per example [n]).

        By default every attack runs on every example correct clean: each entry is that attack alone. With
        `cascade` the attacks run as AutoAttack runs them, in `cascade_order`, each only on the examples every
        earlier one left correct; each entry then means correct after that attack and every earlier one, and the
        last is the worst case. The worst case is the same either way (an example one attack broke is broken
        whatever the others do); the cascade costs far less where the first attacks break most examples.
        `progress(attack, count, total)` is called when an attack starts (count 0) and after every batch. `salt`
        varies the random starts between calls (e.g. one per task and epsilon).
        """
        x, y, epsilon = self._inputs(x, y, epsilon)
        clean = self.clean_correct(x, y)
        standing = clean
        out = {}
        for attack in self.cascade_order if cascade else self.attacks:
            out[attack] = (standing if cascade else clean).copy()
            attacked = np.flatnonzero(out[attack] & (epsilon > 0))
            if progress is not None:
                progress(attack, 0, len(attacked))  # the attack starts: its examples/s count from here
            # The attack's index in `attacks` seeds it, so its random starts do not depend on the order it runs in.
            self._run(self.attacks.index(attack), attack, x, y, epsilon, attacked, out[attack], salt, progress)
            if cascade:
                standing = out[attack]
        return out

    def worst_case_correct(self, x, y, epsilon, salt=0):
        """[n] bool: correct after every attack, run as a cascade (`correct(..., cascade=True)`)."""
        return worst_case(self.correct(x, y, epsilon, salt, cascade=True))

    def _inputs(self, x, y, epsilon):
        x = np.asarray(x, np.float32)
        return x, np.asarray(y, np.int64), np.broadcast_to(np.asarray(epsilon, np.float32), (len(x),))

    def _run(self, a, attack, x, y, epsilon, attacked, correct, salt, progress=None):
        """Runs attack number `a` on the examples `attacked`, writing whether each stays correct into `correct`."""
        if attack == "pgd":  # takes one radius per example
            groups = [attacked]
        else:  # ART attacks take one scalar eps: one group of examples per distinct radius
            groups = [attacked[epsilon[attacked] == value] for value in np.unique(epsilon[attacked])]
        for g, group in enumerate(groups):
            for lo in range(0, len(group), self.batch_size):
                index = group[lo : lo + self.batch_size]
                seed = mix_seeds(self.seed, salt, a, g, lo)
                correct[index] = self._attack(attack, x[index], y[index], epsilon[index], seed)
                if progress is not None:
                    progress(attack, len(index), len(attacked))

    def _attack(self, attack, x, y, epsilon, seed):
        """[batch] bool: correct after `attack`; `epsilon` [batch] (one value for the ART attacks)."""
        if attack == "pgd":
            seed_tensor = tf.constant([self.seed % (2**31 - 1), seed], tf.int32)
            ok = self._pgd(tf.constant(x), tf.constant(y.astype(np.int32)), tf.constant(epsilon), seed_tensor)
            return ok.numpy()
        return self._art_attack(attack, x, y, float(epsilon[0]), seed)

    def _art_attack(self, attack, x, y, epsilon, seed):
        _, apgd_class, square_class = _art()
        one_hot = np.eye(self.num_classes, dtype=np.float32)[y]
        b = self.budgets
        with _art_call(seed):
            if attack == "square":
                square = square_class(
                    self.classifier(),
                    norm=np.inf,
                    eps=epsilon,
                    max_iter=b.square_queries,
                    nb_restarts=b.square_restarts,
                    batch_size=len(x),
                    verbose=False,
                )
                candidates = [square.generate(x, y=one_hot)]
            elif attack == "apgd-ce":
                apgd = apgd_class(
                    self.classifier(),
                    norm=np.inf,
                    eps=epsilon,
                    eps_step=2 * epsilon,
                    max_iter=b.apgd_steps,
                    nb_random_init=b.apgd_restarts,
                    batch_size=len(x),
                    loss_type="cross_entropy",
                    verbose=False,
                )
                candidates = [apgd.generate(x, y=one_hot)]
            else:  # apgd-dlr: targeted, one run per target class, most likely wrong classes first
                # loss_type=None: APGD uses the classifier's own loss, the vectorised DLR above.
                apgd = apgd_class(
                    self.classifier("dlr"),
                    norm=np.inf,
                    eps=epsilon,
                    eps_step=2 * epsilon,
                    max_iter=b.apgd_steps,
                    targeted=True,
                    nb_random_init=b.apgd_restarts,
                    batch_size=len(x),
                    loss_type=None,
                    verbose=False,
                )
                logits = self.logits(x)
                logits[np.arange(len(x)), y] = -np.inf
                ranked = np.argsort(-logits, axis=1)
                candidates = []
                for k in range(min(b.dlr_targets, self.num_classes - 1)):
                    target = np.eye(self.num_classes, dtype=np.float32)[ranked[:, k]]
                    candidates.append(apgd.generate(x, y=target))
        correct = np.ones(len(x), bool)
        for x_adv in candidates:
            # Projected again onto the eps-ball and [0, 1]: the budget holds whatever rounding ART did.
            x_adv = np.clip(np.clip(x_adv, x - epsilon, x + epsilon), 0.0, 1.0).astype(np.float32)
            correct &= np.argmax(self.logits(x_adv), axis=1) == y
        return correct


def worst_case(per_attack):
    """Per example: correct after every attack ([n] bool) from {attack: [n] bool}."""
    return np.logical_and.reduce(list(per_attack.values()))


def gradient_free_only(per_attack, cascade=False):
    """Fraction of examples broken by a gradient-free attack and by none of the gradient attacks (None: not checked).

    `per_attack` is `AttackSuite.correct`'s result; with `cascade` its entries are cumulative in cascade order
    (gradient attacks first), so the examples the gradient-free attacks broke are those correct after the last
    gradient attack and wrong after the last attack.
    """
    free = [a for a in per_attack if a in GRADIENT_FREE]
    gradient = [a for a in per_attack if a not in GRADIENT_FREE]
    if not free or not gradient:
        return None
    if cascade:
        return float(np.mean(per_attack[gradient[-1]] & ~per_attack[free[-1]]))
    broken_free = ~np.logical_and.reduce([per_attack[a] for a in free])
    survived_gradient = np.logical_and.reduce([per_attack[a] for a in gradient])
    return float(np.mean(broken_free & survived_gradient))


def robustness_radius(suite, x, y, max_radius, steps, salt=0, log=None):
    """Per example, the smallest L-inf radius at which the worst case flips the prediction, by bisection.

    Returns numpy radii [n]: 0 where the clean prediction is already wrong, inf where the attacks cannot
    flip it at `max_radius` (censored), else the radius `hi` of the bracket [lo, hi] after `steps` halvings:
    the attacks found an adversarial example within hi but none within lo, so hi - lo = max_radius / 2^steps.
    Each step runs the attacks as a cascade (`AttackSuite.worst_case_correct`). `salt` varies the attacks'
    random starts between searches; `log`, if given, gets one line per step with the examples/s.
    """
    x = np.asarray(x, np.float32)
    y = np.asarray(y, np.int64)
    radius = np.zeros(len(x))
    clean = suite.clean_correct(x, y)

    def attack(index, epsilon, step):
        start = time.perf_counter()
        robust = suite.worst_case_correct(x[index], y[index], epsilon, salt=mix_seeds(salt, step))
        if log is not None:
            log(
                f"step {step}/{steps}: {len(index)} examples, "
                f"{len(index) / max(time.perf_counter() - start, 1e-9):.2f} examples/s"
            )
        return robust

    broken_at_max = ~attack(np.arange(len(x)), max_radius, 0) & clean
    radius[clean & ~broken_at_max] = np.inf
    searching = np.flatnonzero(broken_at_max)
    lo = np.zeros(len(searching))
    hi = np.full(len(searching), float(max_radius))
    for step in range(1, steps + 1):
        if not len(searching):
            break
        mid = (lo + hi) / 2
        robust = attack(searching, mid, step)
        lo = np.where(robust, mid, lo)
        hi = np.where(robust, hi, mid)
    radius[searching] = hi
    return radius


def radius_summary(radius, max_radius, steps):
    """The JSON record of a radius search: medians, censoring, accuracy at the largest radius, per example."""

    def median(values):
        value = float(np.median(values)) if len(values) else math.inf
        return value if math.isfinite(value) else None

    return {
        "median": median(radius),
        "median_correct": median(radius[radius > 0]),
        "median_rule": "median: over the subset, radius 0 where the clean prediction is wrong; median_correct: over "
        "the examples classified correctly clean; null when more than half are unbroken at max_radius",
        "examples": int(len(radius)),
        "max_radius": float(max_radius),
        "search_steps": int(steps),
        "resolution": float(max_radius) / 2**steps,
        "clean_wrong_fraction": float(np.mean(radius == 0)),
        "censored_fraction": float(np.mean(np.isinf(radius))),
        "accuracy_at_max_radius": float(np.mean(np.isinf(radius))),
        "per_example": [None if np.isinf(r) else float(r) for r in radius],
    }
