"""Experiments as data: every committed config file, the recipes, and the command line's --config."""

import glob
import json
import os
import re
import subprocess
import sys

import pytest

import zoo
from train import settings
from train.settings_files import read_json_object
from train.settings import TrainSettings
from zoo.data import DATASETS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Run configs: every JSON file under configs/ but a study's study.json (what it evaluates: tests/test_studies.py).
CONFIGS = sorted(
    p
    for p in glob.glob(os.path.join(REPO, "configs", "**", "*.json"), recursive=True)
    if os.path.basename(p) != "study.json"
)


def _env():
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("TF_CONFIG", None)
    return env


def test_there_are_configs_to_check():
    assert len(CONFIGS) >= 3, CONFIGS


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.relpath(p, REPO))
def test_every_committed_config_is_a_run_the_command_line_accepts(path):
    config = read_json_object(path, "config")
    model_class = zoo.get_model_class(config["model"])
    options = {name: value for name, value in config.items() if name not in ("model", "model_dir")}
    run_settings, hyperparameters = settings.resolve(model_class, options)
    model_class.config_class(**hyperparameters)  # the model's own checks
    for name, value in options.items():  # nothing in the file is dropped or overridden by the recipe
        assert (getattr(run_settings, name) if hasattr(run_settings, name) else hyperparameters[name]) == value


def test_the_recipe_fills_what_is_not_given_and_what_is_given_wins():
    model_class = zoo.get_model_class("avae")
    recipe = settings.RECIPES["color_mnist_embedded"]
    chosen, _ = settings.resolve(model_class, {})
    assert (chosen.dataset, chosen.arch, chosen.learning_rate) == ("color_mnist_embedded", "conv", 3e-4)
    assert chosen.train_steps == recipe["train_steps"] != TrainSettings.train_steps
    given, hyperparameters = settings.resolve(model_class, {"arch": "mlp", "learning_rate": 1e-3, "rho": 0.9})
    assert (given.arch, given.learning_rate, hyperparameters) == ("mlp", 1e-3, {"rho": 0.9})
    # A dataset without a measured learning rate keeps the field's default.
    celeb_a, _ = settings.resolve(model_class, {"dataset": "celeb_a"})
    assert (celeb_a.arch, celeb_a.learning_rate) == ("conv64", TrainSettings.learning_rate)
    with pytest.raises(ValueError, match=r"unknown setting\(s\) rhoo for model 'avae'.*rho"):
        settings.resolve(model_class, {"rhoo": 0.9})
    # Every dataset has a recipe, and every recipe an architecture: the one place that says what a run trains.
    assert set(settings.RECIPES) == set(DATASETS) and all("arch" in r for r in settings.RECIPES.values())


def test_a_config_file_trains_with_the_flags_given_over_it(tmp_path):
    config = {
        "model": "vae",
        "model_dir": str(tmp_path / "from_file"),
        "arch": "mlp",
        "latent_dim": 8,
        "batch_size": 16,
        "train_steps": 50,
        "checkpoint_every": 2,
        "eval_examples": 0,
        "summary": False,
    }
    path = tmp_path / "run.json"
    path.write_text(json.dumps(config))
    result = subprocess.run(
        [sys.executable, "-m", "train", f"--config={path}", "--train_steps=4"],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "trained vae to step 4" in result.stdout
    recorded = json.loads((tmp_path / "from_file" / "flags.json").read_text())
    # Every value used is recorded: the file's, the flag's, and the recipe's where neither spoke.
    assert (recorded["train_steps"], recorded["arch"], recorded["batch_size"]) == (4, "mlp", 16)
    assert recorded["learning_rate"] == settings.RECIPES["color_mnist_embedded"]["learning_rate"]


@pytest.mark.parametrize(
    "content,command,message",
    [
        ("{", ["train"], "is not JSON"),
        ('["avae"]', ["train"], "must hold a JSON object"),
        ('{"model": "vae"}', ["train.avae"], "trains 'vae', not 'avae'"),
        ('{"arch": "mlp"}', ["train"], "--model is required"),
        ('{"model": "avae", "rhoo": 1}', ["train"], r"unknown setting\(s\) rhoo"),
    ],
)
def test_a_bad_config_file_is_one_sentence(tmp_path, content, command, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    result = subprocess.run(
        [sys.executable, "-m", *command, f"--config={path}", f"--model_dir={tmp_path / 'm'}"],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert re.search(message, result.stderr.strip().splitlines()[-1])
    assert not os.path.exists(tmp_path / "m")


def test_help_lists_what_a_user_sets():
    result = subprocess.run(
        [sys.executable, "-m", "train.avae", "--help"],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    for flag in ("--model_dir", "--config", "--dataset", "--data_dir", "--arch", "--train_steps", "--rho"):
        assert flag in result.stdout, flag
    assert "--xla_" not in result.stdout and "--tfds" not in result.stdout  # TensorFlow's and absl's own: --helpfull
