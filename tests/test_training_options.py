"""Speed options of the training loop: XLA, steps per execution, mixed precision."""

import os

import keras
import numpy as np
import tensorflow as tf

import zoo
from train import distribute, loop
from zoo.model_dir import ModelDir

SHAPE = (8, 8, 1)
TINY = dict(image_shape=SHAPE, arch="mlp", latent_dim=8)


def _data(initial_step=0):
    del initial_step
    images = np.random.default_rng(0).uniform(size=(16, *SHAPE)).astype("float32")
    return tf.data.Dataset.from_tensors(images).repeat()


def _model(**kwargs):
    return loop.build_model(zoo.get_model_class("avae"), tf.distribute.get_strategy(), **TINY, **kwargs)


def test_xla_computes_the_same_step():
    """Same loss and update with and without XLA.

    XLA draws other numbers than TensorFlow's kernels from the same stateless seed, so the
    posterior is made (numerically) deterministic here, std = exp(-30), and the delusion is the
    decoder's mean image: the comparison is of everything but the noise.
    """
    plain = _model(delusion="mean")
    head = plain.encoder.get_layer("z_log_var")
    head.kernel.assign(np.zeros(head.kernel.shape, "float32"))
    head.bias.assign(np.full(head.bias.shape, -60.0, "float32"))
    xla = _model(jit_compile=True, steps_per_execution=2, delusion="mean")
    xla.set_weights(plain.get_weights())
    assert xla.jit_compile
    start = plain.get_weights()
    losses = [model.fit(_data(), steps_per_epoch=2, epochs=1, verbose=0).history["loss"][0] for model in (plain, xla)]
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-5)
    deltas = [np.concatenate([(w - s).ravel() for w, s in zip(m.get_weights(), start)]) for m in (plain, xla)]
    # Adam turns rounding differences of near-zero gradients into a few larger ones: almost all agree.
    assert np.mean(np.abs(deltas[1] - deltas[0]) > 1e-3 * np.max(np.abs(deltas[0]))) <= 1e-3


def test_an_xla_execution_of_several_steps_trains_as_its_steps_one_at_a_time():
    """Steps unrolled into XLA programs (`train.xla_programs`) give the weights of one program per
    step: each step reads its own batch and draws its own noise (the sampled delusion). Executions of three
    steps run as programs of two and one; seven batches end with an execution cut short, which must still
    train on its last batch."""
    images = np.random.default_rng(1).uniform(size=(7, 16, *SHAPE)).astype("float32")
    weights, steps = [], []
    for steps_per_execution in (1, 3):
        keras.utils.set_random_seed(0)
        model = _model(jit_compile=True, steps_per_execution=steps_per_execution, steps_per_xla_program=2)
        model.fit(tf.data.Dataset.from_tensor_slices(images), epochs=1, verbose=0)
        assert "_unrolled_train_function" in model.train_function.__qualname__  # the trainer's, not Keras'
        weights.append(model.get_weights())
        steps.append(int(model.optimizer.iterations.numpy()))
    assert steps == [7, 7]
    for one_at_a_time, unrolled in zip(*weights):
        np.testing.assert_array_equal(unrolled, one_at_a_time)


def test_steps_per_execution_is_lowered_to_land_on_checkpoints_and_the_budget(tmp_path):
    model_dir = str(tmp_path / "model")
    model = _model(steps_per_execution=4)
    loop.train(model, _data, model_dir, train_steps=6, checkpoint_every=4, verbose=0)
    assert int(model.optimizer.iterations.numpy()) == 6
    assert sorted(f for f in os.listdir(ModelDir(model_dir).checkpoint_dir) if f.endswith(".index")) == [
        "ckpt-4.index",
        "ckpt-6.index",
    ]


def test_mixed_precision_scales_the_loss_and_keeps_outputs_float32(tmp_path):
    model = _model(precision="mixed_float16")
    assert keras.config.dtype_policy().name == "float32", "building must not leave the global policy changed"
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    hidden = [layer for layer in model.encoder.layers if isinstance(layer, keras.layers.Dense)][0]
    assert hidden.compute_dtype == "float16" and hidden.kernel.dtype == "float32"
    x = _data().take(1).get_single_element()
    z_mean, z_log_var = model.encoder(x)
    assert z_mean.dtype == z_log_var.dtype == model.decoder(z_mean).dtype == tf.float32
    assert {t.dtype for t in model.compute_losses(x, training=True).values()} == {tf.float32}

    # Loss-scaled steps skipped for non-finite float16 gradients do not count: the budget is reached.
    model_dir = str(tmp_path / "model")
    history = loop.train(model, _data, model_dir, train_steps=3, checkpoint_every=3, verbose=0)
    assert int(model.optimizer.iterations.numpy()) == 3
    assert np.isfinite(history.history["loss"][-1])
    restored = zoo.load(model_dir)
    assert restored.encoder(x)[0].dtype == tf.float32


def test_speed_defaults_follow_the_measured_rules():
    assert distribute.auto_jit_compile("mlp", replicas=1)
    assert not distribute.auto_jit_compile("mlp", replicas=2)  # one XLA program cannot hold several CPU replicas
    assert not distribute.auto_jit_compile("conv", replicas=1) and not distribute.auto_jit_compile("conv64", 1)
    assert distribute.auto_steps_per_execution(checkpoint_every=500, train_steps=2000, replicas=1) == 10
    assert distribute.auto_steps_per_execution(checkpoint_every=500, train_steps=1004, replicas=1) == 2
    assert distribute.auto_steps_per_execution(checkpoint_every=25, train_steps=100, replicas=1) == 5
    assert distribute.auto_steps_per_execution(checkpoint_every=500, train_steps=2000, replicas=2) == 1
    assert distribute.auto_steps_per_xla_program(train_steps=100_000) == 5
    assert distribute.auto_steps_per_xla_program(train_steps=2000) == 1
