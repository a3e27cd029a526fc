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

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from train import loop  # noqa: E402
from zoo import data as zoo_data  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data_dir", default="../shared/tfds")
    parser.add_argument("--models", default="vae,avae,se")
    args = parser.parse_args()
    dataset = zoo_data.load("color_mnist", "train", 64, data_dir=args.data_dir, drop_remainder=True,
                            download=False).take(40).cache()  # fmt: skip
    for name in args.models.split(","):
        weights = {}
        for steps_per_execution in (1, 10, 15):
            keras.utils.set_random_seed(0)
            model = loop.build_model(name, tf.distribute.get_strategy(), jit_compile=True,
                                     steps_per_execution=steps_per_execution, image_shape=(28, 28, 3), arch="mlp",
                                     latent_dim=64)  # fmt: skip
            model.fit(dataset, epochs=1, verbose=0)
            weights[steps_per_execution] = model.get_weights()
            print(f"{name}: {steps_per_execution} steps per execution, {int(model.optimizer.iterations)} steps",
                  flush=True)  # fmt: skip
        for grouped in (10, 15):
            diff = max(float(np.max(np.abs(a - b))) for a, b in zip(weights[1], weights[grouped]))
            print(f"{name}: largest weight difference, 1 against {grouped} steps per execution: {diff}", flush=True)


if __name__ == "__main__":
    main()
