#!/usr/bin/env bash
# results/parallel_jobs.md, the mlp: two AVAE trainings one after the other, then side by side.
set -e
C="--dataset=color_mnist --data_dir=../shared/tfds --arch=mlp --train_steps=3000 --checkpoint_every=3000 --eval_examples=0 --seed=0 --learning_rate=3e-4 --summary=false"
t0=$(date +%s.%N)
python -m train.avae $C --model_dir=/work/runs/par/s1 > /work/runs/par/s1.log 2>&1
python -m train.avae $C --model_dir=/work/runs/par/s2 > /work/runs/par/s2.log 2>&1
t1=$(date +%s.%N)
export TF_NUM_INTRAOP_THREADS=1 TF_NUM_INTEROP_THREADS=1
python -m train.avae $C --model_dir=/work/runs/par/q1 > /work/runs/par/q1.log 2>&1 & python -m train.avae $C --model_dir=/work/runs/par/q2 > /work/runs/par/q2.log 2>&1 & wait
t2=$(date +%s.%N)
echo "one after the other: $(echo "$t1 - $t0" | bc) s; side by side, one thread each: $(echo "$t2 - $t1" | bc) s"
