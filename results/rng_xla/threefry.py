"""Would ThreeFry draws make the XLA-compiled mlp steps faster? Philox (zoo/rng.py) against ThreeFry with
normals made as JAX makes them (sqrt(2) erfinv(u), u uniform in (-1, 1)), for the VAE, AVAE, AVAE-SS and SE^5.

Run from the repository root: python results/rng_xla/threefry.py --data_dir=../shared/tfds
Both variants of each model live in one process and are timed in alternated rounds, two ways: through
`keras.Model.fit` (XLA on, 10 steps per execution, the training default for the mlp: Keras launches one XLA
program per step) and as 10 steps unrolled into one XLA program (one fixed batch). The ThreeFry variant
replaces zoo.rng's normal and uniform while its model is traced; TensorFlow's kernels have no ThreeFry, so
this is only possible under XLA.
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
from zoo import rng  # noqa: E402

PHILOX = rng.normal, rng.uniform


def threefry_normal(shape, seed, dtype=tf.float32):
    u = tf.random.stateless_uniform(shape, seed, minval=np.nextafter(np.float32(-1), np.float32(0)), maxval=1.0,
                                    alg="threefry")  # fmt: skip
    return tf.cast(np.sqrt(2.0) * tf.math.erfinv(u), dtype)


def threefry_uniform(shape, seed, minval=0, maxval=None, dtype=tf.float32):
    return tf.random.stateless_uniform(shape, seed, minval=minval, maxval=maxval, dtype=dtype, alg="threefry")


def use(variant):
    rng.normal, rng.uniform = PHILOX if variant == "philox" else (threefry_normal, threefry_uniform)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data_dir", default="../shared/tfds")
    parser.add_argument("--models", default="vae,avae,avae_ss,se")
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    dataset = zoo_data.load("color_mnist", "train", 64, data_dir=args.data_dir, shuffle=True, repeat=True,
                            drop_remainder=True, download=False)  # fmt: skip
    size_only = tf.data.Dataset.from_tensors(tf.zeros([0])).repeat().batch(64, drop_remainder=True)
    x = next(iter(dataset))[0]
    fit_runs, program_runs = {}, {}
    for name in args.models.split(","):
        for variant in ("philox", "threefry"):
            use(variant)
            keras.utils.set_random_seed(0)
            extra = {"pgd_steps": 5} if name == "se" else {}
            model = loop.build_model(name, tf.distribute.get_strategy(), jit_compile=True, steps_per_execution=10,
                                     image_shape=(28, 28, 3), arch="mlp", latent_dim=64, **extra)  # fmt: skip
            data = size_only if name == "avae_ss" else dataset
            model.fit(data, steps_per_epoch=20, epochs=1, verbose=0)  # traced and compiled with this variant
            batch = next(iter(data))

            def ten_steps(model=model, batch=batch):
                for _ in range(10):
                    model.train_step(batch)
                return model.optimizer.iterations

            program = tf.function(ten_steps, jit_compile=True)
            program().numpy()
            fit_runs[name, variant] = (model, data)
            program_runs[name, variant] = program
    use("philox")
    fit_times = {key: [] for key in fit_runs}
    program_times = {key: [] for key in program_runs}
    for round_ in range(args.rounds):
        keys = list(fit_runs) if round_ % 2 == 0 else list(fit_runs)[::-1]
        for key in keys:
            model, data = fit_runs[key]
            timer = StepTimer()
            model.fit(data, steps_per_epoch=200, epochs=1, verbose=0, callbacks=[timer])
            fit_times[key] += [seconds for _, seconds in timer.rows][1:]
            for _ in range(20):
                start = time.perf_counter()
                program_runs[key]().numpy()
                program_times[key].append((time.perf_counter() - start) / 10)
    print("ms per step, 10th percentile (median), alternated rounds:", args.rounds)
    print("| model | Philox, fit | ThreeFry, fit | Philox, 10 steps in one XLA program | ThreeFry, same |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name in args.models.split(","):
        cells = [f"{np.percentile(t[name, v], 10) * 1e3:.2f} ({np.median(t[name, v]) * 1e3:.2f})"
                 for t in (fit_times, program_times) for v in ("philox", "threefry")]  # fmt: skip
        print(f"| {name} | " + " | ".join(cells[:2] + cells[2:]) + " |", flush=True)


if __name__ == "__main__":
    main()
