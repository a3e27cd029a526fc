"""Do the weights depend on how the steps are grouped into XLA programs? They should not.

Run from the repository root: python results/xla_executions/same_weights.py --data_dir=../shared/tfds
The mlp VAE, AVAE and SE (their defaults; XLA on) trained 40 steps on the same 40 ColorMNIST batches (not
shuffled) with 1, 10 and 15 steps per execution: programs of 1 step; of 5 (`steps_per_xla_program`); of 5
and, for the last execution that the data cuts short (40 = 15 + 15 + 10), one step at a time.
"""

import argparse
import os
import sys

sys.path.insert(0, os.getcwd())

from zoo import console  # noqa: E402

console.quiet_tensorflow()

import numpy as np  # noqa: E402
import xla_runs  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data_dir", default="../shared/tfds")
    parser.add_argument("--models", default="vae,avae,se")
    args = parser.parse_args()
    dataset = xla_runs.training_data(args.data_dir, shuffle=False).take(40).cache()
    for name in args.models.split(","):
        weights = {}
        for steps_per_execution in (1, 10, 15):
            model = xla_runs.mlp_model(name, steps_per_execution=steps_per_execution)
            model.fit(dataset, epochs=1, verbose=0)
            weights[steps_per_execution] = model.get_weights()
            print(f"{name}: {steps_per_execution} steps per execution, {int(model.optimizer.iterations)} steps",
                  flush=True)  # fmt: skip
        for grouped in (10, 15):
            diff = max(float(np.max(np.abs(a - b))) for a, b in zip(weights[1], weights[grouped]))
            print(f"{name}: largest weight difference, 1 against {grouped} steps per execution: {diff}", flush=True)


if __name__ == "__main__":
    main()
