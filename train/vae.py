"""Trains a VAE (eq. 2 of the AVAE paper): python -m train.vae --dataset=..."""

from train import cli

if __name__ == "__main__":
    cli.main("vae")
