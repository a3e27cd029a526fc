"""Per-example tensor helpers shared by the autoencoder attacks and the margin of robustness."""

import tensorflow as tf

_TINY = 1e-12


def flat(t):
    """[batch, ...] -> [batch, everything else]."""
    return tf.reshape(t, [tf.shape(t)[0], -1])


def l2_distance(a, b):
    """||a - b||_2 per example over every non-batch axis [batch], with a finite gradient at a = b."""
    return tf.sqrt(tf.reduce_sum(tf.square(flat(a) - flat(b)), axis=1) + _TINY)
