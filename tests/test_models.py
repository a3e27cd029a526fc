"""VAE and AVAE: gradient routing, sampling, architectures, save/load, real training."""

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

import zoo
from train import loop
from zoo import data

TINY = dict(latent_dim=8, seed=1)


def _model(name, image_shape=(28, 28, 3), arch="mlp", **kwargs):
    return loop.build_model(
        zoo.get_model_class(name), tf.distribute.get_strategy(), image_shape=image_shape, arch=arch, **TINY, **kwargs
    )


def _images(batch=8, shape=(28, 28, 3), seed=0):
    return tf.constant(np.random.default_rng(seed).uniform(size=(batch, *shape)).astype(np.float32))


def _variables_of(network):
    return {id(v.value if hasattr(v, "value") else v) for v in network.trainable_variables}


def test_avae_coupling_trains_encoder_not_decoder():
    model = _model("avae")
    x = _images()
    with tf.GradientTape(persistent=True) as tape:
        posterior = model.posterior(x, training=True)
        z = posterior.sample(seed=model.noise_seed(0))
        reconstruction = model.decode(z, training=True)
        penalty, terms = model.regularizer(x, posterior, z, reconstruction, training=True)
    decoder_grads = tape.gradient(penalty, model.decoder.trainable_variables)
    encoder_grads = tape.gradient(penalty, model.encoder.trainable_variables)
    assert all(g is None for g in decoder_grads), "the delusion path must not train the decoder"
    assert any(g is not None and float(tf.reduce_sum(tf.abs(g))) > 0 for g in encoder_grads)
    assert set(terms) == {"coupling_log_prob", "delusion_entropy"}


def _coupling_by_hand(m, v, m_prime, v_prime, rho, psi=0.0):
    """<log N(z'; rho z, (1 - rho^2) I)> under the Gaussians of z and z' with per-dimension cross-covariance
    psi (AVAE paper eqs. 13 and 31), written out in numpy, summed over dimensions."""
    c = 1.0 - rho**2
    square = (m_prime - rho * m) ** 2 + v_prime - 2.0 * rho * psi + rho**2 * v
    return np.sum(-0.5 * np.log(2 * np.pi * c) - square / (2 * c), axis=-1)


def _entropy_by_hand(v):
    return np.sum(0.5 * np.log(2 * np.pi * np.e * v), axis=-1)


def test_avae_penalty_is_minus_eq13_coupling_and_delusion_entropy():
    model = _model("avae", rho=0.9, delusion="mean")
    x = _images(batch=4)
    posterior = model.posterior(x)
    z = posterior.sample(seed=(5, 6))
    reconstruction = model.decode(z)
    penalty, terms = model.regularizer(x, posterior, z, reconstruction, training=False)
    delusion = model.posterior(reconstruction)  # the delusion x~ = decoder(z), encoded again
    m, v = posterior.mean().numpy(), posterior.variance().numpy()
    m_prime, v_prime = delusion.mean().numpy(), delusion.variance().numpy()
    coupling = np.mean(_coupling_by_hand(m, v, m_prime, v_prime, 0.9))
    entropy = np.mean(_entropy_by_hand(v_prime))
    np.testing.assert_allclose(terms["coupling_log_prob"], coupling, rtol=1e-4)
    np.testing.assert_allclose(terms["delusion_entropy"], entropy, rtol=1e-4)
    # The loss adds the penalty to -ELBO: maximising eq. (13) is minimising -(coupling + entropy).
    np.testing.assert_allclose(penalty, -(coupling + entropy), rtol=1e-4)


def test_a_sampled_delusion_carries_the_likelihood_noise():
    mean = tf.fill([4, 28, 28, 3], 0.3)
    np.testing.assert_array_equal(_model("avae", delusion="mean").delusion(mean), mean)
    gaussian = _model("avae", obs_var=0.1).delusion(mean).numpy()  # the default: a sample
    assert abs(np.std(gaussian - 0.3) - np.sqrt(0.1)) < 0.01 and abs(np.mean(gaussian) - 0.3) < 0.01
    binary = _model("avae", delusion="sample", likelihood="bernoulli").delusion(mean).numpy()
    assert set(np.unique(binary)) == {0.0, 1.0} and abs(np.mean(binary) - 0.3) < 0.02
    # SE-AVAE (and AVAE-SS, an AVAE) draw their delusions the same way.
    se_avae = _model("se_avae", delusion="sample", obs_var=0.1).delusion(mean).numpy()
    assert abs(np.std(se_avae - 0.3) - np.sqrt(0.1)) < 0.01


def test_posterior_noise_scales_with_the_std_or_the_variance():
    x = tf.tile(_images(batch=2), [4000, 1, 1, 1])  # 4,000 draws for each of two images, in one batch
    for noise, power in (("std", 0.5), ("variance", 1.0)):
        model = _model("vae", posterior_noise=noise)
        posterior = model.posterior(x)
        samples = tf.reshape(model.sample_posterior(posterior, tf.constant([1, 7])), [4000, 2, -1])
        spread = tf.math.reduce_std(samples, axis=0).numpy()
        np.testing.assert_allclose(spread, posterior.variance().numpy()[:2] ** power, rtol=0.1)


def test_posterior_samples_with_the_standard_deviation():
    model = _model("vae")
    x = _images(batch=2)
    posterior = model.posterior(x)
    z_mean, z_log_var = model.encoder(x)
    samples = posterior.sample(200_000, seed=(3, 4))
    np.testing.assert_allclose(tf.math.reduce_variance(samples, axis=0), tf.exp(z_log_var), rtol=0.03)
    np.testing.assert_allclose(model(x), z_mean)


def test_invalid_hyperparameters_are_refused():
    with pytest.raises(ValueError, match="rho must lie in"):
        zoo.get_model_class("avae")(rho=1.0)
    with pytest.raises(ValueError, match="obs_var must be positive"):
        zoo.get_model_class("vae")(obs_var=0.0)
    with pytest.raises(ValueError, match="choose one of"):
        zoo.get_model_class("no_such_model")


@pytest.mark.parametrize(
    "arch,image_shape", [("mlp", (28, 28, 3)), ("conv", (28, 28, 3)), ("conv", (32, 32, 3)), ("conv64", (64, 64, 3))]
)
def test_each_arch_trains_and_round_trips_as_keras_file(arch, image_shape, tmp_path):
    model = _model("avae", image_shape=image_shape, arch=arch)
    x = _images(batch=4, shape=image_shape)
    history = model.fit(tf.data.Dataset.from_tensors(x).repeat(), steps_per_epoch=2, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    path = str(tmp_path / "model.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    assert type(restored) is type(model) and restored.config == model.config and restored.arch == arch
    np.testing.assert_allclose(restored(x), model(x), atol=1e-5)
    np.testing.assert_allclose(restored.decode(model(x)), model.decode(model(x)), atol=1e-5)


def test_celeb_a_pipeline_and_conv64_on_mock_data(monkeypatch):
    monkeypatch.setattr(data, "_check_reachable", lambda *args: None)  # the mocked download needs no host
    with tfds.testing.mock_data(num_examples=8):
        dataset = data.load("celeb_a", "train", batch_size=4, data_dir="/nonexistent")
        images, labels = next(iter(dataset))
    assert images.shape == (4, 64, 64, 3)
    assert 0.0 <= float(tf.reduce_min(images)) and float(tf.reduce_max(images)) <= 1.0
    assert set(labels) == set(data.CELEBA_ATTRIBUTES) and len(labels) == 17
    model = _model("avae", image_shape=(64, 64, 3), arch="conv64")
    logs = model.fit(tf.data.Dataset.from_tensors(images).repeat(), steps_per_epoch=1, epochs=1, verbose=0)
    assert np.isfinite(logs.history["loss"]).all()


def test_color_mnist_is_deterministic_and_uses_seven_colours(tfds_dir):
    first = next(iter(data.load("color_mnist", "test", batch_size=500, data_dir=tfds_dir)))
    second = next(iter(data.load("color_mnist", "test", batch_size=100, data_dir=tfds_dir)))
    np.testing.assert_array_equal(first[1]["color"][:100], second[1]["color"])
    np.testing.assert_array_equal(first[0][:100], second[0])
    colours = first[1]["color"].numpy()
    assert set(colours) == set(range(7))
    images = first[0].numpy()
    for colour in range(7):
        channels_on = images[colours == colour].max(axis=(0, 1, 2)) > 0
        expected = [(colour + 1) >> bit & 1 == 1 for bit in range(3)]
        assert channels_on.tolist() == expected


def test_colour_per_visit_redraws_the_colour_of_the_same_digit(tfds_dir):
    # 50 digits, repeated: each visit of a digit keeps its pixels and gets a colour of its own.
    visits = data.load(
        "color_mnist", "train", batch_size=50, data_dir=tfds_dir, take=50, repeat=True, colour_per_visit=True, seed=3
    )
    fixed = next(iter(data.load("color_mnist", "train", batch_size=50, data_dir=tfds_dir, take=50)))
    batches = [batch for batch, _ in zip(visits, range(4))]
    grey = fixed[0].numpy().max(axis=-1)
    colours = np.stack([labels["color"].numpy() for _, labels in batches])
    for images, labels in batches:
        np.testing.assert_array_equal(images.numpy().max(axis=-1), grey)
        for image, colour in zip(images.numpy(), labels["color"].numpy()):
            channels_on = image.max(axis=(0, 1)) > 0
            assert channels_on.tolist() == [(colour + 1) >> bit & 1 == 1 for bit in range(3)]
    # Visits differ (a fixed colour would repeat), and every colour is drawn (7 of 200 draws).
    assert np.mean(colours[1:] != colours[0]) > 0.7 and set(colours.ravel()) == set(range(7))
    again = np.stack([labels["color"].numpy() for (_, labels), _ in zip(visits, range(4))])
    np.testing.assert_array_equal(again, colours)  # from the seed: the same stream every time


def test_real_colormnist_training_improves_test_elbo(tfds_dir, tmp_path):
    model = _model("avae")
    test = data.load("color_mnist", "test", batch_size=250, data_dir=tfds_dir, take=500)
    before = model.evaluate(test, return_dict=True, verbose=0)["elbo"]
    loop.train(
        model,
        lambda step: data.load("color_mnist", "train", 64, data_dir=tfds_dir, shuffle=True, repeat=True, seed=step),
        str(tmp_path),
        train_steps=200,
        checkpoint_every=100,
        verbose=0,
    )
    after = model.evaluate(test, return_dict=True, verbose=0)["elbo"]
    assert after > before + 100, (before, after)
    restored = zoo.load(str(tmp_path))
    x = next(iter(test))[0]
    np.testing.assert_allclose(restored(x), model(x), atol=1e-5)
