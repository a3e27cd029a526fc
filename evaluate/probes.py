"""Linear probes on the frozen representation (AVAE paper, section 4, evaluation protocol, steps i and ii).

i) the encoder is frozen and its mean f_mu(x) is the representation; ii) a linear classifier per task is
trained on it normally (no attacks). Step iii, the attacks on encoder + probe, is `evaluate.worst_case`.
"""

import keras
import numpy as np
import tensorflow as tf


def encode_in_batches(encode_mean, images, batch_size):
    """f_mu of a numpy image array, batched; returns numpy [n, latent]."""
    encode = tf.function(encode_mean)
    return np.concatenate(
        [encode(tf.constant(images[i : i + batch_size])).numpy() for i in range(0, len(images), batch_size)]
    )


SCALINGS = ("dimension", "global")


def train_linear_probe(
    features, labels, num_classes, epochs=30, batch_size=256, learning_rate=1e-2, seed=0, scaling="dimension"
):
    """Multinomial logistic regression on fixed features; returns (W [d, K], b [K]) as float32 numpy.

    Features are centred and scaled for the optimisation and the scaling is folded back into W and b,
    so logits = features @ W + b is linear in the raw representation. Adam, minibatches, no attacks.
    `scaling` "dimension" (the protocol's) divides each dimension by its own std: a near-constant dimension
    then gets a very large raw weight, which an attack can exploit. "global" divides every dimension by one
    scale (the features' overall std), i.e. trains on the representation as it is, only better conditioned.
    """
    if scaling not in SCALINGS:
        raise ValueError(f"scaling must be one of {', '.join(SCALINGS)}, got {scaling!r}")
    features = np.asarray(features, np.float32)
    labels = np.asarray(labels, np.int32)
    mean = features.mean(axis=0)
    if scaling == "dimension":
        scale = features.std(axis=0) + 1e-6
    else:
        scale = np.full(features.shape[1], features.std() + 1e-6, np.float32)
    standard = (features - mean) / scale
    rng = np.random.default_rng(seed)
    dim = features.shape[1]
    w = tf.Variable(tf.zeros([dim, num_classes]))
    b = tf.Variable(tf.zeros([num_classes]))
    optimizer = keras.optimizers.Adam(learning_rate)

    @tf.function
    def step(f, y):
        with tf.GradientTape() as tape:
            logits = tf.matmul(f, w) + b
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))
        optimizer.apply_gradients(zip(tape.gradient(loss, [w, b]), [w, b]))
        return loss

    for _ in range(epochs):
        order = rng.permutation(len(standard))
        for i in range(0, len(order), batch_size):
            batch = order[i : i + batch_size]
            step(tf.constant(standard[batch]), tf.constant(labels[batch]))
    w_raw = w.numpy() / scale[:, None]
    b_raw = b.numpy() - (mean / scale) @ w.numpy()
    return w_raw.astype(np.float32), b_raw.astype(np.float32)


def probe_logits(encode_mean, w, b):
    return lambda x: tf.matmul(encode_mean(x), w) + b
