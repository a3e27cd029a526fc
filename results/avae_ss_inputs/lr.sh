#!/bin/bash
# AVAE-SS post-training at the paper's learning rate (1e-4) instead of the reproduction's 3e-4, one change, same
# budget, seed and VAE as run.sh's "after" (this commit's sampled inputs).
set -euo pipefail
VAE=${VAE:-/work/runs/reproduce_colormnist/mlp/models/VAE} OUT=${OUT:-/work/runs/avae_ss_inputs}
python -m train.avae_ss --dataset=color_mnist --arch=mlp --latent_dim=64 --batch_size=64 \
    --learning_rate=0.0001 --train_steps=12750 --checkpoint_every=4250 --eval_examples=0 --seed=0 \
    --robustness_every=4250 --robustness_epsilons=0.05,0.1 --data_dir=/work/shared/tfds --rho=0.975 \
    --init_from="$VAE" --model_dir="$OUT/after_lr1e-4" --nosummary 2>/dev/null | tail -c 200
echo "== after, learning rate 1e-4 ($(git describe --always --dirty))"; cat "$OUT/after_lr1e-4/robustness_curve.csv"
