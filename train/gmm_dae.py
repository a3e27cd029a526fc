"""Trains a GMM-DAE (robust GMM-DAE paper, eqs. 4, 5): python -m train.gmm_dae --dataset=... --num_modes=10"""

from train import cli

if __name__ == "__main__":
    cli.main("gmm_dae")
