"""Trains an SE-AVAE (Algorithm 3, eq. 35): python -m train.se_avae --dataset=... --rho=0.975 --rho_se=0.95"""

from train import cli

if __name__ == "__main__":
    cli.main("se_avae")
