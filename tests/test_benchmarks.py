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
    code = "\n".join(
        [
            "from absl import app, flags",
            "import keras, tensorflow, tensorflow_datasets, tensorflow_probability",
            "before = set(flags.FLAGS)",
            *(f"import benchmarks.{name}" for name in BENCHMARKS),
            "print(sorted(set(flags.FLAGS) - before))",
            "benchmarks.precision.define_flags()  # what defining them would show",
            "print('models' in set(flags.FLAGS) - before)",
        ]
    )
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
        for p in ("float32", *precision.MIXED_PRECISIONS)
        for offset in (0, 1)
    }
    reference = parsed["float32", 0]
    assert (reference["arch"], reference["precision"], reference["train_steps"], reference["summary"]) == (
        "conv",
        "float32",
        1000,
        False,
    )
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

    rows = {
        "avae_mlp_float32": {**reference, "steps": 10, "train_command": "a", "measure_command": "m1"},
        "avae_mlp_mixed_bfloat16": {
            **row,
            "steps": 10,
            "train_command": "b",
            "measure_command": "m1",
            "comparison": comparison,
            "test_own_precision": {"elbo": -1006.0},
        },
    }
    seed_row = {"test": {"elbo": -990.0}, "accuracy": {"clean": 0.7, "0.1": 0.2}, "attacked_examples": 100}
    rows["avae_mlp_float32_seed+1"] = {
        **seed_row,
        "steps": 10,
        "train_command": "c",
        "measure_command": "m2",
        "comparison": precision.compare(seed_row, reference),
    }
    for key in rows:
        rows[key]["test"] = {**rows[key]["test"], "log_likelihood": -900.0, "kl": 100.0}
    table = precision.markdown(rows, "m2")
    assert (
        "| avae_mlp_mixed_bfloat16 | 10 | -1005.0 | -900.0 | 100.0 | -1006.0 | -0.50 % | 50.0 % (-10.0 +- 7.0) "
        "| 10.0 % (+0.0 +- 4.2) |"
    ) in table
    assert (
        "- `avae_mlp_mixed_bfloat16`: ELBO -0.50 % (next seed +1.00 %), within 1 %; accuracy gaps (points): "
        "clean -10.0 (next seed +10.0), 0.1 +0.0 (next seed +10.0)"
    ) in table
    assert "```bash\nm1\nm2\n```" in table  # each command that measured a row, once


def test_an_unknown_precision_is_refused_naming_the_choices():
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks.precision", "--precisions=float16"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode != 0
    assert "unknown precision(s) ['float16']; choose from mixed_bfloat16, mixed_float16" in run.stderr


def test_union_length_counts_overlapping_thunks_once():
    from benchmarks.speed import profiler

    assert profiler.union_length([(5.0, 6.0), (0.0, 2.0), (1.0, 3.0)]) == 4.0
    assert profiler.union_length([(0, 10), (2, 3), (9, 12), (12, 13)]) == 13
    assert profiler.union_length([]) == 0.0


def test_the_flops_of_the_mlp_vae_step_are_its_forward_pass_three_times_less_the_first_input_gradient():
    import tensorflow as tf

    from benchmarks.speed import flops
    from train import loop

    model = loop.build_model("vae", tf.distribute.get_strategy(), image_shape=(28, 28, 3), arch="mlp", latent_dim=64)
    pixels, hidden, latent, batch = 28 * 28 * 3, 200, 64, 64
    forward = batch * (
        pixels * hidden
        + 3 * hidden**2
        + 2 * hidden * latent  # encoder with its two heads
        + latent * hidden
        + 3 * hidden**2
        + hidden * pixels
    )  # decoder
    # Backward: a weight gradient per matmul, an input gradient for all but the first (the images').
    expected = 2 * (3 * forward - batch * pixels * hidden)
    assert flops.step_flops(model, tf.TensorSpec([batch, 28, 28, 3], tf.float32)) == expected == 407_961_600


def test_the_xla_breakdown_finds_a_programs_matmul_optimizer_and_random_thunks(tmp_path):
    import tensorflow as tf

    from benchmarks.speed import profiler

    weights = tf.Variable(tf.random.uniform([512, 512], seed=1))

    @tf.function(jit_compile=True)
    def step(x, seed):
        y = tf.matmul(x, weights)
        noise = tf.random.stateless_uniform([512], seed)
        with tf.name_scope("adam"):
            weights.assign_sub(1e-3 * tf.tanh(weights))
        return tf.reduce_sum(y * noise)

    x = tf.random.uniform([512, 512], seed=2)
    step(x, tf.constant([0, 0])).numpy()  # compiled outside the profile
    tf.profiler.experimental.start(str(tmp_path))
    for i in range(5):
        step(x, tf.constant([0, i])).numpy()
    tf.profiler.experimental.stop()
    paths = glob.glob(str(tmp_path / "**" / "*.xplane.pb"), recursive=True)
    breakdown = profiler.xla_breakdown(profiler._xspaces(paths), "adam", 5, 0.1)
    kinds = breakdown["kinds_ms"]
    assert set(kinds) == set(profiler.XLA_KINDS)
    assert kinds["matmuls"] > 0 and kinds["optimizer update"] > 0 and kinds["random draws"] > 0
    assert kinds["convolutions"] == 0
    # A 512^3 matmul is far more work than an element-wise update of its 512^2 weights.
    assert kinds["matmuls"] > kinds["optimizer update"]
    # Thunks of different kinds may run side by side (each counts), those of one kind count once.
    assert all(ms <= breakdown["in_programs_ms"] for ms in kinds.values())
    assert 0 <= breakdown["between_thunks_ms"] < breakdown["in_programs_ms"]
    assert breakdown["step_ms"] == 100.0


def test_a_thunk_is_told_apart_by_what_it_fuses_then_by_its_tensorflow_op():
    import re

    from tensorflow.compiler.xla.service import hlo_pb2

    from benchmarks.speed import profiler

    def instruction(opcode, op_name="", op_type="", calls=()):
        proto = hlo_pb2.HloInstructionProto(opcode=opcode, called_computation_ids=list(calls))
        proto.metadata.op_name, proto.metadata.op_type = op_name, op_type
        return proto

    computations = {
        1: hlo_pb2.HloComputationProto(id=1, instructions=[instruction("parameter"), instruction("dot")]),
        2: hlo_pb2.HloComputationProto(
            id=2, instructions=[instruction("add"), instruction("multiply", op_type="StatelessRandomUniformV2")]
        ),
        3: hlo_pb2.HloComputationProto(id=3, instructions=[instruction("fusion", calls=[1])]),
    }
    scope = re.compile(r"^adam(_\d+)?/")

    def kind(*args, **kwargs):
        return profiler._thunk_kind(instruction(*args, **kwargs), computations, scope)

    assert kind("fusion", op_name="adam_3/AssignSubVariableOp", calls=[1]) == "matmuls"  # the dot, though in adam
    assert kind("fusion", op_name="adam/Mul", calls=[2]) == "random draws"
    assert kind("fusion", op_name="adam_3/AssignSubVariableOp", calls=[]) == "optimizer update"
    assert kind("fusion", op_name="adamax/Mul") == "other element-wise and reductions"
    assert kind("convolution") == "convolutions"
    assert kind("while", calls=[3]) is None  # its body's thunks are counted, not the loop's span
