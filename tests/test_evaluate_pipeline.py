"""evaluate: the whole protocol on a tiny real-data model, the CLI, bad input, and the foolbox cross-check."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from evaluate import interface, pipeline, probes, report
from zoo import data, training

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _train_tiny(model_name, model_dir, tfds_dir, steps=150, **kwargs):
    """A latent-8 MLP model trained briefly on real ColorMNIST, saved like `train/` saves one."""
    keras.utils.set_random_seed(0)
    config = dict(image_shape=(28, 28, 3), arch="mlp", latent_dim=8, seed=0, **kwargs)
    model = training.build_model(model_name, tf.distribute.get_strategy(), learning_rate=1e-3, **config)
    dataset = data.load("color_mnist", "train", 64, data_dir=tfds_dir, take=2000, shuffle=True, repeat=True)
    model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0)
    os.makedirs(model_dir, exist_ok=True)
    model.save(os.path.join(model_dir, training.MODEL_FILE))
    with open(os.path.join(model_dir, training.CONFIG_FILE), "w") as f:
        json.dump({"model": model_name, "dataset": "color_mnist", **config, "image_shape": [28, 28, 3]}, f)
    return model_dir


@pytest.fixture(scope="module")
def vae_dir(tfds_dir, tmp_path_factory):
    return _train_tiny("vae", str(tmp_path_factory.mktemp("tiny_vae")), tfds_dir)


def _tiny_settings(cache_dir, **overrides):
    settings = dict(
        epsilons=(0.0, 0.05, 0.1), pgd_steps=3, restarts=1, num_examples=64, batch_size=32,
        probe_train_examples=600, probe_epochs=5, lambdas=(0.5, 2.0), ae_attack_examples=8, ae_attack_trials=2,
        margin_examples=8, margin_samples=16, margin_search_steps=3, chain_steps=3, chain_examples=3,
        fid_features="classifier", fid_cache_dir=cache_dir, fid_classifier_train_examples=256, fid_classifier_epochs=1,
    )  # fmt: skip
    settings.update(overrides)
    return pipeline.Settings(**settings)


def test_protocol_writes_json_table_and_plots(vae_dir, tfds_dir, tmp_path):
    output = str(tmp_path / "out")
    logs = []
    result = pipeline.evaluate_model(
        vae_dir, output, _tiny_settings(str(tmp_path / "cache")), data_dir=tfds_dir, log=logs.append
    )
    with open(os.path.join(output, "robustness.json")) as f:
        saved = json.load(f)
    for key in ("model", "dataset", "adversarial_accuracy", "mse", "fid", "fid_features", "latent_attack",
                "max_damage_attack", "margin", "chain_drift", "settings"):  # fmt: skip
        assert key in saved, key
    assert saved["model"] == "vae" and saved["dataset"] == "color_mnist"  # dataset from config.json
    accuracy = saved["adversarial_accuracy"]
    assert set(accuracy) == {"digit", "color"} and all(set(v) == {"0", "0.05", "0.1"} for v in accuracy.values())
    for per_epsilon in accuracy.values():
        assert all(0.0 <= a <= 1.0 for a in per_epsilon.values())
        assert per_epsilon["0.1"] <= per_epsilon["0"]
    assert saved["probes"]["color"]["train_accuracy"] > 0.5  # colour is linearly decodable even from a weak VAE
    assert saved["mse"]["per_pixel"] > 0 and saved["fid"] > 0 and saved["fid_reconstructions"] > 0
    assert saved["fid_features"]["kind"] == "classifier" and os.path.exists(saved["fid_features"]["path"])
    for key, reference in (("latent_attack", "target"), ("max_damage_attack", "input")):
        attack = saved[key]
        assert attack["reference"] == reference and list(attack["by_lambda"]) == ["0.5", "2"]
        for stats in attack["by_lambda"].values():
            for metric in ("ms_ssim_ref_vs_adv_recon", "ms_ssim_input_vs_adv_input", "ms_ssim_ref_recon_vs_adv_recon"):
                assert 0.0 <= stats[metric]["mean"] <= 1.0
            assert stats["perturbation_l2"]["mean"] <= float(max(attack["by_lambda"], key=float)) + 1e-4
    # Table 3 of the robust GMM-DAE paper: the target task's probe, clean and on the latent-attacked codes.
    downstream = saved["latent_attack"]["downstream_accuracy"]
    assert downstream["task"] == "digit" and set(downstream["by_lambda"]) == {"0.5", "2"}
    assert all(0.0 <= a <= 1.0 for a in [downstream["clean"], *downstream["by_lambda"].values()])
    assert "downstream_accuracy" not in saved["max_damage_attack"]
    # A larger L2 budget moves the input further from itself.
    max_damage = saved["max_damage_attack"]["by_lambda"]
    similarity = {lam: stats["ms_ssim_input_vs_adv_input"]["mean"] for lam, stats in max_damage.items()}
    assert similarity["2"] < similarity["0.5"]
    margin = saved["margin"]
    assert margin["bound"]["applicable"] and margin["r"] == pytest.approx(0.1 * np.sqrt(28 * 28 * 3))
    assert 0.0 <= margin["bound_holds_fraction"] <= 1.0 and len(margin["per_example"]["p_clean"]) == 8
    assert len(saved["chain_drift"]["per_step"]) == 4 and saved["chain_drift"]["per_step"][0] == 0.0
    assert saved["settings"]["ms_ssim"]["scales"] == 3 and saved["settings"]["stochastic_encoder"]
    assert saved["timing"]["adversarial_accuracy"]["examples_per_second"] > 0
    for name in ("robustness.md", "accuracy_vs_epsilon.png", "ae_attacks.png", "chain.png"):
        assert os.path.getsize(os.path.join(output, name)) > 0, name
    table = open(os.path.join(output, "robustness.md")).read()
    assert "| digit |" in table and "eps=0.05" in table
    assert any("examples/s" in line for line in logs)  # progress while attacks run
    assert result["adversarial_accuracy"] == accuracy


def test_deterministic_model_skips_the_margin_bound(vae_dir, tfds_dir, tmp_path):
    class Deterministic:
        """The VAE's mean path without its posterior: call = code, decode, no stddev."""

        def __init__(self, model):
            self.model, self.name, self.image_shape = model, "deterministic", model.image_shape

        def __call__(self, x, training=False):
            return self.model(x, training=training)

        def decode(self, z, training=False):
            return self.model.decode(z, training=training)

    model = Deterministic(training.load_model(vae_dir))
    view = interface.from_model(model, name="deterministic")
    images, _ = pipeline.load_arrays("color_mnist", "test", 8, tfds_dir, True)
    timing = {}
    settings = _tiny_settings(str(tmp_path), margin_examples=8)
    result = pipeline.robustness_margin(view, images, settings, lambda _: None, timing, str(tmp_path))
    assert result["bound"] == {"applicable": False, "reason": result["bound"]["reason"]}
    assert "deterministic" in result["bound"]["reason"] and result["bound_holds_fraction"] is None
    assert result["samples"] == 1 and result["clean_robust_fraction"] == 1.0
    assert all(lo >= 0 for lo in result["per_example"]["empirical_lo"])


def test_gmm_dae_point_mass_posterior_is_treated_as_deterministic(tmp_path):
    import zoo

    if "gmm_dae" not in zoo.MODELS:
        pytest.skip("no gmm_dae model in this tree")
    model = zoo.get_model_class("gmm_dae")(image_shape=(28, 28, 3), arch="mlp", latent_dim=8, num_modes=4)
    view = interface.from_model(model)
    images = np.random.default_rng(0).uniform(size=(4, 28, 28, 3)).astype(np.float32)
    result = pipeline.robustness_margin(view, images, _tiny_settings(str(tmp_path), margin_examples=4),
                                        lambda _: None, {}, str(tmp_path))  # fmt: skip
    assert not result["bound"]["applicable"] and "zero" in result["bound"]["reason"]
    assert view.sample_prior is not None  # its GMM prior gives samples for the FID


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "evaluate.robustness", *args], cwd=REPO, capture_output=True, text=True, timeout=600
    )


def test_cli_compares_two_models_side_by_side(vae_dir, tfds_dir, tmp_path):
    other = str(tmp_path / "vae_copy")
    os.makedirs(other)
    for name in (training.MODEL_FILE, training.CONFIG_FILE):
        with open(os.path.join(vae_dir, name), "rb") as src, open(os.path.join(other, name), "wb") as dst:
            dst.write(src.read())
    output = str(tmp_path / "compare")
    done = _cli(
        f"--model_dir={vae_dir}", f"--model_dir={other}", f"--data_dir={tfds_dir}", f"--output_dir={output}",
        "--epsilons=0,0.1", "--pgd_steps=3", "--restarts=1", "--num_examples=32", "--probe_train_examples=300",
        "--probe_epochs=3", "--stages=accuracy,chains", "--tasks=color",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "examples/s" in done.stdout
    labels = [os.path.basename(vae_dir), "vae_copy"]
    for label in labels:
        saved = json.load(open(os.path.join(output, label, "robustness.json")))
        assert list(saved["adversarial_accuracy"]) == ["color"] and saved["margin"] is None
    for name in ("comparison.md", "comparison_accuracy.png"):
        assert os.path.getsize(os.path.join(output, name)) > 0
    table = open(os.path.join(output, "comparison.md")).read()
    assert all(f"| {label} |" in table for label in labels)
    # The same model, seeds and examples: identical numbers, whichever directory it is read from.
    first, second = (json.load(open(os.path.join(output, label, "robustness.json"))) for label in labels)
    assert first["adversarial_accuracy"] == second["adversarial_accuracy"]

    # --compare re-plots existing results without a model.
    again = str(tmp_path / "again")
    done = _cli(f"--compare={output}/{labels[0]}/robustness.json,{output}/{labels[1]}", f"--output_dir={again}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert os.path.exists(os.path.join(again, "comparison_accuracy.png"))


@pytest.mark.parametrize(
    "args,message",
    [
        (["--epsilons=0,zero.1"], "--epsilons must be comma-separated numbers, got 'zero.1'"),
        (["--model_dir={empty}"], "no trained model in"),
    ],
)
def test_bad_flags_give_one_clear_line(args, message, tmp_path):
    empty = str(tmp_path / "empty")
    os.makedirs(empty)
    args = [a.format(empty=empty) for a in args]
    if not any(a.startswith("--model_dir") for a in args):
        args.append(f"--model_dir={empty}")
    done = _cli(*args, f"--output_dir={tmp_path / 'out'}")
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [done.stderr.strip().splitlines()[-1]]  # one line
    last = done.stderr.strip()
    assert last.startswith("error: ") and message in last, done.stderr[-2000:]


@pytest.mark.parametrize(
    "kwargs,settings,message",
    [
        ({}, {"tasks": ("smile",)}, "dataset 'color_mnist' has no task 'smile'; its tasks: digit, color"),
        ({"dataset": "no_such_set"}, {}, "unknown dataset 'no_such_set'"),
        ({"dataset": "celeb_a"}, {}, "the model takes (28, 28, 3) images but dataset 'celeb_a' has (64, 64, 3) images"),
        ({}, {"epsilons": (0.0, -0.1)}, "epsilons must be finite and >= 0"),
    ],
)
def test_bad_dataset_or_task_is_one_clear_error(kwargs, settings, message, vae_dir, tmp_path):
    # The CLI prints these EvaluationErrors as "error: <message>" (see the CLI tests above).
    with pytest.raises(pipeline.EvaluationError) as error:
        pipeline.evaluate_model(vae_dir, str(tmp_path), _tiny_settings(str(tmp_path), **settings), **kwargs)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_project_pgd_is_at_least_as_strong_as_foolbox_linf_pgd(vae_dir, tfds_dir):
    foolbox = pytest.importorskip("foolbox")
    view = interface.from_model(training.load_model(vae_dir))
    train_x, train_y = pipeline.load_arrays("color_mnist", "train", 1000, tfds_dir, True)
    train_features = probes.encode_in_batches(view.encode_mean, train_x, 250)
    x, labels = pipeline.load_arrays("color_mnist", "test", 100, tfds_dir, True)
    x = tf.constant(x)
    linf_pgd = foolbox.attacks.LinfPGD()  # foolbox defaults: 40 steps, step 0.01/0.3 * eps, random start
    # The project's attack with the same budget: 40 steps, one start.
    ours = probes.make_adversarial_correct(view.encode_mean, steps=40, restarts=1)
    informative = 0
    for task, classes in (("digit", 10), ("color", 7)):
        w, b = probes.train_linear_probe(train_features, train_y[task], classes, epochs=10)
        w, b = tf.constant(w), tf.constant(b)
        # int64 labels: eagerpy 0.30 promotes mixed dtypes with np.find_common_type, gone in NumPy 2.
        y = tf.constant(labels[task].astype(np.int64))
        clean = float(np.mean(probes.make_clean_correct(view.encode_mean)(x, y, w, b).numpy()))
        fmodel = foolbox.TensorFlowModel(lambda images: view.encode_mean(images) @ w + b, bounds=(0.0, 1.0))
        for epsilon in (0.01, 0.03):
            _, _, success = linf_pgd(fmodel, x, y, epsilons=epsilon)
            foolbox_accuracy = 1.0 - float(np.mean(success.numpy()))
            our_accuracy = float(np.mean(ours(x, y, w, b, tf.constant(epsilon), tf.constant([0, 1])).numpy()))
            print(f"{task} eps={epsilon}: clean {clean:.2f}, foolbox LinfPGD {foolbox_accuracy:.2f}, "
                  f"zoo.attacks.pgd {our_accuracy:.2f}")  # fmt: skip
            assert our_accuracy <= foolbox_accuracy, (task, epsilon, our_accuracy, foolbox_accuracy)
            informative += 0.1 < foolbox_accuracy < clean
    assert informative, "pick radii where foolbox neither fails nor wins everywhere"
