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


# --- Robust GMM deterministic autoencoders (eqs. 3-10 of the robust GMM-DAE paper) and the total
# --- correlation of beta-TCVAE (Chen et al., 2018). Codes are [..., N, D]: N examples on axis -2.


def gmm_marginal_cdf(z, means, stddevs, weights):
    """Eq. (3): per-dimension CDF of a diagonal Gaussian mixture, sum_k w_k Phi((z_d - mu_kd) / sigma_kd).

    z: [..., D]; means, stddevs: [K, D]; weights: [K]. Returns [..., D].
    """
    standardised = (z[..., None, :] - means) / stddevs
    return tf.reduce_sum(weights[:, None] * 0.5 * tf.math.erfc(-standardised / math.sqrt(2.0)), axis=-2)


def ks_loss(z, means, stddevs, weights):
    """Eq. (4): (1/D) sum_d MSE_n(Fbar_d(z_nd), F_GMM,d(z_nd)) for codes z [..., N, D].

    At the n-th smallest code of a dimension the empirical CDF (eq. 2) is n/N, so each dimension is
    sorted and the mixture CDF of its sorted codes is compared with the levels n/N. The sort passes
    gradients to the codes it orders. Returns [...].
    """
    n = tf.shape(z)[-2]
    levels = tf.cast(tf.range(1, n + 1), z.dtype) / tf.cast(n, z.dtype)
    cdf = gmm_marginal_cdf(tf.sort(z, axis=-2), means, stddevs, weights)
    return tf.reduce_mean(tf.square(cdf - levels[:, None]), axis=[-2, -1])


def two_sample_ks_loss(z, z_adv, means, stddevs, weights):
    """Coupling term of eq. (9): (1/D) sum_d MSE_n(Fbar_d(z_nd), Fbar_adv_d(z_adv_nd)), pairs n matched.

    The empirical CDFs are ranks, piecewise constant in the codes (zero gradient), so both are taken in
    the mixture's CDF domain: eq. (4) makes Fbar_d approach F_GMM,d, and F_GMM,d is smooth. The term
    compares each code with its own adversary's code (the pairwise coupling of Fig. 1), which comparing
    the two samples' sorted codes would not. z, z_adv: [..., N, D]; returns [...].
    """
    difference = gmm_marginal_cdf(z, means, stddevs, weights) - gmm_marginal_cdf(z_adv, means, stddevs, weights)
    return tf.reduce_mean(tf.square(difference), axis=[-2, -1])


def empirical_covariance(z):
    """Unbiased covariance [..., D, D] of codes z [..., N, D]."""
    centred = z - tf.reduce_mean(z, axis=-2, keepdims=True)
    n = tf.cast(tf.shape(z)[-2], z.dtype)
    return tf.linalg.matmul(centred, centred, transpose_a=True) / (n - 1.0)


def gmm_covariance(means, stddevs, weights):
    """Covariance of a diagonal Gaussian mixture: sum_k w_k Sigma_k + sum_k w_k (mu_k - mu)(mu_k - mu)^T.

    mu = sum_k w_k mu_k; the paper's (1/K) sum_k mu_k is the same for equal weights.
    """
    mean = tf.reduce_sum(weights[:, None] * means, axis=0)
    spread = means - mean
    within = tf.linalg.diag(tf.reduce_sum(weights[:, None] * tf.square(stddevs), axis=0))
    return within + tf.linalg.matmul(weights[:, None] * spread, spread, transpose_a=True)


def covariance_loss(z, target):
    """Eq. (5): (1/D^2) sum_{l,d} (cov(z)_ld - target_ld)^2 for codes z [..., N, D].

    On stacked codes [z, z_adv] ([..., N, 2D]) this is the 1/(4D^2) sum of eqs. (8) and (10).
    """
    return tf.reduce_mean(tf.square(empirical_covariance(z) - target), axis=[-2, -1])


def coupled_covariance(cov, alpha):
    """The target [[S, alpha S], [alpha S, S]] of eq. (10); alpha = 0 gives eq. (8)'s block diagonal."""
    alpha = tf.cast(alpha, cov.dtype)
    return tf.concat([tf.concat([cov, alpha * cov], 1), tf.concat([alpha * cov, cov], 1)], 0)


def total_correlation(z, mean, var, dataset_size=0):
    """beta-TCVAE's TC = E_q(z)[log q(z) - sum_d log q(z_d)], minibatch weighted sampling (Chen et al. 2018).

    z [M, D] holds one sample of each q(z|x_i) = N(mean_i, var_i). The aggregate posterior q(z) (and
    each marginal q(z_d)) at z_i is estimated from the batch's posteriors as a weighted sample of the
    dataset: log q(z_i) ~ log sum_j w_ij q(z_i|x_j) with the importance weights w_ii = 1/N for the
    sample's own posterior and w_ij = (N - 1) / (N (M - 1)) for the others, N = `dataset_size`; they
    sum to 1, so the estimate is consistent. (The MWS normaliser 1/(NM) printed by Chen et al. sums to
    1/N instead and shifts the TC by the constant (D - 1) log N: the same gradients, a wrong value.)
    `dataset_size=0` is the infinite-dataset limit (own posterior weight 0); it needs M >= 2.
    Returns the batch mean, a scalar.
    """
    m = tf.shape(z)[0]
    # log q(z_id | x_j) for every pair (i, j) and dimension d: [M, M, D].
    log_q = -0.5 * (_LOG_2PI + tf.math.log(var[None]) + tf.square(z[:, None] - mean[None]) / var[None])
    m_float = tf.cast(m, z.dtype)
    n = tf.cast(dataset_size, z.dtype)
    if dataset_size:
        own, other = -tf.math.log(n), tf.math.log((n - 1.0) / (n * tf.maximum(m_float - 1.0, 1.0)))
    else:
        own, other = tf.constant(-float("inf"), z.dtype), -tf.math.log(m_float - 1.0)
    log_w = tf.where(tf.eye(m, dtype=tf.bool), own, other)
    log_joint = tf.reduce_logsumexp(log_w + tf.reduce_sum(log_q, axis=-1), axis=1)
    log_marginals = tf.reduce_sum(tf.reduce_logsumexp(log_w[..., None] + log_q, axis=1), axis=-1)
    return tf.reduce_mean(log_joint - log_marginals)
