"""Trains a GMM-DAE (robust GMM-DAE paper, eqs. 4, 5): python -m train.gmm_dae --dataset=... --num_modes=10"""

from absl import flags

from train import common

flags.DEFINE_integer("num_modes", 10, "Modes K of the Gaussian-mixture prior (at most 2 * latent_dim).", lower_bound=1)
flags.DEFINE_float("mode_distance", 6.0, "Distance between mixture means (modes have unit variance).", lower_bound=0.0)
flags.DEFINE_float("latent_noise", 1.0, "Std of the noise added to codes before decoding.", lower_bound=0.0)
flags.DEFINE_float("rec_weight", 1.0, "Weight lambda_REC of the reconstruction loss.", lower_bound=0.0)

if __name__ == "__main__":
    common.run("gmm_dae")
