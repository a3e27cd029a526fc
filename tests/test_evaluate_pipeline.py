"""evaluate: the whole protocol on a tiny real-data model through `evaluate.run`, bad input, one real CLI run,
and the project's PGD checked against foolbox's and ART's."""

import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import evaluate
import zoo
from evaluate import interface, probes, stages, worst_case
from evaluate.stage_base import Common, Context, EvaluationError, load_arrays
from tests.conftest import tiny_stages as _tiny_stages
from zoo import data
from zoo.model_dir import ModelDir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _train_tiny(model_name, model_dir, tfds_dir, steps=150, **kwargs):
    """A latent-8 MLP model trained briefly on real ColorMNIST, saved where `zoo.load` finds it."""
    keras.utils.set_random_seed(0)
    config = dict(image_shape=(28, 28, 3), arch="mlp", latent_dim=8, seed=0, **kwargs)
    model = zoo.get_model_class(model_name)(**config)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    dataset = data.load("color_mnist", "train", 64, data_dir=tfds_dir, take=2000, shuffle=True, repeat=True)
    model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0)
    directory = ModelDir(model_dir)
    os.makedirs(model_dir, exist_ok=True)
    model.save(directory.model_file)
    directory.write_json(
        directory.config_file, {"model": model_name, "dataset": "color_mnist", **config, "image_shape": [28, 28, 3]}
    )
    return model_dir


@pytest.fixture(scope="module")
def vae_dir(tfds_dir, tmp_path_factory):
    return _train_tiny("vae", str(tmp_path_factory.mktemp("tiny_vae")), tfds_dir)


TINY_COMMON = Common(num_examples=64, batch_size=32, pgd_steps=3, restarts=1)


def test_protocol_writes_json_table_and_plots(vae_dir, tfds_dir, tmp_path):
    output = str(tmp_path / "out")
    logs = []
    (result,) = evaluate.run(
        [vae_dir],
        output,
        data_dir=tfds_dir,
        stages=_tiny_stages(str(tmp_path / "cache")),
        common=TINY_COMMON,
        log=logs.append,
    )
    saved = ModelDir(output).read_robustness()
    for key in (
        "model",
        "dataset",
        "adversarial_accuracy",
        "adversarial_accuracy_per_attack",
        "robustness_radius",
        "gradient_masking",
        "attack_budgets",
        "mse",
        "fid",
        "fid_features",
        "latent_attack",
        "max_damage_attack",
        "margin",
        "chain_drift",
        "settings",
    ):
        assert key in saved, key
    assert saved["model"] == "vae" and saved["dataset"] == "color_mnist"  # dataset from config.json
    accuracy, per_attack = saved["adversarial_accuracy"], saved["adversarial_accuracy_per_attack"]
    assert set(accuracy) == {"digit", "color"} and all(set(v) == {"0", "0.05", "0.1"} for v in accuracy.values())
    for task, per_epsilon in accuracy.items():
        assert list(per_attack[task]) == list(worst_case.ATTACKS)
        for key, worst in per_epsilon.items():
            # The headline is the worst case per example: at most every attack's accuracy, exactly clean at 0.
            attack_values = [per_attack[task][a][key] for a in worst_case.ATTACKS]
            assert worst <= min(attack_values)
            assert key != "0" or attack_values == [worst] * 4
        assert per_epsilon["0.1"] <= per_epsilon["0"]
        radius = saved["robustness_radius"][task]
        assert radius["examples"] == 6 and len(radius["per_example"]) == 6 and radius["resolution"] == 0.5 / 4
        assert set(saved["gradient_masking"]["by_task"][task]["gradient_free_only"]) == {"0.05", "0.1"}
    assert saved["attack_budgets"]["apgd-dlr"]["target_classes"] == 2 and saved["attack_budgets"]["pgd"]["steps"] == 3
    assert saved["probes"]["color"]["train_accuracy"] > 0.3  # well above chance (1/7) even from this weak VAE
    assert saved["mse"]["per_pixel"] > 0 and saved["fid"] > 0 and saved["fid_reconstructions"] > 0
    assert saved["fid_features"]["kind"] == "classifier" and os.path.exists(saved["fid_features"]["path"])
    for key, reference in (("latent_attack", "target"), ("max_damage_attack", "input")):
        attack = saved[key]
        assert attack["reference"] == reference and list(attack["by_lambda"]) == ["0.5", "2"]
        for stats in attack["by_lambda"].values():
            assert stats["perturbation_l2"]["mean"] <= float(max(attack["by_lambda"], key=float)) + 1e-4
    # Table 3 of the robust GMM-DAE paper: the target task's probe, clean and on the latent-attacked codes.
    downstream = saved["latent_attack"]["downstream_accuracy"]
    assert downstream["task"] == "digit" and set(downstream["by_lambda"]) == {"0.5", "2"}
    assert "downstream_accuracy" not in saved["max_damage_attack"]
    # A larger L2 budget moves the input further from itself.
    max_damage = saved["max_damage_attack"]["by_lambda"]
    similarity = {lam: stats["ms_ssim_input_vs_adv_input"]["mean"] for lam, stats in max_damage.items()}
    assert similarity["2"] < similarity["0.5"]
    margin = saved["margin"]
    assert margin["bound"]["applicable"] and margin["r"] == pytest.approx(0.1 * np.sqrt(28 * 28 * 3))
    assert "through the posterior noise" in margin["empirical"]["attack"] and len(margin["per_example"]["p_clean"]) == 8
    assert len(saved["chain_drift"]["per_step"]) == 4 and saved["chain_drift"]["per_step"][0] == 0.0
    settings = saved["settings"]
    assert settings["ms_ssim"]["scales"] == 3 and settings["stochastic_encoder"] and settings["square_queries"] == 50
    assert settings["stages"] == list(stages.STAGES) and settings["pgd_steps"] == 3
    assert saved["timing"]["adversarial_accuracy"]["examples_per_second"] > 0
    for name in (ModelDir.ROBUSTNESS_REPORT, "accuracy_vs_epsilon.png", "ae_attacks.png", "chain.png", "radius.png"):
        assert os.path.getsize(os.path.join(output, name)) > 0, name
    table = open(ModelDir(output).robustness_report).read()
    assert "| digit |" in table and "eps=0.05" in table and "| digit | **worst case** |" in table
    assert "Gradient-masking check" in table and "through the posterior noise" in table
    assert any("examples/s" in line for line in logs)  # progress while attacks run
    assert result["adversarial_accuracy"] == accuracy


def test_deterministic_model_skips_the_margin_bound(vae_dir, tfds_dir, tmp_path):
    view = interface.from_model(zoo.load(vae_dir))
    # The VAE's mean path with a point-mass posterior: what a deterministic autoencoder looks like.
    deterministic = interface.Autoencoder(
        encode_mean=view.encode_mean,
        stddev=lambda x: tf.zeros_like(view.encode_mean(x)),
        decode=view.decode,
        sample_prior=view.sample_prior,
        image_shape=view.image_shape,
        name="deterministic",
    )
    images, labels = load_arrays("color_mnist", "test", 8, tfds_dir, True)
    context = Context(
        model=deterministic,
        dataset="color_mnist",
        images=images,
        labels=labels,
        tasks={"digit": 10},
        common=TINY_COMMON,
        output_dir=str(tmp_path),
        log=lambda _: None,
    )
    (margin_stage,) = _tiny_stages(str(tmp_path), names=["margin"])
    result = margin_stage.run(context)["margin"]
    assert result["bound"] == {"applicable": False, "reason": result["bound"]["reason"]}
    assert "deterministic" in result["bound"]["reason"] and result["bound_holds_fraction"] is None
    assert result["samples"] == 1 and result["clean_robust_fraction"] == 1.0
    assert "no posterior noise" in result["empirical"]["attack"] and result["empirical"]["attack_samples"] == 0
    assert all(lo >= 0 for lo in result["per_example"]["empirical_lo"])


@pytest.mark.parametrize(
    "kwargs,common,message",
    [
        ({}, {"tasks": ("smile",)}, "dataset 'color_mnist' has no task 'smile'; its tasks: digit, color"),
        ({"dataset": "no_such_set"}, {}, "unknown dataset 'no_such_set'"),
        ({"dataset": "celeb_a"}, {}, "the model takes (28, 28, 3) images but dataset 'celeb_a' has (64, 64, 3) images"),
        ({"labels": ["a", "b"]}, {}, "2 labels for 1 models"),
        ({}, {"split": "validation"}, "dataset 'color_mnist' has no validation split (its splits: train, test)"),
    ],
)
def test_bad_dataset_task_or_labels_is_one_clear_error(kwargs, common, message, vae_dir, tmp_path):
    with pytest.raises(EvaluationError) as error:
        evaluate.run([vae_dir], str(tmp_path), common=Common(**common), **kwargs)
    assert message in str(error.value) and "\n" not in str(error.value) and "--" not in str(error.value)


def test_every_model_directory_is_checked_before_the_first_evaluation(vae_dir, tmp_path):
    empty = str(tmp_path / "empty")
    os.makedirs(empty)
    with pytest.raises(EvaluationError, match="no trained model in '.*empty'"):
        evaluate.run([vae_dir, empty], str(tmp_path / "out"), log=lambda _: pytest.fail("evaluation started"))
    with pytest.raises(EvaluationError, match="either models to evaluate or results to compare"):
        evaluate.run([vae_dir], str(tmp_path), compare_paths=[str(tmp_path)])


def test_an_exported_encoder_is_evaluated_through_its_signatures_as_its_model_directory_is(vae_dir, tfds_dir, tmp_path):
    from export import encoder

    version = encoder.export(zoo.load(vae_dir), str(tmp_path / "export"), "tiny", model_dir=vae_dir)
    accuracy = dict(attacks=("pgd",), epsilons=(0.0, 0.1), radius_examples=4)
    run = dict(data_dir=tfds_dir, common=TINY_COMMON, log=lambda _: None)
    logs = []
    (from_directory,) = evaluate.run(
        [vae_dir],
        str(tmp_path / "directory"),
        **run,
        stages=_tiny_stages(str(tmp_path / "cache"), ["accuracy"], **accuracy),
    )
    exported = evaluate.run(
        [version, vae_dir],
        str(tmp_path / "both"),
        **dict(run, log=logs.append),
        stages=_tiny_stages(str(tmp_path / "cache"), ["accuracy", "decoder"], **accuracy),
    )[0]
    # Dataset and type from the model card; the same probe, attack and numbers as the Keras model's.
    assert exported["model"] == "vae" and exported["dataset"] == "color_mnist"
    assert exported["model_dir"] == os.path.abspath(version)
    assert exported["probes"] == from_directory["probes"]
    assert exported["adversarial_accuracy"] == from_directory["adversarial_accuracy"]
    assert exported["robustness_radius"] == from_directory["robustness_radius"]
    assert exported["adversarial_accuracy"]["digit"]["0.1"] < exported["adversarial_accuracy"]["digit"]["0"]
    # The prior is not exported: no FID of its samples, said in the log; reconstructions are measured.
    assert exported["fid"] is None and exported["fid_reconstructions"] > 0 and exported["mse"]["per_pixel"] > 0
    assert any("does not carry its prior" in line for line in logs)
    assert os.path.isdir(tmp_path / "both" / "tiny_v1")  # named by model and version, not "1"

    base_path = os.path.dirname(version)  # TF Serving's model base path: one line naming the version to give
    with pytest.raises(EvaluationError, match=r"exported versions \[1\]: give one version's directory, e.g. .*/1'"):
        evaluate.run([base_path], str(tmp_path / "base"), **run)
    os.remove(os.path.join(version, "assets", "model_card.json"))
    with pytest.raises(EvaluationError, match="without the model card"):
        evaluate.run([version], str(tmp_path / "no_card"), **run, stages=_tiny_stages(str(tmp_path), ["accuracy"]))


def test_command_line_compares_two_models_side_by_side(vae_dir, tfds_dir, tmp_path):
    # The one real process: flags generated from the stages' settings reach evaluate.run.
    other = str(tmp_path / "vae_copy")
    os.makedirs(other)
    for name in (ModelDir.MODEL, ModelDir.CONFIG):
        shutil.copy(os.path.join(vae_dir, name), os.path.join(other, name))
    output = str(tmp_path / "compare")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "evaluate.robustness",
            f"--model_dir={vae_dir}",
            f"--model_dir={other}",
            f"--data_dir={tfds_dir}",
            f"--output_dir={output}",
            "--epsilons=0,0.1",
            "--quick",
            "--pgd_steps=3",
            "--restarts=1",
            "--num_examples=32",
            "--radius_examples=4",
            "--radius_search_steps=1",
            "--probe_train_examples=300",
            "--probe_epochs=3",
            "--stages=accuracy,chains",
            "--tasks=color",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "examples/s" in done.stdout
    labels = [os.path.basename(vae_dir), "vae_copy"]
    first, second = (ModelDir(os.path.join(output, label)).read_robustness() for label in labels)
    assert list(first["adversarial_accuracy"]) == ["color"] and first["margin"] is None
    assert list(first["attack_budgets"]) == ["pgd"] and first["settings"]["quick"]
    for name in ("comparison.md", "comparison_accuracy.png", "comparison_radius.png"):
        assert os.path.getsize(os.path.join(output, name)) > 0
    table = open(os.path.join(output, "comparison.md")).read()
    assert all(f"| {label} |" in table for label in labels)
    # The same model, seeds and examples: identical numbers, whichever directory it is read from.
    assert first["adversarial_accuracy"] == second["adversarial_accuracy"]
    assert first["robustness_radius"] == second["robustness_radius"]

    # Comparing existing results needs no model.
    again = str(tmp_path / "again")
    results = evaluate.run(
        compare_paths=[f"{output}/{labels[0]}/robustness.json", f"{output}/{labels[1]}"],
        output_dir=again,
        log=lambda _: None,
    )
    assert [r["model_dir"] for r in results] == [first["model_dir"], second["model_dir"]]
    assert os.path.exists(os.path.join(again, "comparison_accuracy.png"))


def test_flags_come_from_the_settings_and_bad_values_give_one_clear_line():
    from absl import flags

    from evaluate import robustness

    values = flags.FlagValues()
    robustness.define_flags(values, "test")
    assert values["square_queries"].default == 5000 and "[accuracy stage]" in values["square_queries"].help
    assert values["pgd_steps"].default == 40 and values["epsilons"].default == ["0", "0.1", "0.2"]
    assert values["fid_features"].parser.enum_values == ["auto", "inception", "classifier"]
    assert values["quick"].default is False and values["attacks"].default is None
    values(["evaluate.robustness", "--epsilons=0,zero.1", "--output_dir=/tmp/unused", "--model_dir=/tmp/unused"])
    with pytest.raises(SystemExit) as exit_:
        robustness.run_from_flags(values)
    assert str(exit_.value.code) == "error: --epsilons must be comma-separated numbers, got 'zero.1' in '0,zero.1'"
    values.unparse_flags()
    values(["evaluate.robustness", "--quick", "--attacks=square", "--output_dir=/tmp/unused", "--model_dir=/tmp/x"])
    with pytest.raises(SystemExit) as exit_:
        robustness.run_from_flags(values)
    assert str(exit_.value.code) == "error: quick runs the project's PGD only; give either quick or a list of attacks"


def _probe(vae_dir, tfds_dir):
    view = interface.from_model(zoo.load(vae_dir))
    train_x, train_y = load_arrays("color_mnist", "train", 1000, tfds_dir, True)
    features = probes.encode_in_batches(view.encode_mean, train_x, 250)
    x, labels = load_arrays("color_mnist", "test", 100, tfds_dir, True)
    return view, features, train_y, x, labels


def test_project_pgd_and_art_apgd_agree_on_a_small_model(vae_dir, tfds_dir):
    # Each checks the other: the same threat model and a comparable budget, two implementations.
    view, features, train_y, x, labels = _probe(vae_dir, tfds_dir)
    budgets = worst_case.Budgets(pgd_steps=40, pgd_restarts=1, apgd_steps=40, apgd_restarts=1)
    informative = 0
    for task, classes in (("digit", 10), ("color", 7)):
        w, b = probes.train_linear_probe(features, train_y[task], classes, epochs=10)
        suite = worst_case.AttackSuite(
            probes.probe_logits(view.encode_mean, tf.constant(w), tf.constant(b)),
            classes,
            view.image_shape,
            ("pgd", "apgd-ce"),
            budgets,
            batch_size=100,
        )
        clean = float(np.mean(suite.clean_correct(x, labels[task])))
        for epsilon in (0.01, 0.03):
            accuracy = {a: float(np.mean(ok)) for a, ok in suite.correct(x, labels[task], epsilon).items()}
            print(f"{task} eps={epsilon}: clean {clean:.2f}, {accuracy}")
            assert abs(accuracy["pgd"] - accuracy["apgd-ce"]) <= 0.05, (task, epsilon, accuracy)
            informative += 0.1 < accuracy["apgd-ce"] < clean
    assert informative, "pick radii where the attacks neither fail nor win everywhere"


def test_project_pgd_is_at_least_as_strong_as_foolbox_linf_pgd(vae_dir, tfds_dir):
    foolbox = pytest.importorskip("foolbox")
    view, features, train_y, x, labels = _probe(vae_dir, tfds_dir)
    x = tf.constant(x)
    linf_pgd = foolbox.attacks.LinfPGD()  # foolbox defaults: 40 steps, step 0.01/0.3 * eps, random start
    informative = 0
    for task, classes in (("digit", 10), ("color", 7)):
        w, b = probes.train_linear_probe(features, train_y[task], classes, epochs=10)
        w, b = tf.constant(w), tf.constant(b)
        logits = probes.probe_logits(view.encode_mean, w, b)
        # The project's attack with the same budget: 40 steps, one start.
        ours = worst_case.make_pgd_correct(logits, steps=40, restarts=1)
        # int64 labels: eagerpy 0.30 promotes mixed dtypes with np.find_common_type, gone in NumPy 2.
        y = tf.constant(labels[task].astype(np.int64))
        clean = float(np.mean(np.argmax(logits(x).numpy(), axis=1) == labels[task]))
        fmodel = foolbox.TensorFlowModel(logits, bounds=(0.0, 1.0))
        for epsilon in (0.01, 0.03):
            _, _, success = linf_pgd(fmodel, x, y, epsilons=epsilon)
            # Counts of robust examples, not fractions: 1 - 0.91 and 9 / 100 differ in the last float bit.
            foolbox_robust = int(np.sum(~success.numpy()))
            our_robust = int(np.sum(ours(x, y, tf.constant(epsilon), tf.constant([0, 1])).numpy()))
            foolbox_accuracy = foolbox_robust / len(labels[task])
            print(
                f"{task} eps={epsilon}: clean {clean:.2f}, foolbox LinfPGD {foolbox_accuracy:.2f}, "
                f"zoo.attacks.pgd {our_robust / len(labels[task]):.2f}"
            )
            assert our_robust <= foolbox_robust, (task, epsilon, our_robust, foolbox_robust)
            informative += 0.1 < foolbox_accuracy < clean
    assert informative, "pick radii where foolbox neither fails nor wins everywhere"
