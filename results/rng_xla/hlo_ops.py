"""The HLO ops of one 64 x 2,352 normal draw under XLA, with the algorithm named (Philox) and with TensorFlow's
default ("auto_select"): run `python results/rng_xla/hlo_ops.py`; its output is in hlo_ops.txt."""

import collections
import re

import tensorflow as tf

SEED = tf.constant([5, 7], tf.int32)


@tf.function(jit_compile=True)
def philox_named(seed):
    return tf.random.stateless_normal([64, 2352], seed, alg="philox")


@tf.function(jit_compile=True)
def auto_select(seed):
    return tf.random.stateless_normal([64, 2352], seed)


for draw in (philox_named, auto_select):
    hlo = draw.experimental_get_compiler_ir(SEED)(stage="hlo")
    ops = collections.Counter(re.findall(r"= \S+ ([a-z][\w-]*)\(", hlo))
    print(f"{draw.__name__}: " + ", ".join(f"{op} {n}" for op, n in ops.most_common()))
print("same numbers:", bool(tf.reduce_all(philox_named(SEED) == auto_select(SEED))))
