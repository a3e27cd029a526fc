"""Pure parts of evaluate/: MS-SSIM settings, the margin bound, attack and search, probes, chains, the interface."""

import numpy as np
import pytest
import scipy.stats
import tensorflow as tf

from evaluate import chains_maths, interface, margin_maths, msssim, probes, worst_case


# --- MS-SSIM -----------------------------------------------------------------------------------------


def test_ms_ssim_settings_for_small_and_large_images():
    weights, size, sigma = msssim.settings(28, 28)
    assert (len(weights), size, sigma) == (3, 7, 1.0)
    assert sum(weights) == pytest.approx(1.0)
    assert len(msssim.settings(32, 32)[0]) == 3
    assert len(msssim.settings(64, 64)[0]) == 4
    assert msssim.settings(256, 256) == (msssim.STANDARD_WEIGHTS, 11, 1.5)
    with pytest.raises(ValueError, match="at least"):
        msssim.settings(5, 5)


def test_ms_ssim_on_28x28_colour_images():
    rng = np.random.default_rng(0)
    x = np.zeros((4, 28, 28, 3), np.float32)
    x[:, 8:20, 10:18, :] = 1.0  # a block "digit"
    x += rng.uniform(0, 0.1, size=x.shape).astype(np.float32)
    x = np.clip(x, 0, 1)
    same = msssim.ms_ssim(x, x).numpy()
    np.testing.assert_allclose(same, 1.0, atol=1e-5)
    slightly = msssim.ms_ssim(x, np.clip(x + rng.normal(0, 0.05, x.shape), 0, 1).astype(np.float32)).numpy()
    very = msssim.ms_ssim(x, rng.uniform(size=x.shape).astype(np.float32)).numpy()
    assert np.all((0 <= very) & (very < slightly) & (slightly < 1.0))


# --- margin ------------------------------------------------------------------------------------------


def test_margin_bound_formula_and_probability_clipping():
    bound = margin_maths.margin_bound([0.5, 0.5, 0.2], [0.8, 0.5, 0.3], [2.0, 2.0, 1.0]).numpy()
    np.testing.assert_allclose(bound, [0.5 * scipy.stats.norm.ppf(0.8) / 2.0, 0.0, 0.2 * scipy.stats.norm.ppf(0.3)])
    clipped = margin_maths.clip_probability([0.0, 1.0, 0.7], num_samples=10).numpy()
    np.testing.assert_allclose(clipped, [0.05, 0.95, 0.7])


def test_jacobian_frobenius_of_a_linear_encoder():
    a = np.random.default_rng(0).normal(size=(12, 3)).astype(np.float32)

    def encode(x):
        return tf.reshape(x, [tf.shape(x)[0], -1]) @ a

    x = tf.random.uniform([5, 2, 2, 3])
    np.testing.assert_allclose(
        margin_maths.jacobian_frobenius(encode, x).numpy(), np.full(5, np.linalg.norm(a)), rtol=1e-5
    )


def test_robust_probability_matches_the_chi_distribution():
    # Identity decoder, isotropic posterior: ||sigma eta|| <= r has probability chi2_D((r / sigma)^2).
    dim, sigma, r = 6, 0.5, 1.2
    z = tf.zeros([3, dim])
    p = margin_maths.robust_probability(
        lambda z: z, z, sigma * tf.ones([3, dim]), z, r, num_samples=2000, seed=tf.constant([1, 2])
    ).numpy()
    np.testing.assert_allclose(p, scipy.stats.chi2.cdf((r / sigma) ** 2, dim), atol=0.03)
    deterministic = margin_maths.sampled_distances(lambda z: z, z + 1.0, None, z, 5, tf.constant([1, 2]))
    np.testing.assert_allclose(deterministic.numpy(), np.full((3, 1), np.sqrt(dim)), rtol=1e-6)


def test_attack_with_per_example_radii_respects_each_ball_and_reaches_the_linear_optimum():
    w = tf.constant(np.random.default_rng(3).normal(size=(1, 64)).astype(np.float32))
    x = tf.fill([3, 64], 0.5)
    radii = tf.constant([0.05, 0.2, 0.8])
    x_adv = margin_maths.attack_with_radii(
        lambda v: tf.reduce_sum(v * w, axis=1), x, radii, steps=20, restarts=1, seed=tf.constant([0, 1])
    )
    moved = tf.norm(x_adv - x, axis=1).numpy()
    assert np.all(moved <= radii.numpy() * (1 + 1e-4))
    assert np.all((x_adv.numpy() >= 0) & (x_adv.numpy() <= 1))
    gain = tf.reduce_sum((x_adv - x) * w, axis=1).numpy()
    optimum = radii.numpy() * np.linalg.norm(w.numpy())
    assert np.all(gain <= optimum * (1 + 1e-4)) and np.all(gain >= 0.97 * optimum)


def _identity_autoencoder(dim):
    return (lambda x: tf.reshape(x, [tf.shape(x)[0], dim])), (lambda z: z)


def test_empirical_margin_of_a_deterministic_identity_autoencoder_brackets_r():
    # g(mu(x + d)) - g(mu(x)) = d: r-robust exactly while ||d|| <= r, so the margin is r.
    dim, r = 64, 0.3
    encode, decode = _identity_autoencoder(dim)
    robust_at = margin_maths.make_robust_at(encode, decode, None, r, num_samples=1, steps=10, restarts=1)
    x = tf.fill([4, dim], 0.5)
    lo, hi = margin_maths.empirical_margin(robust_at, x, np.ones(4, bool), 1e-3, 10.0, 12, tf.constant([0, 0]))
    assert np.all(lo <= r) and np.all(r <= hi * (1 + 1e-4))
    assert np.all(hi / lo < 1.1)
    # Not r-robust even unperturbed: margin 0.
    lo, hi = margin_maths.empirical_margin(robust_at, x, np.zeros(4, bool), 1e-3, 10.0, 3, tf.constant([0, 0]))
    assert np.all(lo == 0) and np.all(hi == 0)


def test_margin_bound_holds_against_the_attack_for_an_isotropic_gaussian_encoder():
    dim, sigma, r, samples = 16, 0.05, 0.4, 512
    encode, decode = _identity_autoencoder(dim)

    def stddev(x):
        return sigma * tf.ones([tf.shape(x)[0], dim])

    x = tf.fill([4, dim], 0.5)
    z = encode(x)
    p = margin_maths.robust_probability(decode, z, stddev(x), decode(z), r, samples, tf.constant([3, 3])).numpy()
    assert np.all(p > 0.5)
    bound = margin_maths.margin_bound(
        np.full(4, sigma), margin_maths.clip_probability(p, samples), margin_maths.jacobian_frobenius(encode, x)
    ).numpy()
    robust_at = margin_maths.make_robust_at(encode, decode, stddev, r, samples, steps=10, restarts=1)
    lo, hi = margin_maths.empirical_margin(
        robust_at, x, p > 0.5, 1e-3, 10.0, 10, tf.constant([0, 0]), tf.constant([3, 3])
    )
    assert np.all(bound > 0) and np.all(bound <= hi)
    assert np.all(hi < r)  # encoder noise uses part of the budget r


def test_maximum_damage_attack_goes_through_the_posterior_noise():
    # The encoder mean ignores the input and sigma(x) = mean pixel: only the noise term of Camuto et al.'s
    # g(mu(x + d) + sigma(x + d) eta) reacts to d. An attack on the mean alone cannot move the decoder input;
    # this one raises sigma (every pixel up by the radius) and breaks r-robustness.
    dim, r = 16, 1.0

    def encode(x):
        return 0.0 * tf.reshape(x, [tf.shape(x)[0], dim])

    def stddev(x):
        return tf.reduce_mean(tf.reshape(x, [tf.shape(x)[0], dim]), axis=1, keepdims=True) * tf.ones([1, dim])

    def decode(z):
        return z

    x = tf.fill([3, dim], 0.1)  # sigma 0.1: ||sigma eta|| ~ 0.1 sqrt(16) = 0.4 < r, robust unperturbed
    noise = tf.random.stateless_normal([8, 3, dim], [0, 1])
    objective = margin_maths.max_damage_objective(encode, decode, x, stddev, noise)
    moved = tf.fill([3, dim], 0.6)
    expected = np.mean(np.linalg.norm(0.6 * noise.numpy(), axis=2), axis=0)
    np.testing.assert_allclose(objective(moved).numpy(), expected, rtol=1e-5)
    # The mean alone: no damage.
    assert np.all(margin_maths.max_damage_objective(encode, decode, x)(moved).numpy() < 1e-5)
    robust_at = margin_maths.make_robust_at(encode, decode, stddev, r, num_samples=256, steps=10, restarts=1)
    robust, x_adv = robust_at(x, tf.fill([3], 2.4), tf.constant([0, 0]), tf.constant([5, 5]))
    # L2 radius 2.4 over 16 pixels lets every pixel rise by 0.6 to 0.7: ||0.7 eta|| ~ 2.8 > r.
    assert not np.any(robust.numpy())
    np.testing.assert_allclose(tf.norm(x_adv - x, axis=1).numpy(), 2.4, rtol=1e-3)
    robust_mean_only, _ = margin_maths.make_robust_at(encode, decode, None, r, 1, steps=10, restarts=1)(
        x, tf.fill([3], 2.4), tf.constant([0, 0]), tf.constant([5, 5])
    )
    assert np.all(robust_mean_only.numpy())


# --- probes ------------------------------------------------------------------------------------------


def test_linear_probe_learns_separable_classes_on_raw_features():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 5)) * 4 + 10.0  # far from zero: the folded standardisation matters
    labels = rng.integers(0, 3, size=600)
    features = centres[labels] + rng.normal(size=(600, 5)) * 0.5
    w, b = probes.train_linear_probe(features, labels, 3, epochs=20)
    assert w.shape == (5, 3) and b.shape == (3,)
    assert np.mean(np.argmax(features @ w + b, axis=1) == labels) > 0.97


def test_global_probe_scaling_gives_a_near_constant_dimension_a_small_raw_weight():
    # Two dimensions, equally informative once standardised: dimension 0 on the scale 1, dimension 1 on the
    # scale 1e-3 (near-constant). Per-dimension scaling divides the weight of dimension 1 by its std 5e-4, so
    # its raw weight is ~1000x that of dimension 0 (the weak spot an attack exploits); global scaling divides
    # both by one scale, so the raw weights stay alike and dimension 1 barely moves the logits.
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, size=400)
    signal = labels[:, None] * 2.0 - 1.0 + rng.normal(size=(400, 2)) * 0.5
    features = (signal * np.array([1.0, 1e-3]) + np.array([5.0, 3.0])).astype(np.float32)
    w_dim, b_dim = probes.train_linear_probe(features, labels, 2)
    w_glob, b_glob = probes.train_linear_probe(features, labels, 2, scaling="global")
    np.testing.assert_array_equal(w_dim, probes.train_linear_probe(features, labels, 2, scaling="dimension")[0])
    for w, b in ((w_dim, b_dim), (w_glob, b_glob)):  # both folded back: linear in the raw features
        assert np.mean(np.argmax(features @ w + b, axis=1) == labels) > 0.95
    margin_dim, margin_glob = np.abs(w_dim[:, 1] - w_dim[:, 0]), np.abs(w_glob[:, 1] - w_glob[:, 0])
    assert margin_dim[1] > 300 * margin_dim[0]
    assert margin_glob[1] < 3 * margin_glob[0]
    assert margin_dim[1] > 300 * margin_glob[1]
    with pytest.raises(ValueError, match="scaling"):
        probes.train_linear_probe(features, labels, 2, scaling="none")


def test_attack_objective_ranks_any_misclassified_input_above_every_correct_one():
    labels = tf.constant([0, 0], tf.int32)
    # Example 0: correct but unsure (high CE); example 1: wrong with a small margin (lower CE).
    logits = tf.constant([[0.1, 0.0, 0.0, 0.0, 0.0], [1.0, 1.01, -9.0, -9.0, -9.0]])
    values = worst_case.attack_objective(lambda _: logits, labels)(None).numpy()
    assert values[1] > values[0]
    assert values[0] == pytest.approx(float(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)[0]))


def test_project_pgd_accuracy_of_a_linear_model_matches_the_closed_form():
    # Encoder = identity on 2 pixels, probe logits (x0 - x1, x1 - x0): the label-0 example with
    # x0 - x1 = 0.2 flips exactly when 2 eps > 0.2 (L-inf).
    w = tf.constant([[1.0, -1.0], [-1.0, 1.0]])
    x = tf.reshape(tf.constant([0.6, 0.4]), [1, 2, 1, 1])
    labels = tf.constant([0], tf.int32)
    correct = worst_case.make_pgd_correct(lambda v: tf.reshape(v, [-1, 2]) @ w, steps=10, restarts=2)
    for epsilon, expected in ((0.05, True), (0.09, True), (0.11, False), (0.3, False)):
        assert bool(correct(x, labels, tf.constant(epsilon), tf.constant([0, 1]))[0]) is expected
    # One radius per example: the same example at 0.09 and at 0.11.
    both = correct(tf.concat([x, x], 0), tf.constant([0, 0]), tf.constant([0.09, 0.11]), tf.constant([0, 1]))
    assert both.numpy().tolist() == [True, False]


# --- chains and the interface --------------------------------------------------------------------------


def test_chain_of_a_consistent_autoencoder_does_not_drift_and_an_inconsistent_one_does():
    x = tf.random.uniform([3, 4])
    images, latents = chains_maths.encode_decode_chain(lambda v: v, lambda z: z, x, steps=4)
    assert images.shape == (5, 3, 4) and latents.shape == (5, 3, 4)
    assert chains_maths.drift(latents) == pytest.approx([0.0] * 5)
    _, latents = chains_maths.encode_decode_chain(lambda v: v, lambda z: z + 0.5, x, steps=4)
    # ||0.5 k 1_4||
    np.testing.assert_allclose(chains_maths.drift(latents), [0.5 * k * 2.0 for k in range(5)], rtol=1e-5)


def test_interface_reads_the_zoo_model_interface():
    import zoo

    vae = zoo.get_model_class("vae")(image_shape=(8, 8, 1), arch="mlp", latent_dim=3)
    view = interface.from_model(vae)
    x = tf.random.uniform([2, 8, 8, 1])
    posterior = vae.posterior(x)
    np.testing.assert_allclose(view.encode_mean(x).numpy(), posterior.mean().numpy(), rtol=1e-6)
    np.testing.assert_allclose(view.stddev(x).numpy(), posterior.stddev().numpy(), rtol=1e-6)
    assert view.sample_prior(5, tf.constant([0, 1])).shape == (5, 3)
    assert view.image_shape == (8, 8, 1) and view.name == "vae"
