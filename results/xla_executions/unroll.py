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

import numpy as np  # noqa: E402
import xla_runs  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data_dir", default="../shared/tfds")
    parser.add_argument("--models", default="vae,avae")
    parser.add_argument("--unrolled", default="1,2,5,10")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    dataset = xla_runs.training_data(args.data_dir)
    variants = ["keras"] + [int(k) for k in args.unrolled.split(",")]
    runs, first = {}, {}
    for name in args.models.split(","):
        for variant in variants:
            model = xla_runs.mlp_model(name)
            if variant == "keras":
                xla_runs.use_keras_train_function(model)
            else:
                model.steps_per_xla_program = variant
            start = time.perf_counter()
            model.fit(dataset, steps_per_epoch=10, epochs=1, verbose=0)
            first[name, variant] = time.perf_counter() - start
            runs[name, variant] = model, dataset
    times = xla_runs.time_alternated(runs, args.rounds, args.steps)
    print(f"{args.rounds} alternated rounds of {args.steps} steps; load average {os.getloadavg()[0]:.1f}")
    print("| model | train function | steps per XLA program | first execution (s) | steps/s |")
    print("| --- | --- | ---: | ---: | ---: |")
    for name, variant in runs:
        how = ("Keras", 1) if variant == "keras" else ("make_train_function", variant)
        rate = f"{1 / np.percentile(times[name, variant], 10):.1f} ({1 / np.median(times[name, variant]):.1f})"
        print(f"| {name} | {how[0]} | {how[1]} | {first[name, variant]:.1f} | {rate} |", flush=True)


if __name__ == "__main__":
    main()
