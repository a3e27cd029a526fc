"""Couplings of BatchNorm encoders: each batch coupled to the data (delusions, PGD inputs) in its own pass (the
default, `coupled_pass` separate) or in one pass with the data (joint)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import zoo
from train import loop
from zoo import maths


def _model(name, arch, **config):
    """A small model of `name` (`config`: its hyper-parameters; coupled_pass left out: the default, separate)."""
    # Weights drawn from a fixed seed: otherwise they depend on what the tests before drew.
    keras.utils.set_random_seed(1)
    strategy = tf.distribute.get_strategy()
    return loop.build_model(
        zoo.get_model_class(name), strategy, image_shape=(28, 28, 3), arch=arch, latent_dim=8, seed=1, **config
    )


def _images(batch=16, seed=0):
    return tf.constant(np.random.default_rng(seed).uniform(0.2, 0.8, size=(batch, 28, 28, 3)).astype(np.float32))


def _coupling(model, x, auxiliary):
    data, (other,) = model.coupled_posteriors(x, model.posterior(x, training=True), [auxiliary], training=True)
    return float(
        tf.reduce_mean(maths.coupling_log_prob(data.mean(), data.variance(), other.mean(), other.variance(), 0.975))
    )


@pytest.fixture(scope="module")
def conv_avae():
    return _model("avae", "conv", coupled_pass="joint")


def test_the_coupling_of_a_batch_with_itself_is_its_value_without_batchnorm_effects(conv_avae):
    # [x, x] has x's batch statistics, so both codes are x's own training-mode code.
    x = _images()
    posterior = conv_avae.posterior(x, training=True)
    data, (itself,) = conv_avae.coupled_posteriors(x, posterior, [x], training=True)
    np.testing.assert_allclose(data.mean(), posterior.mean(), atol=1e-4)
    np.testing.assert_allclose(itself.mean(), posterior.mean(), atol=1e-4)
    np.testing.assert_allclose(itself.variance(), posterior.variance(), rtol=1e-4)
    expected = maths.coupling_log_prob(
        posterior.mean(), posterior.variance(), posterior.mean(), posterior.variance(), 0.975
    )
    assert _coupling(conv_avae, x, x) == pytest.approx(float(tf.reduce_mean(expected)), rel=1e-4)


def test_a_shift_of_the_whole_auxiliary_batch_is_not_normalised_away(conv_avae):
    # Encoded as a batch of its own, a uniformly brighter copy of x gets almost x's codes: BatchNorm removes
    # the shift (all but its effect at the zero-padded borders). Encoded together with the data, the shift
    # shows, and the coupling penalises it. Measured with these weights: 0.75 against 0.16
    # (0.56-0.83 against 0.11-0.19 for weight seeds 0-7, and the coupling lower for each).
    x = _images()
    shifted = x + 0.15
    own_mean = conv_avae.posterior(x, training=True).mean()
    separate_gap = float(tf.reduce_mean(tf.abs(conv_avae.posterior(shifted, training=True).mean() - own_mean)))
    data, (joint,) = conv_avae.coupled_posteriors(x, conv_avae.posterior(x, training=True), [shifted], training=True)
    joint_gap = float(tf.reduce_mean(tf.abs(joint.mean() - data.mean())))
    assert joint_gap > 2 * separate_gap
    assert _coupling(conv_avae, x, shifted) < _coupling(conv_avae, x, x)


def test_coupled_pass_separate_encodes_each_batch_on_its_own_statistics():
    # The papers' code: the auxiliary batch is normalised by itself, so the shift above is (mostly) removed.
    model = _model("avae", "conv")
    assert model.config.coupled_pass == "separate"  # the default
    assert model.encoder_has_batch_norm and not model.encodes_coupled_jointly()
    x = _images()
    shifted = x + 0.15
    posterior = model.posterior(x, training=True)
    data, (alone,) = model.coupled_posteriors(x, posterior, [shifted], training=True)
    assert data is posterior
    np.testing.assert_allclose(alone.mean(), model.posterior(shifted, training=True).mean(), atol=1e-6)
    with pytest.raises(ValueError, match="unknown coupled_pass 'both'; choose one of: joint, separate"):
        _model("avae", "conv", coupled_pass="both")


def test_without_batchnorm_the_joint_pass_is_the_separate_passes():
    model = _model("avae", "mlp", coupled_pass="joint")
    assert not model.encoder_has_batch_norm
    x, other = _images(seed=0), _images(seed=1)
    posterior = model.posterior(x, training=True)
    data, (auxiliary,) = model.coupled_posteriors(x, posterior, [other], training=True)
    assert data is posterior
    np.testing.assert_allclose(auxiliary.mean(), model.posterior(other, training=True).mean(), atol=1e-6)


@pytest.mark.parametrize("coupled_pass", ["joint", "separate"])
@pytest.mark.parametrize("name", ["avae", "se", "se_avae"])
def test_conv_models_with_coupled_passes_take_a_finite_training_step(name, coupled_pass):
    model = _model(name, "conv", coupled_pass=coupled_pass)
    terms = model.train_step(_images(batch=8))
    assert np.isfinite(float(terms["loss"]))


def test_a_conv_dae_encodes_clean_and_adversarial_inputs_in_one_pass():
    model = _model("robust_gmm_dae", "conv", coupled_pass="joint")
    assert model.encoder_has_batch_norm
    x = _images(batch=8)
    z = model.encoder(x, training=True)
    codes, (itself,) = model.coupled_codes(x, z, [x], training=True)
    np.testing.assert_allclose(codes, z, atol=1e-4)  # [x, x] has x's statistics
    np.testing.assert_allclose(itself, z, atol=1e-4)
    assert np.isfinite(float(model.train_step(x)["loss"]))
