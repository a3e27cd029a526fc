"""The robustness ablations without training: a study of one change per run, and the classifiers' table."""

import json
import os

from benchmarks import robustness_ablations as ablations
from tests.conftest import REPO
from train import study as studies

STUDY = os.path.join(REPO, "configs", "robustness_ablations")


def _base(name):
    return "conv_avae" if name.startswith("conv_") else "mlp_vae" if name.startswith("mlp_vae") else "mlp_avae"


def test_the_ablations_are_a_study_of_one_change_per_run():
    study = studies.read_study(STUDY)  # every config as `python -m train --config` accepts it
    configs = {run.name: json.load(open(run.config_path)) for run in study.runs}
    assert len(configs) == 18 and not set(configs) & set(ablations.CLASSIFIERS)
    for name, config in configs.items():
        base = configs[_base(name)]
        changed = {k for k in {*config, *base} if config.get(k) != base.get(k)} - {"model_dir", "model"}
        assert len(changed) <= 1, (name, changed)
        assert (config["dataset"], config["precision"], config["seed"], config["train_steps"]) == (
            "color_mnist",
            "float32",
            0,
            20_000,
        )


def test_the_table_shows_the_digits_and_says_where_kept_rows_came_from():
    row = {
        "steps": 100,
        "scaling": "dimension",
        "probe_examples": 2000,
        "num_examples": 1000,
        "pgd_steps": 20,
        "restarts": 2,
        "accuracy": {"clean": 0.9, "0.1": 0.5},
        "train_command": "t",
        "measure_command": "m",
        "measured_by": ablations.MEASURED_BY,
    }
    table = ablations.markdown({"conv_avae (attacked: training digits)": row}, "python -m x")
    assert "| conv_avae (attacked: training digits) | 100 | dimension | 2000 | 1000 | 20x2 | 90.0 % | 50.0 % |" in table
    assert ablations.KEPT_ROWS_NOTE not in table and "kept from an earlier version" not in table
    kept = {k: v for k, v in row.items() if k != "measured_by"}
    table = ablations.markdown({"old": kept}, "python -m x")
    assert ablations.KEPT_ROWS_NOTE in table and "`old`: train `t`; measure `m` (a row kept from an earlier" in table
