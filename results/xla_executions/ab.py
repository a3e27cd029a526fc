"""Training executions under XLA: Keras' one program per step against `ZooModel.make_train_function`'s
steps unrolled into programs of several, with the draws in Philox and in ThreeFry (`zoo.rng.xla_program`).

Run from the repository root: python results/xla_executions/ab.py --data_dir=../shared/tfds
The mlp models as `train` builds them by default (XLA on, 10 steps per execution, Adam, batch 64, the
ColorMNIST training pipeline), through `keras.Model.fit`, timed by `train.callbacks.StepTimer`. All the
variants of all the models live in one process and are timed in alternated rounds (the order reversed
every other round). Variants:
  keras:            Keras' own train function (each step its own XLA program), Philox draws: the code before;
  unrolled_philox:  the steps of an execution unrolled into XLA programs (`steps_per_xla_program`, 5), Philox draws;
  unrolled:         the same with ThreeFry draws: the code now.
"""

import argparse
import contextlib
import os
import sys

sys.path.insert(0, os.getcwd())

from zoo import console  # noqa: E402

console.quiet_tensorflow()

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import xla_runs  # noqa: E402

from zoo import rng  # noqa: E402

VARIANTS = ("keras", "unrolled_philox", "unrolled")


def build(name, variant, dataset):
    model = xla_runs.mlp_model(name, **({"pgd_steps": 5} if name == "se" else {}))
    if variant == "keras":
        xla_runs.use_keras_train_function(model)
    draws = rng.xla_program
    if variant == "unrolled_philox":
        rng.xla_program = contextlib.nullcontext  # traced now, so the programs keep Philox
    try:
        model.fit(dataset, steps_per_epoch=20, epochs=1, verbose=0)
    finally:
        rng.xla_program = draws
    return model


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data_dir", default="../shared/tfds")
    parser.add_argument("--models", default="vae,avae,avae_ss,se")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    dataset = xla_runs.training_data(args.data_dir)
    size_only = tf.data.Dataset.from_tensors(tf.zeros([0])).repeat().batch(64, drop_remainder=True)
    runs = {}
    for name in args.models.split(","):
        data = size_only if name == "avae_ss" else dataset  # AVAE-SS reads no data, only the batch size
        for variant in VARIANTS:
            runs[name, variant] = build(name, variant, data), data
    times = xla_runs.time_alternated(runs, args.rounds, args.steps)
    print(f"steps/s from the 10th percentile (median) of the step times; {args.rounds} alternated rounds of "
          f"{args.steps} steps per variant; load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    print("| model | " + " | ".join(VARIANTS) + " | unrolled / keras |")
    print("| --- |" + " ---: |" * (len(VARIANTS) + 1))
    for name in args.models.split(","):
        rate = {v: 1 / np.percentile(times[name, v], 10) for v in VARIANTS}
        cells = [f"{rate[v]:.1f} ({1 / np.median(times[name, v]):.1f})" for v in VARIANTS]
        print(f"| {name} | " + " | ".join(cells) + f" | x{rate['unrolled'] / rate['keras']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
