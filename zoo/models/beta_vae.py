"""beta-VAE: the ELBO with its KL weighted by beta (Higgins et al., ICLR 2017, eq. 4).

Loss = -<log p(x|z)> + beta KL(q(z|x) || p(z)) = -ELBO + (beta - 1) KL, so the regulariser adds
(beta - 1) KL to BaseVAE's negative ELBO; beta = 1 is the VAE. The default beta = 4 is our choice
(the robust GMM-DAE paper, which compares against it, does not give its beta).
"""

import dataclasses

import tensorflow as tf

from zoo import base, maths, registry
from zoo.config import NON_NEGATIVE, setting


@dataclasses.dataclass
class BetaVAEConfig(base.VAEConfig):
    beta: float = setting(4.0, "Weight of the KL term (1: the VAE).", check=NON_NEGATIVE)


@registry.register("beta_vae")
class BetaVAE(base.BaseVAE):
    config_class = BetaVAEConfig

    def regularizer(self, x, posterior, z, reconstruction, training):
        kl = tf.reduce_mean(maths.gaussian_kl(posterior.mean(), posterior.variance()))
        return (self.config.beta - 1.0) * kl, {}
