"""Post-trains a trained VAE's encoder on its own samples (AVAE-SS, Algorithm 4, eq. 34), reading no data:

python -m train.avae_ss --init_from=<model_dir of a trained VAE> --rho=0.975
"""

from absl import flags

from train import common

flags.DEFINE_float("rho", 0.975, "Coupling strength between a code and its delusion's code, in (-1, 1).")
flags.register_validator("rho", lambda rho: -1.0 < rho < 1.0, message="--rho must lie in (-1, 1)")

if __name__ == "__main__":
    common.run("avae_ss")
