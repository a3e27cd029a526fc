"""Trains a robust GMM-DAE (eqs. 6, 9-11): python -m train.robust_gmm_dae --dataset=... --epsilon=0.1 --alpha=0.9"""

from train import cli

if __name__ == "__main__":
    cli.main("robust_gmm_dae")
