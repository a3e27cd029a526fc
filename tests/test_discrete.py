"""The discrete 1-D VAE of the AVAE paper's appendix D (zoo/toy/discrete.py): tables, exact
objectives against brute-force enumeration, transition kernels, and the effect of fitting AVAE vs VAE."""

import itertools
import math

import numpy as np
import pytest
import tensorflow as tf

from zoo.toy import discrete as dm

N_X, N_Z = 5, 4  # the tiny case that is enumerated by brute force


def _tiny(seed=0, stop=False):
    """Random tables of the tiny case and an empirical distribution with one empty cell."""
    rng = np.random.default_rng(seed)
    g = rng.uniform(0, 2 * math.pi, N_Z)
    mu = rng.uniform(0, 2 * math.pi, N_X)
    sigma = rng.uniform(0.3, 2.0, N_X)
    log_p = dm.von_mises_log_table(g, 0.7, N_X)
    log_q = dm.von_mises_log_table(mu, sigma, N_Z)
    pi = rng.uniform(size=N_X)
    pi[1] = 0.0
    pi /= pi.sum()
    return log_p.numpy(), log_q.numpy(), pi


def test_von_mises_table_matches_definition_and_normalises():
    means = np.array([0.3, 2.0, 5.5])
    spreads = np.array([0.5, 0.05, 3.0])
    table = np.exp(dm.von_mises_log_table(means, spreads, 7).numpy())
    support = 2 * math.pi * np.arange(1, 8) / 7
    for row, mean, spread in zip(table, means, spreads):
        unnormalised = np.exp(np.cos(support - mean) / spread)
        np.testing.assert_allclose(row, unnormalised / unnormalised.sum(), rtol=1e-12)
    np.testing.assert_allclose(table.sum(axis=1), 1.0, rtol=1e-12)
    coupling = np.exp(dm.coupling_log_table(9, 1e-3).numpy())
    np.testing.assert_allclose(coupling.sum(axis=1), 1.0, rtol=1e-12)
    assert np.all(np.argmax(coupling, axis=1) == np.arange(9))  # VM(Z'; z, nu) peaks at Z' = z


def test_model_tables_and_figure3_panels_normalise():
    model = dm.DiscreteVAE(11, 6, 0.05, seed=3)
    decoder, encoder = model.tables()
    np.testing.assert_allclose(decoder.numpy().sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(encoder.numpy().sum(axis=1), 1.0, rtol=1e-12)
    panels = dm.figure3_panels(decoder, encoder)
    assert panels["decoder"].shape == (6, 11) and panels["encoder"].shape == (11, 6)
    assert panels["x_joint"].shape == (11, 11) and panels["z_joint"].shape == (6, 6)
    np.testing.assert_allclose(panels["x_joint"].sum(), 1.0, rtol=1e-12)
    np.testing.assert_allclose(panels["z_joint"].sum(), 1.0, rtol=1e-12)
    # Marginals: the X joint's rows give p(X), the Z joint's rows the uniform prior p(Z').
    np.testing.assert_allclose(panels["x_joint"].sum(axis=1), dm.model_marginal(decoder).numpy(), rtol=1e-12)
    np.testing.assert_allclose(panels["z_joint"].sum(axis=1), 1.0 / 6, rtol=1e-12)


def test_transition_kernels_match_their_sums():
    log_p, log_q, _ = _tiny(1)
    p, q = np.exp(log_p), np.exp(log_q)
    panels = dm.figure3_panels(p, q)
    p_x = p.mean(axis=0)
    for x, x2 in itertools.product(range(N_X), repeat=2):
        expected = sum(p[z, x2] * q[x, z] for z in range(N_Z)) * p_x[x]  # Q(X'|X) p(X)
        assert panels["x_joint"][x, x2] == pytest.approx(expected, rel=1e-12)
    for z2, z in itertools.product(range(N_Z), repeat=2):
        expected = sum(q[x, z] * p[z2, x] for x in range(N_X)) / N_Z  # Q(Z|Z') p(Z')
        assert panels["z_joint"][z2, z] == pytest.approx(expected, rel=1e-12)


def test_exact_posterior_gives_symmetric_joints():
    """Prop. 2.3 / 3.1: with q = the exact posterior both joint panels are symmetric (and invariant)."""
    log_p, _, _ = _tiny(2)
    p = np.exp(log_p)
    exact = (p / p.sum(axis=0, keepdims=True)).T  # p(z|x) with the uniform prior
    panels = dm.figure3_panels(p, exact)
    assert dm.asymmetry(panels["x_joint"]) < 1e-12
    assert dm.asymmetry(panels["z_joint"]) < 1e-12


def test_elbo_equals_brute_force():
    log_p, log_q, pi = _tiny(3)
    p, q = np.exp(log_p), np.exp(log_q)
    brute = 0.0
    for x, z in itertools.product(range(N_X), range(N_Z)):
        if pi[x] > 0:
            brute += pi[x] * q[x, z] * (log_p[z, x] + math.log(1.0 / N_Z) - log_q[x, z])
    assert float(dm.elbo(tf.constant(log_p), tf.constant(log_q), tf.constant(pi))) == pytest.approx(brute, rel=1e-12)
    # The same as log-likelihood minus the KL to the exact posterior.
    p_x = p.mean(axis=0)
    posterior = (p / N_Z / p_x).T
    kl = (q * (log_q - np.log(posterior))).sum(axis=1)
    assert brute == pytest.approx(float(np.sum(pi * (np.log(p_x) - kl))), rel=1e-12)


def test_avae_objective_equals_brute_force():
    log_p, log_q, pi = _tiny(4)
    nu = 0.3
    log_c = dm.coupling_log_table(N_Z, nu).numpy()
    p, q, c = np.exp(log_p), np.exp(log_q), np.exp(log_c)
    assert np.allclose(c.sum(axis=1), 1.0)
    # Enumerate Q_AVAE = pi(x) q(z|x) p(x~|z) q(z'|x~) and the target P = p(x|z) p(z) p_rho(z'|z) u(x~).
    minus_kl = 0.0  # -KL(Q_AVAE || P_rho), u(x~) = 1
    eq10_extra = 0.0  # the two extra terms of eq. (10)
    for x, z, xt, z2 in itertools.product(range(N_X), range(N_Z), range(N_X), range(N_Z)):
        weight = pi[x] * q[x, z] * p[z, xt] * q[xt, z2]
        if weight == 0:
            continue
        log_target = log_p[z, x] + math.log(1.0 / N_Z) + log_c[z, z2]
        log_approx = math.log(pi[x]) + log_q[x, z] + log_p[z, xt] + log_q[xt, z2]
        minus_kl += weight * (log_target - log_approx)
        eq10_extra += weight * (log_c[z, z2] - log_q[xt, z2])
    elbo = float(dm.elbo(tf.constant(log_p), tf.constant(log_q), tf.constant(pi)))
    value = float(dm.avae_objective(tf.constant(log_p), tf.constant(log_q), tf.constant(pi), tf.constant(log_c)))
    assert value == pytest.approx(elbo + eq10_extra, rel=1e-12)
    # Eq. (10) drops -log pi(x) and -log p_theta(x~|z) (constant in eta and theta with p_theta held fixed).
    entropy_pi = -np.sum(pi[pi > 0] * np.log(pi[pi > 0]))
    q_z = pi @ q
    decoder_entropy = -np.sum(q_z[:, None] * p * log_p)
    assert value + entropy_pi + decoder_entropy == pytest.approx(minus_kl, rel=1e-12)


def test_stop_gradient_modes():
    log_p_np, log_q_np, pi = _tiny(5)
    g = tf.Variable(np.random.default_rng(0).uniform(0, 6, N_Z))
    mu = tf.Variable(np.random.default_rng(1).uniform(0, 6, N_X))
    log_c = dm.coupling_log_table(N_Z, 0.2)
    pi = tf.constant(pi)
    values, grads = {}, {}
    for mode in ("decoder", "delusions", "none"):
        with tf.GradientTape() as tape:
            log_p = dm.von_mises_log_table(g, 0.5, N_X)
            log_q = dm.von_mises_log_table(mu, 0.8, N_Z)
            coupling, entropy = dm.avae_terms(log_p, log_q, pi, log_c, stop_gradient=mode)
            total = coupling + entropy
        values[mode] = float(total)
        grads[mode] = [None if t is None else t.numpy() for t in tape.gradient(total, [g, mu])]
    assert values["decoder"] == pytest.approx(values["delusions"]) == pytest.approx(values["none"])
    assert grads["decoder"][0] is None and grads["delusions"][0] is None  # theta untouched by the extra terms
    assert np.abs(grads["none"][0]).max() > 1e-6
    assert np.abs(grads["decoder"][1] - grads["delusions"][1]).max() > 1e-6
    with pytest.raises(ValueError):
        dm.avae_terms(log_p, log_q, pi, log_c, stop_gradient="bogus")


def test_band_mass_and_distance():
    joint = np.zeros((6, 6))
    joint[0, 0], joint[1, 2], joint[5, 0], joint[0, 3] = 0.4, 0.3, 0.2, 0.1
    assert dm.band_mass(joint, 0) == pytest.approx(0.4)
    assert dm.band_mass(joint, 1) == pytest.approx(0.9)  # (5, 0) is one step away on the circle
    assert dm.band_mass(joint, 3) == pytest.approx(1.0)
    assert dm.mean_circular_distance(joint) == pytest.approx(0.3 + 0.2 + 0.3)


def test_empirical_distribution():
    pi = dm.empirical_distribution(40, 25, seed=0)
    assert pi.shape == (40,) and pi.sum() == pytest.approx(1.0)
    assert np.all(np.isclose(pi * 25, np.round(pi * 25)))  # a histogram of 25 draws
    np.testing.assert_array_equal(pi, dm.empirical_distribution(40, 25, seed=0))


def test_avae_encodes_its_delusions_back_better_than_vae():
    """After fitting on a small configuration, the AVAE's latent transition is far more concentrated on its
    diagonal than the VAE's for the latents the data are encoded to (q~(Z')), which is what the AVAE bound
    constrains. (Weighted by the uniform prior, as in Figure 3, it is not: see results/discrete_avae.md.)"""
    pi = dm.empirical_distribution(24, 12, seed=0)
    summaries = {}
    for name in ("vae", "avae"):
        model = dm.DiscreteVAE(24, 12, 0.05, seed=0)
        trace = dm.fit(model, pi, name, nu_rho=1e-3, steps=400, learning_rate=0.05)
        assert np.all(np.isfinite(trace)) and trace[-1] > trace[0]
        summaries[name] = dm.summarise(model, pi, 1e-3)
    vae, avae = summaries["vae"], summaries["avae"]
    assert avae["z_diagonal_mass_data_codes"] > vae["z_diagonal_mass_data_codes"] + 0.3
    assert avae["z_band1_mass_data_codes"] > vae["z_band1_mass_data_codes"]
    assert avae["avae_bound"] > vae["avae_bound"] and vae["elbo"] > avae["elbo"]  # each wins its own objective


def test_best_encoder_bound_on_diagonal_mass():
    model = dm.DiscreteVAE(9, 5, 0.3, seed=4)
    decoder, encoder = model.tables()
    pi = np.full(9, 1.0 / 9)
    summary = dm.summarise(model, pi, 0.1)
    assert summary["z_diagonal_mass"] <= summary["z_diagonal_mass_best_encoder"] + 1e-12
    p = decoder.numpy()
    map_encoder = np.eye(5)[np.argmax(p, axis=0)]  # q(z|x) = 1 at argmax_z p(x|z)
    diag = dm.band_mass(dm.figure3_panels(p, map_encoder)["z_joint"], 0)
    assert diag == pytest.approx(summary["z_diagonal_mass_best_encoder"], rel=1e-12)


def test_vae_never_updates_the_encoder_off_the_data_support():
    """The ELBO weights encoder rows by pi(x): rows with pi(x) = 0 keep their initial values (Figure 8)."""
    pi = dm.empirical_distribution(16, 5, seed=1)
    model = dm.DiscreteVAE(16, 8, 0.1, seed=0)
    mu0, sigma0 = model.mu.numpy().copy(), model.log_sigma.numpy().copy()
    dm.fit(model, pi, "vae", steps=30)
    off = pi == 0
    assert off.any() and (~off).any()
    np.testing.assert_array_equal(model.mu.numpy()[off], mu0[off])
    np.testing.assert_array_equal(model.log_sigma.numpy()[off], sigma0[off])
    assert np.abs(model.mu.numpy()[~off] - mu0[~off]).max() > 1e-3
