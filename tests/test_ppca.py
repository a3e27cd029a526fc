"""Appendix B of the AVAE paper (zoo/toy/ppca.py): the closed-form pPCA transition kernels against
Monte Carlo, invariance of p(X) / p(Z) under the exact kernels, and drift of chains with a perturbed encoder."""

import numpy as np
import pytest

from zoo.toy import ppca as pc

V = 0.2


@pytest.fixture()
def w():
    return pc.make_loadings(4, 2, np.random.default_rng(0))


def test_paper_closed_forms_equal_generic_linear_gaussian_formulas(w):
    enc_mean, enc_cov = pc.exact_encoder(w, V)
    for paper, generic in [
        (pc.paper_x_kernel(w, V), pc.x_kernel(w, V, enc_mean, enc_cov)),
        (pc.paper_z_kernel(w, V), pc.z_kernel(w, V, enc_mean, enc_cov)),
    ]:
        np.testing.assert_allclose(paper[0], generic[0], atol=1e-12)
        np.testing.assert_allclose(paper[1], generic[1], atol=1e-12)
    # The exact encoder really is the posterior: N(0, I) N(x; W z, v I) = p(x) q(z|x) in the joint's covariance.
    c = pc.model_covariance(w, V)
    np.testing.assert_allclose(enc_mean @ c, w.T, atol=1e-12)  # E[z x^T] = W^T
    np.testing.assert_allclose(enc_cov + enc_mean @ c @ enc_mean.T, np.eye(2), atol=1e-12)  # Cov z = I


@pytest.mark.parametrize("kernel", ["x", "z"])
def test_closed_form_kernels_match_monte_carlo(w, kernel):
    rng = np.random.default_rng(1)
    enc_mean, enc_cov = pc.exact_encoder(w, V)
    n = 100_000
    if kernel == "x":
        point = np.array([1.0, -0.5, 0.3, 2.0])
        mean_map, cov = pc.paper_x_kernel(w, V)
        draws = pc.sample_x_transition(w, V, enc_mean, enc_cov, point, n, rng)
    else:
        point = np.array([0.7, -1.2])
        mean_map, cov = pc.paper_z_kernel(w, V)
        draws = pc.sample_z_transition(w, V, enc_mean, enc_cov, point, n, rng)
    se_mean = np.sqrt(np.diag(cov) / n)
    se_cov = np.sqrt((cov**2 + np.outer(np.diag(cov), np.diag(cov))) / n)
    assert np.all(np.abs(draws.mean(axis=0) - mean_map @ point) < 5 * se_mean)
    assert np.all(np.abs(np.cov(draws, rowvar=False) - cov) < 5 * se_cov)


def test_exact_kernels_leave_the_marginals_invariant(w):
    j, s = pc.paper_z_kernel(w, V)
    np.testing.assert_allclose(j @ j.T + s, np.eye(2), atol=1e-12)
    p, cov = pc.paper_x_kernel(w, V)
    c = pc.model_covariance(w, V)
    np.testing.assert_allclose(p @ c @ p.T + cov, c, atol=1e-12)


def test_exact_chain_is_stationary_and_perturbed_chain_drifts(w):
    rng = np.random.default_rng(2)
    enc_mean, enc_cov = pc.exact_encoder(w, V)
    c = pc.model_covariance(w, V)
    zero = np.zeros(4)
    steps = 15
    delta = pc.scaled_perturbation(w, rng.standard_normal(enc_mean.shape), 0.2)
    w2 = {}
    for name, mean in [("exact", enc_mean), ("perturbed", enc_mean + delta)]:
        mean_map, noise = pc.x_kernel(w, V, mean, enc_cov)
        means, covs = pc.marginal_path(mean_map, noise, zero, c, steps)
        w2[name] = [pc.wasserstein2(m, s, zero, c) for m, s in zip(means, covs)]
    assert max(w2["exact"]) < 1e-6  # closed form: the marginal stays p(X) exactly
    assert all(b > a for a, b in zip(w2["perturbed"], w2["perturbed"][1:]))  # drifts further at every step
    assert w2["perturbed"][-1] > 0.2
    # Monte Carlo chains agree: exact stays within sampling noise of p(X), perturbed leaves it.
    x0 = rng.multivariate_normal(zero, c, size=20_000)
    floor = pc.wasserstein2(x0.mean(0), np.cov(x0, rowvar=False), zero, c)
    for name, mean in [("exact", enc_mean), ("perturbed", enc_mean + delta)]:
        last = pc.simulate_chains(w, V, mean, enc_cov, x0, steps, rng)[-1]
        distance = pc.wasserstein2(last.mean(0), np.cov(last, rowvar=False), zero, c)
        if name == "exact":
            assert distance < 3 * floor + 0.02
        else:
            assert distance == pytest.approx(w2["perturbed"][-1], abs=3 * floor + 0.02)
            assert distance > 5 * floor


def test_pca_limit_projection_is_a_fixed_point_and_perturbation_drifts(w):
    enc0 = np.linalg.solve(w.T @ w, w.T)  # v = 0
    projection = w @ enc0
    np.testing.assert_allclose(projection @ projection, projection, atol=1e-12)
    x1 = projection @ np.array([1.0, 2.0, -1.0, 0.5])
    np.testing.assert_allclose(projection @ x1, x1, atol=1e-12)  # x_1 = x_2 = ...
    delta = pc.scaled_perturbation(w, np.random.default_rng(3).standard_normal(enc0.shape), 0.1)
    a = w @ (enc0 + delta)
    x = x1
    for _ in range(20):
        x = a @ x
    assert np.linalg.norm(x - x1) > 0.05 * np.linalg.norm(x1)
    np.testing.assert_allclose(projection @ x, x, atol=1e-9)  # the drift stays inside range(W)


def test_wasserstein2_known_values():
    a = np.diag([1.0, 4.0])
    assert pc.wasserstein2(np.zeros(2), a, np.zeros(2), a) == pytest.approx(0.0, abs=1e-7)
    # 1-D: W2^2 = (m1 - m2)^2 + (s1 - s2)^2
    assert pc.wasserstein2(np.array([1.0]), np.array([[4.0]]), np.array([0.0]), np.array([[1.0]])) == pytest.approx(
        np.sqrt(1.0 + 1.0)
    )
