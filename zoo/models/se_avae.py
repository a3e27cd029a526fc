"""SE-AVAE: Algorithm 3 and eq. (35) of Cemgil et al., NeurIPS 2020 (appendix C.5).

Both auxiliary inputs of one step are encoded and coupled to z ~ q(z|x):
- the decoder's delusion x~ = stop_gradient(decoder(z)), coupled with `rho`, exactly as in the AVAE;
- the PGD-selected input x~~ = stop_gradient(PGD(x)) of the Smooth Encoder (zoo/se.py `select`),
  coupled with `rho_se`.
Eq. (35) adds to the ELBO

    <log p_rho(z'|z)> + H[q(z'|x~)] + <log p_rho_se(z''|z)> + H[q(z''|x~~)],

each coupling expectation in closed form for the factorised pair, as eq. (35) writes it.
"""

import dataclasses

import tensorflow as tf

from zoo import maths, registry
from zoo.config import COUPLING, setting
from zoo.models import avae, se


@dataclasses.dataclass
class SEAVAEConfig(avae.AVAEConfig, se.SelectionConfig):
    # Defaults: the AVAE's rho and the paper's rho_SE = 0.95 (its Figure 9 also shows 0.97 / 0.975).
    rho_se: float = setting(
        0.95, "Coupling strength between a code and its PGD-selected input's code.", check=COUPLING
    )


@registry.register("se_avae")
class SEAVAE(avae.AVAE):
    config_class = SEAVAEConfig
    extra_terms = avae.AVAE.extra_terms + ("se_coupling_log_prob", "adversarial_entropy")

    def regularizer(self, x, posterior, z, reconstruction, training):
        penalty, terms = super().regularizer(x, posterior, z, reconstruction, training)
        rho_se = self.config.rho_se
        adversarial = self.posterior(se.select(self, x, rho_se), training=training)
        coupling = tf.reduce_mean(
            maths.coupling_log_prob(
                posterior.mean(), posterior.variance(), adversarial.mean(), adversarial.variance(), rho_se
            )
        )
        entropy = tf.reduce_mean(maths.gaussian_entropy(adversarial.variance()))
        terms.update(se_coupling_log_prob=coupling, adversarial_entropy=entropy)
        return penalty - (coupling + entropy), terms
