"""The ColorMNIST reproduction's bookkeeping: its table quotes the worst case, and a rerun reuses evaluations."""

import json
import os
import zipfile

import pytest
from absl import app

from benchmarks import reproduce_colormnist, runs


def _write_model(model_dir, weights, saved_at):
    os.makedirs(model_dir, exist_ok=True)
    with zipfile.ZipFile(os.path.join(model_dir, "model.keras"), "w") as archive:
        archive.writestr("metadata.json", json.dumps({"date_saved": saved_at}))
        archive.writestr("config.json", "{}")
        archive.writestr("model.weights.h5", weights)


def test_a_rerun_reuses_an_evaluation_of_the_same_weights_with_the_same_arguments(tmp_path, monkeypatch):
    calls = []

    def fake_run(args, log_path, threads=None):  # stands in for `python -m evaluate.robustness ...`
        calls.append(args)
        output = next(a.split("=", 1)[1] for a in args if a.startswith("--output_dir="))
        os.makedirs(output, exist_ok=True)
        with open(os.path.join(output, "robustness.json"), "w") as f:
            json.dump({"run": len(calls)}, f)

    monkeypatch.setattr(runs, "run", fake_run)
    model_dir, work = str(tmp_path / "model"), str(tmp_path / "work")
    _write_model(model_dir, b"weights-1", "monday")
    assert runs.evaluate(work, "AVAE", model_dir, ["--quick"])[0] == {"run": 1}
    _write_model(model_dir, b"weights-1", "tuesday")  # a resumed training run re-saves the same weights
    assert runs.evaluate(work, "AVAE", model_dir, ["--quick"])[0] == {"run": 1}
    assert len(calls) == 1
    assert runs.evaluate(work, "AVAE", model_dir, ["--cascade"])[0] == {"run": 2}  # other arguments
    _write_model(model_dir, b"weights-2", "tuesday")  # trained further
    assert runs.evaluate(work, "AVAE", model_dir, ["--cascade"])[0] == {"run": 3}
    assert runs.evaluate(work, "AVAE", model_dir, ["--cascade"])[0] == {"run": 3}


def _accuracy(clean, at_01, at_02):
    return {"0": clean, "0.1": at_01, "0.2": at_02}


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
    entry = {
        "adversarial_accuracy": {"digit": _accuracy(0.9, 0.25, 0.0), "color": _accuracy(1.0, 0.5, 0.125)},
        "robustness_radius": radius,
        "gradient_masking": masking,
        "time_ratio": 1.5,
        "mse": 0.03,
        "fid": 12.0,
    }
    budgets = {
        "pgd": {"implementation": "zoo.attacks.pgd", "steps": 40, "restarts": 2},
        "square": {"implementation": "art SquareAttack", "queries": 5000, "restarts": 1},
    }
    report = {
        "models": {"AVAE": entry},
        "rho_sweep": {"0.975": entry["adversarial_accuracy"]},
        "paper": reproduce_colormnist.PAPER,
        "attack_budgets": budgets,
        "fid_features": {"kind": "inception"},
        "settings": {
            "train_steps": 800,
            "batch_size": 64,
            "seed": 0,
            "num_examples": 250,
            "sweep_examples": 200,
            "radius_examples": 100,
            "probe_train_examples": 7000,
            "arch": "conv",
            "learning_rate": 3e-4,
            "evaluation_settings": {"cascade": True},
        },
        "command": "python -m benchmarks.reproduce_colormnist",
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
    unsearched = {"AVAE": {**entry, "robustness_radius": None}}
    quick = reproduce_colormnist._markdown(
        {
            **report,
            "models": unsearched,
            "attack_budgets": {"pgd": budgets["pgd"]},
            "settings": {**report["settings"], "evaluation_settings": {}},
        }
    )
    assert "attacked end to end, pgd only (a quick check, not a worst case);" in quick
    assert (
        "radius" not in quick.split("## AVAE")[0]
        and "| 100.0 / 50.0 / 12.5 | 100 / 99.8 / 87.7 | **flagged** |" in quick
    )
    assert "(conv, latent 64, Adam 0.0003, seed 0)" in table and "The paper: Adam 1e-4, 100,000 steps" in table
    assert "during training" not in table and "accuracy_vs_step" not in table  # no curves were logged


def test_the_mlp_table_has_no_paper_numbers_and_the_curves_become_figure_5_middle():
    curve = {
        "400": {"clean": 0.5, "0.05": 0.25, "0.1": 0.125, "seconds": 9.0},
        "800": {"clean": 0.75, "0.05": 0.5, "0.1": 0.25, "seconds": 9.0},
    }
    entry = {
        "adversarial_accuracy": {"digit": _accuracy(0.9, 0.25, 0.0), "color": _accuracy(1.0, 0.5, 0.125)},
        "robustness_radius": None,
        "gradient_masking": {"flagged": False, "by_task": {}},
        "time_ratio": 1.0,
        "mse": 0.03,
        "fid": 12.0,
        "training_curve": curve,
    }
    report = {
        "models": {"VAE": entry, "AVAE": {**entry, "training_curve": {"800": curve["800"]}}},
        "rho_sweep": {},
        "paper": None,
        "attack_budgets": {},
        "fid_features": {"kind": "inception"},
        "settings": {
            "train_steps": 800,
            "batch_size": 64,
            "seed": 0,
            "num_examples": 250,
            "sweep_examples": 200,
            "radius_examples": 0,
            "probe_train_examples": 7000,
            "arch": "mlp",
            "learning_rate": 3e-4,
            "parallel": 2,
            "wall_clock_seconds": 1800,
            "curve_epsilons": [0.05, 0.1],
            "evaluation_settings": {},
        },
        "command": "python -m benchmarks.reproduce_colormnist --arch=mlp",
    }
    table = reproduce_colormnist._markdown(report)
    assert "(AVAE paper, Figure 5, top row: the mlp architecture)" in table
    assert "| VAE | 90.0 / 25.0 / 0.0 |  | 100.0 / 50.0 / 12.5 |  | no | x1.00 |  | 0.0300 |" in table
    assert "| step | VAE | AVAE |" in table
    assert "| 400 | 50.0 / 25.0 / 12.5 |  |" in table and "| 800 | 75.0 / 50.0 / 25.0 | 75.0 / 50.0 / 25.0 |" in table
    assert "Cells: clean / eps 0.05 / eps 0.1 in %" in table
    assert "2 jobs side by side, 30 minutes for the last invocation" in table
    assert "each measured while that model trained" in table and "beside other jobs here: a rough ratio" in table
    assert "`colormnist_mlp_accuracy_vs_step.png` (Figure 5 middle)" in table
    one_at_a_time = {**report, "settings": {**report["settings"], "parallel": 1}}
    alone = reproduce_colormnist._markdown(one_at_a_time)
    assert "one job at a time" in alone and "rough ratio" not in alone


def test_jobs_run_after_the_jobs_they_wait_for_and_never_more_at_once_than_asked():
    import threading
    import time

    lock, running, log = threading.Lock(), [0], []

    def job(key, seconds=0.05):
        def run():
            with lock:
                running[0] += 1
                log.append(("start", key, running[0]))
            time.sleep(seconds)
            with lock:
                running[0] -= 1
                log.append(("end", key))
            return key.upper()

        return run

    jobs = [("a", job("a", 0.2), []), ("b", job("b"), ["a"]), ("c", job("c"), []), ("d", job("d"), [])]
    assert runs.run_jobs(jobs, parallel=2) == {"a": "A", "b": "B", "c": "C", "d": "D"}
    assert max(entry[2] for entry in log if entry[0] == "start") == 2
    assert log.index(("end", "a")) < next(i for i, e in enumerate(log) if e[:2] == ("start", "b"))
    # c and d ran beside a while b waited for it.
    assert [e[1] for e in log if e[0] == "start"][:3] == ["a", "c", "d"]
    log.clear()
    runs.run_jobs(jobs, parallel=1)  # one at a time, in the order given where dependencies allow
    assert [e[1] for e in log if e[0] == "start"] == ["a", "b", "c", "d"]


def test_a_failed_job_stops_new_ones_and_is_raised():
    started = []

    def fail():
        started.append("fail")
        raise SystemExit("error: train.avae failed (exit 1); see train_AVAE.log")

    jobs = [("fail", fail, []), ("after", lambda: started.append("after"), ["fail"])]
    with pytest.raises(SystemExit, match="train.avae failed"):
        runs.run_jobs(jobs, parallel=2)
    assert started == ["fail"]
    with pytest.raises(ValueError, match="missing jobs \\['nowhere'\\]"):
        runs.run_jobs([("a", fail, ["nowhere"])])
    with pytest.raises(ValueError, match="wait for each other"):
        runs.run_jobs([("a", fail, ["b"]), ("b", fail, ["a"])])


def test_the_reproduction_trains_every_model_with_the_same_settings_and_avae_ss_from_the_vae(tmp_path):
    from absl import flags

    if "parallel" not in flags.FLAGS:
        reproduce_colormnist.define_flags()
    flags.FLAGS(
        [
            "reproduce_colormnist",
            "--work_dir=" + str(tmp_path),
            "--data_dir=../shared/tfds",
            "--train_steps=1600",
            "--rhos=0.9,0.975",
        ]
    )
    try:
        work = str(tmp_path / "conv")
        jobs = {
            key: (run, waits) for key, run, waits in reproduce_colormnist._jobs(reproduce_colormnist._budget(), work)
        }
    finally:
        flags.FLAGS.unparse_flags()
    labels = [m[0] for m in reproduce_colormnist.MODELS]
    assert list(jobs) == [f"{kind} {label}" for label in labels for kind in ("train", "eval")] + [
        "train AVAE_rho0.9",
        "sweep 0.9",
        "sweep 0.975",
    ]
    assert jobs["train AVAE-SS"][1] == ["train VAE"] and jobs["eval AVAE"][1] == ["train AVAE"]
    assert jobs["sweep 0.975"][1] == ["train AVAE"]  # the table's AVAE is the sweep's model at rho 0.975
    vae_flags, vae_model_flags, init_from = jobs["train VAE"][0].args[3:6]
    assert {
        "--arch=conv",
        "--learning_rate=0.0003",
        "--train_steps=1600",
        "--robustness_every=200",
        "--robustness_epsilons=0.05,0.1",
    } <= set(vae_flags)
    assert jobs["train AVAE-SS"][0].args[5] == runs.model_dir_of(work, "VAE")
    sweep_flags = jobs["train AVAE_rho0.9"][0].args[3]
    assert not any(f.startswith("--robustness_every") for f in sweep_flags)  # the curve is Table 1's models'
    assert set(sweep_flags) == set(vae_flags) - {"--robustness_every=200", "--robustness_epsilons=0.05,0.1"}
    assert jobs["train AVAE_rho0.9"][0].args[4] == {"rho": "0.9"}
    assert jobs["train AVAE_rho0.9"][0].args[6] is None  # one process at a time: all the cores
    flags.FLAGS(["reproduce_colormnist", "--parallel=2"])
    try:
        side_by_side = reproduce_colormnist._jobs(reproduce_colormnist._budget(), work)
    finally:
        flags.FLAGS.unparse_flags()
    threads = max(1, (os.cpu_count() or 1) // 2)  # two processes share the cores
    assert {run.args[-1] for _, run, _ in side_by_side} == {threads}
    flags.FLAGS(["reproduce_colormnist", "--arch=mlp"])  # mlp: two side by side by default, where there are 2 cores
    try:
        mlp_threads = {run.args[-1] for _, run, _ in reproduce_colormnist._jobs(reproduce_colormnist._budget(), work)}
    finally:
        flags.FLAGS.unparse_flags()
    assert mlp_threads == ({threads} if (os.cpu_count() or 1) >= 2 else {None})
    # A subset of Table 1: without the table's AVAE the sweep trains its own model at rho 0.975.
    flags.FLAGS(["reproduce_colormnist", "--models=VAE,AVAE-SS", "--rhos=0.975"])
    try:
        subset = {key: waits for key, _, waits in reproduce_colormnist._jobs(reproduce_colormnist._budget(), work)}
        assert subset == {
            "train VAE": [],
            "eval VAE": ["train VAE"],
            "train AVAE-SS": ["train VAE"],
            "eval AVAE-SS": ["train AVAE-SS"],
            "train AVAE_rho0.975": [],
            "sweep 0.975": ["train AVAE_rho0.975"],
        }
        for models in ("AVAE", "VAE,SE_0.3"):
            flags.FLAGS.models = models.split(",")
            with pytest.raises(app.UsageError, match="choose among VAE, SE_0.1, SE_0.2, AVAE, SE_0.1-AVAE, AVAE-SS"):
                reproduce_colormnist._jobs(reproduce_colormnist._budget(), work)
    finally:
        flags.FLAGS.unparse_flags()
