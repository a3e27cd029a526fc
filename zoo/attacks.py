"""Projected gradient attacks: one implementation for training and evaluation.

The attacked quantity is a callable `objective(x_adv) -> [batch]` that is MAXIMISED, so the same code
selects the Smooth Encoder's auxiliary inputs (the change of representation) and attacks a classifier
(e.g. its cross-entropy).

- `pgd`: L-inf PGD (signed-gradient ascent) or L2 PGD (normalised-gradient ascent, per example), from a
  uniform random start in the eps-ball; every iterate is projected onto the eps-ball around `x` AND the
  valid range [clip_min, clip_max]. With `restarts > 1` the attack is rerun from fresh random starts and,
  per example, the input with the highest objective is kept. Within one run the best iterate seen (the
  start, every step and the last one) is kept as well, so the returned objective is never below that of
  any point the attack visited.
- `fgsm`: the one-step case (step size epsilon, no random start by default).

Everything is plain TensorFlow (`tf.while_loop` over steps and restarts), so it runs eagerly, inside
`tf.function` and with `jit_compile=True`. Random starts are stateless given a shape-[2] integer `seed`:
restart r uses `zoo.rng.fold_in(seed, r)`, so restart 0 is the same whatever the number of restarts;
with `seed=None` they use `tf.random.uniform` / `tf.random.normal`.

The result is wrapped in `tf.stop_gradient`: nothing of the attack reaches the gradients of a
surrounding training step. The objective must be per example (no coupling across the batch such as
BatchNorm in training mode), and `x` must already lie in [clip_min, clip_max].
"""

import tensorflow as tf

from zoo import rng

NORMS = ("linf", "l2")
_TINY = 1e-12


def _check_norm(norm):
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")


def _per_example(values, like):
    """Reshapes a [batch] tensor to broadcast against `like` ([batch, ...])."""
    return tf.reshape(values, tf.concat([[-1], tf.ones([tf.rank(like) - 1], tf.int32)], axis=0))


def _l2_norm(t):
    """Per-example L2 norm over every non-batch axis, shaped to broadcast against t."""
    return _per_example(tf.norm(tf.reshape(t, [tf.shape(t)[0], -1]), axis=1), t)


def project(x_adv, x, epsilon, norm="linf", clip_min=0.0, clip_max=1.0):
    """Projects x_adv onto {||x_adv - x|| <= epsilon} (per example) and [clip_min, clip_max].

    For L-inf this is the exact projection onto the intersection (a box). For L2 the ball projection
    is followed by clipping; with x in range, clipping only shrinks each coordinate of the
    perturbation, so the result stays inside both sets.
    """
    _check_norm(norm)
    delta = x_adv - x
    if norm == "linf":
        delta = tf.clip_by_value(delta, -epsilon, epsilon)
    else:
        delta = delta * tf.minimum(1.0, epsilon / tf.maximum(_l2_norm(delta), _TINY))
    return tf.clip_by_value(x + delta, clip_min, clip_max)


def _random_start(x, epsilon, norm, seed):
    """A uniform sample from the eps-ball around each example."""
    shape = tf.shape(x)
    if norm == "linf":
        if seed is None:
            u = tf.random.uniform(shape, -1.0, 1.0, dtype=x.dtype)
        else:
            u = rng.uniform(shape, seed, -1.0, 1.0, dtype=x.dtype)
        return x + epsilon * u
    # L2: a uniform direction times the radius eps * U^(1/d) is uniform in the ball.
    if seed is None:
        g = tf.random.normal(shape, dtype=x.dtype)
        u = tf.random.uniform(shape[:1], dtype=x.dtype)
    else:
        g = rng.normal(shape, seed, dtype=x.dtype)
        u = rng.uniform(shape[:1], rng.fold_in(seed, 1), dtype=x.dtype)
    dim = tf.cast(tf.reduce_prod(shape[1:]), x.dtype)
    radius = epsilon * _per_example(tf.pow(u, 1.0 / dim), x)
    return x + radius * g / tf.maximum(_l2_norm(g), _TINY)


def _keep_best(x_new, obj_new, x_best, obj_best):
    """Per example, keeps whichever input has the higher objective (a NaN never wins)."""
    better = obj_new > obj_best
    return tf.where(_per_example(better, x_new), x_new, x_best), tf.where(better, obj_new, obj_best)


def _evaluate(objective, x_adv):
    """The objective [batch] as float32 and its gradient wrt x_adv (zero where unused or non-finite)."""
    with tf.GradientTape() as tape:
        tape.watch(x_adv)
        obj = tf.reshape(tf.cast(objective(x_adv), tf.float32), [-1])
    grad = tape.gradient(obj, x_adv, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return obj, tf.where(tf.math.is_finite(grad), grad, tf.zeros_like(grad))


def _single_run(objective, x, epsilon, steps, step_size, norm, random_start, seed, clip_min, clip_max):
    """One PGD run from one start; returns (best input, its objective) per example."""
    x_adv = project(_random_start(x, epsilon, norm, seed), x, epsilon, norm, clip_min, clip_max) if random_start else x
    best_obj = tf.fill(tf.shape(x)[:1], tf.constant(-float("inf"), tf.float32))

    def body(i, x_adv, best_x, best_obj):
        obj, grad = _evaluate(objective, x_adv)
        best_x, best_obj = _keep_best(x_adv, obj, best_x, best_obj)
        ascent = tf.sign(grad) if norm == "linf" else grad / tf.maximum(_l2_norm(grad), _TINY)
        x_adv = project(x_adv + step_size * ascent, x, epsilon, norm, clip_min, clip_max)
        return i + 1, x_adv, best_x, best_obj

    _, x_adv, best_x, best_obj = tf.while_loop(lambda i, *_: i < steps, body, (tf.constant(0), x_adv, x_adv, best_obj))
    obj, _ = _evaluate(objective, x_adv)
    return _keep_best(x_adv, obj, best_x, best_obj)


def pgd(
    objective,
    x,
    epsilon,
    steps,
    step_size=None,
    norm="linf",
    restarts=1,
    random_start=True,
    seed=None,
    clip_min=0.0,
    clip_max=1.0,
):
    """Projected gradient ascent of `objective(x_adv) -> [batch]` in the eps-ball around x.

    Args:
        objective: maps inputs shaped like x to a per-example [batch] tensor to maximise.
        x: clean inputs [batch, ...] in [clip_min, clip_max].
        epsilon: radius of the L-inf or L2 ball: a scalar, or one radius per example [batch].
        steps: number of gradient steps (python int or scalar int tensor).
        step_size: defaults to 2.5 * epsilon / steps (per example when epsilon is).
        norm: "linf" (signed-gradient steps) or "l2" (per-example normalised-gradient steps).
        restarts: number of random starts; per example the highest objective wins.
        random_start: start uniformly in the ball (then projected onto the range), else at x.
        seed: shape-[2] integer tensor for stateless random starts, or None.
        clip_min, clip_max: the valid input range.

    Returns:
        x_adv shaped like x, wrapped in tf.stop_gradient.
    """
    _check_norm(norm)
    if isinstance(restarts, int) and restarts < 1:
        raise ValueError(f"restarts must be >= 1, got {restarts}")
    x = tf.stop_gradient(tf.convert_to_tensor(x))
    epsilon = tf.cast(epsilon, x.dtype)
    if epsilon.shape.rank == 1:
        epsilon = _per_example(epsilon, x)
    if step_size is None:
        step_size = 2.5 * epsilon / tf.cast(tf.maximum(steps, 1), x.dtype)
    step_size = tf.cast(step_size, x.dtype)
    seed = None if seed is None else tf.convert_to_tensor(seed)

    def run(r):
        run_seed = None if seed is None else rng.fold_in(seed, r)
        return _single_run(objective, x, epsilon, steps, step_size, norm, random_start, run_seed, clip_min, clip_max)

    best_x, best_obj = run(0)
    if not (isinstance(restarts, int) and restarts == 1):

        def restart(r, best_x, best_obj):
            return (r + 1, *_keep_best(*run(r), best_x, best_obj))

        _, best_x, _ = tf.while_loop(lambda r, *_: r < restarts, restart, (tf.constant(1), best_x, best_obj))
    return tf.stop_gradient(best_x)


def fgsm(objective, x, epsilon, step_size=None, norm="linf", random_start=False, seed=None, clip_min=0.0, clip_max=1.0):
    """Fast gradient (sign) method: one PGD step, of size epsilon unless given."""
    return pgd(
        objective,
        x,
        epsilon,
        steps=1,
        step_size=epsilon if step_size is None else step_size,
        norm=norm,
        random_start=random_start,
        seed=seed,
        clip_min=clip_min,
        clip_max=clip_max,
    )
