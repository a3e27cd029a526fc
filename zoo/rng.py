"""The project's stateless random draws (a shape-[2] integer seed), all with the Philox algorithm.

TensorFlow's default algorithm, "auto_select", is Philox on CPUs and GPUs: without XLA it draws the same
numbers as naming Philox. Under XLA, though, it derives the Philox key from the seed inside the compiled
step, and (what we believe explains the cost) XLA fuses that scalar derivation into the loop over every
drawn element: on a CPU the MLP AVAE step (one 64 x 2,352 delusion per step) ran 2.4x slower, one thread,
than with the algorithm named (results/rng_xla.md). Every draw goes through here so that none is left behind.
"""

import tensorflow as tf

ALGORITHM = "philox"


def normal(shape, seed, dtype=tf.float32):
    """Standard normal noise of `shape`."""
    return tf.random.stateless_normal(shape, seed, dtype=dtype, alg=ALGORITHM)


def uniform(shape, seed, minval=0, maxval=None, dtype=tf.float32):
    """Uniform noise in [minval, maxval) (maxval None: 1, floats only)."""
    return tf.random.stateless_uniform(shape, seed, minval=minval, maxval=maxval, dtype=dtype, alg=ALGORITHM)


def fold_in(seed, data):
    """A new seed from `seed` and an integer `data` (a restart, a chunk, a salt)."""
    return tf.random.experimental.stateless_fold_in(seed, data, alg=ALGORITHM)
