"""Trains an AVAE (Algorithm 1, eq. 13): python -m train.avae --dataset=... --rho=0.975"""

from train import cli

if __name__ == "__main__":
    cli.main("avae")
