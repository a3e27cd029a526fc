"""The worst case over the attack ensemble (evaluate.worst_case and the accuracy stage) on models whose answer is known.

- a linear classifier, where the optimal L-inf attack has a closed form: the worst case and the robustness radius
  must match it;
- a classifier behind a rounding step (a zero gradient everywhere): the project's PGD and ART's APGD cannot break
  it, the gradient-free Square attack does, and the accuracy stage raises the gradient-masking flag;
- ART's own difference-of-logits-ratio loss against the vectorised one the evaluation gives APGD.
"""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from evaluate import report, stages, worst_case
from evaluate.stage_base import Common, Context, EvaluationError
from evaluate.stages.accuracy import Accuracy
from tests.conftest import tiny_stages

SHAPE = (8, 8, 1)
PIXELS = 64
SMALL = worst_case.Budgets(
    pgd_steps=10, pgd_restarts=1, apgd_steps=10, apgd_restarts=1, dlr_targets=2, square_queries=100
)


def _flat(x):
    return tf.reshape(x, [tf.shape(x)[0], PIXELS])


def _linear_problem(n=24, classes=3, seed=0):
    """Pixels in [0.3, 0.7] (the box [0, 1] never binds below eps 0.3), logits = x W + b."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(PIXELS, classes)).astype(np.float32)
    x = rng.uniform(0.3, 0.7, size=(n, *SHAPE)).astype(np.float32)
    b = -(x.reshape(n, -1) @ w).mean(axis=0)
    logits = x.reshape(n, -1) @ w + b
    y = np.argmax(logits, axis=1)
    y[:2] = (y[:2] + 1) % classes  # two examples wrong clean: radius 0, never counted as robust
    # Closed form: the example flips at the smallest eps with eps ||w_y - w_j||_1 >= logit_y - logit_j.
    radius = np.array(
        [
            0.0
            if np.argmax(logits[i]) != y[i]
            else min(
                (logits[i, y[i]] - logits[i, j]) / np.abs(w[:, y[i]] - w[:, j]).sum()
                for j in range(classes)
                if j != y[i]
            )
            for i in range(n)
        ]
    )
    return (lambda v: _flat(v) @ w + b), x, y, radius


def test_worst_case_and_radius_of_a_linear_classifier_match_the_closed_form():
    logits_fn, x, y, radius = _linear_problem()
    suite = worst_case.AttackSuite(logits_fn, 3, SHAPE, worst_case.ATTACKS, SMALL, batch_size=32)
    epsilon = float(np.median(radius[radius > 0]))
    per_attack = suite.correct(x, y, epsilon)
    expected = radius > epsilon
    near = np.abs(radius - epsilon) < 1e-4  # ties at float precision: either answer is right
    np.testing.assert_array_equal(worst_case.worst_case(per_attack)[~near], expected[~near])
    np.testing.assert_array_equal(suite.worst_case_correct(x, y, epsilon)[~near], expected[~near])  # the cascade
    # The cascade: gradient attacks first, Square last, each attack only on what the ones before it left correct,
    # so its entries only fall and the last is the worst case.
    attacked = {}
    cascade = suite.correct(x, y, epsilon, progress=lambda a, count, total: attacked.setdefault(a, total), cascade=True)
    assert list(cascade) == ["pgd", "apgd-ce", "apgd-dlr", "square"] == list(suite.cascade_order)
    np.testing.assert_array_equal(cascade["square"][~near], expected[~near])
    clean = suite.clean_correct(x, y)
    for before, after in zip([clean, *cascade.values()], cascade.values()):
        assert np.all(after <= before)
    for before, attack in zip([clean, *cascade.values()], cascade):
        assert attacked[attack] == before.sum(), attack
    assert attacked["square"] < clean.sum()  # the point of the cascade: Square sees only the survivors
    # Against target class t the optimum is eps sign(w_t - w_y), the direction of the targeted DLR gradient while y
    # is the top class: APGD-DLR over both wrong classes is optimal alone. Cross-entropy mixes the wrong classes'
    # directions, so PGD and APGD-CE may miss examples near the boundary, never break a robust one.
    np.testing.assert_array_equal(per_attack["apgd-dlr"][~near], expected[~near])
    for attack in ("pgd", "apgd-ce", "square"):
        assert np.all(per_attack[attack][expected]), attack
    # The radius: ART attacks take one eps per call, so each bisection step costs a call per distinct radius;
    # a small subset and the attacks that matter here keep this fast.
    suite = worst_case.AttackSuite(logits_fn, 3, SHAPE, ("pgd", "apgd-dlr"), SMALL, batch_size=16)
    max_radius, steps = 0.1, 5
    found = worst_case.robustness_radius(suite, x[:10], y[:10], max_radius, steps)
    radius = radius[:10]
    assert np.all(found[:2] == 0)
    np.testing.assert_array_equal(np.isinf(found), radius > max_radius)
    inside = np.isfinite(found)
    resolution = max_radius / 2**steps
    assert np.all(found[inside] >= radius[inside] - 1e-5)
    assert np.all(found[inside] <= radius[inside] + resolution + 1e-5), np.c_[radius, found]


def _rounding_classifier():
    """Three classes of noisy prototype images; the classifier sees the image rounded to 1/16 (zero gradient)."""
    rng = np.random.default_rng(1)
    prototypes = rng.choice([0.3, 0.7], size=(3, PIXELS)).astype(np.float32)
    w = (prototypes - prototypes.mean(axis=0)).T  # nearest-prototype scores

    def logits_fn(v):
        rounded = tf.stop_gradient(tf.round(v * 16.0) / 16.0)
        return _flat(rounded) @ w + 0.0 * tf.reduce_sum(_flat(v), axis=1, keepdims=True)

    def sample(n, seed):
        r = np.random.default_rng(seed)
        labels = r.integers(0, 3, size=n)
        images = prototypes[labels] + r.uniform(-0.05, 0.05, size=(n, PIXELS))
        return np.clip(images, 0, 1).reshape(n, *SHAPE).astype(np.float32), labels

    return logits_fn, sample


class _Encoder:
    """The rounding classifier's front as an 'encoder' for the accuracy stage (its probe is trained)."""

    def __init__(self, logits_fn):
        self.encode_mean = logits_fn
        self.image_shape = SHAPE
        self.name = "rounding"


@dataclasses.dataclass
class _SyntheticContext(Context):
    train: tuple = None

    def load_arrays(self, split, num_examples):
        return self.train


def _rounding_context(tmp_path, examples, train_examples, pgd_steps, restarts):
    """The accuracy stage's context on the rounding classifier: `examples` test images in one batch, and
    `train_examples` for the probe."""
    logits_fn, sample = _rounding_classifier()
    images, labels = sample(examples, seed=2)
    train_images, train_labels = sample(train_examples, seed=3)
    return _SyntheticContext(
        model=_Encoder(logits_fn),
        dataset="synthetic",
        images=images,
        labels={"class": labels},
        tasks={"class": 3},
        common=Common(batch_size=examples, pgd_steps=pgd_steps, restarts=restarts),
        output_dir=str(tmp_path),
        log=lambda _: None,
        train=(train_images, {"class": train_labels}),
    )


@pytest.mark.parametrize("cascade", [False, True], ids=["each_attack_alone", "cascade"])
def test_shattered_gradient_is_broken_by_square_and_flagged_as_gradient_masking(tmp_path, cascade):
    context = _rounding_context(tmp_path, 32, 600, pgd_steps=10, restarts=2)
    # The stage's default attacks (the reported worst case), the tests' tiny budgets (2 DLR targets, 6 radius
    # examples) but for these; its probe trains on the context's 600 examples.
    (stage,) = tiny_stages(
        str(tmp_path),
        ["accuracy"],
        epsilons=(0.0, 0.3),
        apgd_steps=10,
        square_queries=200,
        radius_search_steps=1,
        probe_epochs=20,
        cascade=cascade,
    )
    result = stage.run(context)
    accuracy = result["adversarial_accuracy_per_attack"]["class"]
    clean = result["adversarial_accuracy"]["class"]["0"]
    assert clean > 0.9
    assert list(accuracy) == ["pgd", "apgd-ce", "apgd-dlr", "square"]
    for attack in ("pgd", "apgd-ce", "apgd-dlr"):  # a zero gradient: gradient attacks go nowhere (alone or in turn)
        assert accuracy[attack]["0.3"] == clean, attack
    assert accuracy["square"]["0.3"] < 0.1
    assert result["adversarial_accuracy"]["class"]["0.3"] == accuracy["square"]["0.3"]  # the headline is Square's
    masking = result["gradient_masking"]
    assert masking["flagged"] and masking["by_task"]["class"]["gradient_free_only"]["0.3"] > 0.8
    assert "gradient-free attack broke" in masking["by_task"]["class"]["reasons"][0]
    assert result["robustness_radius"]["class"]["accuracy_at_max_radius"] == 0.0  # Square breaks all at 0.5
    assert set(result["attack_budgets"]) == set(worst_case.ATTACKS)
    assert result["attack_budgets"]["square"]["queries"] == 200
    # The report names cascade rows by what they add: "+ square" is the accuracy after every attack.
    table = report.per_attack_table({**result, "settings": {"cascade": cascade}})
    assert ("| class | + square |" in table) == cascade and ("| class | square |" in table) != cascade


def test_quick_is_the_project_pgd_alone_and_cannot_see_the_masking(tmp_path):
    context = _rounding_context(tmp_path, 16, 300, pgd_steps=5, restarts=1)
    result = Accuracy(epsilons=(0.3,), quick=True, radius_examples=0, probe_epochs=20).run(context)
    assert list(result["attack_budgets"]) == ["pgd"]
    assert result["adversarial_accuracy"]["class"]["0.3"] > 0.9  # PGD alone is fooled by the rounding
    assert result["gradient_masking"]["by_task"]["class"]["gradient_free_only"] == {"0.3": None}
    assert result["robustness_radius"] is None


def test_vectorised_dlr_loss_equals_arts_own():
    _, apgd_class, _ = worst_case._art()
    logits_fn, x, y, _ = _linear_problem(n=6, classes=5)
    suite = worst_case.AttackSuite(logits_fn, 5, SHAPE, ("apgd-ce",), SMALL, batch_size=6)
    arts = apgd_class(suite.classifier(), eps=0.1, loss_type="difference_logits_ratio", verbose=False).estimator
    ours = suite.classifier("dlr")
    target = np.eye(5, dtype=np.float32)[(y + 2) % 5]
    np.testing.assert_allclose(
        ours.compute_loss(x, target, reduction="none"), arts.compute_loss(x, target, reduction="none"), rtol=1e-5
    )
    np.testing.assert_allclose(ours.loss_gradient(x, target), arts.loss_gradient(x, target), rtol=1e-4, atol=1e-7)


def test_settings_are_checked_with_one_sentence_that_names_no_flag():
    for build, message in (
        (lambda: Accuracy(epsilons=(0.0, -0.1)), "epsilons must be finite and >= 0, got [0.0, -0.1]"),
        (lambda: Accuracy(attacks=("pgd", "fgsm")), "unknown attacks 'fgsm'; choose one of: pgd, apgd-ce"),
        (lambda: Accuracy(quick=True, attacks=("square",)), "give either quick or a list of attacks"),
        (lambda: Common(batch_size=0), "batch_size must be at least 1, got 0"),
        (lambda: stages.build(["accuracy", "fid"]), "unknown stage(s) fid; choose one of: accuracy, decoder"),
    ):
        with pytest.raises(EvaluationError) as error:
            build()
        assert message in str(error.value) and "--" not in str(error.value), str(error.value)
    assert Accuracy().attack_names == worst_case.ATTACKS and Accuracy(quick=True).attack_names == ("pgd",)
    assert Accuracy(epsilons=[0, 1]).epsilons == (0.0, 1.0)  # lists and ints are normalised


def test_every_setting_has_one_owner_and_becomes_a_flag():
    owners = stages.setting_owners()  # raises if two stages declared the same name
    assert owners["pgd_steps"] is Common and owners["square_queries"] is Accuracy
    assert owners["margin_attack_samples"].name == "margin"
    built = stages.build(["chains", "accuracy"], chain_steps=3, square_queries=7, lambdas=(1.0,))
    assert [s.name for s in built] == ["chains", "accuracy"] and built[0].chain_steps == 3
    assert built[1].square_queries == 7
