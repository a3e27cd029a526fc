"""Trains an SE-AVAE (Algorithm 3, eq. 35): python -m train.se_avae --dataset=... --rho=0.975 --rho_se=0.95"""

from absl import flags

from train import common

flags.DEFINE_float("rho", 0.975, "Coupling strength between a code and its delusion's code, in (-1, 1).")
flags.DEFINE_float("rho_se", 0.95, "Coupling strength between a code and its PGD-selected input's code, in (-1, 1).")
flags.DEFINE_float("se_epsilon", 0.1, "L-inf radius of the PGD selection.", lower_bound=0.0)
flags.DEFINE_integer("pgd_steps", 5, "PGD steps of the selection.", lower_bound=1)
flags.register_validator("rho", lambda rho: -1.0 < rho < 1.0, message="--rho must lie in (-1, 1)")
flags.register_validator("rho_se", lambda rho: -1.0 < rho < 1.0, message="--rho_se must lie in (-1, 1)")

if __name__ == "__main__":
    common.run("se_avae")
