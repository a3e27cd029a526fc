"""Trains a Smooth Encoder (Algorithm 2, eq. 32): python -m train.se --dataset=... --se_epsilon=0.1 --pgd_steps=5"""

from absl import flags

from train import common

flags.DEFINE_float("rho", 0.95, "Coupling strength between a code and its PGD-selected input's code, in (-1, 1).")
flags.DEFINE_float("se_epsilon", 0.1, "L-inf radius of the PGD selection (the paper's SE_0.1, SE_0.2).", lower_bound=0.0)
flags.DEFINE_integer("pgd_steps", 5, "PGD steps of the selection (the paper's SE^5, SE^20).", lower_bound=1)
flags.register_validator("rho", lambda rho: -1.0 < rho < 1.0, message="--rho must lie in (-1, 1)")

if __name__ == "__main__":
    common.run("se")
