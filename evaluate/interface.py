"""The small, explicit interface between the evaluation and a model.

The evaluation never reaches into a model's layers. It needs:

- `encode_mean(x) -> z`: the representation f_mu(x) ([batch, latent]);
- `stddev(x) -> sigma` ([batch, latent]): the posterior standard deviation,
  all zeros for a deterministic encoder;
- `decode(z) -> x~`: the mean image in [0, 1];
- `sample_prior(n, seed) -> z`: latents from the model's prior, for the FID
  of generated samples (None where the model does not carry its prior: an
  exported encoder);
- `image_shape`, the shape of one input image, and a `name`.

`from_model` adapts a zoo model through the interface every zoo model
declares (`zoo.base.ZooModel`): `model(x)` is the posterior mean,
`model.posterior(x).stddev()` the standard deviation (a deterministic
autoencoder's posterior is a point mass: zeros), `model.decode(z)` the
decoder mean and `model.prior` the prior. `from_saved_model` adapts an encoder
that `export.encoder` wrote (a SavedModel version directory, e.g. a shipped
`zoo.pretrained.path(name)`) through its serving signatures alone, so an
exported encoder is audited exactly as its users will call it.
"""

import dataclasses
from typing import Callable, Optional

import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class Autoencoder:
    encode_mean: Callable
    stddev: Callable
    decode: Callable
    sample_prior: Optional[Callable]
    image_shape: tuple
    name: str = "model"


def from_model(model, name=None):
    """The `Autoencoder` view of a zoo model (evaluation mode: training=False)."""

    def encode_mean(x):
        return model(x, training=False)

    def stddev(x):
        return model.posterior(x, training=False).stddev()

    def decode(z):
        return model.decode(z, training=False)

    def sample_prior(n, seed):
        return tf.cast(model.prior.sample(n, seed=seed), tf.float32)

    return Autoencoder(
        encode_mean=encode_mean,
        stddev=stddev,
        decode=decode,
        sample_prior=sample_prior,
        image_shape=tuple(model.image_shape),
        name=name or model.registry_name,
    )


def from_saved_model(directory, name):
    """The `Autoencoder` view of an exported encoder (`export.encoder`'s signatures; no prior: it is not exported).

    The attacks differentiate through the SavedModel's `serving_default` (images -> embedding, stddev).
    """
    from zoo.pretrained import Encoder

    # The closures hold the encoder: its signatures need the SavedModel's variables alive.
    encoder = Encoder(tf.saved_model.load(directory))

    def encode_mean(x):
        return encoder.signatures["serving_default"](images=x)["embedding"]

    def stddev(x):
        return encoder.signatures["serving_default"](images=x)["stddev"]

    def decode(z):
        return encoder.signatures["decode"](latents=z)["images"]

    return Autoencoder(
        encode_mean=encode_mean,
        stddev=stddev,
        decode=decode,
        sample_prior=None,
        image_shape=encoder.image_shape,
        name=name,
    )
