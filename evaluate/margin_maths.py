"""The margin of robustness of a VAE (Camuto et al., "The Adversarial Robustness of VAEs").

r-robustness: a model with random output f is r-robust at x to a perturbation
delta when p(||f(x + delta) - f(x)|| <= r) > 1/2. For a VAE, f(x) is the
reconstruction g(mu(x) + sigma(x) eta), eta ~ N(0, I), and distances are taken
from the "maximum likelihood" reconstruction g(mu(x)).

- `margin_bound`: the paper's lower bound on the L2 margin in input space,
      R(x) >= min_i sigma_i(x) * Phi^-1(p) / ||J_mu(x)||_F,
  with p = p(||g(mu(x) + sigma(x) eta) - g(mu(x))||_2 <= r) estimated by sampling
  (`robust_probability`) and J_mu the encoder-mean Jacobian (`jacobian_frobenius`,
  `tf.GradientTape.batch_jacobian`). p <= 1/2 (not r-robust even unperturbed)
  gives a bound <= 0: the margin is 0.
- `empirical_margin`: the largest L2 radius at which the maximum-damage attack
  still leaves the model r-robust, found per example by bisection on log(radius).
  The attack is the paper's: L2 PGD (`zoo.attacks.pgd`, one radius per example)
  maximising ||g(mu(x + delta) + sigma(x + delta) eta) - g(mu(x))||_2, so it moves
  the decoder input through the encoder mean AND the posterior noise; with
  `attack_samples` draws of eta held fixed during the attack, it ascends the mean
  distance over them (expectation over the noise). The search returns a bracket
  [lo, hi]: the model was still r-robust against the attack at lo and the attack
  broke r-robustness at hi, so the true margin is below hi. The bound "holds" for
  an example when bound <= hi (a bound above hi is contradicted by an actual attack).

Deterministic encoders (no stddev, or stddev 0): r-robustness is then the plain
||g(mu(x + delta)) - g(mu(x))|| <= r and the attack has no noise to go through,
so the empirical margin still applies; the bound does not (sigma = 0) and is
reported as not applicable.

The maths only (no settings, data loading or reports): the `margin` stage (`evaluate.stages.margin`) runs
it over the test set.
"""

import numpy as np
import tensorflow as tf

from evaluate.tensors import flat, l2_distance
from zoo import attacks, rng

_TINY = 1e-12


def clip_probability(p, num_samples):
    """Keeps a Monte Carlo estimate k/n inside [0.5/n, 1 - 0.5/n], so Phi^-1(p) is finite."""
    half = 0.5 / float(num_samples)
    return tf.clip_by_value(tf.cast(p, tf.float64), half, 1.0 - half)


def margin_bound(min_stddev, p, jacobian_frobenius):
    """min_i sigma_i * Phi^-1(p) / ||J||_F per example (may be <= 0 where p <= 1/2)."""
    min_stddev = tf.cast(min_stddev, tf.float64)
    jacobian_frobenius = tf.cast(jacobian_frobenius, tf.float64)
    return min_stddev * tf.math.ndtri(tf.cast(p, tf.float64)) / tf.maximum(jacobian_frobenius, _TINY)


def jacobian_frobenius(encode_mean, x):
    """||d mu(x) / d x||_F per example [batch], from `batch_jacobian`."""
    x = tf.convert_to_tensor(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        z = encode_mean(x)
    jacobian = tape.batch_jacobian(z, x)  # [batch, latent, *image]
    return tf.norm(tf.reshape(jacobian, [tf.shape(x)[0], -1]), axis=1)


def sampled_distances(decode, z_mean, stddev, reference, num_samples, seed, chunk=32):
    """||g(z_mean + stddev * eta) - reference||_2 for `num_samples` eta ~ N(0, I): [batch, num_samples].

    `stddev=None` (deterministic encoder) gives the single distance of the mean, [batch, 1].
    `seed` is a shape-[2] int tensor (stateless sampling: the same eta for the same seed). Samples are
    decoded `chunk` at a time, as one batch of chunk * batch latents.
    """
    reference = flat(reference)
    if stddev is None:
        return tf.norm(flat(decode(z_mean)) - reference, axis=1)[:, tf.newaxis]
    batch, latent = tf.shape(z_mean)[0], tf.shape(z_mean)[1]
    distances = []
    for start in range(0, num_samples, chunk):
        count = min(chunk, num_samples - start)
        eta = rng.normal(tf.stack([count, batch, latent]), rng.fold_in(seed, start))
        z = tf.reshape(z_mean[tf.newaxis] + stddev[tf.newaxis] * eta, [-1, latent])
        decoded = tf.reshape(decode(z), [count, batch, -1])
        distances.append(tf.transpose(tf.norm(decoded - reference[tf.newaxis], axis=2)))
    return tf.concat(distances, axis=1)


def robust_probability(decode, z_mean, stddev, reference, r, num_samples, seed):
    """Estimate of p(||g(z_mean + stddev * eta) - reference||_2 <= r) per example [batch]."""
    distances = sampled_distances(decode, z_mean, stddev, reference, num_samples, seed)
    return tf.reduce_mean(tf.cast(distances <= r, tf.float32), axis=1)


def attack_with_radii(objective, x, radii, steps, restarts, seed):
    """L2 PGD (zoo.attacks.pgd) maximising objective(x_adv), with one radius per example [batch]."""
    return attacks.pgd(
        objective,
        x,
        tf.cast(radii, x.dtype),
        steps,
        norm="l2",
        restarts=restarts,
        seed=seed,
        clip_min=0.0,
        clip_max=1.0,
    )


def max_damage_objective(encode_mean, decode, x, stddev=None, eta=None):
    """Camuto et al.'s maximum-damage objective per example (maximised).

    objective(x_adv) = mean_s ||g(mu(x_adv) + sigma(x_adv) eta_s) - g(mu(x))||_2 over the fixed draws
    eta [samples, batch, latent]; with `stddev=None` (a deterministic encoder) ||g(mu(x_adv)) - g(mu(x))||_2.
    """
    clean = tf.stop_gradient(decode(encode_mean(x)))
    if stddev is None:
        return lambda x_adv: l2_distance(decode(encode_mean(x_adv)), clean)

    def objective(x_adv):
        samples, batch, latent = tf.shape(eta)[0], tf.shape(eta)[1], tf.shape(eta)[2]
        z = encode_mean(x_adv)[tf.newaxis] + stddev(x_adv)[tf.newaxis] * eta  # [samples, batch, latent]
        decoded = decode(tf.reshape(z, [-1, latent]))
        reference = tf.reshape(tf.tile(flat(clean)[tf.newaxis], [samples, 1, 1]), [samples * batch, -1])
        return tf.reduce_mean(tf.reshape(l2_distance(decoded, reference), [samples, batch]), axis=0)

    return objective


def make_robust_at(encode_mean, decode, stddev, r, num_samples, steps, restarts, attack_samples=8):
    """A function (x, radii, seed, sample_seed) -> ([batch] bool: still r-robust after the attack, x_adv).

    `seed` drives the attack's random starts and its `attack_samples` noise draws (the maximum-damage
    attack through the posterior noise; none with `stddev=None`), `sample_seed` the noise eta that
    estimates p. Passing the sample_seed that estimated p at x itself gives common random numbers: at a
    tiny radius p(x_adv) then equals p(x) rather than differing by Monte Carlo noise. Wrap the result in
    `tf.function` to run it as one graph per batch shape.
    """

    def robust_at(x, radii, seed, sample_seed):
        eta = None
        if stddev is not None:
            latent = tf.shape(encode_mean(x))[1]
            eta = rng.normal(tf.stack([attack_samples, tf.shape(x)[0], latent]), rng.fold_in(seed, 11))
        objective = max_damage_objective(encode_mean, decode, x, stddev, eta)
        x_adv = attack_with_radii(objective, x, radii, steps, restarts, seed)
        reference = decode(encode_mean(x))
        sd = None if stddev is None else stddev(x_adv)
        p = robust_probability(decode, encode_mean(x_adv), sd, reference, r, num_samples, sample_seed)
        return p > 0.5, x_adv

    return robust_at


def empirical_margin(robust_at, x, clean_robust, min_radius, max_radius, search_steps, seed, sample_seed=None):
    """Bisection on log(radius) per example; returns numpy (lo, hi): r-robust against the attack at lo, not at hi.

    `robust_at(x, radii, seed, sample_seed)` is from `make_robust_at`; `clean_robust` [batch] says whether
    the model is r-robust at delta = 0 (estimated with `sample_seed`, which every probe reuses). Examples
    not r-robust unperturbed get [0, 0]; those the attack cannot break at `max_radius` get
    [max_radius, inf]; those broken at `min_radius` get [0, min_radius].
    """
    batch = int(x.shape[0])
    seed = tf.convert_to_tensor(seed)
    sample_seed = rng.fold_in(seed, 7) if sample_seed is None else sample_seed
    clean_robust = np.asarray(clean_robust, bool)
    lo = np.zeros(batch)
    hi = np.zeros(batch)
    active = clean_robust.copy()

    def probe(radii, salt):
        robust, _ = robust_at(x, tf.constant(radii, x.dtype), rng.fold_in(seed, salt), sample_seed)
        return robust.numpy()

    at_min = probe(np.full(batch, min_radius), 0)
    at_max = probe(np.full(batch, max_radius), 1)
    hi[active & ~at_min] = min_radius
    censored = active & at_min & at_max
    lo[censored] = max_radius
    hi[censored] = np.inf
    searching = active & at_min & ~at_max
    lo[searching] = min_radius
    hi[searching] = max_radius
    if searching.any():
        for step in range(search_steps):
            mid = np.where(searching, np.sqrt(lo * np.where(searching, hi, 1.0)), min_radius)
            robust = probe(mid, 2 + step)
            lo = np.where(searching & robust, mid, lo)
            hi = np.where(searching & ~robust, mid, hi)
    return lo, hi
