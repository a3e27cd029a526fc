"""Lipschitz VAE: the ELBO with Lipschitz-bounded encoder and decoder (Barrett et al., "Certifiably
robust variational autoencoders", AISTATS 2022), a baseline of the robust GMM-DAE paper.

How the bound `lipschitz` = c is enforced (L2 norms; Anil et al., ICML 2019): every dense layer is
a `BjorckDense`, whose weight is an orthonormalised copy of a free parameter V. V is scaled by a
Gershgorin bound on its spectral norm (the largest absolute row sum of V^T V bounds its largest
eigenvalue), so all singular values lie in [0, 1]; Bjorck iterations W <- W (3/2 I - 1/2 W^T W) then
move them towards 1. That map sends [0, sqrt(3)] into [0, 1], so the spectral norm stays <= 1 (up
to float32 rounding, ~1e-6) after any number of iterations, and is 1 once they converge. The
activations are GroupSort with groups of 2 (MaxMin), a permutation of their input and so
1-Lipschitz; Flatten/Reshape and biases preserve distances. The last layer of each map is scaled by
c, so images -> z_mean, images -> z_log_var and latents -> logits are each c-Lipschitz (the decoder's
mean image sigmoid(logits) is c/4-Lipschitz). The networks are the `mlp` arch's 4 x 200 layers,
dense only: `--arch` must be `mlp`.
"""

import dataclasses

import keras
import tensorflow as tf
from keras import layers

from zoo import base, registry
from zoo.config import POSITIVE, setting

_HIDDEN = 200
_TINY = 1e-12


def bjorck_orthonormalise(kernel, iterations):
    """Spectral norm <= 1 version of `kernel` [in, out] after `iterations` first-order Bjorck steps.

    Every iterate is W_0 P_k with P_k a polynomial in G_0 = W_0^T W_0, so for a tall W (the
    Gram matrix much smaller than W) all steps but the last run on the Gram matrices: P <- P S,
    G <- G S^2 with S = 3/2 I - 1/2 G. The last step is taken on W itself, W <- W (3/2 I - 1/2 W^T W),
    which corrects the rounding the Gram steps accumulate.
    """
    transpose = kernel.shape[0] < kernel.shape[1]
    w = tf.transpose(kernel) if transpose else kernel  # rows >= columns: the Gram matrix is the small one
    gram = tf.matmul(w, w, transpose_a=True)
    bound = tf.maximum(tf.reduce_max(tf.reduce_sum(tf.abs(gram), axis=1)), _TINY)
    gram = gram / bound
    identity = tf.eye(w.shape[1], dtype=w.dtype)
    polynomial = identity / tf.sqrt(bound)
    gram_steps = max(iterations - 1, 0) if w.shape[0] >= 1.5 * w.shape[1] else 0
    for _ in range(gram_steps):
        step = 1.5 * identity - 0.5 * gram
        polynomial = tf.matmul(polynomial, step)
        gram = tf.matmul(gram, tf.matmul(step, step))
    w = tf.matmul(w, polynomial)
    for _ in range(iterations - gram_steps):
        w = tf.matmul(w, 1.5 * identity - 0.5 * tf.matmul(w, w, transpose_a=True))
    return tf.transpose(w) if transpose else w


@keras.saving.register_keras_serializable(package="zoo")
class BjorckDense(layers.Layer):
    """Dense layer x W + b with W = scale * bjorck_orthonormalise(V): (scale)-Lipschitz."""

    def __init__(self, units, scale=1.0, iterations=15, **kwargs):
        super().__init__(**kwargs)
        self.units, self.scale, self.iterations = int(units), float(scale), int(iterations)

    def build(self, input_shape):
        self.kernel = self.add_weight(name="kernel", shape=(input_shape[-1], self.units), initializer="orthogonal")
        self.bias = self.add_weight(name="bias", shape=(self.units,), initializer="zeros")

    def orthonormal_kernel(self):
        return bjorck_orthonormalise(self.kernel, self.iterations)

    def call(self, x):
        return tf.matmul(x, self.scale * self.orthonormal_kernel()) + self.bias

    def get_config(self):
        return {**super().get_config(), "units": self.units, "scale": self.scale, "iterations": self.iterations}


@keras.saving.register_keras_serializable(package="zoo")
class GroupSort(layers.Layer):
    """Sorts each group of `group_size` consecutive units (2: MaxMin); a permutation, so 1-Lipschitz."""

    def __init__(self, group_size=2, **kwargs):
        super().__init__(**kwargs)
        self.group_size = int(group_size)

    def call(self, x):
        groups = tf.reshape(x, tf.concat([tf.shape(x)[:-1], [-1, self.group_size]], axis=0))
        return tf.reshape(tf.sort(groups, axis=-1), tf.shape(x))

    def get_config(self):
        return {**super().get_config(), "group_size": self.group_size}


def _body(x):
    for _ in range(4):
        x = GroupSort()(BjorckDense(_HIDDEN)(x))
    return x


def lipschitz_encoder(image_shape, latent_dim, lipschitz):
    images = keras.Input(image_shape, name="images")
    features = _body(layers.Flatten()(images))
    heads = [BjorckDense(latent_dim, scale=lipschitz, name=name)(features) for name in ("z_mean", "z_log_var")]
    return keras.Model(images, heads, name="encoder")


def lipschitz_decoder(latent_dim, image_shape, lipschitz):
    latents = keras.Input((latent_dim,), name="latents")
    logits = BjorckDense(int(image_shape[0] * image_shape[1] * image_shape[2]), scale=lipschitz)(_body(latents))
    return keras.Model(latents, layers.Reshape(image_shape)(logits), name="decoder")


@dataclasses.dataclass
class LipschitzVAEConfig(base.VAEConfig):
    lipschitz: float = setting(10.0, "L2 Lipschitz bound of the encoder and decoder maps.", check=POSITIVE)


@registry.register("lipschitz_vae")
class LipschitzVAE(base.BaseVAE):
    config_class = LipschitzVAEConfig

    def __init__(self, image_shape=(28, 28, 1), arch="mlp", latent_dim=64, seed=0, **kwargs):
        # BaseVAE.__init__ would build the `--arch` networks; these are the model's own.
        base.ZooModel.__init__(self, image_shape=image_shape, arch=arch, latent_dim=latent_dim, seed=seed, **kwargs)
        if arch != "mlp":
            raise ValueError(f"lipschitz_vae has Lipschitz dense networks only: use arch 'mlp', not {arch!r}")
        self.encoder = lipschitz_encoder(self.image_shape, self.latent_dim, self.config.lipschitz)
        self.decoder = lipschitz_decoder(self.latent_dim, self.image_shape, self.config.lipschitz)
        self.built = True
