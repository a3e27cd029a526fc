"""Trains an SE-AVAE (Algorithm 3, eq. 35): python -m train.se_avae --dataset=... --rho=0.975 --rho_se=0.95"""

from train import common

if __name__ == "__main__":
    common.run("se_avae")
