"""benchmarks.weight_averaging's two operations: a checkpoint's weights, and BatchNorm statistics of clean data."""

import numpy as np
import pytest
import tensorflow as tf
from keras import layers

import zoo
from benchmarks import weight_averaging
from train import loop
from zoo import data as zoo_data
from zoo.model_dir import ModelDir


def _conv_avae():
    return loop.build_model(
        zoo.get_model_class("avae"), tf.distribute.get_strategy(), image_shape=(28, 28, 3), arch="conv", latent_dim=8
    )


def test_checkpoint_weights_are_the_checkpoints_not_the_models(tmp_path):
    model = _conv_avae()
    model(tf.zeros([2, 28, 28, 3]))
    saved = [w.copy() for w in model.get_weights()]
    loop.checkpoint_manager(model, ModelDir(str(tmp_path))).save(checkpoint_number=5)
    model.set_weights([w + 1.0 for w in saved])
    restored = weight_averaging.checkpoint_weights(model, str(tmp_path), 5)
    for got, expected in zip(restored, saved):
        np.testing.assert_array_equal(got, expected)
    with pytest.raises(ValueError, match=r"no checkpoint at step 6 in .*; it keeps: 5$"):
        weight_averaging.checkpoint_weights(model, str(tmp_path), 6)


def test_recalibration_gives_the_first_batchnorm_the_statistics_of_the_training_images(tfds_dir):
    model = _conv_avae()
    batch_norm = next(layer for layer in model.encoder.layers if isinstance(layer, layers.BatchNormalization))
    batch_norm.moving_mean.assign(tf.fill(batch_norm.moving_mean.shape, 100.0))  # stale statistics, far off
    weight_averaging.recalibrate_batch_norm(model, "color_mnist", tfds_dir, batches=300)
    # What the first BatchNorm normalises: the first convolution's output on training images.
    convolution = model.encoder.layers[model.encoder.layers.index(batch_norm) - 1]
    images, _ = next(iter(zoo_data.load("color_mnist", "train", 1000, data_dir=tfds_dir, download=False)))
    data_mean = tf.reduce_mean(convolution(images), axis=[0, 1, 2]).numpy()
    stale = 0.99**300  # the weight left on the stale statistics after 300 updates at momentum 0.99
    np.testing.assert_allclose(batch_norm.moving_mean.numpy(), stale * 100.0 + (1 - stale) * data_mean, atol=0.02)
