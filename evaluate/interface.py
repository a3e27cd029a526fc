"""The small, explicit interface between the evaluation and a model.

The evaluation never reaches into a model's layers. It needs:

- `encode_mean(x) -> z`: the representation f_mu(x) ([batch, latent]);
- `stddev(x) -> sigma` ([batch, latent]) or `None`: the posterior standard
  deviation; `None` (or all zeros) means a deterministic encoder;
- `decode(z) -> x~`: the mean image in [0, 1];
- `sample_prior(n, seed) -> z` or `None`: latents from the model's prior, for
  the FID of generated samples.

`from_model` adapts any zoo model: `model(x)` is the posterior mean (the zoo's
contract), `model.posterior(x).stddev()` the standard deviation where a model
has a posterior, `model.decode(z)` the decoder mean, and `model.prior` where
a model has one. A deterministic autoencoder without `posterior` gets
`stddev=None`; one that defines `stddev(x)` itself is used as is.
"""

import dataclasses
from typing import Callable, Optional

import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class Autoencoder:
    encode_mean: Callable
    decode: Callable
    stddev: Optional[Callable] = None
    sample_prior: Optional[Callable] = None
    name: str = "model"

    @property
    def is_stochastic(self):
        return self.stddev is not None


def from_model(model, name=None):
    """The `Autoencoder` view of a zoo model (evaluation mode: training=False)."""

    def encode_mean(x):
        return model(x, training=False)

    def decode(z):
        return model.decode(z, training=False)

    stddev = None
    if callable(getattr(model, "stddev", None)):
        stddev = model.stddev
    elif callable(getattr(model, "posterior", None)):

        def stddev(x):
            return model.posterior(x, training=False).stddev()

    sample_prior = None
    prior = getattr(model, "prior", None)
    if prior is not None and callable(getattr(prior, "sample", None)):

        def sample_prior(n, seed):
            return tf.cast(prior.sample(n, seed=seed), tf.float32)

    return Autoencoder(
        encode_mean=encode_mean,
        decode=decode,
        stddev=stddev,
        sample_prior=sample_prior,
        name=name or getattr(model, "registry_name", None) or model.name,
    )
