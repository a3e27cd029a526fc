"""Robust GMM-DAE: the adversarially trained deterministic autoencoder of the robust GMM-DAE paper
(section 3.3, eqs. 9-11).

As the Augmented model (FGSM codes z_adv maximising the code shift, eq. 6), but z and z_adv are
coupled: the KS loss (eq. 9) is 2/3 of the augmented one (eq. 7) plus 1/3 of the two-sample term
(1/D) sum_d MSE_n(F_d(z_nd), F_d(z_adv_nd)), each code against its own adversary's
(`maths.two_sample_ks_loss`, in the mixture's CDF domain since empirical CDFs have no gradient); the
covariance of [z, z_adv] is pulled to [[S, alpha S], [alpha S, S]] (eq. 10) with coupling
`alpha` (|alpha| <= 1; 1 asks for z_adv = z). The loss is eq. (11), with GMM-DAE's loss weights
(the coupled losses use the weights of the plain ones: the same prior-sample statistics).
The default alpha = 0.9 is our choice: the paper warns that alpha = 1 costs fidelity but gives no value.
"""

import dataclasses

import tensorflow as tf

from zoo import maths, registry
from zoo.config import CORRELATION, setting
from zoo.models import augmented_gmm_dae


@dataclasses.dataclass
class RobustGMMDAEConfig(augmented_gmm_dae.AugmentedGMMDAEConfig):
    alpha: float = setting(0.9, "Coupling of codes and adversarial codes in the covariance target.", check=CORRELATION)


@registry.register("robust_gmm_dae")
class RobustGMMDAE(augmented_gmm_dae.AugmentedGMMDAE):
    config_class = RobustGMMDAEConfig
    extra_terms = augmented_gmm_dae.AugmentedGMMDAE.extra_terms + ("two_sample_ks",)

    def paired_regularisers(self, z, z_adv):
        augmented_ks, _, _ = super().paired_regularisers(z, z_adv)
        two_sample = maths.two_sample_ks_loss(z, z_adv, *self.mixture)
        target = maths.coupled_covariance(self.mixture_covariance, self.config.alpha)
        cov = maths.covariance_loss(tf.concat([z, z_adv], axis=-1), target)
        return 2.0 / 3.0 * augmented_ks + 1.0 / 3.0 * two_sample, cov, {"two_sample_ks": two_sample}
