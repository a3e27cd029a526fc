"""beta-TCVAE: the ELBO with its total-correlation part weighted by beta (Chen et al., NeurIPS 2018, eq. 4).

KL(q(z|x) || p(z)) averaged over the data splits into index-code mutual information + total
correlation TC = KL(q(z) || prod_d q(z_d)) + dimension-wise KL; beta-TCVAE weights only the TC by
beta, so the regulariser adds (beta - 1) TC to BaseVAE's negative ELBO. The TC is estimated on the
minibatch with minibatch weighted sampling (`maths.total_correlation`), in which the training-set
size N weights each example's own posterior (1/N) against the others'; `python -m train.beta_tcvae`
fills `dataset_size` with the size of the training split (0: the infinite-dataset limit).
"""

import dataclasses

from zoo import base, maths, registry
from zoo.config import NON_NEGATIVE, setting


@dataclasses.dataclass
class BetaTCVAEConfig(base.VAEConfig):
    beta: float = setting(4.0, "Weight of the total-correlation part of the KL (1: the VAE).", check=NON_NEGATIVE)
    dataset_size: int = setting(
        0,
        "Training-set size N of the TC estimator (0: the infinite-dataset limit); training fills in the "
        "training split's size when it is 0.",
        check=NON_NEGATIVE,
    )


@registry.register("beta_tcvae")
class BetaTCVAE(base.BaseVAE):
    config_class = BetaTCVAEConfig
    extra_terms = ("total_correlation",)

    def regularizer(self, x, posterior, z, reconstruction, training):
        tc = maths.total_correlation(z, posterior.mean(), posterior.variance(), self.config.dataset_size)
        return (self.config.beta - 1.0) * tc, {"total_correlation": tc}
