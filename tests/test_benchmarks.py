"""What every benchmark program shares (benchmarks.runs), and benchmarks.precision on its study."""

import glob
import json
import os
import subprocess
import sys

import pytest

import zoo
from benchmarks import precision, runs
from tests.conftest import REPO, run_module
from train import study as studies

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
            "print('study' in set(flags.FLAGS) - before)",
        ]
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "precision" in BENCHMARKS and "robustness_ablations" in BENCHMARKS and "train_speed" in BENCHMARKS
    assert run.stdout.strip().splitlines()[-2:] == ["[]", "True"]


def test_a_steps_time_is_the_median_after_the_tracing_steps(tmp_path):
    def timing(seconds):
        model_dir = tmp_path / str(len(seconds))
        model_dir.mkdir()
        rows = [f"{step},{value}" for step, value in enumerate(seconds, 1)]
        (model_dir / "timing.csv").write_text("\n".join(["step,seconds", *rows]) + "\n")
        return str(model_dir)

    assert runs.step_seconds(timing([9.0, 8.0, 7.0, 6.0, 5.0, 0.3, 0.1, 0.2])) == 0.2  # the first five left out
    assert runs.step_seconds(timing([9.0, 0.1, 0.2])) == 0.2  # a run too short for that: all of its steps


def test_the_precision_study_is_the_committed_rows_each_against_float32_of_its_model():
    study = studies.read_study(os.path.join(REPO, "configs", "precision"))
    pairs = precision.plan(study)
    with open(os.path.join(REPO, "results", "precision.json")) as f:
        assert {run.name for run, _ in pairs} == set(json.load(f))  # the study makes the committed rows
    by_name = {run.name: run for run, _ in pairs}
    references = [run.name for run, reference in pairs if reference is None]
    assert references == ["avae_conv_float32", "avae_mlp_float32", "vae_mlp_float32"]  # measured first
    for run, reference in pairs:
        if reference is None:
            assert (run.options["precision"], run.options["seed"]) == ("float32", 0)
            continue
        other = by_name[reference].options
        differing = {key for key in run.options if run.options[key] != other[key]}
        assert differing == ({"seed"} if run.name.endswith("_seed+1") else {"precision"}), run.name
        assert run.options["seed"] == other["seed"] + run.name.endswith("_seed+1")
    assert by_name["avae_conv_float32"].options["train_steps"] == 500
    assert by_name["vae_mlp_float32"].options["train_steps"] == 30_000
    # --only adds the float32 run each chosen run is compared with.
    chosen = precision.plan(study, ["vae_mlp_mixed_bfloat16"])
    assert [(run.name, reference) for run, reference in chosen] == [
        ("vae_mlp_float32", None),
        ("vae_mlp_mixed_bfloat16", "vae_mlp_float32"),
    ]


def _precision_study(folder, runs_=None):
    """A study of tiny mlp VAEs, {name: (precision, seed)}, whose evaluation is never run."""
    os.makedirs(folder)
    for name, (value, seed) in (runs_ or {"vae_mlp_float32": ("float32", 0)}).items():
        config = {"model": "vae", "arch": "mlp", "precision": value, "seed": seed, "latent_dim": 8, "batch_size": 16}
        config.update(train_steps=3, checkpoint_every=3, eval_examples=0, summary=False)
        with open(os.path.join(folder, f"{name}.json"), "w") as f:
            json.dump(config, f)
    evaluate = {"stages": ["accuracy"], "num_examples": 10}
    with open(os.path.join(folder, studies.STUDY_FILE), "w") as f:
        json.dump({"description": "tiny", "evaluate": evaluate, "report": {"output_dir": "results/tiny"}}, f)
    return str(folder)


F32 = {"vae_mlp_float32": ("float32", 0)}
BF16 = {"vae_mlp_mixed_bfloat16": ("mixed_bfloat16", 0)}


@pytest.mark.parametrize(
    "runs_,changes,message",
    [
        (BF16, {}, "run vae_mlp_mixed_bfloat16 has no float32 run of vae mlp to be compared with"),
        ({**F32, "vae_mlp_float32_seed1": ("float32", 1)}, {}, r"from seed 1: name it vae_mlp_float32_seed\+1.json"),
        ({**F32, **BF16}, {"train_steps": 4}, "run vae_mlp_mixed_bfloat16 differs from vae_mlp_float32 in train_steps"),
        (
            {**F32, "vae_mlp_auto": ("auto", 0)},
            {},
            "precision 'auto'; choose from float32, mixed_bfloat16, mixed_float16",
        ),
    ],
)
def test_runs_that_cannot_be_compared_are_refused_in_one_sentence(tmp_path, runs_, changes, message):
    folder = _precision_study(tmp_path / "tiny", runs_)
    for name in set(runs_) - set(F32):
        path = os.path.join(folder, f"{name}.json")
        with open(path) as f:
            config = {**json.load(f), **changes}
        with open(path, "w") as f:
            json.dump(config, f)
    with pytest.raises(studies.StudyError, match=message) as error:
        precision.plan(studies.read_study(folder))
    assert "\n" not in str(error.value)


def test_precision_trains_with_the_runner_and_compares_each_run_with_float32(tmp_path):
    runs_ = {**F32, **BF16}
    study = studies.read_study(_precision_study(tmp_path / "tiny", runs_))
    runs_dir, output = str(tmp_path / "runs"), str(tmp_path / "results")
    measurement = precision.Measurement(
        eval_examples=16, probe_examples=50, num_examples=20, epsilons=(0.1,), pgd_steps=1, restarts=1
    )
    rows = precision.train_and_measure(
        study, ["vae_mlp_mixed_bfloat16"], runs_dir, output, measurement, command="m", log=lambda line: None
    )
    assert set(rows) == set(runs_)  # the float32 reference came with the run chosen
    reference, mixed = rows["vae_mlp_float32"], rows["vae_mlp_mixed_bfloat16"]
    for name, row in rows.items():
        assert row["steps"] == 3 and os.path.exists(os.path.join(runs_dir, "tiny", name, "model.keras"))
        config = os.path.join(study.path, f"{name}.json")
        assert row["train_command"] == f"python -m train --config={config} --model_dir={runs_dir}/tiny/{name}"
        assert set(row["accuracy"]) == {"clean", "0.1"} and row["attacked_examples"] == 20
    assert "comparison" not in reference and "test_own_precision" not in reference
    assert mixed["comparison"] == precision.compare(mixed, reference)
    assert abs(mixed["test_own_precision"]["elbo"] - mixed["test"]["elbo"]) < 0.05 * abs(mixed["test"]["elbo"])
    with open(os.path.join(output, "precision.json")) as f:
        assert json.load(f) == rows
    with open(os.path.join(output, "precision.md")) as f:
        assert "- `vae_mlp_mixed_bfloat16`: ELBO " in f.read()


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


def test_the_command_line_refuses_runs_it_cannot_compare_in_one_line(tmp_path):
    folder = _precision_study(tmp_path / "tiny", BF16)
    run = run_module("benchmarks.precision", f"--study={folder}", f"--runs_dir={tmp_path / 'runs'}", timeout=300)
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr[-2000:]
    assert run.stderr.strip().splitlines()[-1] == (
        "error: run vae_mlp_mixed_bfloat16 has no float32 run of vae mlp to be compared with"
    )
    assert not os.path.exists(tmp_path / "runs")


def test_union_length_counts_overlapping_thunks_once():
    from benchmarks.speed import profiler

    assert profiler.union_length([(5.0, 6.0), (0.0, 2.0), (1.0, 3.0)]) == 4.0
    assert profiler.union_length([(0, 10), (2, 3), (9, 12), (12, 13)]) == 13
    assert profiler.union_length([]) == 0.0


def test_the_flops_of_the_mlp_vae_step_are_its_forward_pass_three_times_less_the_first_input_gradient():
    import tensorflow as tf

    from benchmarks.speed import flops
    from train import loop

    model = loop.build_model(
        zoo.get_model_class("vae"), tf.distribute.get_strategy(), image_shape=(28, 28, 3), arch="mlp", latent_dim=64
    )
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
