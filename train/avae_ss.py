"""Post-trains a trained VAE's encoder on its own samples (AVAE-SS, Algorithm 4, eq. 34), reading no data:

python -m train.avae_ss --init_from=<model_dir of a trained VAE> --rho=0.975
"""

from train import common

if __name__ == "__main__":
    common.run("avae_ss")
