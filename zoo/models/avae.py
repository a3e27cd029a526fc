"""AVAE, the Autoencoding VAE: Algorithm 1 and eq. (13) of Cemgil et al., NeurIPS 2020.

The delusion x~ = stop_gradient(decoder(z)), z ~ q(z|x), is encoded again and
its code z' ~ q(z'|x~) is coupled to z through p_rho(z'|z) = N(rho z,
(1 - rho^2) I). Eq. (13) adds to the ELBO

    <log p_rho(z'|z)>_{q(z|x) q(z'|x~)} + H[q(z'|x~)],

the first in closed form for the two diagonal Gaussians. Because x~ is
stopped, these terms train the encoder only, never the decoder.
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
        delusion_posterior = self.posterior(delusion, training=training)
        coupling = tf.reduce_mean(
            maths.coupling_log_prob(
                posterior.mean(),
                posterior.variance(),
                delusion_posterior.mean(),
                delusion_posterior.variance(),
                self.config.rho,
            )
        )
        entropy = tf.reduce_mean(delusion_posterior.entropy())
        return -(coupling + entropy), {"coupling_log_prob": coupling, "delusion_entropy": entropy}
