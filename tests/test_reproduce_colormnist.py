"""The ColorMNIST reproduction's bookkeeping: its table quotes the worst case, and a rerun reuses evaluations."""

import json
import os
import zipfile

from benchmarks import reproduce_colormnist, runs


def _write_model(model_dir, weights, saved_at):
    os.makedirs(model_dir, exist_ok=True)
    with zipfile.ZipFile(os.path.join(model_dir, "model.keras"), "w") as archive:
        archive.writestr("metadata.json", json.dumps({"date_saved": saved_at}))
        archive.writestr("config.json", "{}")
        archive.writestr("model.weights.h5", weights)


def test_a_rerun_reuses_an_evaluation_of_the_same_weights_with_the_same_arguments(tmp_path, monkeypatch):
    calls = []

    def fake_run(args, log_path):  # stands in for `python -m evaluate.robustness ...`
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
    radius = {task: {"median_correct": value, "max_radius": 0.5}
              for task, value in (("digit", 0.0234), ("color", None))}  # fmt: skip
    masking = {"flagged": True, "by_task": {"digit": {"flagged": True, "reasons": ["at eps=0.1 the gradient-free "
                                                                                  "attack broke 5.0% of examples"]},
                                            "color": {"flagged": False, "reasons": []}}}  # fmt: skip
    entry = {
        "adversarial_accuracy": {"digit": _accuracy(0.9, 0.25, 0.0), "color": _accuracy(1.0, 0.5, 0.125)},
        "robustness_radius": radius, "gradient_masking": masking, "time_ratio": 1.5, "mse": 0.03, "fid": 12.0,
    }  # fmt: skip
    budgets = {"pgd": {"implementation": "zoo.attacks.pgd", "steps": 40, "restarts": 2},
               "square": {"implementation": "art SquareAttack", "queries": 5000, "restarts": 1}}  # fmt: skip
    report = {
        "models": {"AVAE": entry},
        "rho_sweep": {"0.975": entry["adversarial_accuracy"]},
        "attack_budgets": budgets,
        "fid_features": {"kind": "inception"},
        "settings": {"train_steps": 800, "batch_size": 64, "seed": 0, "num_examples": 250, "sweep_examples": 200,
                     "radius_examples": 100, "probe_train_examples": 7000,
                     "evaluation_settings": {"cascade": True}},  # fmt: skip
        "command": "python -m benchmarks.reproduce_colormnist",
    }
    table = reproduce_colormnist._markdown(report)
    assert ("attacked end to end, worst case per example over pgd, square (L-inf, pixels in [0, 1]), run as "
            "AutoAttack's cascade (each attack only on the examples every earlier one left correct);") in table
    assert "| AVAE | 90.0 / 25.0 / 0.0 | 97.3 / 88.1 / 54.8 | 100.0 / 50.0 / 12.5 | 100 / 99.8 / 87.7 | " in table
    assert "| 0.0234 / > 0.5 | **flagged** | x1.50 |" in table
    assert "AVAE, digit: at eps=0.1 the gradient-free attack broke 5.0% of examples." in table
    assert "- `pgd`: zoo.attacks.pgd, 40 steps x 2 restarts" in table and "5000 queries x 1 restarts" in table
    assert "| radius digit / colour |" in table
    unsearched = {"AVAE": {**entry, "robustness_radius": None}}
    quick = reproduce_colormnist._markdown({**report, "models": unsearched, "attack_budgets": {"pgd": budgets["pgd"]},
                                           "settings": {**report["settings"], "evaluation_settings": {}}})
    assert "attacked end to end, pgd only (a quick check, not a worst case);" in quick
    assert "radius" not in quick.split("## AVAE")[0] and "| 100.0 / 50.0 / 12.5 | 100 / 99.8 / 87.7 | **flagged** |" in quick
