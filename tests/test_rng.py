"""zoo.rng: Philox named for every stateless draw outside XLA training programs (the numbers TensorFlow's kernels
drew before), ThreeFry with inverse-error-function normals inside them."""

import pathlib
import re

import numpy as np
import scipy.stats
import tensorflow as tf

from zoo import rng

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_draws_match_tensorflows_default_outside_xla():
    # Runs without XLA (the conv default, every shipped encoder's training) draw exactly what they drew
    # with TensorFlow's default algorithm ("auto_select": Philox in TensorFlow's CPU and GPU kernels).
    seed = tf.constant([3, 9], tf.int32)
    tf.debugging.assert_equal(rng.normal([5, 4], seed), tf.random.stateless_normal([5, 4], seed))
    tf.debugging.assert_equal(rng.uniform([7], seed, -1.0, 1.0), tf.random.stateless_uniform([7], seed, -1.0, 1.0))
    colour_seed = tf.constant([0, 123], tf.int64)
    tf.debugging.assert_equal(
        rng.uniform([20], colour_seed, maxval=7, dtype=tf.int64),
        tf.random.stateless_uniform([20], colour_seed, maxval=7, dtype=tf.int64),
    )
    tf.debugging.assert_equal(rng.fold_in(seed, 5), tf.random.experimental.stateless_fold_in(seed, 5))


def test_xla_draws_are_reproducible_and_distinct_per_seed():
    @tf.function(jit_compile=True)
    def draw(seed):
        return rng.normal([64, 100], rng.fold_in(seed, 1)), rng.uniform([64], seed)

    seed = tf.constant([1, 2], tf.int32)
    first, again, other = draw(seed), draw(seed), draw(tf.constant([1, 3], tf.int32))
    tf.debugging.assert_equal(first[0], again[0])
    assert not bool(tf.reduce_all(first[0] == other[0]))
    assert abs(float(tf.math.reduce_std(first[0])) - 1.0) < 0.05 and abs(float(tf.reduce_mean(first[1])) - 0.5) < 0.1


def test_xla_program_draws_threefry_normals_and_uniforms():
    @tf.function(jit_compile=True)
    def draw(seed):
        with rng.xla_program():
            return rng.normal([200, 100], seed), rng.uniform([20_000], seed, -2.0, 3.0)

    seed = tf.constant([4, 7], tf.int32)
    normals, uniforms = (t.numpy().ravel() for t in draw(seed))
    # 20,000 draws: a wrong scale (erfinv(u) without sqrt 2: std 0.71) or range fails by far.
    assert scipy.stats.kstest(normals, "norm").pvalue > 1e-3
    assert scipy.stats.kstest(uniforms, "uniform", args=(-2.0, 5.0)).pvalue > 1e-3
    np.testing.assert_array_equal(draw(seed)[0].numpy().ravel(), normals)
    assert not np.array_equal(draw(tf.constant([4, 8], tf.int32))[0].numpy().ravel(), normals)

    @tf.function(jit_compile=True)
    def philox(seed):
        return rng.normal([200, 100], seed)

    # Outside the context the same program draws Philox: other numbers.
    assert not np.allclose(philox(seed).numpy().ravel(), normals)


def test_every_stateless_draw_goes_through_zoo_rng():
    # A direct tf.random.stateless_* call would draw with "auto_select", slow under XLA (zoo/rng.py).
    direct = re.compile(r"tf\.random\.(stateless_|experimental\.stateless_fold_in)")
    offenders = [
        f"{path.relative_to(ROOT)}:{number}"
        for package in ("zoo", "train", "evaluate", "export", "serving", "benchmarks")
        for path in sorted((ROOT / package).rglob("*.py"))
        if path.name != "rng.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if direct.search(line)
    ]
    assert not offenders, offenders
