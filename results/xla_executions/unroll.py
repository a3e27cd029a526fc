"""How many steps to unroll into one XLA program: compile time against steps/s.

Run from the repository root: python results/xla_executions/unroll.py --data_dir=../shared/tfds
The mlp VAE and AVAE (XLA on, 10 steps per execution, Adam, batch 64, the ColorMNIST training pipeline)
through `keras.Model.fit` with `ZooModel.make_train_function`, for several `steps_per_xla_program`, and
Keras' own train function (one XLA program per step, Philox draws) as the code before. `first execution`: wall seconds of the first `fit` call of 10 steps (tracing, XLA compilation
and the 10 steps), each configuration in a new model. Steps/s: 10th percentile (median) of the step times
(`train.callbacks.StepTimer`), all configurations in one process, alternated rounds.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.getcwd())

from zoo import console  # noqa: E402

console.quiet_tensorflow()

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from train import loop  # noqa: E402
from train.callbacks import StepTimer  # noqa: E402
from zoo import data as zoo_data  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data_dir", default="../shared/tfds")
    parser.add_argument("--models", default="vae,avae")
    parser.add_argument("--unrolled", default="1,2,5,10")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    dataset = zoo_data.load("color_mnist", "train", 64, data_dir=args.data_dir, shuffle=True, repeat=True,
                            drop_remainder=True, download=False)  # fmt: skip
    variants = ["keras"] + [int(k) for k in args.unrolled.split(",")]
    runs, first = {}, {}
    for name in args.models.split(","):
        for variant in variants:
            keras.utils.set_random_seed(0)
            model = loop.build_model(name, tf.distribute.get_strategy(), jit_compile=True,
                                     steps_per_execution=10,
                                     image_shape=(28, 28, 3), arch="mlp", latent_dim=64)  # fmt: skip
            if variant == "keras":
                model.make_train_function = lambda force=False, m=model: keras.Model.make_train_function(m, force)
            else:
                model.steps_per_xla_program = variant
            start = time.perf_counter()
            model.fit(dataset, steps_per_epoch=10, epochs=1, verbose=0)
            first[name, variant] = time.perf_counter() - start
            runs[name, variant] = model
    times = {key: [] for key in runs}
    for round_ in range(args.rounds):
        for key in list(runs) if round_ % 2 == 0 else list(runs)[::-1]:
            timer = StepTimer()
            runs[key].fit(dataset, steps_per_epoch=args.steps, epochs=1, verbose=0, callbacks=[timer])
            times[key] += [seconds for _, seconds in timer.rows][1:]
    print(f"{args.rounds} alternated rounds of {args.steps} steps; load average {os.getloadavg()[0]:.1f}")
    print("| model | train function | steps per XLA program | first execution (s) | steps/s |")
    print("| --- | --- | ---: | ---: | ---: |")
    for name, variant in runs:
        how = ("Keras", 1) if variant == "keras" else ("make_train_function", variant)
        rate = f"{1 / np.percentile(times[name, variant], 10):.1f} ({1 / np.median(times[name, variant]):.1f})"
        print(f"| {name} | {how[0]} | {how[1]} | {first[name, variant]:.1f} | {rate} |", flush=True)


if __name__ == "__main__":
    main()
