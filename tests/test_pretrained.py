"""zoo.pretrained: the encoders shipped inside the package, found in an editable and a wheel install."""

import os
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import tensorflow as tf

from evaluate import probes
from evaluate.stage_base import load_arrays
from export import encoder
from tests.test_export import images_batch, tiny_trained_model
from zoo import pretrained

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_names_path_card_and_load_follow_the_serving_layout(tmp_path, monkeypatch):
    monkeypatch.setattr(pretrained, "_root", lambda: str(tmp_path))
    model = tiny_trained_model()
    encoder.export(model, str(tmp_path), "avae_tiny")
    newest = encoder.export(model, str(tmp_path), "avae_tiny")
    os.makedirs(tmp_path / "half_written" / "1")  # no saved_model.pb: not an encoder
    assert pretrained.names() == ["avae_tiny"]
    assert pretrained.path("avae_tiny") == newest == str(tmp_path / "avae_tiny" / "2")
    assert pretrained.model_card("avae_tiny")["version"] == 2
    x = images_batch()
    np.testing.assert_allclose(pretrained.load("avae_tiny")(x), model(x), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="no pretrained encoder named 'half_written'; choices: avae_tiny"):
        pretrained.path("half_written")


def test_load_takes_any_float_images_and_names_what_is_wrong_with_the_others(tmp_path, monkeypatch):
    monkeypatch.setattr(pretrained, "_root", lambda: str(tmp_path))
    model = tiny_trained_model()
    encoder.export(model, str(tmp_path), "avae_tiny")
    loaded = pretrained.load("avae_tiny")
    x = images_batch()
    height, width, channels = x.shape[1:]
    # numpy's default float64, and a list, give the float32 embedding (the SavedModel alone refuses them).
    np.testing.assert_allclose(loaded(x.astype(np.float64)), model(x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(loaded(x.tolist()), model(x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(loaded.reconstruct(x), loaded.signatures["reconstruct"](images=x)["reconstruction"])
    with pytest.raises(ValueError, match=r"must be floats in \[0, 1\], got uint8 \(divide 8-bit pixels by 255\)"):
        loaded((x * 255).astype(np.uint8))
    with pytest.raises(ValueError, match="got one image .*: add a batch axis"):
        loaded(x[0])
    wrong = np.concatenate([x, x], axis=-1)
    expected = rf"shape \[N, {height}, {width}, {channels}\], got \[5, {height}, {width}, 2\]"
    with pytest.raises(ValueError, match=expected):
        loaded(wrong)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"must lie in \[0, 1\]"):
        loaded(x * 255)


def test_the_package_directory_is_where_the_wheel_puts_it():
    assert pretrained._root() == os.path.join(REPO, "zoo", pretrained.PACKAGE_DIRECTORY)


@pytest.mark.parametrize("name", pretrained.names())
def test_shipped_encoder_is_small_served_and_carries_its_worst_case_evaluation(name):
    path = pretrained.path(name)
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)
    assert size <= 15 * 2**20, f"{name} is {size / 2**20:.1f} MiB"
    card = pretrained.model_card(name)
    model_type, arch = name.rsplit("_color_mnist_", 1)  # <model>_color_mnist_<arch>; the model may hold "_"
    assert (card["model_type"], card["dataset"], card["architecture"]) == (model_type, "color_mnist", arch)
    evaluation = card["evaluation"]
    assert {"pgd", "apgd-ce", "apgd-dlr", "square"} <= set(evaluation["attack_budgets"])
    # The quoted accuracy is the worst case per example: at most each attack's own.
    for task, per_epsilon in evaluation["adversarial_accuracy"].items():
        for epsilon, accuracy in per_epsilon.items():
            per_attack = evaluation["adversarial_accuracy_per_attack"][task]
            assert accuracy <= min(by_epsilon[epsilon] for by_epsilon in per_attack.values()) + 1e-9
    embedding = pretrained.load(name)(np.zeros((2, *card["image_shape"]), np.float32))
    assert embedding.shape == (2, card["latent_dim"])


@pytest.mark.parametrize("name", pretrained.names())
def test_shipped_encoder_card_holds_against_an_independent_attack(name, tfds_dir):
    """Issue 11's audit: foolbox's L-inf PGD (40 steps of 2.5 eps / 40, the project PGD's step rule, 3 random
    starts) through the SavedModel and a linear digit probe of our own, on 100 unseen digits.

    At each radius it lands within 10 points of the card's PGD column (the same attack, implemented twice), and the
    card's worst case is at most 10 points above it: the card never claims more than an independent attack allows.
    The worst case may sit further below: APGD and Square find what PGD misses (on the SE encoder, trained against
    PGD, 23 % against foolbox's 35 % at eps 0.1)."""
    foolbox = pytest.importorskip("foolbox")
    card = pretrained.model_card(name)
    encoder = pretrained.load(name)
    train_x, train_y = load_arrays("color_mnist", "train", 2000, tfds_dir, False)
    features = probes.encode_in_batches(lambda x: encoder(x), train_x, 250)
    w, b = probes.train_linear_probe(features, train_y["digit"], 10, seed=0)
    logits = probes.probe_logits(lambda x: encoder(x), tf.constant(w), tf.constant(b))
    x, labels = load_arrays("color_mnist", "test", 100, tfds_dir, False)
    x, y = tf.constant(x), tf.constant(labels["digit"].astype(np.int64))
    fmodel = foolbox.TensorFlowModel(logits, bounds=(0.0, 1.0))
    worst_case = card["evaluation"]["adversarial_accuracy"]["digit"]
    card_pgd = card["evaluation"]["adversarial_accuracy_per_attack"]["digit"]["pgd"]
    attack = foolbox.attacks.LinfPGD(steps=40, rel_stepsize=2.5 / 40)
    tf.random.set_seed(0)  # foolbox's random starts
    for epsilon in (e for e in worst_case if float(e) > 0):
        robust = np.ones(len(labels["digit"]), bool)
        for _ in range(3):  # three random starts, the worst case per example kept, like the card's restarts
            _, _, success = attack(fmodel, x, y, epsilons=float(epsilon))
            robust &= ~success.numpy()
        measured = float(np.mean(robust))
        print(
            f"{name} eps={epsilon}: card worst case {worst_case[epsilon]:.3f}, card PGD {card_pgd[epsilon]:.3f}, "
            f"foolbox LinfPGD {measured:.3f}"
        )
        assert abs(card_pgd[epsilon] - measured) <= 0.1, (epsilon, card_pgd[epsilon], measured)
        assert worst_case[epsilon] <= measured + 0.1, (epsilon, worst_case[epsilon], measured)


def test_a_wheel_install_carries_the_shipped_encoders(tmp_path):
    # Built from a copy: building writes build/ and *.egg-info beside setup.py.
    source = tmp_path / "source"
    shutil.copytree(
        REPO, source, ignore=shutil.ignore_patterns(".git", "build", "*.egg-info", "__pycache__", "results")
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), source],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("*.whl")
    files = set(zipfile.ZipFile(wheel).namelist())
    assert "zoo/pretrained.py" in files and f"zoo/{pretrained.PACKAGE_DIRECTORY}/README.md" in files
    for name in pretrained.names():
        version = os.path.relpath(pretrained.path(name), REPO)
        shipped = {os.path.relpath(os.path.join(d, f), REPO) for d, _, fs in os.walk(pretrained.path(name)) for f in fs}
        assert shipped and shipped <= files, f"{version}: missing from the wheel: {sorted(shipped - files)}"
