"""The ten-step programs of threefry.py as a `tf.while_loop` (what a training loop compiling several steps into one
XLA program would run) instead of ten unrolled steps: does ThreeFry still make the AVAE faster?

Run from the repository root: python results/rng_xla/threefry_while_loop.py
"""

import os
import sys
import time

sys.path.insert(0, os.getcwd())
sys.path.insert(0, os.path.join(os.getcwd(), "results", "rng_xla"))

import threefry  # noqa: E402  (quiets TensorFlow before it loads)

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from train import loop  # noqa: E402


def main():
    x, labels = tf.random.uniform([64, 28, 28, 3]), tf.zeros([64], tf.int64)
    programs = {}
    for variant in ("philox", "threefry"):
        threefry.use(variant)
        for name in ("vae", "avae"):
            keras.utils.set_random_seed(0)
            model = loop.build_model(name, tf.distribute.get_strategy(), jit_compile=True, steps_per_execution=10,
                                     image_shape=(28, 28, 3), arch="mlp", latent_dim=64)  # fmt: skip

            def ten_steps(model=model):
                def body(i):
                    model.train_step((x * (1 + 0.001 * tf.cast(i, tf.float32)), labels))
                    return (i + 1,)

                tf.while_loop(lambda i: i < 10, body, (tf.constant(0),))
                return model.optimizer.iterations

            program = tf.function(ten_steps, jit_compile=True)
            program().numpy()
            programs[name, variant] = program
    threefry.use("philox")
    times = {key: [] for key in programs}
    for round_ in range(4):
        for key in list(programs) if round_ % 2 == 0 else list(programs)[::-1]:
            for _ in range(15):
                start = time.perf_counter()
                programs[key]().numpy()
                times[key].append((time.perf_counter() - start) / 10 * 1e3)
    for (name, variant), milliseconds in times.items():
        print(f"{name} {variant}, a while loop of 10 steps in one XLA program: p10 "
              f"{np.percentile(milliseconds, 10):.2f} median {np.median(milliseconds):.2f} ms/step")  # fmt: skip


if __name__ == "__main__":
    main()
