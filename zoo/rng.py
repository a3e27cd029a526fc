"""The project's stateless random draws (a shape-[2] integer seed): Philox, or ThreeFry inside XLA training programs.

TensorFlow's default algorithm, "auto_select", is Philox on CPUs and GPUs: without XLA it draws the same
numbers as naming Philox. Under XLA, though, it derives the Philox key from the seed inside the compiled
step, and (what we believe explains the cost) XLA fuses that scalar derivation into the loop over every
drawn element: on a CPU the MLP AVAE step (one 64 x 2,352 delusion per step) ran slower, one thread,
than with the algorithm named (results/rng_xla.md). Every draw goes through here so that none is left behind.

Even named, XLA's Philox is slow on a CPU: a 64 x 2,352 normal draw cost about half the mlp VAE's whole step.
The programs that train several steps in one XLA program (`train.xla_programs`) therefore trace
their draws inside `xla_program()`, which draws as JAX does: ThreeFry bits, and normals sqrt(2) erfinv(u) of
u uniform in (-1, 1). TensorFlow's kernels have no ThreeFry, so only XLA programs can draw it; a run with
XLA then draws other (equally random) numbers than the same run without.
"""

import contextlib
import threading

import numpy as np
import tensorflow as tf

ALGORITHM = "philox"
XLA_ALGORITHM = "threefry"

_tracing = threading.local()


@contextlib.contextmanager
def xla_program():
    """Draws traced inside use ThreeFry: only for functions that XLA compiles (`jit_compile=True`)."""
    outer = getattr(_tracing, "xla", False)
    _tracing.xla = True
    try:
        yield
    finally:
        _tracing.xla = outer


def _algorithm():
    return XLA_ALGORITHM if getattr(_tracing, "xla", False) else ALGORITHM


def normal(shape, seed, dtype=tf.float32):
    """Standard normal noise of `shape`."""
    if _algorithm() == ALGORITHM:
        return tf.random.stateless_normal(shape, seed, dtype=dtype, alg=ALGORITHM)
    # float32 at least: erfinv of half-precision uniforms would cut the tails at about 3 sigma.
    draw_dtype = tf.float64 if dtype == tf.float64 else tf.float32
    above_minus_one = np.nextafter(draw_dtype.as_numpy_dtype(-1), draw_dtype.as_numpy_dtype(0))
    u = tf.random.stateless_uniform(shape, seed, minval=above_minus_one, maxval=1, dtype=draw_dtype, alg=XLA_ALGORITHM)
    return tf.cast(np.sqrt(2.0) * tf.math.erfinv(u), dtype)


def uniform(shape, seed, minval=0, maxval=None, dtype=tf.float32):
    """Uniform noise in [minval, maxval) (maxval None: 1, floats only)."""
    return tf.random.stateless_uniform(shape, seed, minval=minval, maxval=maxval, dtype=dtype, alg=_algorithm())


def fold_in(seed, data):
    """A new seed from `seed` and an integer `data` (a restart, a chunk, a salt)."""
    return tf.random.experimental.stateless_fold_in(seed, data, alg=ALGORITHM)
