"""Shared test fixtures: the offline MNIST directory and tiny model settings."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_TFDS = os.path.join(os.path.dirname(REPO), "shared", "tfds")


@pytest.fixture(scope="session")
def tfds_dir():
    """The prepared tensorflow-datasets directory with real MNIST digits."""
    if not os.path.isdir(os.path.join(SHARED_TFDS, "mnist")):
        pytest.fail(f"real MNIST is expected at {SHARED_TFDS} (shared/tfds beside the repository)")
    return SHARED_TFDS


@pytest.fixture(autouse=True)
def _seeded_weights():
    """Each test draws its weights from the same seed, whatever the tests before it drew."""
    keras.utils.set_random_seed(0)
