"""GMM-DAE and beta-TCVAE maths: KS, two-sample KS and covariance losses, mixture moments, total correlation."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from zoo import maths
from zoo.models.gmm_dae import mixture_means

tfd = tfp.distributions


def _mixture(num_modes=4, dim=3, distance=6.0):
    means = mixture_means(num_modes, dim, distance).astype(np.float32)
    return means, np.ones_like(means), np.full([num_modes], 1.0 / num_modes, np.float32)


def _prior_samples(mixture, n, seed):
    means, stddevs, weights = mixture
    prior = tfd.MixtureSameFamily(tfd.Categorical(probs=weights), tfd.MultivariateNormalDiag(means, stddevs))
    return prior.sample(n, seed=tf.constant([seed, 0]))


@pytest.mark.parametrize("num_modes,dim", [(4, 3), (5, 3), (3, 6)])
def test_mixture_means_are_centred_and_equidistant(num_modes, dim):
    means = mixture_means(num_modes, dim, 6.0)
    np.testing.assert_allclose(means.mean(axis=0), 0.0, atol=1e-12)
    distances = np.linalg.norm(means[:, None] - means[None], axis=-1)[~np.eye(num_modes, dtype=bool)]
    np.testing.assert_allclose(distances.min(), 6.0)
    if num_modes <= dim:  # simplex: all equal; cross-polytope: opposite modes sqrt(2) further
        np.testing.assert_allclose(distances, 6.0)
    else:
        np.testing.assert_allclose(distances.max(), 6.0 * np.sqrt(2.0))


def test_marginal_cdf_matches_tfp_mixture():
    mixture = _mixture()
    means, stddevs, weights = mixture
    z = tf.random.stateless_normal([50, 3], (1, 2)) * 4.0
    for d in range(3):
        marginal = tfd.MixtureSameFamily(tfd.Categorical(probs=weights), tfd.Normal(means[:, d], stddevs[:, d]))
        np.testing.assert_allclose(maths.gmm_marginal_cdf(z, *mixture)[:, d], marginal.cdf(z[:, d]), atol=1e-6)


def test_ks_loss_is_near_zero_for_prior_draws_and_large_for_shifted_codes():
    mixture = _mixture()
    samples = _prior_samples(mixture, 2000, seed=3)
    prior_loss = float(maths.ks_loss(samples, *mixture))
    # For exact prior draws F(z_(n)) are uniform order statistics: E[(U_(n) - n/N)^2] averages to ~1/(6N).
    assert prior_loss < 3.0 / (6 * 2000)
    assert float(maths.ks_loss(samples + 2.0, *mixture)) > 100 * prior_loss
    assert float(maths.ks_loss(0.2 * samples, *mixture)) > 100 * prior_loss
    # Leading batch axes are batches of codes.
    batched = tf.reshape(samples, [4, 500, 3])
    np.testing.assert_allclose(
        maths.ks_loss(batched, *mixture), [maths.ks_loss(batched[i], *mixture) for i in range(4)], rtol=1e-6
    )


def test_ks_loss_gradients_are_finite_through_the_sort_and_descend():
    mixture = _mixture()
    z = tf.Variable(tf.concat([_prior_samples(mixture, 255, seed=4) + 1.5, tf.zeros([1, 3])], axis=0))
    z[0].assign(z[1])  # a tie in every dimension
    for _ in range(3):
        with tf.GradientTape() as tape:
            loss = maths.ks_loss(z, *mixture)
        gradient = tape.gradient(loss, z)
        assert np.all(np.isfinite(gradient)) and float(tf.reduce_sum(tf.abs(gradient))) > 0
        z.assign_sub(0.5 / float(tf.reduce_max(tf.abs(gradient))) * gradient)
        assert float(maths.ks_loss(z, *mixture)) < float(loss)


def test_two_sample_ks_loss_couples_pairs():
    mixture = _mixture()
    z = _prior_samples(mixture, 1000, seed=5)
    assert float(maths.two_sample_ks_loss(z, z, *mixture)) == 0.0
    near = float(maths.two_sample_ks_loss(z, z + 0.05, *mixture))
    far = float(maths.two_sample_ks_loss(z, z + 0.5, *mixture))
    assert 0.0 < near < far
    # The same distribution with the pairs broken is far from matched: the loss compares each code with its own.
    shuffled = tf.random.experimental.stateless_shuffle(z, seed=(1, 1))
    assert float(maths.two_sample_ks_loss(z, shuffled, *mixture)) > 10 * far
    z_adv = tf.Variable(z + 0.3)
    with tf.GradientTape() as tape:
        loss = maths.two_sample_ks_loss(z, z_adv, *mixture)
    assert np.all(np.isfinite(tape.gradient(loss, z_adv)))


def test_gmm_covariance_matches_monte_carlo_and_the_loss_vanishes_at_the_target():
    mixture = _mixture(num_modes=5, dim=3)
    samples = _prior_samples(mixture, 400_000, seed=6)
    target = maths.gmm_covariance(*mixture)
    np.testing.assert_allclose(np.cov(samples.numpy(), rowvar=False), target, atol=0.08)
    # Codes whitened and recoloured to have exactly the target covariance.
    x = tf.random.stateless_normal([500, 3], (2, 3), dtype=tf.float64)
    x = x - tf.reduce_mean(x, 0)
    whitened = x @ tf.transpose(tf.linalg.inv(tf.linalg.cholesky(maths.empirical_covariance(x))))
    codes = whitened @ tf.transpose(tf.linalg.cholesky(tf.cast(target, tf.float64)))
    assert float(maths.covariance_loss(codes, tf.cast(target, tf.float64))) < 1e-12
    assert float(maths.covariance_loss(codes, 2.0 * tf.cast(target, tf.float64))) > 0.1


@pytest.mark.parametrize("alpha", [0.0, 0.9, 1.0])
def test_coupled_covariance_target(alpha):
    mixture = _mixture()
    cov = maths.gmm_covariance(*mixture)
    target = maths.coupled_covariance(cov, alpha).numpy()
    np.testing.assert_allclose(target[:3, :3], cov)
    np.testing.assert_allclose(target[3:, 3:], cov)
    np.testing.assert_allclose(target[:3, 3:], alpha * cov.numpy())
    np.testing.assert_allclose(target[3:, :3], alpha * cov.numpy())
    z = _prior_samples(mixture, 4000, seed=7)
    stacked = maths.covariance_loss(tf.concat([z, z], -1), target)
    single = maths.covariance_loss(z, cov)
    if alpha == 1.0:  # z_adv = z is the alpha = 1 border case: the stacked loss is the single one
        np.testing.assert_allclose(stacked, single, rtol=1e-5)
    else:
        assert float(stacked) > float(single)


def _correlated_posteriors(cov, posterior_std, batch, seed):
    """Posterior means mu_j ~ N(0, cov) and one sample z_j ~ N(mu_j, s^2 I): q(z) = N(0, cov + s^2 I)."""
    rng = np.random.default_rng(seed)
    mean = rng.multivariate_normal(np.zeros(len(cov)), cov, size=batch)
    z = mean + posterior_std * rng.normal(size=mean.shape)
    var = np.full_like(mean, posterior_std**2)
    return tf.constant(z), tf.constant(mean), tf.constant(var)


def _analytic_tc(cov):
    return 0.5 * (np.sum(np.log(np.diag(cov))) - np.linalg.slogdet(cov)[1])


@pytest.mark.parametrize("dataset_size", [0, 10**9])
def test_total_correlation_matches_a_correlated_gaussian(dataset_size):
    cov = np.array([[1.0, 0.8, 0.3], [0.8, 1.0, 0.5], [0.3, 0.5, 1.0]])
    posterior_std = 0.5
    z, mean, var = _correlated_posteriors(cov, posterior_std, batch=2000, seed=0)
    expected = _analytic_tc(cov + posterior_std**2 * np.eye(3))  # 0.35 nats
    estimate = float(maths.total_correlation(z, mean, var, dataset_size))
    assert abs(estimate - expected) < 0.04, (estimate, expected)
    independent = _correlated_posteriors(np.eye(3), posterior_std, batch=2000, seed=1)
    assert abs(float(maths.total_correlation(*independent, dataset_size))) < 0.03


def test_total_correlation_weights_the_own_posterior_by_one_over_the_dataset_size():
    # With the whole dataset as the batch (N = M) every weight is 1/N: the exact aggregate posterior.
    z, mean, var = _correlated_posteriors(np.eye(2) + 0.5, 0.5, batch=6, seed=2)
    log_q = tfd.Normal(mean[None], tf.sqrt(var[None])).log_prob(z[:, None])  # [i, j, d]
    log_joint = tf.reduce_logsumexp(tf.reduce_sum(log_q, -1), axis=1) - np.log(6)
    log_marginals = tf.reduce_sum(tf.reduce_logsumexp(log_q, axis=1) - np.log(6), -1)
    np.testing.assert_allclose(maths.total_correlation(z, mean, var, 6), tf.reduce_mean(log_joint - log_marginals))
