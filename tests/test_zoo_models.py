"""Every registered model trains on real MNIST and round-trips as .keras; the issue-6 models' own behaviour."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import zoo
from train import loop
from zoo import data
from zoo.models import lipschitz_vae

TINY = dict(latent_dim=8, seed=1)
BATCH = 32
# Hyper-parameters a test passes besides the defaults (beta_tcvae: the finite-dataset estimator).
EXTRA_KWARGS = {"beta_tcvae": {"dataset_size": 7000}}
DAES = ("gmm_dae", "augmented_gmm_dae", "robust_gmm_dae")


def _model(name, image_shape=(28, 28, 1), **kwargs):
    kwargs = {**EXTRA_KWARGS.get(name, {}), **kwargs}
    return loop.build_model(
        zoo.get_model_class(name), tf.distribute.get_strategy(), image_shape=image_shape, arch="mlp", **TINY, **kwargs
    )


@pytest.fixture(scope="module")
def mnist(tfds_dir):
    """128 real MNIST training digits, [128, 28, 28, 1] in [0, 1]."""
    return next(iter(data.load("mnist", "train", 128, data_dir=tfds_dir, take=128, download=False)))[0]


def _batches(model_class, images):
    if not model_class.needs_data:  # as train.run feeds models that draw their own inputs
        return tf.data.Dataset.from_tensors(tf.zeros([0])).repeat().batch(BATCH, drop_remainder=True)
    return tf.data.Dataset.from_tensor_slices(images).batch(BATCH, drop_remainder=True).repeat()


@pytest.mark.parametrize("name", sorted(zoo.MODELS))
def test_registered_model_trains_on_mnist_and_round_trips(name, mnist, tmp_path):
    model = _model(name)
    history = model.fit(_batches(type(model), mnist), steps_per_epoch=3, epochs=1, verbose=0)
    assert set(history.history) == set(type(model).tracked_terms())
    assert all(np.isfinite(values).all() for values in history.history.values()), history.history
    path = str(tmp_path / "model.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    assert type(restored) is type(model) and restored.get_config() == model.get_config()
    x = mnist[:8]
    np.testing.assert_allclose(restored(x), model(x), atol=1e-5)
    np.testing.assert_allclose(restored.decode(model(x)), model.decode(model(x)), atol=1e-5)
    # What the evaluation reads: a posterior with a mean (the code) and a standard deviation.
    posterior = restored.posterior(x)
    np.testing.assert_allclose(posterior.mean(), restored(x), atol=1e-6)
    assert posterior.stddev().shape == (8, TINY["latent_dim"])


@pytest.mark.parametrize("name", DAES)
def test_deterministic_autoencoders_train_every_weight_and_have_zero_stddev(name, mnist):
    model = _model(name)
    x = mnist[:BATCH]
    with tf.GradientTape() as tape:
        terms = model.compute_losses(x, training=True)
    gradients = tape.gradient(terms["loss"], model.trainable_variables)
    assert all(g is not None and np.isfinite(g).all() for g in gradients)
    assert not any("z_log_var" in v.path for v in model.trainable_variables)
    np.testing.assert_array_equal(model.posterior(x).stddev(), 0.0)
    np.testing.assert_array_equal(model.posterior(x).mean(), model(x))
    # The loss weights come from prior batches with a fixed seed: the same at every step.
    first = model.loss_weights(BATCH)
    model.optimizer.iterations.assign_add(5)
    np.testing.assert_array_equal(first, model.loss_weights(BATCH))
    assert model.prior.sample(3, seed=(1, 2)).shape == (3, TINY["latent_dim"])


def test_adversarial_codes_move_more_than_random_noise(mnist):
    model = _model("robust_gmm_dae", epsilon=0.1)
    x = mnist[:BATCH]
    z = model(x)
    adversarial = tf.norm(model(model.adversarial_inputs(x)) - z, axis=-1)
    noisy = tf.clip_by_value(x + tf.random.stateless_uniform(x.shape, (3, 4), -0.1, 0.1), 0.0, 1.0)
    assert float(tf.reduce_mean(adversarial)) > float(tf.reduce_mean(tf.norm(model(noisy) - z, axis=-1)))


def test_beta_vae_weights_the_kl_computed_by_hand(mnist):
    x = mnist[:BATCH]
    vae, beta_vae = _model("beta_vae", beta=1.0), _model("beta_vae", beta=3.0)
    beta_vae.set_weights(vae.get_weights())
    z_mean, z_log_var = (t.numpy() for t in vae.encoder(x))
    kl = np.mean(np.sum(0.5 * (z_mean**2 + np.exp(z_log_var) - 1.0 - z_log_var), axis=-1))
    # The same weights and noise: beta = 3 costs 2 KL more than beta = 1 (the VAE).
    difference = beta_vae.compute_losses(x, training=False)["loss"] - vae.compute_losses(x, training=False)["loss"]
    # The difference of two float32 losses of ~100 nats: absolute error ~1e-5.
    np.testing.assert_allclose(difference, 2.0 * kl, rtol=1e-3, atol=1e-4)


def test_beta_tcvae_weights_the_total_correlation(mnist):
    x = mnist[:BATCH]
    tcvae, beta_tcvae = _model("beta_tcvae", beta=1.0), _model("beta_tcvae", beta=3.0)
    # Codes whose dimensions are copies of one another, with sharp posteriors: a large total correlation.
    z_mean, z_log_var = tcvae.encoder.get_layer("z_mean"), tcvae.encoder.get_layer("z_log_var")
    z_mean.kernel.assign(tf.tile(z_mean.kernel[:, :1] * 10.0, [1, TINY["latent_dim"]]))
    z_log_var.bias.assign(tf.fill(z_log_var.bias.shape, -4.0))
    beta_tcvae.set_weights(tcvae.get_weights())
    terms = beta_tcvae.compute_losses(x, training=False)
    difference = terms["loss"] - tcvae.compute_losses(x, training=False)["loss"]
    assert float(terms["total_correlation"]) > 1.0
    np.testing.assert_allclose(difference, 2.0 * terms["total_correlation"], rtol=1e-4)


def test_invalid_hyperparameters_are_refused():
    with pytest.raises(ValueError, match="num_modes must be at most 2 \\* latent_dim = 8"):
        zoo.get_model_class("gmm_dae")(latent_dim=4, num_modes=9)
    with pytest.raises(ValueError, match="alpha must lie in"):
        zoo.get_model_class("robust_gmm_dae")(alpha=1.5)
    with pytest.raises(ValueError, match="use arch 'mlp'"):
        zoo.get_model_class("lipschitz_vae")(arch="conv")
    with pytest.raises(ValueError, match="lipschitz must be positive"):
        zoo.get_model_class("lipschitz_vae")(lipschitz=0.0)


@pytest.mark.parametrize("shape", [(784, 200), (200, 784), (50, 50)])
def test_bjorck_weights_have_unit_spectral_norm(shape):
    layer = lipschitz_vae.BjorckDense(shape[1])
    layer.build((None, shape[0]))
    layer.kernel.assign(tf.random.stateless_normal(shape, (5, shape[0])))  # far from orthonormal
    singular_values = np.linalg.svd(layer.orthonormal_kernel().numpy(), compute_uv=False)
    assert abs(singular_values.max() - 1.0) < 1e-3 and singular_values.max() <= 1.0 + 1e-5


def _randomise(model, seed):
    """Random, non-orthonormal kernels and biases, so the bound is not met by construction of the init."""
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(size=w.shape).astype(np.float32) for w in model.get_weights()])


def test_lipschitz_vae_maps_never_exceed_the_bound(mnist):
    bound = 2.5
    model = _model("lipschitz_vae", lipschitz=bound)
    _randomise(model, seed=0)
    for layer in model.encoder.layers + model.decoder.layers:
        if isinstance(layer, lipschitz_vae.BjorckDense):
            assert abs(np.linalg.svd(layer.orthonormal_kernel().numpy(), compute_uv=False).max() - 1.0) < 1e-3
    maps = {
        "z_mean": (lambda v: model.encoder(v)[0], mnist[:32]),
        "z_log_var": (lambda v: model.encoder(v)[1], mnist[:32]),
        "logits": (model.decoder, tf.random.stateless_normal([32, TINY["latent_dim"]], (1, 2)) * 3.0),
    }
    for name, (f, a) in maps.items():
        b = tf.Variable(tf.roll(a, 1, axis=0))  # random pairs, then pairs pushed towards the largest ratio

        @tf.function
        def ratio_and_gradient():
            with tf.GradientTape() as tape:
                difference = tf.reshape(f(b) - f(a), [32, -1])
                ratio = tf.norm(difference, axis=1) / tf.norm(tf.reshape(b - a, [32, -1]), axis=1)
                total = tf.reduce_sum(ratio)
            return ratio, tape.gradient(total, b)

        ratios = []
        for step in range(12):
            ratio, gradient = ratio_and_gradient()
            ratios.append(ratio.numpy())
            scale = 0.1 if step < 6 else 0.01  # far pairs first, then close pairs
            b.assign(a + scale * tf.math.l2_normalize(b - a + gradient, axis=list(range(1, a.shape.rank))))
        assert np.max(ratios) <= bound * (1 + 1e-4), (name, np.max(ratios))
        assert np.max(ratios) > 0.2 * bound, (name, np.max(ratios))  # the search is not vacuous


def test_validation_weighs_batches_by_examples_and_an_empty_batch_by_nothing(mnist):
    model = _model("vae")
    x = mnist[:8]
    whole = float(model.test_step(x)["kl"])  # the KL needs no noise: the same for any split of the batch
    model.reset_metrics()
    model.test_step(x[:6])
    split = model.test_step(x[6:])
    np.testing.assert_allclose(float(split["kl"]), whole, rtol=1e-5)  # not the mean of the two batch means
    after_empty = model.test_step(x[:0])  # what a worker out of validation data runs under MultiWorkerMirrored
    assert all(np.isfinite(float(v)) for v in after_empty.values())
    np.testing.assert_allclose(float(after_empty["kl"]), whole, rtol=1e-5)
