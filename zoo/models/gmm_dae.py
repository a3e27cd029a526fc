"""GMM-DAE: a deterministic autoencoder whose codes are regularised to a K-mode Gaussian mixture.

The model of the paper's ref. [27] (Saseendran et al., NeurIPS 2021) as restated in section 3.1 of the robust GMM-DAE
paper: codes z = E(x) are pushed to the prior by the Kolmogorov-Smirnov loss of eq. (4) (per
dimension, the sorted codes' mixture CDF against the empirical levels n/N) and the covariance loss of
eq. (5) (empirical against mixture covariance); the decoder reconstructs x from z + eps, eps ~
N(0, `latent_noise`^2 I) (section 3.2: the paper's eps ~ N(0, I_D) is the default). The loss is
eq. (11) without adversaries: lambda_REC L_REC + lambda_KS L_KS + lambda_CV L_CV.

Choices where the paper is silent (its appendix is not in our copy):
- Mixture: K = `num_modes` equally weighted modes with identity covariance, means pairwise
  `mode_distance` apart, each along its own axis: for K <= D the vertices of a regular simplex
  (unit vectors e_1..e_K, centred); for D < K <= 2D the vertices +-e_d of a cross-polytope (centred;
  nearest modes `mode_distance` apart, opposite ones sqrt(2) times that). Axis-aligned modes keep
  them apart in the per-dimension marginals the KS loss sees. With the default 6 (six standard
  deviations) a mode puts 0.13% of its mass past the midpoint to a neighbour.
- Loss weights "from the statistics of samples from the prior": lambda_KS and lambda_CV are the
  inverse mean losses of 16 batches drawn from the prior itself, of the training batch's size (a
  fixed seed: the same weights every step). A loss of 1 is thus the level at which codes cannot be
  told from prior samples. lambda_REC = `rec_weight` on the squared error summed over pixels.
- Validation (`test_step`) evaluates the same objective, latent noise included.
"""

import dataclasses

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from zoo import base, maths, registry, rng
from zoo.config import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, ModelConfig, setting

tfd = tfp.distributions

_PRIOR_BATCHES = 16  # prior batches estimating the loss weights


def mixture_means(num_modes, latent_dim, distance):
    """[K, D] means, pairwise `distance` apart: centred simplex (K <= D) or cross-polytope (K <= 2D)."""
    eye = np.eye(latent_dim)
    vertices = eye[:num_modes] if num_modes <= latent_dim else np.concatenate([eye, -eye])[:num_modes]
    return (vertices - vertices.mean(axis=0)) * distance / np.sqrt(2.0)


@dataclasses.dataclass
class GMMDAEConfig(ModelConfig):
    num_modes: int = setting(10, "Modes K of the Gaussian-mixture prior (at most 2 * latent_dim).", check=AT_LEAST_ONE)
    mode_distance: float = setting(6.0, "Distance between mixture means (modes have unit variance).", check=POSITIVE)
    latent_noise: float = setting(1.0, "Std of the noise added to codes before decoding.", check=NON_NEGATIVE)
    rec_weight: float = setting(1.0, "Weight lambda_REC of the reconstruction loss.", check=POSITIVE)


@registry.register("gmm_dae")
class GMMDAE(base.BaseDAE):
    config_class = GMMDAEConfig
    extra_terms = ("ks_loss", "cov_loss")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        num_modes = self.config.num_modes
        means = mixture_means(num_modes, self.latent_dim, self.config.mode_distance).astype(np.float32)
        # (means [K, D], standard deviations [K, D], weights [K]): the arguments of the maths functions.
        self.mixture = (means, np.ones_like(means), np.full([num_modes], 1.0 / num_modes, np.float32))

    def check_hyperparameters(self):
        if self.config.num_modes > 2 * self.latent_dim:
            raise ValueError(
                f"num_modes must be at most 2 * latent_dim = {2 * self.latent_dim}, got {self.config.num_modes}"
            )

    @property
    def mixture_covariance(self):
        return maths.gmm_covariance(*self.mixture)

    @property
    def prior(self):
        means, stddevs, weights = self.mixture
        return tfd.MixtureSameFamily(tfd.Categorical(probs=weights), tfd.MultivariateNormalDiag(means, stddevs))

    def compute_losses(self, x, training):
        z = self.encoder(x, training=training)
        noise = self.config.latent_noise * rng.normal(tf.shape(z), self.noise_seed(0))
        reconstruction = self.reconstruction_error(x, z + noise, training=training)
        ks, cov, extra = self.regularisers(x, z, training)
        ks_weight, cov_weight = self.loss_weights(tf.shape(z)[0])
        loss = self.config.rec_weight * reconstruction + ks_weight * ks + cov_weight * cov
        return {"loss": loss, "reconstruction": reconstruction, "ks_loss": ks, "cov_loss": cov, **extra}

    def regularisers(self, x, z, training):
        """(KS loss, covariance loss, {extra tracked terms}) of the codes z: eqs. (4) and (5)."""
        return maths.ks_loss(z, *self.mixture), maths.covariance_loss(z, self.mixture_covariance), {}

    def loss_weights(self, batch_size):
        """(lambda_KS, lambda_CV): inverse mean losses of prior batches of `batch_size` codes."""
        samples = self.prior.sample([_PRIOR_BATCHES, batch_size], seed=tf.constant([self.seed, 7919]))
        ks = tf.reduce_mean(maths.ks_loss(samples, *self.mixture))
        cov = tf.reduce_mean(maths.covariance_loss(samples, self.mixture_covariance))
        return tf.stop_gradient(1.0 / ks), tf.stop_gradient(1.0 / cov)
