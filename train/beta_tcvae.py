"""Trains a beta-TCVAE (Chen et al. 2018, eq. 4): python -m train.beta_tcvae --dataset=... --beta=4"""

from train import cli

if __name__ == "__main__":
    cli.main("beta_tcvae")
