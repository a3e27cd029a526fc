"""Trains the Augmented GMM-DAE ablation (eqs. 6-8): python -m train.augmented_gmm_dae --dataset=... --epsilon=0.1"""

from absl import flags

from train import common

flags.DEFINE_integer("num_modes", 10, "Modes K of the Gaussian-mixture prior (at most 2 * latent_dim).", lower_bound=1)
flags.DEFINE_float("mode_distance", 6.0, "Distance between mixture means (modes have unit variance).", lower_bound=0.0)
flags.DEFINE_float("latent_noise", 1.0, "Std of the noise added to codes before decoding.", lower_bound=0.0)
flags.DEFINE_float("rec_weight", 1.0, "Weight lambda_REC of the reconstruction loss.", lower_bound=0.0)
flags.DEFINE_float("epsilon", 0.1, "L-inf radius of the FGSM attack on the codes.", lower_bound=0.0)
flags.DEFINE_float("step_size", 0.125, "FGSM step from the random start.", lower_bound=0.0)

if __name__ == "__main__":
    common.run("augmented_gmm_dae")
