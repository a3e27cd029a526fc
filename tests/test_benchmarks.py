"""What every benchmark program shares, and benchmarks.precision without training."""

import glob
import os
import subprocess
import sys

import pytest
from absl import flags

import zoo
from benchmarks import precision
from tests.conftest import REPO
from train import cli
from train.settings import TrainSettings

BENCHMARKS = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(REPO, "benchmarks", "[!_]*.py")))


def test_importing_a_benchmark_defines_no_flags():
    # The libraries define flags of their own when imported (absl.app, TensorFlow's test flags,
    # tensorflow-datasets'): they are loaded first, so that only the benchmarks' would show.
    code = "\n".join([
        "from absl import app, flags",
        "import keras, tensorflow, tensorflow_datasets, tensorflow_probability",
        "before = set(flags.FLAGS)",
        *(f"import benchmarks.{name}" for name in BENCHMARKS),
        "print(sorted(set(flags.FLAGS) - before))",
        "benchmarks.precision.define_flags()  # what defining them would show",
        "print('models' in set(flags.FLAGS) - before)",
    ])  # fmt: skip
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "precision" in BENCHMARKS and "robustness_ablations" in BENCHMARKS and "train_speed" in BENCHMARKS
    assert run.stdout.strip().splitlines()[-2:] == ["[]", "True"]


def _parse_training_command(args):
    config_class = zoo.get_model_class(args[0].split(".")[1]).config_class
    values = flags.FlagValues()
    flags.DEFINE_string("model_dir", None, "", flag_values=values)
    cli.define_flags(TrainSettings, "train", values)
    cli.define_flags(config_class, "train", values)
    values(["train", *args[1:]])  # unknown flags and bad choices raise here
    return {name: values[name].value for name in values}


@pytest.mark.parametrize("model", ["vae", "avae"])
def test_the_runs_of_a_model_differ_in_precision_or_seed_only(model):
    parsed = {
        (p, offset): _parse_training_command(precision.train_args(model, "conv", p, "/tmp/run", 1000, "/data", offset))
        for p in ("float32", *precision.MIXED_PRECISIONS) for offset in (0, 1)
    }  # fmt: skip
    reference = parsed["float32", 0]
    assert (reference["arch"], reference["precision"], reference["train_steps"], reference["summary"]) == (
        "conv", "float32", 1000, False)  # fmt: skip
    for (p, offset), values in parsed.items():
        differing = {name for name in values if values[name] != reference[name]}
        assert differing == {name for name, differs in [("precision", p != "float32"), ("seed", offset)] if differs}
    assert precision.run_name(model, "mlp", "float32", 1) == f"{model}_mlp_float32_seed+1"


def test_the_comparison_gives_the_relative_elbo_gap_and_accuracy_gaps_with_their_sampling_error():
    reference = {"test": {"elbo": -1000.0}, "accuracy": {"clean": 0.6, "0.1": 0.1}}
    row = {"test": {"elbo": -1005.0}, "accuracy": {"clean": 0.5, "0.1": 0.1}, "attacked_examples": 100}
    comparison = precision.compare(row, reference)
    assert comparison["elbo_relative_gap"] == pytest.approx(-0.005)  # worse by 0.5 %: within the 1 %
    assert comparison["elbo_within_1_percent"]
    clean = comparison["accuracy_gaps"]["clean"]
    # two proportions of 100 digits: sqrt((0.5 * 0.5 + 0.6 * 0.4) / 100) = 0.07
    assert clean["points"] == pytest.approx(-10.0) and clean["standard_error_points"] == pytest.approx(7.0)
    assert clean["within_2_standard_errors"]
    assert comparison["accuracy_gaps"]["0.1"]["points"] == pytest.approx(0.0)
    far = precision.compare({**row, "test": {"elbo": -1020.0}, "accuracy": {"clean": 0.3, "0.1": 0.1}}, reference)
    assert far["elbo_relative_gap"] == pytest.approx(-0.02) and not far["elbo_within_1_percent"]
    assert not far["accuracy_gaps"]["clean"]["within_2_standard_errors"]  # 30 points against 2 x 6.7

    rows = {"avae_mlp_float32": {**reference, "steps": 10, "train_command": "a", "measure_command": "m1"},
            "avae_mlp_mixed_bfloat16": {**row, "steps": 10, "train_command": "b", "measure_command": "m1",
                                        "comparison": comparison, "test_own_precision": {"elbo": -1006.0}}}  # fmt: skip
    seed_row = {"test": {"elbo": -990.0}, "accuracy": {"clean": 0.7, "0.1": 0.2}, "attacked_examples": 100}
    rows["avae_mlp_float32_seed+1"] = {**seed_row, "steps": 10, "train_command": "c", "measure_command": "m2",
                                       "comparison": precision.compare(seed_row, reference)}  # fmt: skip
    for key in rows:
        rows[key]["test"] = {**rows[key]["test"], "log_likelihood": -900.0, "kl": 100.0}
    table = precision.markdown(rows, "m2")
    assert ("| avae_mlp_mixed_bfloat16 | 10 | -1005.0 | -900.0 | 100.0 | -1006.0 | -0.50 % | 50.0 % (-10.0 +- 7.0) "
            "| 10.0 % (+0.0 +- 4.2) |") in table  # fmt: skip
    assert ("- `avae_mlp_mixed_bfloat16`: ELBO -0.50 % (next seed +1.00 %), within 1 %; accuracy gaps (points): "
            "clean -10.0 (next seed +10.0), 0.1 +0.0 (next seed +10.0)") in table  # fmt: skip
    assert "```bash\nm1\nm2\n```" in table  # each command that measured a row, once


def test_an_unknown_precision_is_refused_naming_the_choices():
    run = subprocess.run([sys.executable, "-m", "benchmarks.precision", "--precisions=float16"], cwd=REPO,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert run.returncode != 0
    assert "unknown precision(s) ['float16']; choose from mixed_bfloat16, mixed_float16" in run.stderr
