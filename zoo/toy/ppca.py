r"""Probabilistic PCA as a VAE, the AVAE paper's appendix B: posterior, encode-decode kernels, chain marginals.

pPCA is the VAE with p(Z) = N(0, I), p(X|Z) = N(X; W Z, v I) and a linear-Gaussian encoder. With
M = W^T W + v I the exact posterior is q*(Z|X=x) = N(Z; M^{-1} W^T x, v M^{-1}), and appendix B states

    Q(X'|X=x) = N(X'; P x, v (P + I)),           P = W M^{-1} W^T,
    Q(Z'|Z=z) = N(Z'; J z, S),                    J = M^{-1} W^T W,   S = v (J + I) M^{-1}.

Everything is numpy, with the encoder given by its mean matrix E and covariance Sigma, so the same
functions serve the exact posterior (E = M^{-1} W^T, Sigma = v M^{-1}) and perturbed encoders
(E = M^{-1} W^T + Delta). `wasserstein2` is appendix E's distance between Gaussians.
`python -m benchmarks.ppca_chains` uses these; tests/test_ppca.py checks them.
"""

import numpy as np
from scipy import linalg


def exact_encoder(w, v):
    """The exact posterior of pPCA: mean matrix E = M^{-1} W^T and covariance v M^{-1}, M = W^T W + v I."""
    m = w.T @ w + v * np.eye(w.shape[1])
    return np.linalg.solve(m, w.T), v * np.linalg.inv(m)


def paper_x_kernel(w, v):
    """Appendix B's Q(X'|X=x) = N(P x, v (P + I)) with P = W (W^T W + v I)^{-1} W^T: returns (P, covariance)."""
    m = w.T @ w + v * np.eye(w.shape[1])
    p = w @ np.linalg.solve(m, w.T)
    return p, v * (p + np.eye(w.shape[0]))


def paper_z_kernel(w, v):
    """Appendix B's Q(Z'|Z=z) = N(J z, S), J = M^{-1} W^T W, S = v (J + I) M^{-1}: returns (J, S)."""
    m = w.T @ w + v * np.eye(w.shape[1])
    j = np.linalg.solve(m, w.T @ w)
    return j, v * (j + np.eye(w.shape[1])) @ np.linalg.inv(m)


def x_kernel(w, v, enc_mean, enc_cov):
    """Q(X'|X=x) for the encoder N(Z; E x, Sigma) and decoder N(X; W Z, v I): mean map W E, cov W Sigma W^T + v I."""
    return w @ enc_mean, w @ enc_cov @ w.T + v * np.eye(w.shape[0])


def z_kernel(w, v, enc_mean, enc_cov):
    """Q(Z'|Z=z) = int q(Z'|x~) p(x~|z) dx~: mean map E W, covariance v E E^T + Sigma."""
    return enc_mean @ w, v * enc_mean @ enc_mean.T + enc_cov


def sample_x_transition(w, v, enc_mean, enc_cov, x, n, rng):
    """n draws of x' from x -> z ~ N(E x, Sigma) -> x' ~ N(W z, v I)."""
    z = rng.multivariate_normal(enc_mean @ x, enc_cov, size=n)
    return z @ w.T + np.sqrt(v) * rng.standard_normal((n, w.shape[0]))


def sample_z_transition(w, v, enc_mean, enc_cov, z, n, rng):
    """n draws of z' from z -> x~ ~ N(W z, v I) -> z' ~ N(E x~, Sigma)."""
    x = w @ z + np.sqrt(v) * rng.standard_normal((n, w.shape[0]))
    return x @ enc_mean.T + rng.multivariate_normal(np.zeros(w.shape[1]), enc_cov, size=n)


def model_covariance(w, v):
    """Covariance of the pPCA marginal p(X) = N(0, W W^T + v I)."""
    return w @ w.T + v * np.eye(w.shape[0])


def marginal_path(mean_map, noise_cov, mean0, cov0, steps):
    """Means and covariances of a linear-Gaussian chain x' = A x + noise, started at N(mean0, cov0): steps + 1 each."""
    means, covs = [np.asarray(mean0, float)], [np.asarray(cov0, float)]
    for _ in range(steps):
        means.append(mean_map @ means[-1])
        covs.append(mean_map @ covs[-1] @ mean_map.T + noise_cov)
    return means, covs


def wasserstein2(mean_a, cov_a, mean_b, cov_b):
    """W_2 between two Gaussians (the AVAE paper's appendix E): sqrt(|mu_a - mu_b|^2 + Tr(A + B - 2 (B^1/2 A B^1/2)^1/2))."""
    root_b = linalg.sqrtm(cov_b).real
    cross = linalg.sqrtm(root_b @ cov_a @ root_b).real
    squared = float(np.sum((np.asarray(mean_a) - np.asarray(mean_b)) ** 2) + np.trace(cov_a + cov_b - 2.0 * cross))
    return float(np.sqrt(max(squared, 0.0)))


def simulate_chains(w, v, enc_mean, enc_cov, x0, steps, rng):
    """Run len(x0) chains x -> z -> x' for `steps` steps; returns the states, shape [steps + 1, chains, D]."""
    root = np.linalg.cholesky(enc_cov)
    states = [x0]
    for _ in range(steps):
        x = states[-1]
        z = x @ enc_mean.T + rng.standard_normal((x.shape[0], w.shape[1])) @ root.T
        states.append(z @ w.T + np.sqrt(v) * rng.standard_normal(x.shape))
    return np.stack(states)


def scaled_perturbation(w, direction, size):
    """Delta = direction scaled so that the spectral norm of W Delta is `size` (zeros for size 0)."""
    if size == 0:
        return np.zeros_like(direction)
    return direction * (size / np.linalg.norm(w @ direction, 2))


def make_loadings(obs_dim, latent_dim, rng):
    """A random W with decreasing column scales (squared column norms 2, 1, 0.5, ...)."""
    w = rng.standard_normal((obs_dim, latent_dim))
    w /= np.linalg.norm(w, axis=0, keepdims=True)
    return w * np.sqrt(2.0 * 0.5 ** np.arange(latent_dim))
