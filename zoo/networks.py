"""Encoder and decoder architectures as plain builder functions.

`build_encoder(arch, image_shape, latent_dim)` returns a functional
`keras.Model` mapping images in [0, 1] to `(z_mean, z_log_var)`;
`build_decoder(arch, latent_dim, image_shape)` returns one mapping latents to
per-pixel logits (the model applies the sigmoid). ARCHITECTURES maps the
`--arch` names to the builder pairs.

Choices where the AVAE paper (appendix F) is vague:
- `mlp`: 4 x 200 ReLU for the encoder and the decoder, as the paper says.
- `conv` (28x28 and 32x32 inputs): the encoder is the paper's 7 VGG-style
  3x3 convolutions (8-16-32-64-128-256-512 channels, strides 2,1,2,1,2,1,2)
  with BatchNorm and ReLU. The paper's decoder has three transposed
  convolutions (64, 32, C channels, strides 1, 2, 1) but does not say how a
  latent reaches an image grid: a dense layer maps it to an (H/2, W/2, 64)
  grid, then the three transposed convolutions bring it to (H, W, C).
- `conv64` (64x64 CelebA): four 5x5 stride-2 convolutions (128-256-512-1024)
  with BatchNorm; the decoder mirrors it: dense to 4x4x1024, then transposed
  convolutions 512-256-128-C with stride 2.
"""

import keras
from keras import layers

_HIDDEN = 200
# Output layers compute in float32 even under the mixed_float16 policy, so the
# posterior parameters, logits and every loss built on them stay float32.
_OUT = "float32"


def _heads(features, latent_dim):
    z_mean = layers.Dense(latent_dim, name="z_mean", dtype=_OUT)(features)
    z_log_var = layers.Dense(latent_dim, name="z_log_var", dtype=_OUT)(features)
    return z_mean, z_log_var


def has_batch_norm(network):
    """Whether `network` normalises with batch statistics in training mode."""
    return any(isinstance(layer, layers.BatchNormalization) for layer in network.layers)


def _conv_bn_relu(x, filters, kernel, stride, transpose=False):
    conv = layers.Conv2DTranspose if transpose else layers.Conv2D
    x = conv(filters, kernel, strides=stride, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    return layers.ReLU()(x)


def mlp_encoder(image_shape, latent_dim):
    images = keras.Input(image_shape, name="images")
    x = layers.Flatten()(images)
    for _ in range(4):
        x = layers.Dense(_HIDDEN, activation="relu")(x)
    return keras.Model(images, _heads(x, latent_dim), name="encoder")


def mlp_decoder(latent_dim, image_shape):
    latents = keras.Input((latent_dim,), name="latents")
    x = latents
    for _ in range(4):
        x = layers.Dense(_HIDDEN, activation="relu")(x)
    x = layers.Dense(int(image_shape[0] * image_shape[1] * image_shape[2]), dtype=_OUT)(x)
    return keras.Model(latents, layers.Reshape(image_shape, dtype=_OUT)(x), name="decoder")


def conv_encoder(image_shape, latent_dim):
    images = keras.Input(image_shape, name="images")
    x = images
    for filters, stride in zip((8, 16, 32, 64, 128, 256, 512), (2, 1, 2, 1, 2, 1, 2)):
        x = _conv_bn_relu(x, filters, 3, stride)
    return keras.Model(images, _heads(layers.Flatten()(x), latent_dim), name="encoder")


def conv_decoder(latent_dim, image_shape):
    height, width, channels = image_shape
    if height % 2 or width % 2:
        raise ValueError(f"arch 'conv' needs even image sides, got {image_shape}")
    latents = keras.Input((latent_dim,), name="latents")
    x = layers.Dense(height // 2 * width // 2 * 64, activation="relu")(latents)
    x = layers.Reshape((height // 2, width // 2, 64))(x)
    x = _conv_bn_relu(x, 64, 3, 1, transpose=True)
    x = _conv_bn_relu(x, 32, 3, 2, transpose=True)
    x = layers.Conv2DTranspose(channels, 3, strides=1, padding="same", dtype=_OUT)(x)
    return keras.Model(latents, x, name="decoder")


def conv64_encoder(image_shape, latent_dim):
    images = keras.Input(image_shape, name="images")
    x = images
    for filters in (128, 256, 512, 1024):
        x = _conv_bn_relu(x, filters, 5, 2)
    return keras.Model(images, _heads(layers.Flatten()(x), latent_dim), name="encoder")


def conv64_decoder(latent_dim, image_shape):
    height, width, channels = image_shape
    if height % 16 or width % 16:
        raise ValueError(f"arch 'conv64' needs image sides divisible by 16, got {image_shape}")
    latents = keras.Input((latent_dim,), name="latents")
    x = layers.Dense(height // 16 * width // 16 * 1024, activation="relu")(latents)
    x = layers.Reshape((height // 16, width // 16, 1024))(x)
    for filters in (512, 256, 128):
        x = _conv_bn_relu(x, filters, 5, 2, transpose=True)
    x = layers.Conv2DTranspose(channels, 5, strides=2, padding="same", dtype=_OUT)(x)
    return keras.Model(latents, x, name="decoder")


ARCHITECTURES = {
    "mlp": (mlp_encoder, mlp_decoder),
    "conv": (conv_encoder, conv_decoder),
    "conv64": (conv64_encoder, conv64_decoder),
}


def _builders(arch):
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown arch {arch!r}; choose one of: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[arch]


def build_encoder(arch, image_shape, latent_dim):
    return _builders(arch)[0](tuple(image_shape), latent_dim)


def build_decoder(arch, latent_dim, image_shape):
    return _builders(arch)[1](latent_dim, tuple(image_shape))
