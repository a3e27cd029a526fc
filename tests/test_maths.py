"""The shared maths against TFP closed forms and Monte Carlo estimates."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from zoo import maths

tfd = tfp.distributions


def _diag_gaussians(seed, batch=4, dim=5):
    rng = np.random.default_rng(seed)
    mean = rng.normal(size=(batch, dim)).astype(np.float32)
    var = rng.uniform(0.05, 2.0, size=(batch, dim)).astype(np.float32)
    return tf.constant(mean), tf.constant(var)


def test_gaussian_kl_matches_tfp():
    q_mean, q_var = _diag_gaussians(0)
    p_mean, p_var = _diag_gaussians(1)
    expected = tfd.kl_divergence(
        tfd.MultivariateNormalDiag(q_mean, tf.sqrt(q_var)), tfd.MultivariateNormalDiag(p_mean, tf.sqrt(p_var))
    )
    np.testing.assert_allclose(maths.gaussian_kl(q_mean, q_var, p_mean, p_var), expected, rtol=1e-5)
    standard = tfd.kl_divergence(
        tfd.MultivariateNormalDiag(q_mean, tf.sqrt(q_var)), tfd.MultivariateNormalDiag(tf.zeros_like(q_mean))
    )
    np.testing.assert_allclose(maths.gaussian_kl(q_mean, q_var), standard, rtol=1e-5)


def test_gaussian_entropy_matches_tfp():
    mean, var = _diag_gaussians(2)
    expected = tfd.MultivariateNormalDiag(mean, tf.sqrt(var)).entropy()
    np.testing.assert_allclose(maths.gaussian_entropy(var), expected, rtol=1e-5)


@pytest.mark.parametrize("rho", [0.0, 0.5, 0.975, 0.999])
def test_coupling_log_prob_matches_monte_carlo(rho):
    z_mean, z_var = _diag_gaussians(3, batch=3)
    z_prime_mean, z_prime_var = _diag_gaussians(4, batch=3)
    z = tfd.MultivariateNormalDiag(z_mean, tf.sqrt(z_var)).sample(400_000, seed=(1, 2))
    z_prime = tfd.MultivariateNormalDiag(z_prime_mean, tf.sqrt(z_prime_var)).sample(400_000, seed=(3, 4))
    transition = tfd.MultivariateNormalDiag(rho * z, tf.fill(tf.shape(z), float(np.sqrt(1 - rho**2))))
    samples = transition.log_prob(z_prime)
    monte_carlo = tf.reduce_mean(samples, axis=0)
    standard_error = tf.math.reduce_std(samples, axis=0) / np.sqrt(400_000)
    closed_form = maths.coupling_log_prob(z_mean, z_var, z_prime_mean, z_prime_var, rho)
    assert np.all(np.abs(closed_form - monte_carlo) < 5 * standard_error + 1e-4 * np.abs(monte_carlo))


def test_coupling_log_prob_with_cross_covariance_matches_monte_carlo():
    rho = 0.9
    z_mean, z_var = _diag_gaussians(5, batch=2, dim=3)
    z_prime_mean, z_prime_var = _diag_gaussians(6, batch=2, dim=3)
    cross_cov = 0.5 * tf.sqrt(z_var * z_prime_var)  # correlation 0.5 per dimension
    # Sample the joint per dimension: z' = mean' + c/var (z - mean) + residual.
    z = tfd.MultivariateNormalDiag(z_mean, tf.sqrt(z_var)).sample(400_000, seed=(5, 6))
    residual_var = z_prime_var - tf.square(cross_cov) / z_var
    z_prime = (
        z_prime_mean
        + cross_cov / z_var * (z - z_mean)
        + tfd.MultivariateNormalDiag(tf.zeros_like(z_mean), tf.sqrt(residual_var)).sample(400_000, seed=(7, 8))
    )
    samples = tfd.MultivariateNormalDiag(rho * z, tf.fill(tf.shape(z), float(np.sqrt(1 - rho**2)))).log_prob(z_prime)
    closed_form = maths.coupling_log_prob(z_mean, z_var, z_prime_mean, z_prime_var, rho, cross_cov=cross_cov)
    standard_error = tf.math.reduce_std(samples, axis=0) / np.sqrt(400_000)
    assert np.all(np.abs(closed_form - tf.reduce_mean(samples, axis=0)) < 5 * standard_error)


def test_gaussian_log_likelihood_matches_tfp():
    rng = np.random.default_rng(7)
    x = tf.constant(rng.uniform(size=(3, 4, 4, 2)).astype(np.float32))
    mean = tf.constant(rng.uniform(size=(3, 4, 4, 2)).astype(np.float32))
    expected = tf.reduce_sum(tfd.Normal(mean, np.float32(np.sqrt(0.3))).log_prob(x), axis=[1, 2, 3])
    np.testing.assert_allclose(maths.gaussian_log_likelihood(x, mean, 0.3), expected, rtol=1e-5)


def test_bernoulli_log_likelihood_matches_tfp():
    rng = np.random.default_rng(8)
    x = tf.constant(rng.integers(0, 2, size=(3, 6)).astype(np.float32))
    logits = tf.constant(rng.normal(size=(3, 6)).astype(np.float32))
    expected = tf.reduce_sum(tfd.Bernoulli(logits=logits).log_prob(x), axis=-1)
    np.testing.assert_allclose(maths.bernoulli_log_likelihood(x, logits), expected, rtol=1e-5)


@pytest.mark.parametrize("rho", [-0.9, 0.0, 0.5, 0.95, 0.999])
def test_coupling_cross_cov_is_the_feasible_maximiser(rho):
    _, z_var = _diag_gaussians(9)
    _, z_prime_var = _diag_gaussians(10)
    psi = maths.coupling_cross_cov(z_var, z_prime_var, rho)
    gamma = rho / (1 - rho**2)
    # The root of gamma psi^2 + psi - gamma s s' = 0 in the paper's form, and the joint covariance stays PD.
    paper = (np.sqrt(1 + 4 * gamma**2 * z_var * z_prime_var) - 1) / (2 * gamma) if rho else np.zeros_like(z_var)
    np.testing.assert_allclose(psi, paper, rtol=1e-4, atol=1e-7)
    assert np.all(np.sign(psi) == np.sign(rho)) and np.all(np.square(psi) < z_var * z_prime_var)
    blocks = np.stack([np.stack([z_var, psi], -1), np.stack([psi, z_prime_var], -1)], -1)
    assert np.all(np.linalg.eigvalsh(blocks.astype(np.float64)) > 0)

    # It maximises the bound over every feasible cross-covariance: <log p_rho(z'|z)> + H[q(z, z')].
    def bound(c):
        coupling = maths.coupling_log_prob(tf.zeros_like(z_var), z_var, tf.zeros_like(z_var), z_prime_var, rho, c)
        return coupling + maths.joint_gaussian_entropy(z_var, z_prime_var, c)

    limit = np.sqrt(z_var * z_prime_var)
    for fraction in np.linspace(-0.99, 0.99, 41):
        assert np.all(bound(psi) >= bound(tf.constant(fraction * limit, tf.float32)) - 1e-5)


def test_joint_gaussian_entropy_matches_tfp():
    _, z_var = _diag_gaussians(11)
    _, z_prime_var = _diag_gaussians(12)
    cross_cov = maths.coupling_cross_cov(z_var, z_prime_var, 0.95)
    blocks = tf.stack([tf.stack([z_var, cross_cov], -1), tf.stack([cross_cov, z_prime_var], -1)], -1)
    pairs = tfd.MultivariateNormalTriL(tf.zeros(tf.shape(blocks)[:-1]), tf.linalg.cholesky(blocks))
    np.testing.assert_allclose(
        maths.joint_gaussian_entropy(z_var, z_prime_var, cross_cov), tf.reduce_sum(pairs.entropy(), -1), rtol=1e-5
    )
    independent = maths.gaussian_entropy(z_var) + maths.gaussian_entropy(z_prime_var)
    np.testing.assert_allclose(maths.joint_gaussian_entropy(z_var, z_prime_var, 0.0), independent, rtol=1e-6)


@pytest.mark.parametrize("rho", [0.5, 0.95, 0.999])
def test_smooth_encoder_bound_terms_match_monte_carlo(rho):
    # The joint posterior of the tighter bound, z, z' ~ N([m, m'], [[s, psi], [psi, s']]) per dimension:
    # <log p_rho(z'|z)> and H[q(z, z')] = -<log q(z, z')> against 400k TFP samples, rho up to 0.999.
    n = 400_000
    z_mean, z_var = _diag_gaussians(13, batch=2, dim=3)
    z_prime_mean, z_prime_var = _diag_gaussians(14, batch=2, dim=3)
    psi = maths.coupling_cross_cov(z_var, z_prime_var, rho)
    blocks = tf.stack([tf.stack([z_var, psi], -1), tf.stack([psi, z_prime_var], -1)], -1)
    joint = tfd.MultivariateNormalTriL(tf.stack([z_mean, z_prime_mean], -1), tf.linalg.cholesky(blocks))
    pairs = tf.cast(joint.sample(n, seed=(9, 10)), tf.float64)  # [n, batch, dim, 2]
    z, z_prime = pairs[..., 0], pairs[..., 1]
    conditional = tfd.Normal(rho * z, np.sqrt(1 - rho**2)).log_prob(z_prime)
    joint64 = tfd.MultivariateNormalTriL(
        tf.cast(joint.loc, tf.float64), tf.linalg.cholesky(tf.cast(blocks, tf.float64))
    )
    for closed_form, samples in (
        (maths.coupling_log_prob(z_mean, z_var, z_prime_mean, z_prime_var, rho, psi), tf.reduce_sum(conditional, -1)),
        (maths.joint_gaussian_entropy(z_var, z_prime_var, psi), -tf.reduce_sum(joint64.log_prob(pairs), -1)),
    ):
        standard_error = tf.math.reduce_std(samples, axis=0) / np.sqrt(n)
        error = np.abs(closed_form.numpy() - tf.reduce_mean(samples, axis=0).numpy())
        assert np.all(error < 5 * standard_error + 1e-4 * np.abs(closed_form)), (error, standard_error)
