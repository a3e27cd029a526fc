#!/bin/bash
# AVAE-SS inputs: x = the decoder's mean image (before) vs x ~ p(x|z'') (after), one change, same budget and seed.
# Both post-train the reproduction's 102,000-step MLP VAE (benchmarks.reproduce_colormnist --arch=mlp) for 12,750
# steps with the reproduction's settings; the curve is training's own check (2,000 training digits for the probe,
# PGD-10 on the first 500 test digits). BEFORE: a checkout of the commit before the change; AFTER: this one.
set -euo pipefail
BEFORE=${BEFORE:-/work/rc_run} AFTER=${AFTER:-/work/main} VAE=${VAE:-/work/runs/reproduce_colormnist/mlp/models/VAE}
OUT=${OUT:-/work/runs/avae_ss_inputs}
for variant in before after; do
    repo=$BEFORE; [ $variant = after ] && repo=$AFTER
    (cd "$repo" && python -m train.avae_ss --dataset=color_mnist --arch=mlp --latent_dim=64 --batch_size=64 \
        --learning_rate=0.0003 --train_steps=12750 --checkpoint_every=4250 --eval_examples=0 --seed=0 \
        --robustness_every=4250 --robustness_epsilons=0.05,0.1 --data_dir=/work/shared/tfds --rho=0.975 \
        --init_from="$VAE" --model_dir="$OUT/$variant" --nosummary 2>/dev/null | tail -c 300)
    echo "== $variant ($(cd "$repo" && git describe --always --dirty))"; cat "$OUT/$variant/robustness_curve.csv"
done
