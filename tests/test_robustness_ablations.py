"""benchmarks.robustness_ablations without training: its commands are valid training command lines."""

import pytest
from absl import flags

import zoo
from benchmarks import robustness_ablations as ablations
from train import cli
from train.settings import TrainSettings


@pytest.mark.parametrize("config", sorted(ablations.CONFIGS))
def test_every_config_parses_as_the_training_command_line_and_validates(config):
    model, model_flags = ablations.CONFIGS[config]
    args = ablations.train_args(model, model_flags, "/tmp/run", 1000, "/data", 0, ["--robustness_every=500"])
    assert args[0] == f"train.{model}"
    config_class = zoo.get_model_class(model).config_class
    values = flags.FlagValues()
    flags.DEFINE_string("model_dir", None, "", flag_values=values)
    cli.define_flags(TrainSettings, "train", values)
    cli.define_flags(config_class, "train", values)
    values(["train", *args[1:]])  # unknown flags and bad choices raise here
    settings = TrainSettings(**{f.name: values[f.name].value for f in TrainSettings.fields()})
    config_class(**{f.name: values[f.name].value for f in config_class.fields()})
    assert (settings.dataset, settings.precision, settings.download, settings.summary) == ("color_mnist", "float32",
                                                                                            False, False)  # fmt: skip
    assert settings.robustness_every == 500 and values["model_dir"].value == "/tmp/run"


def test_the_table_shows_the_digits_and_says_where_kept_rows_came_from():
    row = {"steps": 100, "scaling": "dimension", "probe_examples": 2000, "num_examples": 1000, "pgd_steps": 20,
           "restarts": 2, "accuracy": {"clean": 0.9, "0.1": 0.5}, "train_command": "t", "measure_command": "m",
           "measured_by": ablations.MEASURED_BY}  # fmt: skip
    table = ablations.markdown({"conv_avae (attacked: training digits)": row}, "python -m x")
    assert "| conv_avae (attacked: training digits) | 100 | dimension | 2000 | 1000 | 20x2 | 90.0 % | 50.0 % |" in table
    assert ablations.KEPT_ROWS_NOTE not in table and "kept from an earlier version" not in table
    kept = {k: v for k, v in row.items() if k != "measured_by"}
    table = ablations.markdown({"old": kept}, "python -m x")
    assert ablations.KEPT_ROWS_NOTE in table and "`old`: train `t`; measure `m` (a row kept from an earlier" in table
