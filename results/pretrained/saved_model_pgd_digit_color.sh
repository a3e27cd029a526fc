#!/bin/bash
# The three shipped conv encoders audited from their SavedModels (zoo.pretrained.path(name)): digit and colour
# tasks, the project's PGD-40 with 10 restarts, the radius search on 100 digits. Run from the repository root;
# writes results/pretrained/<name>/saved_model_pgd_digit_color/ (evaluate.log: the progress it printed).
set -e
for NAME in avae_color_mnist_conv vae_color_mnist_conv se_color_mnist_conv; do
  OUT=results/pretrained/$NAME/saved_model_pgd_digit_color
  mkdir -p $OUT
  python -m evaluate.robustness --model_dir=$(python -c "from zoo import pretrained; print(pretrained.path('$NAME'))") \
    --data_dir=../shared/tfds --stages=accuracy --num_examples=100 --epsilons=0,0.02,0.05,0.1 --tasks=digit,color \
    --radius_examples=100 --attacks=pgd --output_dir=$OUT > $OUT/evaluate.log 2>&1
done
# The colour task at eps 0.1 under the four-attack worst case (AutoAttack's cascade) for the two robust encoders:
# results/pretrained/<name>/saved_model_color_worst_case/
for NAME in avae_color_mnist_conv se_color_mnist_conv; do
  OUT=results/pretrained/$NAME/saved_model_color_worst_case
  mkdir -p $OUT
  python -m evaluate.robustness --model_dir=$(python -c "from zoo import pretrained; print(pretrained.path('$NAME'))") \
    --data_dir=../shared/tfds --stages=accuracy --num_examples=100 --epsilons=0,0.1 --tasks=color \
    --radius_examples=0 --cascade --output_dir=$OUT > $OUT/evaluate.log 2>&1
done
