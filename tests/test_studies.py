"""Studies (train.study): every committed study is valid, a tiny one runs train -> evaluate -> report, and a bad one
is refused with one sentence."""

import glob
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO
from train import study as studies

STUDIES = sorted(os.path.dirname(p) for p in glob.glob(os.path.join(REPO, "configs", "*", studies.STUDY_FILE)))


def test_the_ablations_and_table_1_are_studies():
    names = {os.path.basename(path) for path in STUDIES}
    assert "robustness_ablations" in names, names
    ablations = studies.read_study(os.path.join(REPO, "configs", "robustness_ablations"))
    assert len(ablations.runs) == 18


@pytest.mark.parametrize("path", STUDIES, ids=os.path.basename)
def test_every_committed_study_validates(path):
    study = studies.read_study(path)  # every run config as `python -m train --config` checks it, and study.json
    assert study.runs and study.stages
    assert study.output_dir.startswith("results/"), study.output_dir
    for run in study.runs:
        # `python -m train --config=FILE` trains into the directory the runner uses for the run.
        assert json.load(open(run.config_path)).get("model_dir") == f"runs/{study.name}/{run.name}"


def _tiny_study(folder, runs=("a", "b")):
    os.makedirs(folder, exist_ok=True)
    for i, name in enumerate(runs):
        config = {
            "model": "vae",
            "arch": "mlp",
            "latent_dim": 8,
            "batch_size": 16,
            "train_steps": 3,
            "checkpoint_every": 3,
            "eval_examples": 0,
            "robustness_every": 0,
            "summary": False,
            "seed": i,
        }
        with open(os.path.join(folder, f"{name}.json"), "w") as f:
            json.dump(config, f)
    quick = {
        "stages": ["accuracy"],
        "tasks": ["digit"],
        "num_examples": 20,
        "batch_size": 20,
        "pgd_steps": 2,
        "restarts": 1,
        "epsilons": [0.0, 0.1],
        "quick": True,
        "radius_examples": 0,
        "probe_train_examples": 50,
        "probe_epochs": 1,
    }
    with open(os.path.join(folder, studies.STUDY_FILE), "w") as f:
        json.dump({"description": "tiny", "evaluate": quick, "report": {"output_dir": "results/tiny"}}, f)
    return str(folder)


def test_a_study_trains_evaluates_and_reports(tmp_path):
    study = studies.read_study(_tiny_study(tmp_path / "tiny"))
    runs_dir, output_dir = str(tmp_path / "runs"), str(tmp_path / "results")
    lines = []
    written = studies.run_study(study, runs_dir=runs_dir, output_dir=output_dir, log=lines.append)
    assert os.path.join(output_dir, "comparison.md") in written
    for name in ("a", "b"):
        assert os.path.exists(os.path.join(runs_dir, "tiny", name, "model.keras"))
        assert os.path.exists(os.path.join(output_dir, name, "robustness.json"))
    comparison = open(os.path.join(output_dir, "comparison.md")).read()
    assert "| a |" in comparison and "| b |" in comparison
    assert f"Made by the study `{study.path}`" in comparison
    record = json.load(open(os.path.join(output_dir, studies.RECORD_FILE)))
    assert record["study"] == study.path and set(record["runs"]) == {"a", "b"}
    assert record["runs"]["a"]["step"] == 3 and record["runs"]["a"]["model_dir"] == os.path.join(runs_dir, "tiny", "a")
    # A rerun of one run resumes its finished training and reads its evaluation back; the report keeps both runs.
    lines.clear()
    studies.run_study(study, only=["b"], runs_dir=runs_dir, output_dir=output_dir, log=lines.append)
    assert any("evaluated before" in line for line in lines), lines
    assert set(json.load(open(os.path.join(output_dir, studies.RECORD_FILE)))["runs"]) == {"a", "b"}


def test_a_stage_records_the_step_and_weights_of_the_newest_checkpoint(tmp_path):
    folder = _tiny_study(tmp_path / "tiny")
    _rewrite(os.path.join(folder, "a.json"), learning_rate_schedule="cosine")  # its optimizer holds no rate variable
    study = studies.read_study(folder)
    runs_dir, output_dir = str(tmp_path / "runs"), str(tmp_path / "results")
    run_a, run_b = study.runs
    trained = studies.train_run(study, run_a, runs_dir)
    stage = studies.record_stage(study, run_a, runs_dir, output_dir)
    assert stage["step"] == 3 and stage["weights_digest_at_step"] == trained.weights_digest
    assert stage["command"] == f"python -m train.study --study={study.path} --only=a --runs_dir=$RUNS"
    assert json.load(open(os.path.join(output_dir, "a", studies.STAGE_FILE))) == stage
    with pytest.raises(studies.StudyError, match="run b of study tiny has not started"):
        studies.record_stage(study, run_b, runs_dir, output_dir)


def _rewrite(path, **changes):
    with open(path) as f:
        value = json.load(f)
    value.update(changes)
    with open(path, "w") as f:
        json.dump(value, f)


@pytest.mark.parametrize(
    "spoil,message",
    [
        (lambda d: _rewrite(d / "study.json", reprot={}), r"unknown key\(s\) reprot in .*study.json"),
        (lambda d: _rewrite(d / "a.json", rhoo=1), r"run config .*a.json: unknown setting\(s\) rhoo"),
        (lambda d: os.remove(d / "study.json"), r"study file .*study.json: No such file"),
        (
            lambda d: _rewrite(d / "study.json", evaluate={"stages": ["accuracy"], "lambdas": [1]}),
            r"lambdas .* does not run",
        ),
        (lambda d: _rewrite(d / "study.json", evaluate={"num_examples": 0}), r"num_examples must be at least 1"),
        (lambda d: _rewrite(d / "study.json", report={"output_dir": "/abs"}), r"relative to the repository"),
        (lambda d: [os.remove(d / n) for n in ("a.json", "b.json")], r"has no run config"),
    ],
)
def test_a_bad_study_is_one_sentence(tmp_path, spoil, message):
    folder = tmp_path / "tiny"
    _tiny_study(folder)
    spoil(folder)
    with pytest.raises(studies.StudyError, match=message) as error:
        studies.read_study(str(folder))
    assert "\n" not in str(error.value)


def test_the_command_line_refuses_a_bad_study_in_one_line(tmp_path):
    folder = _tiny_study(tmp_path / "tiny")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run(
        [sys.executable, "-m", "train.study", f"--study={folder}", "--only=a,c", f"--runs_dir={tmp_path / 'runs'}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1] == "error: study tiny has no run c; its runs: a, b"
    assert not os.path.exists(tmp_path / "runs")
