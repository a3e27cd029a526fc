"""Trains a beta-VAE (Higgins et al. 2017, eq. 4): python -m train.beta_vae --dataset=... --beta=4"""

from absl import flags

from train import common

flags.DEFINE_float("beta", 4.0, "Weight of the KL term (1: the VAE).", lower_bound=0.0)

if __name__ == "__main__":
    common.run("beta_vae")
