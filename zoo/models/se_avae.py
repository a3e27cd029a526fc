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


from zoo import registry
from zoo.config import COUPLING, setting
from zoo.models import avae, se


@dataclasses.dataclass
class SEAVAEConfig(avae.AVAEConfig, se.SelectionConfig):
    # Defaults: the AVAE's rho and the paper's rho_SE = 0.95 (its Figure 9 also shows 0.97 / 0.975).
    rho_se: float = setting(0.95, "Coupling strength between a code and its PGD-selected input's code.", check=COUPLING)


@registry.register("se_avae")
class SEAVAE(avae.AVAE):
    config_class = SEAVAEConfig
    extra_terms = avae.AVAE.extra_terms + ("se_coupling_log_prob", "adversarial_entropy")

    def regularizer(self, x, posterior, z, reconstruction, training):
        delusion = self.delusion(reconstruction)  # as in the AVAE
        selected = se.select(self, x, self.config.rho_se)
        # Delusions and selected inputs, in one BatchNorm pass with the data or separate ones (`coupled_pass`).
        posterior, (delusion_posterior, adversarial) = self.coupled_posteriors(
            x, posterior, [delusion, selected], training
        )
        coupling, entropy = avae.coupling_and_entropy(posterior, delusion_posterior, self.config.rho)
        se_coupling, adversarial_entropy = avae.coupling_and_entropy(posterior, adversarial, self.config.rho_se)
        terms = {
            "coupling_log_prob": coupling,
            "delusion_entropy": entropy,
            "se_coupling_log_prob": se_coupling,
            "adversarial_entropy": adversarial_entropy,
        }
        return -(coupling + entropy) - (se_coupling + adversarial_entropy), terms
