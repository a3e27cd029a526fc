"""The discrete 1-D VAE of the AVAE paper (section 3.1, appendix D) as exact probability tables.

Observations and latents live on circular grids, X in {c_x, 2 c_x, ..., N_x c_x} with c_x = 2 pi / N_x
and Z likewise with N_z points. Every conditional is a discretised von Mises table

    VM(X; mu, v) = exp(cos(X - mu) / v) / J(mu, v),    J(mu, v) = sum_{x in grid} exp(cos(x - mu) / v),

so `v` plays the role of a variance (small v: concentrated). The model (appendix D):

    p(Z) uniform,   p(X | Z = z) = VM(X; g_z, v),   q(Z | X = x) = VM(Z; mu_x, sigma_x),
    p_rho(Z' | Z = z) = VM(Z'; z, nu_rho),

with the tables theta = (g_1..g_Nz) and eta = (mu_1..mu_Nx, sigma_1..sigma_Nx) as the trainable
parameters ("a high capacity network that can model any functional relationship"); `v` and `nu_rho`
are fixed hyper-parameters. Since every set is finite, the VAE ELBO (eq. 2 averaged over the empirical
distribution pi) and the AVAE bound (eq. 10) are computed exactly as sums over the tables: there is no
sampling and no sampling noise in the gradients.

Conventions: a conditional table is indexed [conditioning value, value], so `decoder[z, x] = p(x | z)`,
`encoder[x, z] = q(z | x)`, `coupling[z, z'] = p_rho(z' | z)`; every row sums to one. The transition
kernels of Figure 3 are then matrix products: Q(X' | X) = encoder @ decoder ([x, x']) and
Q(Z | Z') = decoder @ encoder ([z', z]).

The tables and objectives are TensorFlow (float64) so that they can be differentiated; the summary numbers
(band_mass, asymmetry, ...) are numpy. `python -m benchmarks.discrete_avae` fits the model as VAE and AVAE;
tests/test_discrete.py checks the objectives against brute-force enumeration of the joint distributions.
"""

import math

import numpy as np
import tensorflow as tf

DTYPE = tf.float64


def grid(n):
    """The circular grid {c, 2c, ..., n c}, c = 2 pi / n, as a float64 tensor of shape [n]."""
    return tf.constant(2.0 * math.pi * np.arange(1, n + 1) / n, dtype=DTYPE)


def von_mises_log_table(means, spreads, n):
    """log VM(value; mean_i, spread_i) for every row i and every value of the n-point grid: shape [len(means), n].

    `spreads` is the `v` of appendix D (cos(X - mu) / v in the exponent), a scalar or one per row.
    """
    means = tf.convert_to_tensor(means, DTYPE)
    spreads = tf.convert_to_tensor(spreads, DTYPE)
    if spreads.shape.rank == 0:
        spreads = tf.fill(tf.shape(means), spreads)
    logits = tf.cos(grid(n)[None, :] - means[:, None]) / spreads[:, None]
    return tf.nn.log_softmax(logits, axis=-1)


def coupling_log_table(n_z, nu_rho):
    """log p_rho(Z' | Z) = log VM(Z'; Z, nu_rho), indexed [z, z']."""
    return von_mises_log_table(grid(n_z), nu_rho, n_z)


def _xlogy_rows(probs, log_probs):
    """sum_j probs[i, j] log_probs[i, j] per row, with 0 log 0 = 0 (log tables are finite anyway)."""
    return tf.reduce_sum(tf.math.multiply_no_nan(log_probs, probs), axis=-1)


def elbo(log_decoder, log_encoder, pi):
    """The VAE bound (eq. 2) averaged over pi: sum_x pi(x) sum_z q(z|x) [log p(x|z) + log p(z) - log q(z|x)].

    log_decoder [N_z, N_x], log_encoder [N_x, N_z], pi [N_x]; the prior is uniform on the N_z latents.
    """
    n_z = tf.cast(tf.shape(log_encoder)[1], DTYPE)
    encoder = tf.exp(log_encoder)
    # <log p(x|z)>_{q(z|x)} for each x: the diagonal of encoder @ log_decoder.
    reconstruction = tf.reduce_sum(encoder * tf.transpose(log_decoder), axis=-1)
    per_x = reconstruction - tf.math.log(n_z) - _xlogy_rows(encoder, log_encoder)
    return tf.reduce_sum(pi * per_x)


def avae_terms(log_decoder, log_encoder, pi, log_coupling, stop_gradient="decoder"):
    """The two extra terms of the AVAE bound (eq. 10), exactly, as sums over the tables.

    q~(z) = sum_x pi(x) q(z|x);  q~(x~) = sum_z p_theta(x~|z) q~(z);  q~(z'|z) = sum_x~ q(z'|x~) p_theta(x~|z).
    coupling = sum_z q~(z) sum_z' q~(z'|z) log p_rho(z'|z);  entropy = -sum_x~ q~(x~) sum_z' q(z'|x~) log q(z'|x~).

    `stop_gradient` says which factors of Q_AVAE are held constant in the gradient (the values never change):
      "decoder"   (the paper's choice) p_theta, the decoder as a factor of Q_AVAE: theta gets no gradient
                  from these terms; eta gets the exact gradient through q(z|x) (where the delusions come
                  from, i.e. the weights q~(z), q~(x~)) and through q(z'|x~) (how they are encoded again).
      "delusions" p_theta and the weights q~(z), q~(x~) of the delusions: only q(z'|x~) is trained by these
                  terms ("encode what the decoder generates back to where it came from"). This mirrors
                  Algorithm 1's x~ = stopgradient(decoder(z)) without its pathwise gradient through z.
      "none"      nothing: the decoder is also trained to make its samples decodable (not a valid bound
                  on the likelihood according to the paper; a diagnostic only).
    """
    if stop_gradient not in ("decoder", "delusions", "none"):
        raise ValueError(f"stop_gradient must be 'decoder', 'delusions' or 'none', got {stop_gradient!r}")
    decoder = tf.exp(log_decoder)
    if stop_gradient != "none":
        decoder = tf.stop_gradient(decoder)
    encoder = tf.exp(log_encoder)
    q_z = tf.linalg.matvec(encoder, pi, transpose_a=True)  # [N_z]
    if stop_gradient == "delusions":
        q_z = tf.stop_gradient(q_z)
    transition = tf.matmul(decoder, encoder)  # [z, z'] = q~(z'|z)
    coupling = tf.reduce_sum(q_z * _xlogy_rows(transition, log_coupling))
    q_x_tilde = tf.linalg.matvec(decoder, q_z, transpose_a=True)  # [N_x]
    entropy = -tf.reduce_sum(q_x_tilde * _xlogy_rows(encoder, log_encoder))
    return coupling, entropy


def avae_objective(log_decoder, log_encoder, pi, log_coupling, stop_gradient="decoder"):
    """B_AVAE of eq. (10) up to an additive constant: ELBO + coupling term + entropy of the delusions' codes."""
    coupling, entropy = avae_terms(log_decoder, log_encoder, pi, log_coupling, stop_gradient)
    return elbo(log_decoder, log_encoder, pi) + coupling + entropy


def model_marginal(decoder):
    """p(X; theta) = sum_z p(X|z) p(z) with the uniform prior."""
    return tf.reduce_mean(decoder, axis=0)


def figure3_panels(decoder, encoder):
    """The four panels of the paper's Figure 3 as arrays (numpy), keyed by name.

    decoder      [z', x'] = p(X' | Z')                        (north east)
    x_joint      [x, x']  = Q(X' | X) p(X),  Q(X'|X) = sum_z p(X'|Z'=z) q(Z=z|X)   (south east)
    encoder      [x, z]   = q(Z | X)                          (south west)
    z_joint      [z', z]  = Q(Z | Z') p(Z'), Q(Z|Z') = sum_x q(Z|X=x) p(X'=x|Z')  (north west)
    """
    decoder = tf.convert_to_tensor(decoder, DTYPE)
    encoder = tf.convert_to_tensor(encoder, DTYPE)
    p_x = model_marginal(decoder)
    n_z = tf.cast(tf.shape(decoder)[0], DTYPE)
    x_joint = p_x[:, None] * tf.matmul(encoder, decoder)
    z_joint = tf.matmul(decoder, encoder) / n_z
    return {
        "decoder": decoder.numpy(),
        "x_joint": x_joint.numpy(),
        "encoder": encoder.numpy(),
        "z_joint": z_joint.numpy(),
    }


def band_mass(joint, width=0):
    """Mass of a square joint table within circular distance `width` of its diagonal (width 0: the diagonal)."""
    joint = np.asarray(joint)
    n = joint.shape[0]
    i, j = np.indices(joint.shape)
    distance = np.minimum((i - j) % n, (j - i) % n)
    return float(joint[distance <= width].sum())


def mean_circular_distance(joint):
    """E |i - j| on the circle (in grid steps) under a square joint table."""
    joint = np.asarray(joint)
    n = joint.shape[0]
    i, j = np.indices(joint.shape)
    return float((joint * np.minimum((i - j) % n, (j - i) % n)).sum() / joint.sum())


def asymmetry(joint):
    """Total variation between a joint table and its transpose (0: symmetric, as the exact posterior gives)."""
    joint = np.asarray(joint)
    return float(0.5 * np.abs(joint - joint.T).sum())


def empirical_distribution(n_x, n_samples, seed, centres=(1.0, 2.6, 4.6), concentration=8.0):
    """pi-hat: `n_samples` draws from an equal mixture of continuous von Mises bumps, binned onto the X grid.

    Returns a float64 numpy vector of length n_x summing to one (a histogram with sparse support).
    """
    rng = np.random.default_rng(seed)
    component = rng.integers(len(centres), size=n_samples)
    angles = rng.vonmises(np.asarray(centres)[component], concentration) % (2.0 * math.pi)
    # Nearest grid point k c_x, k = 1..n_x (index k - 1), wrapping 0 to n_x.
    index = (np.rint(angles / (2.0 * math.pi / n_x)).astype(int) - 1) % n_x
    return np.bincount(index, minlength=n_x).astype(np.float64) / n_samples


class DiscreteVAE:
    """Trainable tables theta = g (decoder means), eta = (mu, log sigma) (encoder means and spreads)."""

    def __init__(self, n_x, n_z, obs_spread, seed, init_encoder_spread=0.5, init="random", init_jitter=0.3):
        rng = np.random.default_rng(seed)
        self.n_x, self.n_z = n_x, n_z
        self.obs_spread = float(obs_spread)
        if init == "random":
            g = rng.uniform(0.0, 2.0 * math.pi, n_z)
            mu = rng.uniform(0.0, 2.0 * math.pi, n_x)
        elif init == "smooth":
            # Identity-like maps with jitter: what a smooth (network-like) function would start from.
            g = grid(n_z).numpy() + init_jitter * rng.standard_normal(n_z)
            mu = grid(n_x).numpy() + init_jitter * rng.standard_normal(n_x)
        else:
            raise ValueError(f"init must be 'random' or 'smooth', got {init!r}")
        self.g = tf.Variable(g, dtype=DTYPE, name="g")
        self.mu = tf.Variable(mu, dtype=DTYPE, name="mu")
        self.log_sigma = tf.Variable(np.full(n_x, math.log(init_encoder_spread)), dtype=DTYPE, name="log_sigma")

    @property
    def variables(self):
        return [self.g, self.mu, self.log_sigma]

    def log_decoder(self):
        return von_mises_log_table(self.g, self.obs_spread, self.n_x)

    def log_encoder(self):
        return von_mises_log_table(self.mu, tf.exp(self.log_sigma), self.n_z)

    def tables(self):
        """(decoder [N_z, N_x], encoder [N_x, N_z]) as tensors."""
        return tf.exp(self.log_decoder()), tf.exp(self.log_encoder())


def fit(model, pi, objective="vae", nu_rho=1e-3, steps=3000, learning_rate=0.05, stop_gradient="decoder"):
    """Maximise the exact ELBO ("vae") or AVAE bound ("avae") with full-batch Adam; returns the objective trace.

    Adam here is the plain algorithm (beta1 0.9, beta2 0.999, eps 1e-8) written out on the three tables,
    with the learning rate decayed to zero on a half cosine over `steps` (a constant rate makes the sharp
    tables oscillate), so the fit is deterministic given the initial tables.
    """
    if objective not in ("vae", "avae"):
        raise ValueError(f"objective must be 'vae' or 'avae', got {objective!r}")
    pi = tf.constant(pi, DTYPE)
    log_coupling = coupling_log_table(model.n_z, nu_rho)
    variables = model.variables
    first = [tf.Variable(tf.zeros_like(v)) for v in variables]
    second = [tf.Variable(tf.zeros_like(v)) for v in variables]
    step = tf.Variable(0.0, dtype=DTYPE)
    lr = tf.constant(learning_rate, DTYPE)

    def value():
        log_decoder, log_encoder = model.log_decoder(), model.log_encoder()
        if objective == "vae":
            return elbo(log_decoder, log_encoder, pi)
        return avae_objective(log_decoder, log_encoder, pi, log_coupling, stop_gradient)

    @tf.function(autograph=False)
    def train_step():
        with tf.GradientTape() as tape:
            bound = value()
            loss = -bound
        grads = tape.gradient(loss, variables)
        rate = lr * 0.5 * (1.0 + tf.cos(math.pi * step / steps))
        step.assign_add(1.0)
        for v, grad, m, s in zip(variables, grads, first, second):
            m.assign(0.9 * m + 0.1 * grad)
            s.assign(0.999 * s + 0.001 * tf.square(grad))
            m_hat = m / (1.0 - tf.pow(tf.constant(0.9, DTYPE), step))
            s_hat = s / (1.0 - tf.pow(tf.constant(0.999, DTYPE), step))
            v.assign_sub(rate * m_hat / (tf.sqrt(s_hat) + 1e-8))
        return bound

    trace = [float(train_step()) for _ in range(steps)]
    return np.asarray(trace)


def summarise(model, pi, nu_rho):
    """The numbers reported per fitted model: latent-transition concentration, symmetry, bounds, likelihood."""
    decoder, encoder = model.tables()
    panels = figure3_panels(decoder, encoder)
    pi_t = tf.constant(pi, DTYPE)
    log_decoder, log_encoder = model.log_decoder(), model.log_encoder()
    log_coupling = coupling_log_table(model.n_z, nu_rho)
    p_x = model_marginal(decoder).numpy()
    support = pi > 0
    # The latent transition weighted by q~(z) (the codes of the data) instead of the uniform prior.
    q_z = pi @ encoder.numpy()
    data_z_joint = q_z[:, None] * (decoder.numpy() @ encoder.numpy())
    # Reference: the same panel with the fitted decoder and its exact posterior p(z|x) = p(x|z) / sum_z p(x|z)
    # (uniform prior) as the encoder: what a perfectly consistent encoder would give with this decoder.
    dec = decoder.numpy()
    exact_encoder = (dec / dec.sum(axis=0, keepdims=True)).T
    exact_z_joint = dec @ exact_encoder / model.n_z
    return {
        "z_diagonal_mass": band_mass(panels["z_joint"], 0),
        "z_band1_mass": band_mass(panels["z_joint"], 1),
        "z_band2_mass": band_mass(panels["z_joint"], 2),
        "z_mean_circular_distance": mean_circular_distance(panels["z_joint"]),
        "z_diagonal_mass_data_codes": band_mass(data_z_joint, 0),
        "z_band1_mass_data_codes": band_mass(data_z_joint, 1),
        "z_diagonal_mass_exact_posterior": band_mass(exact_z_joint, 0),
        # The most any encoder can put on the diagonal with this decoder: (1/N_z) sum_x max_z p(x|z), reached
        # by the encoder that puts all of q(.|x) on argmax_z p(x|z).
        "z_diagonal_mass_best_encoder": float(dec.max(axis=0).sum() / model.n_z),
        "z_band1_mass_exact_posterior": band_mass(exact_z_joint, 1),
        "data_codes_effective_number": float(np.exp(-np.sum(q_z[q_z > 0] * np.log(q_z[q_z > 0])))),
        "z_joint_asymmetry_tv": asymmetry(panels["z_joint"]),
        "x_joint_asymmetry_tv": asymmetry(panels["x_joint"]),
        "elbo": float(elbo(log_decoder, log_encoder, pi_t)),
        "avae_bound": float(avae_objective(log_decoder, log_encoder, pi_t, log_coupling)),
        "data_log_likelihood": float(np.sum(pi[support] * np.log(p_x[support]))),
    }
