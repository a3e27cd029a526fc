"""Trains a Lipschitz VAE (Barrett et al. 2022): python -m train.lipschitz_vae --arch=mlp --lipschitz=10"""

from train import cli

if __name__ == "__main__":
    cli.main("lipschitz_vae")
