"""Trains the Augmented GMM-DAE ablation (eqs. 6-8): python -m train.augmented_gmm_dae --dataset=... --epsilon=0.1"""

from train import cli

if __name__ == "__main__":
    cli.main("augmented_gmm_dae")
