"""beta-TCVAE: the ELBO with its total-correlation part weighted by beta (Chen et al., NeurIPS 2018, eq. 4).

KL(q(z|x) || p(z)) averaged over the data splits into index-code mutual information + total
correlation TC = KL(q(z) || prod_d q(z_d)) + dimension-wise KL; beta-TCVAE weights only the TC by
beta, so the regulariser adds (beta - 1) TC to BaseVAE's negative ELBO. The TC is estimated on the
minibatch with minibatch weighted sampling (`maths.total_correlation`), in which the training-set
size N weights each example's own posterior (1/N) against the others'; `python -m train.beta_tcvae`
fills `dataset_size` with the size of the training split (0: the infinite-dataset limit).
"""

from zoo import base, maths, registry


@registry.register("beta_tcvae")
class BetaTCVAE(base.BaseVAE):
    hyperparameters = {**base.BaseVAE.hyperparameters, "beta": 4.0, "dataset_size": 0}
    hyperparameter_help = {
        "beta": "Weight of the total-correlation part of the KL (1: the VAE).",
        "dataset_size": "Training-set size N of the TC estimator; 0: that of --dataset.",
    }
    extra_terms = ("total_correlation",)

    def check_hyperparameters(self):
        super().check_hyperparameters()
        if not self.beta >= 0:
            raise ValueError(f"beta must be non-negative, got {self.beta}")
        if self.dataset_size < 0:
            raise ValueError(f"dataset_size must be >= 0 (0: infinite), got {self.dataset_size}")

    def regularizer(self, x, posterior, z, reconstruction, training):
        tc = maths.total_correlation(z, posterior.mean(), posterior.variance(), int(self.dataset_size))
        return (self.beta - 1.0) * tc, {"total_correlation": tc}
