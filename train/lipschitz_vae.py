"""Trains a Lipschitz VAE (Barrett et al. 2022): python -m train.lipschitz_vae --arch=mlp --lipschitz=10"""

from train import common

if __name__ == "__main__":
    common.run("lipschitz_vae")
