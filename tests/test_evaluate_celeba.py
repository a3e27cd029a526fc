"""The CelebA path of the evaluation (17 attribute tasks, 64x64 images) on `tfds.testing.mock_data`."""

import json
import os

import keras
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from evaluate import pipeline
from zoo import data, training


def test_celeb_a_protocol_runs_on_mock_data(tmp_path):
    model_dir = str(tmp_path / "celeba_vae")
    os.makedirs(model_dir)
    keras.utils.set_random_seed(0)
    config = dict(image_shape=(64, 64, 3), arch="mlp", latent_dim=4, seed=0)
    model = training.build_model("vae", tf.distribute.get_strategy(), **config)
    model.save(os.path.join(model_dir, training.MODEL_FILE))
    with open(os.path.join(model_dir, training.CONFIG_FILE), "w") as f:
        json.dump({"model": "vae", "dataset": "celeb_a", **config, "image_shape": [64, 64, 3]}, f)
    settings = pipeline.Settings(
        epsilons=(0.0, 0.1), pgd_steps=2, restarts=1, num_examples=8, batch_size=8, probe_train_examples=16,
        probe_epochs=2, lambdas=(1.0,), ae_attack_examples=4, ae_attack_trials=1, margin_examples=4, margin_samples=4,
        margin_search_steps=1, chain_steps=2, chain_examples=2, fid_features="classifier",
        fid_cache_dir=str(tmp_path / "cache"), fid_classifier_train_examples=16, fid_classifier_epochs=1,
    )  # fmt: skip
    output = str(tmp_path / "out")
    # zoo.data reads CelebA with tfds.builder(...).as_dataset, which mock_data patches (download_and_prepare
    # becomes a no-op, so the loader's "not prepared" path goes through to the mocked examples).
    with tfds.testing.mock_data(num_examples=16):
        result = pipeline.evaluate_model(model_dir, output, settings, data_dir="/nonexistent", log=lambda _: None)
    assert result["dataset"] == "celeb_a"
    assert list(result["adversarial_accuracy"]) == list(data.CELEBA_ATTRIBUTES)
    assert all(0.0 <= a <= 1.0 for per in result["adversarial_accuracy"].values() for a in per.values())
    assert result["settings"]["ms_ssim"]["scales"] == 4  # 64-32-16-8 with the 7x7 window
    assert result["latent_attack"]["target_task"] == "Bald"
    assert np.isfinite(result["fid"]) and result["fid_features"]["kind"] == "classifier"
    assert len(result["fid_features"]["test_accuracy"]) == 17
    for name in ("robustness.json", "robustness.md", "accuracy_vs_epsilon.png", "chain.png"):
        assert os.path.exists(os.path.join(output, name)), name
