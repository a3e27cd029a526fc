"""Pure maths shared by the models: every function maps tensors to tensors.

Distributions here are diagonal Gaussians given by mean and variance vectors;
each function sums over the last (latent or pixel) axis and keeps the batch
axes, so callers choose how to average. Tests check each against TFP closed
forms or Monte Carlo estimates (tests/test_maths.py).
"""

import math

import tensorflow as tf

_LOG_2PI = math.log(2.0 * math.pi)


def gaussian_kl(q_mean, q_var, p_mean=0.0, p_var=1.0):
    """KL(N(q_mean, q_var) || N(p_mean, p_var)) for diagonal Gaussians, summed over the last axis."""
    p_mean = tf.cast(p_mean, q_mean.dtype)
    p_var = tf.cast(p_var, q_mean.dtype)
    per_dim = 0.5 * (tf.math.log(p_var) - tf.math.log(q_var) + (q_var + tf.square(q_mean - p_mean)) / p_var - 1.0)
    return tf.reduce_sum(per_dim, axis=-1)


def gaussian_entropy(var):
    """Differential entropy of N(., var), diagonal, summed over the last axis."""
    return 0.5 * tf.reduce_sum(_LOG_2PI + 1.0 + tf.math.log(var), axis=-1)


def coupling_log_prob(z_mean, z_var, z_prime_mean, z_prime_var, rho, cross_cov=0.0):
    """<log p_rho(z'|z)> with p_rho(z'|z) = N(z'; rho z, (1 - rho^2) I).

    The expectation is over z ~ N(z_mean, z_var) and z' ~ N(z_prime_mean,
    z_prime_var) with per-dimension covariance `cross_cov` between z and z'
    (0 for the independent AVAE pair, psi for the Smooth Encoder's joint
    posterior). Closed form, since E[(z' - rho z)^2] only needs the first two
    moments: var' + mean'^2 - 2 rho (cov + mean mean') + rho^2 (var + mean^2).
    """
    rho = tf.cast(rho, z_mean.dtype)
    cond_var = 1.0 - tf.square(rho)
    expected_square = (
        z_prime_var
        + tf.square(z_prime_mean)
        - 2.0 * rho * (cross_cov + z_mean * z_prime_mean)
        + tf.square(rho) * (z_var + tf.square(z_mean))
    )
    per_dim = -0.5 * (_LOG_2PI + tf.math.log(cond_var)) - 0.5 * expected_square / cond_var
    return tf.reduce_sum(per_dim, axis=-1)


def coupling_cross_cov(z_var, z_prime_var, rho):
    """The Smooth Encoder's cross-covariance psi of z and z' (AVAE paper, appendix C.3.1).

    Per dimension, psi maximises <log p_rho(z'|z)> + H[q(z, z')] over joint Gaussians with marginal
    variances z_var, z_prime_var, i.e. gamma psi + log(z_var z_prime_var - psi^2) / 2 with gamma =
    rho / (1 - rho^2). It is the feasible root (|psi| < sqrt(z_var z_prime_var)) of gamma psi^2 + psi
    - gamma z_var z_prime_var = 0, psi = (sqrt(1 + 4 gamma^2 s s') - 1) / (2 gamma), written here as
    2 gamma s s' / (sqrt(1 + 4 gamma^2 s s') + 1): no cancellation for small gamma, 0 at rho = 0.
    """
    rho = tf.cast(rho, z_var.dtype)
    gamma = rho / (1.0 - tf.square(rho))
    product = z_var * z_prime_var
    return 2.0 * gamma * product / (tf.sqrt(1.0 + 4.0 * tf.square(gamma) * product) + 1.0)


def joint_gaussian_entropy(z_var, z_prime_var, cross_cov):
    """H[q(z, z')] for jointly Gaussian z, z' with diagonal covariances and per-dimension cross-covariance.

    Each dimension is a 2x2 block [[var, c], [c, var']], so H = sum_i log(2 pi e) + log(var var' - c^2) / 2;
    with c = 0 it is the sum of the two marginal entropies.
    """
    determinant = z_var * z_prime_var - tf.square(cross_cov)
    return tf.reduce_sum(_LOG_2PI + 1.0 + 0.5 * tf.math.log(determinant), axis=-1)


def gaussian_log_likelihood(x, mean, obs_var):
    """log N(x; mean, obs_var I), summed over every non-batch axis."""
    obs_var = tf.cast(obs_var, x.dtype)
    per_pixel = -0.5 * (_LOG_2PI + tf.math.log(obs_var) + tf.square(x - mean) / obs_var)
    return tf.reduce_sum(tf.reshape(per_pixel, [tf.shape(x)[0], -1]), axis=-1)


def bernoulli_log_likelihood(x, logits):
    """log Bernoulli(x; sigmoid(logits)) (x may be grey levels in [0, 1]), summed over non-batch axes."""
    per_pixel = -tf.nn.sigmoid_cross_entropy_with_logits(labels=x, logits=logits)
    return tf.reduce_sum(tf.reshape(per_pixel, [tf.shape(x)[0], -1]), axis=-1)
