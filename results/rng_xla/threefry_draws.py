"""One 64 x 28 x 28 x 3 draw per XLA program (summed with an input image), Philox against ThreeFry, and the
inverse error function that makes ThreeFry's uniforms normal, alone and fused with the draw.

Run from the repository root: python results/rng_xla/threefry_draws.py
"""

import time

from zoo import console

console.quiet_tensorflow()

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow.compiler.tf2xla.python import xla  # noqa: E402

SHAPE = [64, 28, 28, 3]
DRAWS = {
    "philox normal": lambda x, s: tf.random.stateless_normal(SHAPE, s, alg="philox"),
    "threefry uniform": lambda x, s: tf.random.stateless_uniform(SHAPE, s, alg="threefry"),
    "philox uniform": lambda x, s: tf.random.stateless_uniform(SHAPE, s, alg="philox"),
    "erfinv of x": lambda x, s: tf.math.erfinv(x + tf.cast(s[1], tf.float32) * 1e-9),
    "threefry uniform + erfinv": lambda x, s: tf.math.erfinv(
        tf.random.stateless_uniform(SHAPE, s, -0.99, 0.99, alg="threefry")
    ),
    "threefry uniform | barrier | erfinv": lambda x, s: tf.math.erfinv(
        xla.optimization_barrier(tf.random.stateless_uniform(SHAPE, s, -0.99, 0.99, alg="threefry"))
    ),
    "threefry normal": lambda x, s: tf.random.stateless_normal(SHAPE, s, alg="threefry"),
    "copy x": lambda x, s: x + tf.cast(s[1], tf.float32),
}


def program(draw):
    @tf.function(jit_compile=True)
    def run(x, seed):
        return tf.reduce_sum(x + 0.7 * draw(x, seed))

    return run


def main():
    x = tf.random.uniform(SHAPE, -0.9, 0.9)
    programs = {name: program(draw) for name, draw in DRAWS.items()}
    for run in programs.values():
        run(x, tf.constant([1, 2])).numpy()  # compile
    times = {name: [] for name in programs}
    for _ in range(4):
        for name, run in programs.items():
            for i in range(100):
                start = time.perf_counter()
                run(x, tf.constant([1, i])).numpy()
                times[name].append((time.perf_counter() - start) * 1e3)
    for name, milliseconds in times.items():
        print(f"one per call {name}: p10 {np.percentile(milliseconds, 10):.3f} median {np.median(milliseconds):.3f} ms")


if __name__ == "__main__":
    main()
