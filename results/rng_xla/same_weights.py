"""An AVAE (mlp) trained 50 steps, with and without XLA, once with its delusion drawn as zoo.rng draws it (Philox
named) and once with TensorFlow's default "auto_select": are the weights the same? Run from the repository root:
`python results/rng_xla/same_weights.py`; its output is in same_weights.txt."""

import os
import sys

sys.path.insert(0, os.getcwd())

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from train import loop  # noqa: E402
from zoo import base  # noqa: E402
from zoo import data as zoo_data  # noqa: E402

PHILOX = base.BaseVAE.sample_likelihood


def auto_select(self, mean, seed):
    noise = tf.random.stateless_normal(tf.shape(mean), seed, dtype=mean.dtype)
    return mean + tf.sqrt(tf.cast(self.config.obs_var, mean.dtype)) * noise


dataset = zoo_data.load("color_mnist", "train", 64, data_dir="../shared/tfds", shuffle=False, repeat=True,
                        drop_remainder=True, download=False)  # fmt: skip
for jit_compile in (True, False):
    weights = {}
    for label, sampler in (("philox named", PHILOX), ("auto_select", auto_select)):
        base.BaseVAE.sample_likelihood = sampler
        keras.utils.set_random_seed(0)
        model = loop.build_model("avae", tf.distribute.get_strategy(), jit_compile=jit_compile, steps_per_execution=10,
                                 precision="float32", image_shape=(28, 28, 3), arch="mlp", latent_dim=64)  # fmt: skip
        model.fit(dataset, steps_per_epoch=50, epochs=1, verbose=0)
        weights[label] = np.concatenate([w.numpy().ravel() for w in model.weights])
    difference = np.abs(weights["philox named"] - weights["auto_select"]).max()
    print(f"XLA {'on' if jit_compile else 'off'}: largest weight difference after 50 steps: {difference}")
