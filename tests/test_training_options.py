"""Options of training: the loop's speed (XLA, steps per execution, mixed precision), what it reads (shift_pixels)
and its learning rate schedule."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import train
import zoo
from train import distribute, loop
from train.settings import TrainSettings
from zoo import data
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


# --- shift_pixels: random translations of the training images, exact under resume ---------------------------------


def test_shift_image_moves_the_pixels_by_the_offset_and_fills_with_zeros():
    image = np.arange(1, 13, dtype="float32").reshape(3, 4, 1)  # rows 1-4, 5-8, 9-12
    down_left = data.shift_image(image, [1, -2]).numpy()[..., 0]
    np.testing.assert_array_equal(down_left, [[0, 0, 0, 0], [3, 4, 0, 0], [7, 8, 0, 0]])
    two_channels = np.concatenate([image, 10 * image], axis=-1)
    up_right = data.shift_image(two_channels, tf.constant([-1, 1], tf.int64)).numpy()
    np.testing.assert_array_equal(up_right[..., 0], [[0, 5, 6, 7], [0, 9, 10, 11], [0, 0, 0, 0]])
    np.testing.assert_array_equal(up_right[..., 1], 10 * up_right[..., 0])
    np.testing.assert_array_equal(data.shift_image(two_channels, [0, 0]), two_channels)
    assert data.shift_image(two_channels, [0, 4]).numpy().max() == 0  # moved out whole


SHIFT_SEED, SHIFT_BATCH = 5, 8


def _read(start=0, batches=12, **options):
    """Training's read of 40 ColorMNIST digits (no download), `batches` batches of it from example `start`:
    (images, digits, colours), one entry per example in stream order."""
    stream = data.training_batches(
        "color_mnist_embedded", SHIFT_BATCH, take=40, seed=SHIFT_SEED, start=start, download=False, **options
    )
    read = [(x.numpy(), y["digit"].numpy(), y["color"].numpy()) for x, y in stream.take(batches)]
    return tuple(np.concatenate(parts) for parts in zip(*read))


def test_shifted_training_stream_resumes_exactly_and_shifts_nothing_else():
    # With colour_per_visit: the shift comes after the colouring and leaves its draws alone.
    plain = _read(colour_per_visit=True)
    shifted = _read(colour_per_visit=True, shift_pixels=2)  # 96 examples: 2.4 epochs of the 40
    # Each image is its unshifted self moved by the offset drawn for its position; digits and colours untouched.
    offsets = np.stack([data.shift_offset(SHIFT_SEED, i, 2).numpy() for i in range(len(plain[0]))])
    for position, (image, offset) in enumerate(zip(plain[0], offsets)):
        np.testing.assert_array_equal(shifted[0][position], data.shift_image(image, offset))
    np.testing.assert_array_equal(shifted[1], plain[1])
    np.testing.assert_array_equal(shifted[2], plain[2])
    # Offsets stay in [-2, 2], take every value there, and move most images.
    assert offsets.min() == -2 and offsets.max() == 2 and set(offsets.ravel()) == set(range(-2, 3))
    assert np.mean(np.any(shifted[0] != plain[0], axis=(1, 2, 3))) > 0.7
    # A run resumed at step 3 reads the tail of the uninterrupted run's stream, shifts included.
    resumed = _read(start=3 * SHIFT_BATCH, batches=9, colour_per_visit=True, shift_pixels=2)
    for part, whole in zip(resumed, shifted):
        np.testing.assert_array_equal(part, whole[3 * SHIFT_BATCH :])
    # shift_pixels=0 is the stream without the option, byte for byte.
    unshifted = _read(colour_per_visit=True, shift_pixels=0)
    for part, whole in zip(unshifted, plain):
        assert part.tobytes() == whole.tobytes()


@pytest.mark.parametrize(
    "options,message",
    [
        ({"shift_pixels": -1}, "shift_pixels must be non-negative, got -1"),
        ({"dataset": "mnist_embedded", "shift_pixels": 28}, "smaller than the side of the images, 28 pixels in"),
    ],
)
def test_a_bad_shift_pixels_is_refused_in_one_sentence(options, message):
    with pytest.raises(ValueError) as raised:
        TrainSettings(**options)
    assert message in str(raised.value)
    with pytest.raises(
        ValueError, match="shift_pixels must be at least 0 and smaller than the side of the images, 28 pixels"
    ):
        data.training_batches(options.get("dataset", "color_mnist_embedded"), 8, shift_pixels=options["shift_pixels"])


def test_training_shifts_its_training_stream_only(tmp_path, monkeypatch):
    from train import runner

    calls = []
    load = runner.zoo_data.load

    def recording_load(name, split, *args, **kwargs):
        calls.append((split, kwargs.get("repeat", False), kwargs.get("shift_pixels", 0)))
        return load(name, split, *args, **kwargs)

    monkeypatch.setattr(runner.zoo_data, "load", recording_load)
    options = dict(train_steps=1, latent_dim=8, eval_examples=8, summary=False, verbose=0, shift_pixels=2)
    result = train.run("vae", str(tmp_path / "vae"), **options)
    assert result.model_dir.read_flags()["shift_pixels"] == 2
    assert ("train", True, 2) in calls  # the training stream
    assert all(shift == 0 for split, repeat, shift in calls if not repeat) and len(calls) > 1  # validation: none


def test_the_cosine_schedule_decays_the_rate_to_zero_over_the_run():
    rate = loop.learning_rate_of(1e-3, "cosine", train_steps=100)
    np.testing.assert_allclose([float(rate(step)) for step in (0, 50, 100, 200)], [1e-3, 5e-4, 0.0, 0.0], atol=1e-9)
    assert loop.learning_rate_of(1e-3) == 1e-3
    with pytest.raises(ValueError, match="choose one of: constant, cosine"):
        loop.learning_rate_of(1e-3, "linear")


def test_a_run_trains_on_its_schedule_and_saves_it(tmp_path):
    options = dict(train_steps=4, latent_dim=8, eval_examples=0, summary=False, verbose=0, learning_rate=1e-3)
    result = train.run("vae", str(tmp_path / "vae"), learning_rate_schedule="cosine", **options)
    assert float(result.model.optimizer.learning_rate) == pytest.approx(0.0, abs=1e-9)  # at step 4 of 4
    assert float(zoo.load(result.model_dir.path).optimizer.learning_rate) == pytest.approx(0.0, abs=1e-9)
    constant = train.run("vae", str(tmp_path / "constant"), **options)
    assert float(constant.model.optimizer.learning_rate) == pytest.approx(1e-3)
    assert constant.weights_digest != result.weights_digest
