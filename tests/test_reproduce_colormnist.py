"""The ColorMNIST reproduction: the report on top of the study runner (its studies, the choice of their runs, a tiny
reproduction end to end), and its table, which quotes the worst case."""

import json
import os

import pytest

from benchmarks import reproduce_colormnist, runs
from tests.conftest import REPO
from train import study as studies

STUDY_PAIRS = [("colormnist_table1", "colormnist_rho_sweep"), ("colormnist_mlp", "colormnist_mlp_rho_sweep")]


def _accuracy(clean, at_01, at_02):
    return {"0": clean, "0.1": at_01, "0.2": at_02}


def _entry(**changes):
    """One model's row of the report."""
    entry = {
        "adversarial_accuracy": {"digit": _accuracy(0.9, 0.25, 0.0), "color": _accuracy(1.0, 0.5, 0.125)},
        "robustness_radius": None,
        "gradient_masking": {"flagged": False, "by_task": {}},
        "time_ratio": 1.0,
        "mse": 0.03,
        "fid": 12.0,
    }
    return {**entry, **changes}


def _report(models, arch="conv", **settings):
    """A report as `reproduce_colormnist.read_report` makes it, with `models` ({label: entry})."""
    return {
        "models": models,
        "rho_sweep": {"0.975": models[next(iter(models))]["adversarial_accuracy"]},
        "paper": reproduce_colormnist.PAPER if arch == "conv" else None,
        "attack_budgets": {},
        "fid_features": {"kind": "inception"},
        "studies": {
            "table": {"path": "configs/colormnist_table1", "runs": list(reproduce_colormnist.PAPER)},
            "rho_sweep": {"path": "configs/colormnist_rho_sweep", "runs": ["AVAE_rho0.975"]},
        },
        "settings": {
            "train_steps": 800,
            "batch_size": 64,
            "seed": 0,
            "num_examples": 250,
            "sweep_examples": 200,
            "radius_examples": 0,
            "probe_train_examples": 7000,
            "arch": arch,
            "learning_rate": 3e-4,
            "evaluation_settings": {},
            **settings,
        },
        "command": "python -m benchmarks.reproduce_colormnist",
    }


def test_the_table_quotes_the_worst_case_its_attacks_radius_and_masking():
    radius = {
        task: {"median_correct": value, "max_radius": 0.5} for task, value in (("digit", 0.0234), ("color", None))
    }
    masking = {
        "flagged": True,
        "by_task": {
            "digit": {"flagged": True, "reasons": ["at eps=0.1 the gradient-free attack broke 5.0% of examples"]},
            "color": {"flagged": False, "reasons": []},
        },
    }
    entry = _entry(robustness_radius=radius, gradient_masking=masking, time_ratio=1.5)
    budgets = {
        "pgd": {"implementation": "zoo.attacks.pgd", "steps": 40, "restarts": 2},
        "square": {"implementation": "art SquareAttack", "queries": 5000, "restarts": 1},
    }
    report = {
        **_report({"AVAE": entry}, radius_examples=100, evaluation_settings={"cascade": True}),
        "attack_budgets": budgets,
    }
    table = reproduce_colormnist._markdown(report)
    assert (
        "attacked end to end, worst case per example over pgd, square (L-inf, pixels in [0, 1]), run as "
        "AutoAttack's cascade (each attack only on the examples every earlier one left correct);"
    ) in table
    assert "| AVAE | 90.0 / 25.0 / 0.0 | 97.3 / 88.1 / 54.8 | 100.0 / 50.0 / 12.5 | 100 / 99.8 / 87.7 | " in table
    assert "| 0.0234 / > 0.5 | **flagged** | x1.50 |" in table
    assert "AVAE, digit: at eps=0.1 the gradient-free attack broke 5.0% of examples." in table
    assert "- `pgd`: zoo.attacks.pgd, 40 steps x 2 restarts" in table and "5000 queries x 1 restarts" in table
    assert "| radius digit / colour |" in table
    assert "Not trained in this run (`--models`): VAE, SE_0.1, SE_0.2, SE_0.1-AVAE, AVAE-SS." in table
    quick = reproduce_colormnist._markdown(
        {**report, "models": {"AVAE": {**entry, "robustness_radius": None}}, "attack_budgets": {"pgd": budgets["pgd"]}}
    )
    assert "attacked end to end, pgd only (a quick check, not a worst case);" in quick
    assert (
        "radius" not in quick.split("## AVAE")[0]
        and "| 100.0 / 50.0 / 12.5 | 100 / 99.8 / 87.7 | **flagged** |" in quick
    )
    assert "(conv, latent 64, Adam 0.0003, seed 0)" in table and "The paper: Adam 1e-4, 100,000 steps" in table
    assert "during training" not in table and "accuracy_vs_step" not in table  # no curves were logged
    assert "Runs: the studies `configs/colormnist_table1` (Table 1) and `configs/colormnist_rho_sweep`" in table


def test_the_mlp_table_has_no_paper_numbers_and_the_curves_become_figure_5_middle():
    curve = {
        "400": {"clean": 0.5, "0.05": 0.25, "0.1": 0.125, "seconds": 9.0},
        "800": {"clean": 0.75, "0.05": 0.5, "0.1": 0.25, "seconds": 9.0},
    }
    models = {"VAE": _entry(training_curve=curve), "AVAE": _entry(training_curve={"800": curve["800"]})}
    report = _report(models, arch="mlp", wall_clock_seconds=1800, curve_epsilons=[0.05, 0.1])
    table = reproduce_colormnist._markdown(report)
    assert "(AVAE paper, Figure 5, top row: the mlp architecture)" in table
    assert "| VAE | 90.0 / 25.0 / 0.0 |  | 100.0 / 50.0 / 12.5 |  | no | x1.00 |  | 0.0300 |" in table
    assert "| step | VAE | AVAE |" in table
    assert "| 400 | 50.0 / 25.0 / 12.5 |  |" in table and "| 800 | 75.0 / 50.0 / 25.0 | 75.0 / 50.0 / 25.0 |" in table
    assert "Cells: clean / eps 0.05 / eps 0.1 in %" in table
    assert "30 minutes for the last invocation, one run after the other" in table
    assert "each measured while that model trained" in table
    assert "`colormnist_mlp_accuracy_vs_step.png` (Figure 5 middle)" in table


def _options(path):
    with open(path) as f:
        return json.load(f)


@pytest.mark.parametrize("table_name,sweep_name", STUDY_PAIRS)
def test_the_rho_sweep_trains_table_1s_avae_but_for_rho(table_name, sweep_name):
    table = studies.read_study(os.path.join(REPO, "configs", table_name))
    sweep = studies.read_study(os.path.join(REPO, "configs", sweep_name))
    reproduce_colormnist.check(table, sweep)
    avae = _options(os.path.join(REPO, "configs", table_name, "AVAE.json"))
    rhos = []
    for run in sweep.runs:
        config = _options(run.config_path)
        rhos.append(config.pop("rho"))
        assert config.pop("model_dir") == f"runs/{sweep_name}/{run.name}" and run.name == f"AVAE_rho{rhos[-1]:g}"
        # Table 1's AVAE without training's robustness check (the curve is Table 1's).
        assert config == {k: v for k, v in avae.items() if k not in ("rho", "model_dir") and "robustness" not in k}
    assert rhos == [0.5, 0.8, 0.9, 0.95, 0.975, 0.99] and avae["rho"] in rhos
    evaluated = {**table.evaluate, "stages": ["accuracy"], "num_examples": 200}
    assert sweep.evaluate == evaluated  # the table's attacks and probes, on the sweep's 200 digits


def test_figure_5s_top_row_is_table_1_with_the_mlp_at_102000_steps():
    table = studies.read_study(os.path.join(REPO, "configs", "colormnist_table1"))
    mlp = studies.read_study(os.path.join(REPO, "configs", "colormnist_mlp"))
    assert [run.name for run in mlp.runs] == [run.name for run in table.runs] and mlp.evaluate == table.evaluate
    changed = {"arch": "mlp", "train_steps": 102_000, "checkpoint_every": 5100, "robustness_every": 12_750}
    for run, conv in zip(mlp.runs, table.runs):
        assert run.options == {
            **conv.options,
            **changed,
            **({"init_from": "runs/colormnist_mlp/VAE"} if conv.starts_from else {}),
        }
    assert dict((run.name, run.starts_from) for run in mlp.runs)["AVAE-SS"] == "VAE"


def test_the_runs_are_chosen_by_name_and_by_rho_and_a_bad_choice_is_one_sentence():
    table = studies.read_study(os.path.join(REPO, "configs", "colormnist_table1"))
    sweep = studies.read_study(os.path.join(REPO, "configs", "colormnist_rho_sweep"))
    chosen, swept = reproduce_colormnist.choose(table, sweep, ["AVAE-SS", "VAE"], ["0.975", "0.50"])
    assert [run.name for run in chosen] == ["VAE", "AVAE-SS"]  # the study's order: AVAE-SS post-trains the VAE
    assert [run.name for run in swept] == ["AVAE_rho0.5", "AVAE_rho0.975"]
    assert len(reproduce_colormnist.choose(table, sweep)[1]) == 6
    for models, rhos, message in [
        (["AVAE"], [], "--models must include VAE"),
        (["VAE", "SE_0.3"], [], "has no run SE_0.3; its runs: "),
        (["VAE"], ["0.7"], "no run at rho 0.7; its couplings: 0.5, 0.8, 0.9, 0.95, 0.975, 0.99"),
    ]:
        with pytest.raises(studies.StudyError, match=message):
            reproduce_colormnist.choose(table, sweep, models, rhos)


def tiny_study(folder, runs_, evaluate):
    """A study of tiny mlp runs, ({name: (model, settings)}), evaluated on a few digits with a weak attack."""
    os.makedirs(folder)
    for name, (model, settings) in runs_.items():
        config = {"model": model, "arch": "mlp", "latent_dim": 8, "batch_size": 16, "train_steps": 3}
        config.update(checkpoint_every=3, eval_examples=0, summary=False, **settings)
        with open(os.path.join(folder, f"{name}.json"), "w") as f:
            json.dump(config, f)
    quick = {"batch_size": 20, "pgd_steps": 1, "restarts": 1, "epsilons": [0.0, 0.1, 0.2], "quick": True}
    quick.update(radius_examples=0, probe_train_examples=50, probe_epochs=1, **evaluate)
    with open(os.path.join(folder, studies.STUDY_FILE), "w") as f:
        json.dump({"description": "tiny", "evaluate": quick, "report": {"output_dir": "results/tiny"}}, f)
    return studies.read_study(folder)


def test_a_tiny_reproduction_runs_its_studies_and_reports_what_they_wrote(tmp_path):
    decoder = {"fid_features": "classifier", "fid_classifier_train_examples": 50, "fid_classifier_epochs": 1}
    decoder["fid_cache_dir"] = str(tmp_path / "fid")  # a tiny FID classifier, never a cached Inception
    table = tiny_study(
        tmp_path / "table",
        {"VAE": ("vae", {"robustness_every": 3, "robustness_epsilons": "0.1"}), "AVAE": ("avae", {"rho": 0.9})},
        {"stages": ["accuracy", "decoder", "chains"], "num_examples": 20, "chain_examples": 2, **decoder},
    )
    sweep = tiny_study(
        tmp_path / "sweep",
        {"AVAE_rho0.5": ("avae", {"rho": 0.5}), "AVAE_rho0.9": ("avae", {"rho": 0.9})},
        {"stages": ["accuracy"], "num_examples": 12},
    )
    runs_dir, evaluations, output = (str(tmp_path / name) for name in ("runs", "evaluations", "results"))
    command = "python -m benchmarks.reproduce_colormnist --models=VAE --rhos=0.9"
    where = dict(runs_dir=runs_dir, output_dir=output, evaluations_dir=evaluations, log=lambda line: None)
    report = reproduce_colormnist.reproduce(table, sweep, ["VAE"], ["0.9"], command=command, **where)
    # Only the chosen runs were trained, each into the runner's directory, and evaluated where the study reports.
    assert sorted(os.listdir(os.path.join(runs_dir, "table"))) == ["VAE"]
    assert sorted(os.listdir(os.path.join(runs_dir, "sweep"))) == ["AVAE_rho0.9"]
    evaluated = json.load(open(os.path.join(evaluations, "table", "VAE", "robustness.json")))
    swept = json.load(open(os.path.join(evaluations, "sweep", "AVAE_rho0.9", "robustness.json")))
    assert command in open(os.path.join(evaluations, "table", "comparison.md")).read()
    # The report reads them back: the evaluations, the step timing, the curve and the settings trained with.
    vae = report["models"]["VAE"]
    assert list(report["models"]) == ["VAE"] and report["paper"] is None  # Table 1 is conv: no paper numbers
    assert (
        vae["adversarial_accuracy"] == evaluated["adversarial_accuracy"] and vae["mse"] == evaluated["mse"]["per_pixel"]
    )
    assert vae["time_ratio"] == 1.0 and vae["step_seconds"] == runs.step_seconds(os.path.join(runs_dir, "table", "VAE"))
    assert list(vae["training_curve"]) == ["3"] and set(vae["training_curve"]["3"]) == {"clean", "0.1", "seconds"}
    assert report["rho_sweep"] == {"0.9": swept["adversarial_accuracy"]}
    settings = {key: report["settings"][key] for key in ("train_steps", "batch_size", "arch", "latent_dim")}
    assert settings == {"train_steps": 3, "batch_size": 16, "arch": "mlp", "latent_dim": 8}
    assert [report["settings"][key] for key in ("num_examples", "sweep_examples", "curve_epsilons")] == [20, 12, [0.1]]
    stem = os.path.join(output, "colormnist_mlp")
    assert json.load(open(f"{stem}.json")) == report
    markdown = open(f"{stem}.md").read()
    assert "| VAE | " in markdown and "Not trained in this run (`--models`): AVAE." in markdown
    assert "| 0.9 | " in markdown and "| 3 | " in markdown and markdown.rstrip().endswith(f"{command}\n```")
    for plot in ("accuracy_vs_epsilon", "rho_sweep", "accuracy_vs_step", "chains"):
        assert os.path.exists(f"{stem}_{plot}.png"), plot


def test_a_study_that_does_not_evaluate_what_the_table_quotes_is_refused(tmp_path):
    sweep = tiny_study(tmp_path / "sweep", {"AVAE_rho0.5": ("avae", {"rho": 0.5})}, {"stages": ["accuracy"]})
    table = tiny_study(tmp_path / "table", {"VAE": ("vae", {})}, {"stages": ["accuracy"]})
    with pytest.raises(studies.StudyError, match="study table does not evaluate decoder, which the report quotes"):
        reproduce_colormnist.check(table, sweep)
    unset = tiny_study(
        tmp_path / "unset", {"AVAE": ("avae", {})}, {"stages": ["accuracy", "decoder"], "epsilons": [0.0, 0.1]}
    )
    with pytest.raises(studies.StudyError, match="study unset evaluates at eps 0, 0.1; the table needs 0, 0.1, 0.2"):
        reproduce_colormnist.check(unset, unset)
