"""The CelebA path of the evaluation (17 binary attribute tasks, 64x64 images) on `tfds.testing.mock_data`."""

import os

import keras
import numpy as np
import tensorflow_datasets as tfds

import evaluate
import zoo
from evaluate.stage_base import Common
from tests.conftest import tiny_stages
from zoo import data
from zoo.model_dir import ModelDir


def test_celeb_a_protocol_runs_on_mock_data(tmp_path, monkeypatch):
    model_dir = str(tmp_path / "celeba_vae")
    directory = ModelDir(model_dir)
    os.makedirs(model_dir)
    keras.utils.set_random_seed(0)
    config = dict(image_shape=(64, 64, 3), arch="mlp", latent_dim=4, seed=0)
    zoo.get_model_class("vae")(**config).save(directory.model_file)
    directory.write_json(
        directory.config_file, {"model": "vae", "dataset": "celeb_a", **config, "image_shape": [64, 64, 3]}
    )
    # Smaller still than the tests' tiny settings (17 tasks, 64x64 images). The tiny APGD, Square and radius-search
    # budgets it keeps go unused: APGD-DLR needs 3 classes, Square is not asked for, and radius_examples is 0.
    configured = tiny_stages(
        str(tmp_path / "cache"),
        epsilons=(0.0, 0.1),
        attacks=("pgd", "apgd-dlr"),
        radius_examples=0,
        probe_train_examples=16,
        probe_epochs=2,
        lambdas=(1.0,),
        ae_attack_examples=4,
        ae_attack_trials=1,
        margin_examples=4,
        margin_samples=4,
        margin_search_steps=1,
        chain_steps=2,
        chain_examples=2,
        fid_classifier_train_examples=16,
    )
    common = Common(num_examples=8, batch_size=8, pgd_steps=2, restarts=1)
    output = str(tmp_path / "out")
    # zoo.data reads CelebA with tfds.builder(...).as_dataset, which mock_data patches (download_and_prepare
    # becomes a no-op, so the loader's "not prepared" path goes through to the mocked examples); the download
    # that does not happen needs no host to answer.
    monkeypatch.setattr(data, "_check_reachable", lambda *args: None)
    with tfds.testing.mock_data(num_examples=16):
        (result,) = evaluate.run(
            [model_dir], output, data_dir="/nonexistent", stages=configured, common=common, log=lambda _: None
        )
    assert result["dataset"] == "celeb_a"
    assert list(result["adversarial_accuracy"]) == list(data.CELEBA_ATTRIBUTES)
    # Binary attributes: the DLR loss needs three classes, so only the project's PGD ran, and the JSON says why.
    assert all(list(per) == ["pgd"] for per in result["adversarial_accuracy_per_attack"].values())
    assert result["adversarial_accuracy"] == {
        task: per["pgd"] for task, per in result["adversarial_accuracy_per_attack"].items()
    }
    skipped = result["attack_budgets"]["apgd-dlr"]["skipped_tasks"]
    assert set(skipped) == set(data.CELEBA_ATTRIBUTES) and "at least 3 classes" in skipped["Bald"]
    assert result["settings"]["ms_ssim"]["scales"] == 4  # 64-32-16-8 with the 7x7 window
    assert result["latent_attack"]["target_task"] == "Bald"
    assert np.isfinite(result["fid"]) and result["fid_features"]["kind"] == "classifier"
    assert len(result["fid_features"]["test_accuracy"]) == 17
    for name in (ModelDir.ROBUSTNESS, ModelDir.ROBUSTNESS_REPORT, "accuracy_vs_epsilon.png", "chain.png"):
        assert os.path.exists(os.path.join(output, name)), name
