"""SE-AVAE: Algorithm 3 and eq. (35) of Cemgil et al., NeurIPS 2020 (appendix C.5).

Both auxiliary inputs of one step are encoded and coupled to z ~ q(z|x):
- the decoder's delusion x~ = stop_gradient(decoder(z)), coupled with `rho`, exactly as in the AVAE;
- the PGD-selected input x~~ = stop_gradient(PGD(x)) of the Smooth Encoder (zoo/se.py `select`),
  coupled with `rho_se`.
Eq. (35) adds to the ELBO

    <log p_rho(z'|z)> + H[q(z'|x~)] + <log p_rho_se(z''|z)> + H[q(z''|x~~)],

each coupling expectation in closed form for the factorised pair, as eq. (35) writes it.
"""

import tensorflow as tf

from zoo import avae, maths, registry, se


@registry.register("se_avae")
class SEAVAE(avae.AVAE):
    # Defaults: the AVAE's rho and the paper's rho_SE = 0.95 (its Figure 9 also shows 0.97 / 0.975).
    hyperparameters = {**avae.AVAE.hyperparameters, "rho_se": 0.95, **se.SELECTION_HYPERPARAMETERS}
    hyperparameter_help = {
        "rho_se": "Coupling strength between a code and its PGD-selected input's code, in (-1, 1).",
        **se.SELECTION_HELP,
    }
    extra_terms = avae.AVAE.extra_terms + ("se_coupling_log_prob", "adversarial_entropy")

    def check_hyperparameters(self):
        super().check_hyperparameters()
        if not -1.0 < self.rho_se < 1.0:
            raise ValueError(f"rho_se must lie in (-1, 1), got {self.rho_se}")
        se.check_selection(self)

    def regularizer(self, x, posterior, z, reconstruction, training):
        penalty, terms = super().regularizer(x, posterior, z, reconstruction, training)
        adversarial = self.posterior(se.select(self, x, self.rho_se), training=training)
        coupling = tf.reduce_mean(
            maths.coupling_log_prob(
                posterior.mean(), posterior.variance(), adversarial.mean(), adversarial.variance(), self.rho_se
            )
        )
        entropy = tf.reduce_mean(maths.gaussian_entropy(adversarial.variance()))
        terms.update(se_coupling_log_prob=coupling, adversarial_entropy=entropy)
        return penalty - (coupling + entropy), terms
