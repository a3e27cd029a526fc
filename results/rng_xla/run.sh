#!/usr/bin/env bash
# Before (2d53664, "auto_select") and after (zoo.rng, Philox named): the mlp step under XLA, alternated.
# /work/before: `git worktree add /work/before 2d53664`; /work/main: the commit that added zoo/rng.py.
# Each run imports the zoo of its own directory (python -m puts the working directory first on sys.path).
set -e
out=/work/runs/rng_xla; mkdir -p $out
for round in 1 2; do
  for code in before main; do
    for threads in 1 2; do
      (cd /work/$code && TF_NUM_INTRAOP_THREADS=$threads TF_NUM_INTEROP_THREADS=$threads \
        python -m benchmarks.train_speed --data_dir=../shared/tfds --models=VAE,AVAE,SE^5 \
        --settings=mlp:float32:on:10,mlp:float32:off:10 --rounds=2 --seconds=3 --jax=false \
        --output=$out/${code}_threads${threads}_round${round} > $out/${code}_threads${threads}_round${round}.log 2>&1)
      echo "done $round $code $threads $(date +%T)"
    done
  done
done
