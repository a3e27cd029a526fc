"""AVAE-SS, self-supervised post-training: Algorithm 4 and eq. (34) of Cemgil et al., NeurIPS 2020 (C.4).

Post-trains the encoder of an already trained VAE (`python -m train.avae_ss --init_from=<model_dir>`)
from the model's own samples, reading no data at all:

    z'' ~ p(z),  x = stop_gradient(decoder(z'')),  z ~ q(z|x),  x~ = stop_gradient(decoder(z)),

and maximises eq. (34),

    <log p(z)>_q(z|x) - <log q(z|x)> + <log p_rho(z'|z)>_{q(z|x) q(z'|x~)} + H[q(z'|x~)],

i.e. -KL(q(z|x) || p(z)) plus the AVAE coupling terms; there is no reconstruction term. The decoder is
frozen (not trainable, always run in inference mode, so its BatchNorm statistics stay too).

The model needs no dataset (`needs_data = False`): the batches the training loop feeds it carry only
the batch size, and `compute_losses` draws that many prior samples.
"""

import tensorflow as tf

from zoo import maths, registry
from zoo.models import avae

_PRIOR_SALT = 2  # noise_seed salt of z'' ~ p(z) (0 is the posterior sample)


@registry.register("avae_ss")
class AVAESS(avae.AVAE):
    needs_data = False
    base_terms = ("kl",)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.decoder.trainable = False

    def compute_losses(self, x, training):
        batch_size = tf.shape(x)[0]  # all this model reads of its input
        z_prior = self.prior.sample(batch_size, seed=self.noise_seed(_PRIOR_SALT))
        x = tf.stop_gradient(self.decode(z_prior))
        posterior = self.posterior(x, training=training)
        z = self.sample_posterior(posterior, self.noise_seed(0))
        kl = tf.reduce_mean(maths.gaussian_kl(posterior.mean(), posterior.variance()))
        penalty, extra = self.regularizer(x, posterior, z, self.decode(z), training)
        return {"loss": kl + penalty, "kl": kl, **extra}
