"""Post-trains a trained VAE's encoder on its own samples (AVAE-SS, Algorithm 4, eq. 34), reading no data:

python -m train.avae_ss --init_from=<model_dir of a trained VAE> --rho=0.975
"""

from train import cli

if __name__ == "__main__":
    cli.main("avae_ss")
