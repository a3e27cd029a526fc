"""AVAE, the Autoencoding VAE: Algorithm 1 and eq. (13) of Cemgil et al., NeurIPS 2020.

The delusion x~ = stop_gradient(decoder(z)), z ~ q(z|x), is encoded again and
its code z' ~ q(z'|x~) is coupled to z through p_rho(z'|z) = N(rho z,
(1 - rho^2) I). Eq. (13) adds to the ELBO

    <log p_rho(z'|z)>_{q(z|x) q(z'|x~)} + H[q(z'|x~)],

the first in closed form for the two diagonal Gaussians. Because x~ is
stopped, these terms train the encoder only, never the decoder. With a
BatchNorm encoder (conv) the data and the delusions are encoded in one pass
(`BaseVAE.coupled_posteriors`), so both codes are normalised alike.
"""

import dataclasses

import tensorflow as tf

from zoo import base, maths, registry
from zoo.config import COUPLING, setting


@dataclasses.dataclass
class AVAEConfig(base.VAEConfig):
    rho: float = setting(0.975, "Coupling strength between a code and its delusion's code.", check=COUPLING)


@registry.register("avae")
class AVAE(base.BaseVAE):
    config_class = AVAEConfig
    extra_terms = ("coupling_log_prob", "delusion_entropy")

    def regularizer(self, x, posterior, z, reconstruction, training):
        delusion = tf.stop_gradient(reconstruction)  # decoder(z), as in Algorithm 1
        posterior, (delusion_posterior,) = self.coupled_posteriors(x, posterior, [delusion], training)
        coupling, entropy = coupling_and_entropy(posterior, delusion_posterior, self.config.rho)
        return -(coupling + entropy), {"coupling_log_prob": coupling, "delusion_entropy": entropy}


def coupling_and_entropy(posterior, coupled, rho):
    """Eq. (13)'s two terms, batch means: <log p_rho(z'|z)>_{q(z|x) q(z'|x')} in closed form, and H[q(z'|x')]."""
    coupling = tf.reduce_mean(
        maths.coupling_log_prob(posterior.mean(), posterior.variance(), coupled.mean(), coupled.variance(), rho)
    )
    return coupling, tf.reduce_mean(maths.gaussian_entropy(coupled.variance()))
