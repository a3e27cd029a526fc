"""zoo.attacks: constraints, strength, restarts, seeds, gradient isolation and XLA."""

import numpy as np
import pytest
import tensorflow as tf

from zoo import attacks

BATCH, DIM = 8, 12


def _inputs():
    # Pixels at, near and away from the range ends, so projection onto [0, 1] matters.
    rng = np.random.default_rng(0)
    x = rng.choice([0.0, 0.02, 0.5, 0.97, 1.0], size=(BATCH, DIM)).astype("float32")
    return tf.constant(x)


def _mlp_change():
    """A fixed random 2-layer ReLU net g; objective: squared change of g's output (non-concave)."""
    rng = np.random.default_rng(1)
    w1 = tf.constant(rng.normal(size=(DIM, 32)).astype("float32"))
    w2 = tf.constant(rng.normal(size=(32, 4)).astype("float32"))

    def g(x):
        return tf.nn.relu(x @ w1 - 0.5) @ w2

    def make(x):
        return lambda x_adv: tf.reduce_sum(tf.square(g(x_adv) - g(x)), axis=1)

    return make


def _linear(w):
    return lambda x_adv: tf.reduce_sum(x_adv * w, axis=1)


def _ball_distance(delta, norm):
    flat = tf.reshape(delta, [delta.shape[0], -1])
    return tf.reduce_max(tf.abs(flat), axis=1) if norm == "linf" else tf.norm(flat, axis=1)


@pytest.mark.parametrize("norm,epsilon", [("linf", 0.3), ("l2", 1.0)])
def test_every_iterate_stays_in_the_ball_and_the_range(norm, epsilon):
    x = _inputs()
    seen = []
    change = _mlp_change()(x)

    def objective(x_adv):
        seen.append(x_adv.numpy())  # eager: the objective sees every iterate
        return change(x_adv)

    x_adv = attacks.pgd(objective, x, epsilon, steps=6, norm=norm, restarts=2, seed=tf.constant([3, 4]))
    seen.append(x_adv.numpy())
    assert len(seen) == 2 * (6 + 1) + 1
    for it in seen:
        assert np.all(it >= 0.0) and np.all(it <= 1.0)
        assert np.all(_ball_distance(tf.constant(it) - x, norm).numpy() <= epsilon + 1e-5)
    # The attack moves the inputs (it is not stuck at x).
    assert np.max(_ball_distance(x_adv - x, norm).numpy()) > 0.5 * epsilon


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_reaches_the_closed_form_optimum_of_a_linear_objective(norm):
    # max w.(x + d) over the ball, with x = 0.5 and eps small enough that [0, 1] does not bind:
    # eps * ||w||_1 for L-inf, eps * ||w||_2 for L2.
    w = tf.constant(np.random.default_rng(2).normal(size=(1, DIM)).astype("float32"))
    x = tf.fill([BATCH, DIM], 0.5)
    epsilon = 0.1 if norm == "linf" else 0.3
    x_adv = attacks.pgd(_linear(w), x, epsilon, steps=10, norm=norm, random_start=False)
    gain = _linear(w)(x_adv) - _linear(w)(x)
    optimum = epsilon * tf.norm(w, ord=1 if norm == "linf" else 2)
    np.testing.assert_allclose(gain.numpy(), np.full(BATCH, optimum.numpy()), rtol=1e-3)


@pytest.mark.parametrize("norm,epsilon", [("linf", 0.05), ("l2", 0.5)])
def test_pgd_is_far_stronger_than_uniform_noise_of_the_same_radius(norm, epsilon):
    # A fixed random ReLU net on 256 inputs: the attack's gain grows like the dimension, noise's like its root.
    rng = np.random.default_rng(3)
    w1 = tf.constant(rng.normal(size=(256, 32)).astype("float32") / 16.0)
    w2 = tf.constant(rng.normal(size=(32, 4)).astype("float32"))
    x = tf.constant(rng.uniform(0.2, 0.8, size=(BATCH, 256)).astype("float32"))
    g = lambda v: tf.nn.relu(v @ w1) @ w2  # noqa: E731
    objective = lambda x_adv: tf.reduce_sum(tf.square(g(x_adv) - g(x)), axis=1)  # noqa: E731
    attacked = objective(attacks.pgd(objective, x, epsilon, steps=10, norm=norm, seed=tf.constant([5, 6]))).numpy()
    # The best of 20 uniform draws from the same ball, per example.
    draws = [
        attacks.project(attacks._random_start(x, epsilon, norm, tf.constant([7, k])), x, epsilon, norm)
        for k in range(20)
    ]
    noise = np.max([objective(d).numpy() for d in draws], axis=0)
    assert np.all(attacked > 10.0 * noise), (attacked, noise)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_restarts_never_lower_the_objective_and_seeds_reproduce(norm):
    x = _inputs()
    objective = _mlp_change()(x)
    seed = tf.constant([11, 12])
    kwargs = dict(epsilon=0.2, steps=3, norm=norm, seed=seed)
    one = objective(attacks.pgd(objective, x, restarts=1, **kwargs)).numpy()
    five = objective(attacks.pgd(objective, x, restarts=5, **kwargs)).numpy()
    assert np.all(five >= one)
    assert np.any(five > one)  # on this non-concave objective some restart finds a better point
    again = attacks.pgd(objective, x, restarts=1, **kwargs)
    np.testing.assert_array_equal(again.numpy(), attacks.pgd(objective, x, restarts=1, **kwargs).numpy())
    other = attacks.pgd(objective, x, restarts=1, epsilon=0.2, steps=3, norm=norm, seed=tf.constant([13, 14]))
    assert not np.array_equal(other.numpy(), again.numpy())


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_one_radius_per_example(norm):
    x = _inputs()
    radii = tf.linspace(0.0, 0.3, BATCH)
    x_adv = attacks.pgd(_mlp_change()(x), x, radii, steps=4, norm=norm, seed=tf.constant([8, 9]))
    distance = _ball_distance(x_adv - x, norm).numpy()
    assert np.all(distance <= radii.numpy() + 1e-6) and distance[0] == 0.0 and np.all(distance[1:] > 0.0)


def test_pgd_finds_the_closed_form_optimum_of_a_linear_objective():
    # max w.x over ||d||_inf <= eps and x + d in [0, 1]: x + eps sign(w), clipped (from any start in the
    # ball, unseeded random ones too); over ||d||_2 <= eps (away from the box): x + eps w / ||w|| (from x:
    # from a random start, projection shrinks the start's part orthogonal to w only gradually).
    x = tf.fill([BATCH, 4, 4, 1], 0.5) + tf.random.stateless_uniform([BATCH, 4, 4, 1], (1, 1), -0.3, 0.3)
    w = tf.random.stateless_normal([1, 4, 4, 1], (2, 2))
    objective = lambda v: tf.reduce_sum(tf.reshape(w * v, [BATCH, -1]), axis=-1)  # noqa: E731
    optimum = {"linf": tf.clip_by_value(x + 0.25 * tf.sign(w), 0.0, 1.0), "l2": x + 0.15 * w / tf.norm(w)}
    for norm, epsilon, starts in (("linf", 0.25, (False, True)), ("l2", 0.15, (False,))):
        for random_start in starts:
            x_adv = attacks.pgd(objective, x, epsilon, steps=20, norm=norm, restarts=2, random_start=random_start)
            np.testing.assert_allclose(x_adv.numpy(), optimum[norm].numpy(), atol=1e-4)


def test_fgsm_is_one_signed_step_of_size_epsilon():
    w = tf.constant([[1.0, -2.0, 0.5, -0.1]])
    x = tf.constant([[0.5, 0.5, 0.95, 0.02]])
    x_adv = attacks.fgsm(_linear(w), x, 0.1)
    np.testing.assert_allclose(x_adv.numpy(), [[0.6, 0.4, 1.0, 0.0]], atol=1e-6)


def test_no_gradient_leaks_through_the_returned_inputs():
    v = tf.Variable(tf.ones([DIM, 3]))
    x = _inputs()
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        objective = lambda x_adv: tf.reduce_sum(tf.square(x_adv @ v - x @ v), axis=1)  # noqa: E731
        x_adv = attacks.pgd(objective, x, 0.1, steps=2, seed=tf.constant([0, 0]))
        loss = tf.reduce_sum(x_adv @ tf.ones([DIM, 1]))
    assert tape.gradient(loss, v) is None
    assert tape.gradient(loss, x) is None


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_runs_under_xla(norm):
    x = _inputs()
    objective = _mlp_change()(x)
    epsilon = 0.1 if norm == "linf" else 0.5
    kwargs = dict(epsilon=epsilon, steps=5, norm=norm)
    attack = tf.function(lambda x, seed: attacks.pgd(objective, x, restarts=2, seed=seed, **kwargs), jit_compile=True)
    attack_unseeded = tf.function(lambda x: attacks.pgd(objective, x, restarts=2, **kwargs), jit_compile=True)
    attack_fixed_start = tf.function(
        lambda x: attacks.pgd(objective, x, random_start=False, **kwargs), jit_compile=True
    )

    seed = tf.constant([21, 22])
    compiled = attack(x, seed)
    np.testing.assert_array_equal(compiled.numpy(), attack(x, seed).numpy())  # stateless: reproducible
    assert not np.array_equal(compiled.numpy(), attack(x, tf.constant([23, 24])).numpy())
    for x_adv in (compiled, attack_unseeded(x)):
        assert np.all(x_adv.numpy() >= 0.0) and np.all(x_adv.numpy() <= 1.0)
        assert np.all(_ball_distance(x_adv - x, norm).numpy() <= epsilon + 1e-5)
        assert np.all(objective(x_adv).numpy() > 0.0)
    # XLA's stateless random streams differ from the TF kernels', so compare compiled and eager without them.
    eager = attacks.pgd(objective, x, random_start=False, **kwargs)
    np.testing.assert_allclose(objective(attack_fixed_start(x)).numpy(), objective(eager).numpy(), rtol=1e-4)


def test_bad_arguments_raise():
    x = _inputs()
    with pytest.raises(ValueError, match="norm"):
        attacks.pgd(_linear(1.0), x, 0.1, steps=1, norm="l1")
    with pytest.raises(ValueError, match="restarts"):
        attacks.pgd(_linear(1.0), x, 0.1, steps=1, restarts=0)
