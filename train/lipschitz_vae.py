"""Trains a Lipschitz VAE (Barrett et al. 2022): python -m train.lipschitz_vae --arch=mlp --lipschitz=10"""

from absl import flags

from train import common

flags.DEFINE_float("lipschitz", 10.0, "L2 Lipschitz bound of the encoder and decoder maps.")
flags.register_validator("lipschitz", lambda c: c > 0, message="--lipschitz must be positive")

if __name__ == "__main__":
    common.run("lipschitz_vae")
