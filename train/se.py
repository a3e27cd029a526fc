"""Trains a Smooth Encoder (Algorithm 2, eq. 32): python -m train.se --dataset=... --se_epsilon=0.1 --pgd_steps=5"""

from train import cli

if __name__ == "__main__":
    cli.main("se")
