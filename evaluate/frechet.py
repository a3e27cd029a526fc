"""The Frechet distance between Gaussian fits of features (the "F" of FID), in TensorFlow.

    d^2 = ||mu_1 - mu_2||^2 + tr(C_1) + tr(C_2) - 2 tr((C_1 C_2)^(1/2))

C_1 C_2 is not symmetric, but it is similar to the symmetric PSD matrix
S = C_1^(1/2) C_2 C_1^(1/2), so tr((C_1 C_2)^(1/2)) = sum_i sqrt(lambda_i(S)).
Both square roots come from `tf.linalg.eigh` (eigenvalues clipped at 0 against
round-off), in float64. Tested against `scipy.linalg.sqrtm`.
"""

import tensorflow as tf


def gaussian_statistics(features):
    """Mean [d] and unbiased covariance [d, d] (float64) of features [n, d], as `numpy.cov(rowvar=False)`."""
    features = tf.cast(tf.convert_to_tensor(features), tf.float64)
    n = tf.cast(tf.shape(features)[0], tf.float64)
    mean = tf.reduce_mean(features, axis=0)
    centred = features - mean
    cov = tf.matmul(centred, centred, transpose_a=True) / tf.maximum(n - 1.0, 1.0)
    return mean, cov


def _psd_sqrt(matrix):
    values, vectors = tf.linalg.eigh(matrix)
    root = tf.sqrt(tf.maximum(values, 0.0))
    return tf.matmul(vectors * root[tf.newaxis, :], vectors, transpose_b=True)


def trace_sqrt_product(cov_1, cov_2):
    """tr((C_1 C_2)^(1/2)) for symmetric PSD C_1, C_2."""
    cov_1 = tf.cast(cov_1, tf.float64)
    cov_2 = tf.cast(cov_2, tf.float64)
    root_1 = _psd_sqrt(0.5 * (cov_1 + tf.transpose(cov_1)))
    inner = tf.matmul(root_1, tf.matmul(cov_2, root_1))
    values = tf.linalg.eigvalsh(0.5 * (inner + tf.transpose(inner)))
    return tf.reduce_sum(tf.sqrt(tf.maximum(values, 0.0)))


def frechet_distance(mean_1, cov_1, mean_2, cov_2):
    """Squared Frechet distance between N(mean_1, cov_1) and N(mean_2, cov_2) (a float64 scalar, >= 0)."""
    mean_1 = tf.cast(mean_1, tf.float64)
    mean_2 = tf.cast(mean_2, tf.float64)
    cov_1 = tf.cast(cov_1, tf.float64)
    cov_2 = tf.cast(cov_2, tf.float64)
    distance = (
        tf.reduce_sum(tf.square(mean_1 - mean_2))
        + tf.linalg.trace(cov_1)
        + tf.linalg.trace(cov_2)
        - 2.0 * trace_sqrt_product(cov_1, cov_2)
    )
    return tf.maximum(distance, 0.0)


def frechet_distance_of_features(features_1, features_2):
    """FID-style distance between two feature sets [n_1, d] and [n_2, d]."""
    return frechet_distance(*gaussian_statistics(features_1), *gaussian_statistics(features_2))
