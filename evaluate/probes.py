"""Downstream adversarial accuracy (AVAE paper, section 4, evaluation protocol).

i) the encoder is frozen and its mean f_mu(x) is the representation; ii) a
linear classifier per task is trained on it normally (no attacks); iii) the
composition x -> f_mu -> linear is attacked end to end with untargeted L-inf
PGD (`zoo.attacks.pgd`: random start, restarts keeping the worst case, pixels
in [0, 1]); the accuracy that survives is reported (epsilon 0: clean accuracy).

Attack objective: the cross-entropy of the true class, plus a constant 100 on
iterates that are already misclassified. The constant has no gradient, so the
ascent is plain cross-entropy PGD; it only makes PGD's "keep the best iterate
and the best restart" rule prefer any misclassified input over every correctly
classified one (a correctly classified input has cross-entropy <= log K < 100),
so an example counts as broken when any visited iterate of any restart broke it.
"""

import keras
import numpy as np
import tensorflow as tf

from zoo import attacks

MISCLASSIFIED_BONUS = 100.0


def encode_in_batches(encode_mean, images, batch_size):
    """f_mu of a numpy image array, batched; returns numpy [n, latent]."""
    encode = tf.function(encode_mean)
    return np.concatenate(
        [encode(tf.constant(images[i : i + batch_size])).numpy() for i in range(0, len(images), batch_size)]
    )


def train_linear_probe(features, labels, num_classes, epochs=30, batch_size=256, learning_rate=1e-2, seed=0):
    """Multinomial logistic regression on fixed features; returns (W [d, K], b [K]) as float32 numpy.

    Features are standardised for the optimisation and the standardisation is folded back into W and b,
    so logits = features @ W + b is linear in the raw representation. Adam, minibatches, no attacks.
    """
    features = np.asarray(features, np.float32)
    labels = np.asarray(labels, np.int32)
    mean = features.mean(axis=0)
    scale = features.std(axis=0) + 1e-6
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


def attack_objective(logits_fn, labels):
    """Cross-entropy of the true class (+ MISCLASSIFIED_BONUS where already misclassified), per example."""

    def objective(x_adv):
        logits = logits_fn(x_adv)
        cross_entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
        wrong = tf.cast(tf.not_equal(tf.argmax(logits, axis=-1, output_type=labels.dtype), labels), logits.dtype)
        return cross_entropy + MISCLASSIFIED_BONUS * tf.stop_gradient(wrong)

    return objective


def make_adversarial_correct(encode_mean, steps, restarts):
    """A tf.function (x, labels, w, b, epsilon, seed) -> [batch] bool: still correct after L-inf PGD.

    epsilon, w, b and seed are tensors, so one trace serves every epsilon and every task with the same
    number of classes.
    """

    @tf.function(reduce_retracing=True)
    def adversarial_correct(x, labels, w, b, epsilon, seed):
        logits_fn = probe_logits(encode_mean, w, b)
        x_adv = attacks.pgd(
            attack_objective(logits_fn, labels),
            x,
            epsilon,
            steps,
            norm="linf",
            restarts=restarts,
            random_start=True,
            seed=seed,
            clip_min=0.0,
            clip_max=1.0,
        )
        return tf.equal(tf.argmax(logits_fn(x_adv), axis=-1, output_type=labels.dtype), labels)

    return adversarial_correct


def make_clean_correct(encode_mean):
    @tf.function(reduce_retracing=True)
    def clean_correct(x, labels, w, b):
        logits = probe_logits(encode_mean, w, b)(x)
        return tf.equal(tf.argmax(logits, axis=-1, output_type=labels.dtype), labels)

    return clean_correct
