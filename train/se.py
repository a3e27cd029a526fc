"""Trains a Smooth Encoder (Algorithm 2, eq. 32): python -m train.se --dataset=... --se_epsilon=0.1 --pgd_steps=5"""

from train import common

if __name__ == "__main__":
    common.run("se")
