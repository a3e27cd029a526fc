"""Augmented GMM-DAE: the "Augmented" ablation of the robust GMM-DAE paper (section 3.2, eqs. 6-8).

Adversarial inputs x_adv = x + delta maximise the code shift ||E(x + delta) - E(x)||_2 with
||delta||_inf <= `epsilon` (eq. 6), found by FGSM from a uniform random start in the eps-ball (one
signed-gradient step of `step_size`, then projection; `zoo.attacks.fgsm`). Their codes z_adv are
treated as augmented data, regularised to the same prior independently of z: the KS loss is
(1/2) L_KS(z) + 1/2 L_KS(z_adv) (eq. 7) and the covariance loss compares the covariance of the
stacked [z, z_adv] with the block-diagonal [[S, 0], [0, S]] (eq. 8). The reconstruction term and the
loss weights are GMM-DAE's (clean codes plus latent noise; weights from prior batches).

Choices: the attack maximises the squared code distance (same gradient sign as the distance, and
defined at delta = 0) with the encoder in inference mode, so BatchNorm couples no examples; the
defaults epsilon = 0.1 and step_size = 1.25 epsilon follow FGSM-with-random-start adversarial training
(Wong et al., ICLR 2020), the paper giving no training values.
"""

import dataclasses

import tensorflow as tf

from zoo import attacks, base, maths, registry
from zoo.config import POSITIVE, setting
from zoo.models import gmm_dae


@dataclasses.dataclass
class AugmentedGMMDAEConfig(gmm_dae.GMMDAEConfig, base.CoupledConfig):
    epsilon: float = setting(0.1, "L-inf radius of the FGSM attack on the codes.", check=POSITIVE)
    step_size: float = setting(0.125, "FGSM step from the random start.", check=POSITIVE)


@registry.register("augmented_gmm_dae")
class AugmentedGMMDAE(gmm_dae.GMMDAE):
    config_class = AugmentedGMMDAEConfig
    extra_terms = gmm_dae.GMMDAE.extra_terms + ("adversarial_shift",)

    def adversarial_inputs(self, x):
        """FGSM inputs maximising the code shift (eq. 6), stopped: gradients reach the encoder through their codes."""
        clean = tf.stop_gradient(self.encoder(x, training=False))

        def code_shift(x_adv):
            return tf.reduce_sum(tf.square(self.encoder(x_adv, training=False) - clean), axis=-1)

        return attacks.fgsm(
            code_shift,
            x,
            self.config.epsilon,
            step_size=self.config.step_size,
            random_start=True,
            seed=self.noise_seed(1),
        )

    def regularisers(self, x, z, training):
        # Clean and adversarial codes, in one BatchNorm pass or separate ones (`coupled_pass`, BaseDAE.coupled_codes).
        z, (z_adv,) = self.coupled_codes(x, z, [self.adversarial_inputs(x)], training)
        ks, cov, extra = self.paired_regularisers(z, z_adv)
        shift = tf.reduce_mean(tf.norm(z_adv - z, axis=-1))
        return ks, cov, {"adversarial_shift": shift, **extra}

    def paired_regularisers(self, z, z_adv):
        """Eqs. (7) and (8): each code set to the prior, no coupling between them."""
        ks = 0.5 * maths.ks_loss(z, *self.mixture) + 0.5 * maths.ks_loss(z_adv, *self.mixture)
        target = maths.coupled_covariance(self.mixture_covariance, 0.0)
        return ks, maths.covariance_loss(tf.concat([z, z_adv], axis=-1), target), {}
