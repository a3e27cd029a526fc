"""The MNIST attack reproduction (robust GMM-DAE paper, Tables 1-3): the report on top of the study runner (its study,
which makes the committed results, the checks of a study, a tiny reproduction end to end)."""

import json
import os

import pytest

from benchmarks import reproduce_attacks, runs
from tests.conftest import REPO, run_module
from tests.test_reproduce_colormnist import tiny_study
from train import study as studies

STUDY = os.path.join(REPO, "configs", "gmm_dae_attacks")


def test_the_study_trains_and_evaluates_what_made_the_committed_tables():
    study = studies.read_study(STUDY)
    reproduce_attacks.check(study)
    with open(os.path.join(REPO, "results", "attacks.json")) as f:
        committed = json.load(f)
    assert committed["paper"] == reproduce_attacks.PAPER
    ordered = reproduce_attacks._in_paper_order(study.runs)
    # One run per model, named by it, each under the paper's name of the committed row, in the paper's order.
    assert [run.name for run in ordered] == [run.model for run in ordered] == list(reproduce_attacks.LABELS)
    assert (
        [reproduce_attacks.label(run) for run in ordered] == list(committed["models"]) == list(reproduce_attacks.PAPER)
    )
    settings = committed["settings"]
    for run in ordered:
        assert runs.hyperparameters(run) == committed["models"][reproduce_attacks.label(run)]["model_flags"]
        common = {key: value for key, value in run.options.items() if key not in runs.hyperparameters(run)}
        assert common == {
            **{key: settings[key] for key in ("dataset", "arch", "latent_dim", "batch_size", "learning_rate")},
            **{key: settings[key] for key in ("train_steps", "seed")},
            "data_dir": "../shared/tfds",
            "checkpoint_every": 1000,
            "eval_examples": 0,
        }
    # Exactly what the subprocess evaluation passed to `python -m evaluate.robustness` (dataset and data_dir: the
    # model's own), by setting name.
    assert study.evaluate == {
        "stages": ["accuracy", "decoder", "ae_attacks"],
        "epsilons": [0.0],
        "radius_examples": 0,
        "probe_train_examples": 7000,
        **{key: settings[key] for key in ("num_examples", "pgd_steps", "restarts", "seed", "lambdas")},
        **{key: settings[key] for key in ("ae_attack_examples", "ae_attack_trials")},
    }


def _tiny(folder, runs_=None, **evaluate):
    """A tiny study of the report's shape: mlp runs on the real digits, the attacks on a few of them."""
    runs_ = runs_ or {"vae": ("vae", {})}
    quick = {"stages": ["accuracy", "decoder", "ae_attacks"], "epsilons": [0.0], "lambdas": [1.0, 3.0, 5.0]}
    return tiny_study(folder, runs_, {**quick, **evaluate})


@pytest.mark.parametrize(
    "runs_,evaluate,message",
    [
        (None, {"stages": ["accuracy", "ae_attacks"]}, "study tiny does not evaluate decoder, which the report quotes"),
        (None, {"lambdas": [1.0, 3.0]}, "study tiny evaluates at lambda 1, 3; the table needs 1, 3, 5"),
        (
            {"vae": ("vae", {}), "se": ("se", {"learning_rate": 1e-3})},
            {},
            "the runs of study tiny differ in learning_rate: the tables compare models trained alike",
        ),
    ],
)
def test_a_study_that_cannot_make_the_tables_is_refused_in_one_sentence(tmp_path, runs_, evaluate, message):
    study = _tiny(tmp_path / "tiny", runs_, **evaluate)
    with pytest.raises(studies.StudyError, match=message) as error:
        reproduce_attacks.check(study)
    assert "\n" not in str(error.value)


def test_a_tiny_reproduction_runs_its_study_and_reports_what_it_wrote(tmp_path, tfds_dir):
    data = {"dataset": "mnist", "data_dir": tfds_dir, "learning_rate": 1e-3}
    fid = {"fid_features": "classifier", "fid_classifier_train_examples": 50, "fid_classifier_epochs": 1}
    study = _tiny(
        tmp_path / "tiny",
        {"vae": ("vae", data), "se": ("se", data), "robust_gmm_dae": ("robust_gmm_dae", {**data, "alpha": 0.9})},
        num_examples=20,
        ae_attack_examples=4,
        ae_attack_trials=2,
        fid_cache_dir=str(tmp_path / "fid"),  # a tiny FID classifier, never a cached Inception
        **fid,
    )
    runs_dir, evaluations, output = (str(tmp_path / name) for name in ("runs", "evaluations", "results"))
    command = "python -m benchmarks.reproduce_attacks --models=vae,robust_gmm_dae"
    where = dict(runs_dir=runs_dir, output_dir=output, evaluations_dir=evaluations, log=lambda line: None)
    report = reproduce_attacks.reproduce(study, ["vae", "robust_gmm_dae"], command=command, **where)
    # Only the chosen runs were trained, each into the runner's directory, and evaluated where the study reports.
    assert sorted(os.listdir(os.path.join(runs_dir, "tiny"))) == ["robust_gmm_dae", "vae"]
    assert command in open(os.path.join(evaluations, "tiny", "comparison.md")).read()
    # The report reads them back, under the paper's names in the paper's order (the study's is by file name).
    assert list(report["models"]) == ["VAE", "Robust GMM-DAE"]
    for run, name in (("vae", "VAE"), ("robust_gmm_dae", "Robust GMM-DAE")):
        evaluated = json.load(open(os.path.join(evaluations, "tiny", run, "robustness.json")))
        entry, latent, damage = report["models"][name], evaluated["latent_attack"], evaluated["max_damage_attack"]
        assert entry["latent_attack"]["ms_ssim_ref_vs_adv_recon"] == [
            latent["by_lambda"][lam]["ms_ssim_ref_vs_adv_recon"]["mean"] for lam in ("1", "3", "5")
        ]
        assert entry["max_damage_attack"]["ms_ssim_ref_recon_vs_adv_recon"] == [
            damage["by_lambda"][lam]["ms_ssim_ref_recon_vs_adv_recon"]["mean"] for lam in ("1", "3", "5")
        ]
        assert entry["clean_accuracy"] == latent["downstream_accuracy"]["clean"] is not None
        assert entry["latent_attack_accuracy"] == latent["downstream_accuracy"]["by_lambda"]
        assert (entry["fid"], entry["mse"]) == (evaluated["fid"], evaluated["mse"]["per_pixel"])
        assert entry["step_seconds"] == runs.step_seconds(os.path.join(runs_dir, "tiny", run))
    assert report["models"]["Robust GMM-DAE"]["model_flags"] == {"alpha": 0.9}
    assert report["models"]["VAE"]["model_flags"] == {}
    settings = report["settings"]
    trained = {key: settings[key] for key in ("dataset", "arch", "latent_dim", "batch_size", "learning_rate")}
    assert trained == {"dataset": "mnist", "arch": "mlp", "latent_dim": 8, "batch_size": 16, "learning_rate": 1e-3}
    assert [settings[key] for key in ("train_steps", "num_examples", "ae_attack_examples", "ae_attack_trials")] == [
        3,
        20,
        4,
        2,
    ]
    assert settings["lambdas"] == [1.0, 3.0, 5.0] and report["command"] == command
    assert json.load(open(os.path.join(output, "attacks.json"))) == report
    markdown = open(os.path.join(output, "attacks.md")).read()
    vae = report["models"]["VAE"]
    triple = " / ".join(f"{v:.2f}" for v in vae["latent_attack"]["ms_ssim_ref_vs_adv_recon"])
    assert f"| VAE | {triple} | 0.55 / 0.78 / 0.89 | " in markdown  # ours beside the paper's
    assert f"| VAE | {100 * vae['clean_accuracy']:.1f} (92.16) | " in markdown
    assert "Not trained in this run (`--models`): SE." in markdown
    assert "Budget: 3 steps of batch 16 per model, fully connected networks (4 x 200), latent 8, Adam 0.001" in markdown
    assert markdown.rstrip().endswith(f"{command}\n```")
    assert os.path.exists(os.path.join(output, "attacks_ms_ssim.png"))


def test_the_command_line_refuses_a_run_the_study_does_not_have_in_one_line(tmp_path):
    folder = tmp_path / "tiny"
    _tiny(folder)
    run = run_module(
        "benchmarks.reproduce_attacks",
        f"--study={folder}",
        "--models=vae,nope",
        f"--runs_dir={tmp_path / 'runs'}",
        timeout=300,
    )
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr[-2000:]
    assert run.stderr.strip().splitlines()[-1] == "error: study tiny has no run nope; its runs: vae"
    assert not os.path.exists(tmp_path / "runs")
