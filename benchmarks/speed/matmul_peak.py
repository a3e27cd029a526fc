"""The machine's measured matmul peak, against which the speed benchmark puts each step's FLOPs."""

import time

import tensorflow as tf


class MatmulPeak:
    """GFLOP/s of a square `size` matmul in float32 and bfloat16, the best of `repeats`, measured once per round.

    Many short matmuls rather than a few long ones, so that, like the fast steps, some run while the process
    has the cores.
    """

    def __init__(self, size):
        self.size = size
        self.rounds = []
        self._matmul = tf.function(lambda a, b: tf.reduce_sum(tf.matmul(a, b)))
        a, b = tf.random.uniform([size, size], seed=1), tf.random.uniform([size, size], seed=2)
        self._inputs = {"float32": (a, b), "bfloat16": (tf.cast(a, tf.bfloat16), tf.cast(b, tf.bfloat16))}
        for inputs in self._inputs.values():
            self._matmul(*inputs).numpy()  # trace

    def measure(self, repeats=10):
        rates = {}
        for dtype, inputs in self._inputs.items():
            best = min(self._seconds(inputs) for _ in range(repeats))
            rates[dtype] = 2 * self.size**3 / best / 1e9
        self.rounds.append(rates)
        return rates

    def _seconds(self, inputs):
        start = time.perf_counter()
        self._matmul(*inputs).numpy()
        return time.perf_counter() - start

    def peak(self, dtype="float32"):
        return max(r[dtype] for r in self.rounds)
