"""Trains a beta-TCVAE (Chen et al. 2018, eq. 4): python -m train.beta_tcvae --dataset=... --beta=4"""

from absl import flags

from train import common

flags.DEFINE_float("beta", 4.0, "Weight of the total-correlation part of the KL (1: the VAE).", lower_bound=0.0)
flags.DEFINE_integer("dataset_size", 0, "Training-set size N of the TC estimator; 0: that of --dataset.", lower_bound=0)

if __name__ == "__main__":
    common.run("beta_tcvae")
