"""SE, SE-AVAE and AVAE-SS: selection, gradient routing, real ColorMNIST training, save/load, no-data post-training."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import zoo
from train import loop
from zoo import attacks, data, maths
from zoo.models import se

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(latent_dim=8, seed=1)


def _model(name, arch="mlp", **kwargs):
    return loop.build_model(
        zoo.get_model_class(name), tf.distribute.get_strategy(), image_shape=(28, 28, 3), arch=arch, **TINY, **kwargs
    )


def _images(batch=8, seed=0):
    return tf.constant(np.random.default_rng(seed).uniform(size=(batch, 28, 28, 3)).astype(np.float32))


def test_selection_stays_in_the_ball_and_raises_the_eqs_25_26_objective_above_noise():
    rho = 0.95
    model = _model("se", se_epsilon=0.1, pgd_steps=5, rho=rho)
    x = _images()
    selected = se.select(model, x, rho)
    assert float(tf.reduce_max(tf.abs(selected - x))) <= 0.1 + 1e-6
    assert float(tf.reduce_min(selected)) >= 0.0 and float(tf.reduce_max(selected)) <= 1.0
    reference = model.posterior(x)
    m, v = reference.mean().numpy(), reference.variance().numpy()

    def objective(x_tilde):
        """Eqs. (25)-(26) for the factorised pair, by hand: -<log p_rho(z'|z)> - H[q(z'|x~)]."""
        q = model.posterior(x_tilde)
        m_prime, v_prime = q.mean().numpy(), q.variance().numpy()
        c = 1.0 - rho**2
        coupling = np.sum(
            -0.5 * np.log(2 * np.pi * c) - ((m_prime - rho * m) ** 2 + v_prime + rho**2 * v) / (2 * c), -1
        )
        return -coupling - np.sum(0.5 * np.log(2 * np.pi * np.e * v_prime), axis=-1)

    for seed in range(3):
        noisy = tf.clip_by_value(x + tf.random.stateless_uniform(x.shape, (seed, 2), -0.1, 0.1), 0.0, 1.0)
        assert np.all(objective(selected) > objective(noisy))


def test_selection_radius_ramps_linearly_to_se_epsilon():
    ramped = se.SEConfig(se_epsilon=0.2, se_epsilon_ramp_steps=100)
    radii = [float(se.selection_radius(ramped, step)) for step in (0, 25, 100, 1000)]
    np.testing.assert_allclose(radii, [0.0, 0.05, 0.2, 0.2], rtol=1e-6)
    assert float(se.selection_radius(se.SEConfig(se_epsilon=0.2), 0)) == pytest.approx(0.2)


def test_selection_reads_the_step_size_scale_and_the_ramp_from_the_training_step():
    rho = 0.95
    x = _images()
    fast = _model("se", se_epsilon=0.1, pgd_steps=1, selection_step_scale=1.25, rho=rho)
    reference = fast.posterior(x, training=False)

    def objective(x_adv):
        adversarial = fast.posterior(x_adv, training=False)
        coupling = maths.coupling_log_prob(
            reference.mean(), reference.variance(), adversarial.mean(), adversarial.variance(), rho
        )
        return -coupling - maths.gaussian_entropy(adversarial.variance())

    seed = fast.noise_seed(se._SELECTION_SALT)
    single_step = attacks.pgd(objective, x, 0.1, 1, step_size=0.125, seed=seed)
    np.testing.assert_allclose(se.select(fast, x, rho), single_step, atol=1e-6)
    # The default step (2.5 x epsilon) lands elsewhere: a step of 1.25 x epsilon from a random start leaves
    # some pixels inside the ball, where 2.5 x epsilon reaches its faces.
    assert not np.allclose(single_step, attacks.pgd(objective, x, 0.1, 1, seed=seed), atol=1e-6)

    ramped = _model("se", se_epsilon=0.1, se_epsilon_ramp_steps=100, rho=rho)
    np.testing.assert_array_equal(se.select(ramped, x, rho), x)  # step 0: radius 0
    ramped.optimizer.iterations.assign(50)
    change = float(tf.reduce_max(tf.abs(se.select(ramped, x, rho) - x)))
    assert 0.04 < change <= 0.05 + 1e-6


def test_se_penalty_is_minus_eq32_with_the_pairwise_bound(monkeypatch):
    rho = 0.9
    model = _model("se", rho=rho)
    x = _images(batch=4)
    x_selected = tf.clip_by_value(x + tf.random.stateless_uniform(x.shape, (3, 4), -0.1, 0.1), 0.0, 1.0)
    monkeypatch.setattr(se, "select", lambda model, x, rho: x_selected)
    posterior = model.posterior(x)
    z = posterior.sample(seed=(5, 6))
    penalty, terms = model.regularizer(x, posterior, z, model.decode(z), training=False)
    adversarial = model.posterior(x_selected)
    m, v = posterior.mean().numpy(), posterior.variance().numpy()
    m_prime, v_prime = adversarial.mean().numpy(), adversarial.variance().numpy()
    # Appendix C.3.1: cross-covariance psi_i = (sqrt(1 + 4 gamma^2 s_i s'_i) - 1) / (2 gamma), gamma = rho / (1 - rho^2),
    # with s, s' the variances; the bound adds <log p_rho(z'|z)> + H[q(z, z')] - H[q(z|x)] to the ELBO.
    gamma = rho / (1 - rho**2)
    psi = (np.sqrt(1 + 4 * gamma**2 * v * v_prime) - 1) / (2 * gamma)
    c = 1.0 - rho**2
    coupling = np.sum(
        -0.5 * np.log(2 * np.pi * c) - ((m_prime - rho * m) ** 2 + v_prime - 2 * rho * psi + rho**2 * v) / (2 * c),
        axis=-1,
    )
    joint_entropy = np.sum(np.log(2 * np.pi * np.e) + 0.5 * np.log(v * v_prime - psi**2), axis=-1)
    entropy = np.sum(0.5 * np.log(2 * np.pi * np.e * v), axis=-1)
    np.testing.assert_allclose(terms["coupling_log_prob"], np.mean(coupling), rtol=1e-4)
    np.testing.assert_allclose(terms["joint_entropy"], np.mean(joint_entropy), rtol=1e-4)
    np.testing.assert_allclose(penalty, -np.mean(coupling + joint_entropy - entropy), rtol=1e-4)


@pytest.mark.parametrize("name", ["se", "se_avae"])
def test_regularizer_trains_the_encoder_not_the_decoder(name):
    model = _model(name)
    x = _images()
    with tf.GradientTape(persistent=True) as tape:
        posterior = model.posterior(x, training=True)
        z = posterior.sample(seed=model.noise_seed(0))
        penalty, terms = model.regularizer(x, posterior, z, model.decode(z, training=True), training=True)
    assert all(g is None for g in tape.gradient(penalty, model.decoder.trainable_variables))
    encoder_grads = tape.gradient(penalty, model.encoder.trainable_variables)
    assert any(g is not None and float(tf.reduce_sum(tf.abs(g))) > 0 for g in encoder_grads)
    assert set(terms) == set(type(model).extra_terms)


def test_invalid_hyperparameters_are_refused():
    with pytest.raises(ValueError, match="se_epsilon must be non-negative"):
        zoo.get_model_class("se")(se_epsilon=-0.1)
    with pytest.raises(ValueError, match="pgd_steps must be at least 1"):
        zoo.get_model_class("se_avae")(pgd_steps=0)
    with pytest.raises(ValueError, match="rho_se must lie in"):
        zoo.get_model_class("se_avae")(rho_se=1.0)
    with pytest.raises(ValueError, match="rho must lie in"):
        zoo.get_model_class("se")(rho=-1.0)
    with pytest.raises(ValueError, match="selection_step_scale must be positive"):
        zoo.get_model_class("se")(selection_step_scale=0.0)
    with pytest.raises(ValueError, match="se_epsilon_ramp_steps must be non-negative"):
        zoo.get_model_class("se_avae")(se_epsilon_ramp_steps=-1)


@pytest.mark.parametrize("name", ["se", "se_avae"])
def test_trains_on_color_mnist_and_round_trips_as_keras_file(name, tfds_dir, tmp_path):
    model = _model(name, pgd_steps=2)
    train = data.load("color_mnist", "train", 16, data_dir=tfds_dir, shuffle=True, repeat=True, take=64)
    history = model.fit(train, steps_per_epoch=3, epochs=1, verbose=0)
    assert all(np.isfinite(values).all() for values in history.history.values())
    path = str(tmp_path / "model.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    assert type(restored) is type(model) and restored.get_config() == model.get_config()
    x = next(iter(train))[0]
    np.testing.assert_allclose(restored(x), model(x), atol=1e-5)


def test_avae_ss_keeps_the_decoder_frozen_with_its_batchnorm_statistics(tmp_path):
    model = _model("avae_ss", arch="conv")
    decoder = [w.numpy().copy() for w in model.decoder.weights]
    encoder = [w.numpy().copy() for w in model.encoder.weights]
    placeholder = tf.data.Dataset.from_tensors(tf.zeros([0])).repeat().batch(8)  # carries only the batch size
    history = model.fit(placeholder, steps_per_epoch=2, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert all(np.array_equal(before, w.numpy()) for before, w in zip(decoder, model.decoder.weights))
    assert not all(np.array_equal(before, w.numpy()) for before, w in zip(encoder, model.encoder.weights))
    path = str(tmp_path / "model.keras")
    model.save(path)
    assert not keras.saving.load_model(path).decoder.trainable


@pytest.mark.parametrize("delusion", ["sample", "mean"])
def test_avae_ss_inputs_are_decoder_samples_like_its_delusions(delusion):
    from zoo.models import avae_ss

    model = _model("avae_ss", delusion=delusion)
    x = model.generated_inputs(512).numpy()
    mean_image = model.decode(model.prior.sample(512, seed=model.noise_seed(avae_ss._PRIOR_SALT))).numpy()
    if delusion == "mean":  # Algorithm 4's decoder(z'') read literally
        np.testing.assert_array_equal(x, mean_image)
        return
    # Eq. (33): x ~ p(x|z''), the mean image plus the Gaussian likelihood's noise of variance obs_var ...
    noise = x - mean_image
    assert abs(noise.mean()) < 0.01 and noise.std() == pytest.approx(np.sqrt(model.config.obs_var), rel=0.01)
    # ... from a stream of its own, not the delusion's.
    delusion_noise = model.delusion(tf.constant(mean_image)).numpy() - mean_image
    assert abs(np.corrcoef(noise.ravel(), delusion_noise.ravel())[0, 1]) < 0.01


# Runs `python -m train.avae_ss` with every way to data disabled: zoo.data and tensorflow-datasets raise.
_NO_DATA = """
import dataclasses, runpy, sys
import tensorflow_datasets as tfds
import zoo.data

def no_data(*args, **kwargs):
    raise AssertionError("the input pipeline was touched")

zoo.data.load = zoo.data.get_spec = tfds.load = tfds.builder = no_data
zoo.data.DATASETS.update({name: dataclasses.replace(spec, load=no_data) for name, spec in zoo.data.DATASETS.items()})
runpy.run_module("train.avae_ss", run_name="__main__", alter_sys=True)
"""


def _run_avae_ss(*flags):
    env = {**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run(
        [sys.executable, "-c", _NO_DATA, *flags], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )


def test_avae_ss_post_trains_a_trained_vae_without_any_data(tfds_dir, tmp_path):
    vae_dir, ss_dir = str(tmp_path / "vae"), str(tmp_path / "avae_ss")
    vae = _model("vae")
    loop.train(
        vae,
        lambda step: data.load("color_mnist", "train", 16, data_dir=tfds_dir, repeat=True, take=64),
        vae_dir,
        train_steps=3,
        verbose=0,
    )
    result = _run_avae_ss(f"--init_from={vae_dir}", f"--model_dir={ss_dir}", "--train_steps=4", "--batch_size=8")
    assert result.returncode == 0, result.stderr[-3000:]
    post_trained = zoo.load(ss_dir)
    assert (post_trained.arch, post_trained.latent_dim, post_trained.image_shape) == ("mlp", 8, (28, 28, 3))
    for before, after in zip(vae.decoder.weights, post_trained.decoder.weights):
        np.testing.assert_array_equal(before.numpy(), after.numpy())
    assert not all(
        np.array_equal(a.numpy(), b.numpy()) for a, b in zip(vae.encoder.weights, post_trained.encoder.weights)
    )


def test_avae_ss_without_init_from_fails_in_one_line(tmp_path):
    result = _run_avae_ss(f"--model_dir={tmp_path}", "--train_steps=1")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith("error: avae_ss reads no data")
    assert "Traceback" not in result.stderr
