"""Trains a beta-VAE (Higgins et al. 2017, eq. 4): python -m train.beta_vae --dataset=... --beta=4"""

from train import cli

if __name__ == "__main__":
    cli.main("beta_vae")
