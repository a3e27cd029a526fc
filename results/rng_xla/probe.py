"""One change at a time on the mlp AVAE step under XLA (one thread): where do the extra milliseconds go?

Run from the repository root: TF_NUM_INTRAOP_THREADS=1 TF_NUM_INTEROP_THREADS=1 python results/rng_xla/probe.py
Variants: the VAE; the AVAE as trained (the delusion a sample, Philox named); its delusion drawn with TensorFlow's
default algorithm "auto_select" (the code before zoo/rng.py); its delusion the decoded mean (no draw at all).
"""

import os
import sys

sys.path.insert(0, os.getcwd())

import numpy as np  # noqa: E402
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from train import loop  # noqa: E402
from train.callbacks import StepTimer  # noqa: E402
from zoo import base  # noqa: E402
from zoo import data as zoo_data  # noqa: E402

PHILOX = base.BaseVAE.sample_likelihood


def auto_select(self, mean, seed):
    noise = tf.random.stateless_normal(tf.shape(mean), seed, dtype=mean.dtype)  # "auto_select", as before
    return mean + tf.sqrt(tf.cast(self.config.obs_var, mean.dtype)) * noise


VARIANTS = (
    ("VAE", "vae", {}, PHILOX),
    ("AVAE, delusion sampled, Philox named", "avae", {}, PHILOX),
    ("AVAE, delusion sampled, auto_select", "avae", {}, auto_select),
    ("AVAE, delusion the decoded mean", "avae", {"delusion": "mean"}, PHILOX),
)
dataset = zoo_data.load("color_mnist", "train", 64, data_dir="../shared/tfds", shuffle=True, repeat=True,
                        drop_remainder=True, download=False)  # fmt: skip
models = []
for label, name, hyperparameters, sampler in VARIANTS:
    base.BaseVAE.sample_likelihood = sampler  # traced below, so each model keeps its own sampler
    keras.utils.set_random_seed(0)
    model = loop.build_model(name, tf.distribute.get_strategy(), jit_compile=True, steps_per_execution=10,
                             precision="float32", image_shape=(28, 28, 3), arch="mlp", latent_dim=64,
                             **hyperparameters)  # fmt: skip
    model.fit(dataset, steps_per_epoch=20, epochs=1, verbose=0)
    models.append(model)
for round_ in range(3):
    for (label, *_), model in zip(VARIANTS, models):
        timer = StepTimer()
        model.fit(dataset, steps_per_epoch=300, epochs=1, verbose=0, callbacks=[timer])
        print(f"round {round_ + 1}: {label}: {np.median([s for _, s in timer.rows]) * 1e3:.1f} ms per step", flush=True)
