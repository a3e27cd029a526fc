"""Fault tolerance: SIGKILL and resume, foreign or unwritable model_dir, non-finite losses."""

import os
import random
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

import train
import zoo
from train import loop
from zoo.model_dir import ModelDir, ModelDirError, init_from_chain

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY = dict(arch="mlp", latent_dim=8)


def _cli(model, model_dir, *flags, tfds_dir=None):
    data = ["--dataset=color_mnist", f"--data_dir={tfds_dir}", "--download=false"] if tfds_dir else []
    return [
        sys.executable,
        "-m",
        f"train.{model}",
        *data,
        "--arch=mlp",
        "--latent_dim=8",
        "--batch_size=16",
        f"--model_dir={model_dir}",
        "--nosummary",
        *flags,
    ]


def _env():
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("TF_CONFIG", None)
    return env


def _run(command, timeout=600):
    return subprocess.run(command, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=timeout)


def _timing_steps(model_dir):
    with open(ModelDir(model_dir).timing_file) as f:
        return [int(line.split(",")[0]) for line in f.read().split()[1:]]


def _checkpointed_step(model_dir):
    latest = tf.train.latest_checkpoint(ModelDir(model_dir).checkpoint_dir)
    return None if latest is None else int(latest.rsplit("-", 1)[1])


def test_sigkilled_run_resumes_from_its_last_checkpoint(tmp_path, tfds_dir):
    model_dir = str(tmp_path / "model")
    # One step per execution: timing.csv then has a row per step, which the check below counts.
    command = _cli(
        "vae",
        model_dir,
        "--train_steps=600",
        "--checkpoint_every=10",
        "--eval_examples=0",
        "--steps_per_execution=1",
        tfds_dir=tfds_dir,
    )

    # First run: killed (SIGKILL, no chance to clean up) once it has checkpointed step 20.
    first = subprocess.Popen(command, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 600
    try:
        while (_checkpointed_step(model_dir) or 0) < 20:
            assert first.poll() is None, f"training ended before it was killed: {first.stderr.read()[-2000:]}"
            assert time.monotonic() < deadline, "no checkpoint within 10 minutes"
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
        first.stderr.close()
    assert first.returncode == -signal.SIGKILL
    killed_at = _checkpointed_step(model_dir)
    assert 20 <= killed_at < 600, killed_at
    timed_before = len(_timing_steps(model_dir)) if os.path.exists(ModelDir(model_dir).timing_file) else 0

    # The checkpoint holds the optimizer too, and restore() puts every slot back.
    model = loop.build_model(zoo.get_model_class("vae"), tf.distribute.get_strategy(), image_shape=(28, 28, 3), **TINY)
    assert all(not np.any(v.numpy()) for v in model.optimizer.variables[2:]), "fresh Adam slots are zero"
    assert loop.restore(model, model_dir) == killed_at
    reader = tf.train.load_checkpoint(os.path.join(ModelDir(model_dir).checkpoint_dir, f"ckpt-{killed_at}"))
    assert reader.get_tensor("optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE") == killed_at
    for index, variable in enumerate(model.optimizer.variables[2:], start=2):
        stored = reader.get_tensor(f"optimizer/_variables/{index}/.ATTRIBUTES/VARIABLE_VALUE")
        np.testing.assert_array_equal(variable.numpy(), stored)
    assert any(np.any(v.numpy()) for v in model.optimizer.variables[2:])

    # Second run, same command: continues at the checkpointed step and finishes.
    second = _run(command)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"at step {killed_at}" in second.stderr and "resuming from checkpoint" in second.stderr
    assert "trained vae to step 600" in second.stdout
    # Every step after the checkpoint ran exactly once, none before it ran again.
    assert _timing_steps(model_dir)[timed_before:] == list(range(killed_at + 1, 601))
    final = zoo.load(model_dir)
    assert int(final.optimizer.iterations.numpy()) == 600


def test_a_model_dir_of_another_model_or_arch_is_refused(tmp_path):
    model_dir = str(tmp_path / "model")
    config = {"model": "vae", "arch": "mlp", "dataset": "color_mnist", "latent_dim": 8, "image_shape": [28, 28, 3]}
    ModelDir(model_dir).prepare(config)
    ModelDir(model_dir).prepare(dict(config))  # the same run resumes
    for change in ({"model": "avae"}, {"arch": "conv"}, {"latent_dim": 16}, {"dataset": "mnist"}):
        with pytest.raises(ModelDirError, match=f"holds a different run.*{next(iter(change))}"):
            ModelDir(model_dir).prepare({**config, **change})
    assert ModelDir(model_dir).read_config() == config, "a refused run must not overwrite the directory's config"


def test_a_resume_under_other_hyperparameters_or_training_settings_is_refused(tmp_path):
    directory = ModelDir(tmp_path / "model")
    config = {"model": "avae", "arch": "conv", "dataset": "mnist", "latent_dim": 8, "image_shape": [28, 28, 1]}
    config["rho"] = 0.975
    flags = {"learning_rate": 3e-4, "shift_pixels": 0, "seed": 0}
    directory.prepare(config, flags={**flags, "checkpoint_every": 500})
    directory.check(
        {**config, "rho": 0.9}, flags
    )  # no weights yet (stopped before its first checkpoint): it starts afresh
    os.makedirs(directory.checkpoint_dir)
    open(os.path.join(directory.checkpoint_dir, "ckpt-500.index"), "w").close()
    directory.check(dict(config, image_shape=(28, 28, 1)), flags)  # the same run resumes (a tuple is its list)
    for config_change, flags_change, named in (
        ({"rho": 0.9}, {}, "rho=0.975 (this run: 0.9)"),
        ({}, {"learning_rate": 1e-4}, "learning_rate=0.0003 (this run: 0.0001)"),
        ({}, {"shift_pixels": 2}, "shift_pixels=0 (this run: 2)"),
    ):
        with pytest.raises(ModelDirError, match=re.escape(f"trained with other settings ({named}); resuming")):
            directory.check({**config, **config_change}, {**flags, **flags_change})
    # What only one side records is not compared: a directory from before a setting existed, or a setting that is
    # not among the trajectory's (checkpoint_every).
    directory.check({**config, "new_hyperparameter": 1}, {**flags, "learning_rate_schedule": "constant"})


def test_a_run_grows_its_budget_unless_a_schedule_spreads_the_rate_over_it(tmp_path):
    options = dict(train_steps=2, latent_dim=8, eval_examples=0, summary=False, verbose=0)
    train.run("vae", str(tmp_path / "constant"), **options)
    grown = train.run("vae", str(tmp_path / "constant"), **{**options, "train_steps": 4})
    assert grown.step == 4
    with pytest.raises(ModelDirError, match=r"other settings \(learning_rate=0.0003 \(this run: 0.001\)\)"):
        train.run("vae", str(tmp_path / "constant"), **{**options, "train_steps": 6, "learning_rate": 1e-3})
    lowered = train.run(
        "vae",
        str(tmp_path / "constant"),
        **{**options, "train_steps": 6, "learning_rate": 1e-5},
        allow_new_settings=True,
    )
    assert lowered.step == 6 and ModelDir(lowered.model_dir).read_flags()["learning_rate"] == 1e-5
    train.run("vae", str(tmp_path / "cosine"), learning_rate_schedule="cosine", **options)
    with pytest.raises(ModelDirError, match=r"other settings \(train_steps=2 \(this run: 4\)\)"):
        train.run("vae", str(tmp_path / "cosine"), learning_rate_schedule="cosine", **{**options, "train_steps": 4})
    assert train.run("vae", str(tmp_path / "cosine"), learning_rate_schedule="cosine", **options).step == 2


def test_a_json_write_that_fails_leaves_the_old_file_whole(tmp_path):
    # Another worker reads the chief's config.json while the chief writes it: a reader must never see half a
    # file, and a writer that dies midway must not destroy the old one.
    directory = ModelDir(tmp_path)
    directory.write_json(directory.config_file, {"model": "avae"})
    with pytest.raises(TypeError):
        directory.write_json(directory.config_file, {"model": "avae", "rho": object()})  # fails mid-serialisation
    assert directory.read_config() == {"model": "avae"}
    assert os.listdir(tmp_path) == [ModelDir.CONFIG]


def test_init_from_chain_follows_flags_back_and_ends_at_a_cycle(tmp_path):
    run, first, second = (ModelDir(tmp_path / name) for name in ("run", "first", "second"))
    for directory, source in ((run, second), (second, first), (first, run)):  # first names run: a cycle
        os.makedirs(directory.path)
        directory.write_json(directory.flags_file, {"init_from": source.path})
    chain = [directory.path for directory in init_from_chain(second.path, after=run.path)]
    assert chain == [second.path, first.path]  # run itself is not yielded again
    assert [d.path for d in init_from_chain(second.path)] == [second.path, first.path, run.path]
    gone = str(tmp_path / "gone")  # a missing directory is yielded; the chain ends there
    assert [d.path for d in init_from_chain(gone)] == [gone]
    assert list(init_from_chain(None)) == []


def test_training_refuses_another_models_dir_at_start(tmp_path):
    model_dir = str(tmp_path / "model")
    config = {
        "model": "vae",
        "arch": "mlp",
        "dataset": "color_mnist_embedded",
        "latent_dim": 8,
        "image_shape": [28, 28, 3],
    }
    ModelDir(model_dir).prepare(config)
    with pytest.raises(ModelDirError, match=r"holds a different run \(model='vae' \(this run: 'avae'\)\)"):
        train.run("avae", model_dir, dataset="color_mnist_embedded", train_steps=2, **TINY)
    assert sorted(os.listdir(model_dir)) == [ModelDir.CONFIG]


def test_an_unwritable_model_dir_fails_at_start(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(ModelDirError, match="is not writable"):
        ModelDir(str(blocker / "model")).prepare({"model": "vae"})
    if os.geteuid() != 0:  # root writes anywhere, whatever the mode
        read_only = tmp_path / "read_only"
        read_only.mkdir(mode=0o500)
        with pytest.raises(ModelDirError, match="is not writable"):
            ModelDir(str(read_only)).prepare({"model": "vae"})


def _poisoned_data(bad_batch):
    """Batches of 16 random 8x8 images; batch `bad_batch` (0-based, from the start) holds a NaN."""
    images = np.random.default_rng(0).uniform(size=(bad_batch + 1, 16, 8, 8, 1)).astype("float32")
    images[bad_batch, 0, 0, 0, 0] = np.nan

    def make(initial_step):
        del initial_step
        return tf.data.Dataset.from_tensor_slices(images).repeat()

    return make


@pytest.mark.parametrize("steps_per_execution,at", [(1, "at step 8;"), (4, "at steps 5-8 ")])
def test_a_non_finite_loss_stops_cleanly_and_keeps_the_last_good_checkpoint(tmp_path, steps_per_execution, at):
    model_dir = str(tmp_path / "model")
    model = loop.build_model(
        zoo.get_model_class("vae"),
        tf.distribute.get_strategy(),
        image_shape=(8, 8, 1),
        steps_per_execution=steps_per_execution,
        **TINY,
    )
    # The 8th batch is poisoned: steps 1-7 are finite, step 8's loss is NaN.
    with pytest.raises(loop.NonFiniteLossError, match=at) as error:
        loop.train(model, _poisoned_data(7), model_dir, train_steps=40, checkpoint_every=4, verbose=0)
    good = 4
    assert f"ckpt-{good}" in str(error.value)
    assert _checkpointed_step(model_dir) == good
    assert not ModelDir(model_dir).has_model()
    restored = loop.build_model(zoo.get_model_class("vae"), tf.distribute.get_strategy(), image_shape=(8, 8, 1), **TINY)
    assert loop.restore(restored, model_dir) == good
    assert all(np.all(np.isfinite(w)) for w in restored.get_weights())


def test_a_run_reports_a_non_finite_loss_with_its_step(tmp_path):
    model_dir = str(tmp_path / "model")
    # Adam moves every weight by about the learning rate: 1e30 overflows the next forward pass.
    with pytest.raises(loop.NonFiniteLossError) as error:
        train.run(
            "vae",
            model_dir,
            dataset="color_mnist_embedded",
            learning_rate=1e30,
            train_steps=50,
            checkpoint_every=1,
            eval_examples=0,
            batch_size=16,
            verbose=0,
            **TINY,
        )
    match = re.search(
        r"loss became non-finite at step (\d+); training stopped, last good checkpoint kept: (\S+)", str(error.value)
    )
    assert match, str(error.value)
    step = int(match.group(1))
    assert match.group(2).endswith(f"ckpt-{step - 1}") and _checkpointed_step(model_dir) == step - 1


# The drill (issue 43): an MLP AVAE killed at random moments, one of them inside a checkpoint write, resumes each
# time with other checkpoint intervals and XLA programs, and ends with the weights of the run never killed.
_DRILL = [
    "--dataset=color_mnist_embedded",
    "--arch=mlp",
    "--latent_dim=8",
    "--batch_size=16",
    "--eval_examples=0",
    "--nosummary",
    "--train_steps=300",
]
# Runs train.avae's command line in a process that SIGKILLs itself while checkpointing step $KILL_AT_CHECKPOINT:
# after the checkpoint's files are written, before the state file records it.
_DYING_IN_A_CHECKPOINT_WRITE = """
import os, signal, sys
from train import cli
from tensorflow.python.checkpoint import checkpoint_management
record = checkpoint_management.update_checkpoint_state_internal
def dying(save_dir, model_checkpoint_path, *args, **kwargs):
    if model_checkpoint_path.endswith("-" + os.environ["KILL_AT_CHECKPOINT"]):
        os.kill(os.getpid(), signal.SIGKILL)
    return record(save_dir, model_checkpoint_path, *args, **kwargs)
checkpoint_management.update_checkpoint_state_internal = dying
sys.argv = ["train.avae", *sys.argv[1:]]
cli.main("avae")
"""


def _digest(stdout):
    match = re.search(r"weights digest ([0-9a-f]+)", stdout)
    assert match, stdout[-2000:]
    return match.group(1)


def _checkpoint_steps(model_dir):
    directory = ModelDir(model_dir).checkpoint_dir
    names = os.listdir(directory) if os.path.isdir(directory) else []
    return sorted(int(n[len("ckpt-") : -len(".index")]) for n in names if re.fullmatch(r"ckpt-\d+\.index", n))


def _kill_after_next_checkpoint(command, model_dir, delay, env=None):
    """Starts `command`, waits for a checkpoint newer than those on disk, sleeps `delay` s, SIGKILLs it (unless it
    died or finished first); returns its exit code."""
    seen = max(_checkpoint_steps(model_dir), default=0)
    process = subprocess.Popen(command, cwd=REPO, env=env or _env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    try:
        while process.poll() is None and max(_checkpoint_steps(model_dir), default=0) <= seen:
            assert time.monotonic() < deadline, "no new checkpoint within 5 minutes"
            time.sleep(0.02)
        time.sleep(delay)
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
        stderr = process.stderr.read()
        process.stderr.close()
    assert process.returncode in (0, -signal.SIGKILL), stderr[-3000:]
    return process.returncode


def test_a_run_killed_at_random_moments_ends_with_the_weights_of_the_run_never_killed(tmp_path):
    never_killed = _run(
        [sys.executable, "-m", "train.avae", *_DRILL, f"--model_dir={tmp_path / 'whole'}", "--checkpoint_every=25"]
    )
    assert never_killed.returncode == 0, never_killed.stderr[-3000:]

    model_dir = str(tmp_path / "killed")
    delays = random.Random(0)
    # Each run changes the checkpoint interval (and with it steps_per_execution) or the XLA program length.
    runs = [
        ("--checkpoint_every=25",),
        ("--checkpoint_every=40", "--steps_per_xla_program=2"),
        ("--checkpoint_every=30",),
        ("--checkpoint_every=25", "--steps_per_xla_program=3"),
    ]
    killed = 0
    for flags in runs:
        command = [sys.executable, "-m", "train.avae", *_DRILL, f"--model_dir={model_dir}", *flags]
        killed += _kill_after_next_checkpoint(command, model_dir, delays.uniform(0, 0.3)) == -signal.SIGKILL
    # Killed inside a checkpoint write: its files are on disk, the state file does not name them yet.
    dying_at = max(_checkpoint_steps(model_dir)) + 30
    command = [
        sys.executable,
        "-c",
        _DYING_IN_A_CHECKPOINT_WRITE,
        *_DRILL,
        f"--model_dir={model_dir}",
        "--checkpoint_every=30",
    ]
    assert _kill_after_next_checkpoint(command, model_dir, 5.0, {**_env(), "KILL_AT_CHECKPOINT": str(dying_at)}) == (
        -signal.SIGKILL
    )
    assert dying_at in _checkpoint_steps(model_dir)
    assert _checkpointed_step(model_dir) < dying_at, "the state file was not to record the checkpoint being written"
    assert killed >= 3, f"only {killed} of {len(runs)} runs were killed before they finished"

    resumed = _run([sys.executable, "-m", "train.avae", *_DRILL, f"--model_dir={model_dir}", "--checkpoint_every=50"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"ckpt-{dying_at} at step {dying_at}" in resumed.stderr  # it resumed from the unrecorded checkpoint
    assert _digest(resumed.stdout) == _digest(never_killed.stdout)


# A tiny VAE on the embedded digits, checkpointed every 10 steps, with nothing printed.
_QUIET_EMBEDDED = dict(
    dataset="color_mnist_embedded",
    eval_examples=0,
    batch_size=16,
    checkpoint_every=10,
    verbose=0,
    summary=False,
    **TINY,
)


def _truncate(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def test_a_damaged_newest_checkpoint_is_moved_aside_and_the_run_resumes_from_the_one_before(tmp_path, caplog):
    options = _QUIET_EMBEDDED
    whole = train.run("vae", str(tmp_path / "whole"), train_steps=40, **options)
    model_dir = str(tmp_path / "model")
    train.run("vae", model_dir, train_steps=30, **options)
    checkpoints = ModelDir(model_dir).checkpoint_dir
    _truncate(os.path.join(checkpoints, "ckpt-30.data-00000-of-00001"))

    with caplog.at_level("WARNING"):
        resumed = train.run("vae", model_dir, train_steps=40, **options)
    damaged = [r.getMessage() for r in caplog.records if "does not restore" in r.getMessage()]
    assert len(damaged) == 1 and "ckpt-30" in damaged[0], damaged
    assert any("at step 20" in r.getMessage() for r in caplog.records if "resuming" in r.getMessage())
    assert sorted(os.listdir(os.path.join(checkpoints, loop.DAMAGED))) == [
        "ckpt-30.data-00000-of-00001",
        "ckpt-30.index",
    ]
    assert resumed.step == 40 and resumed.weights_digest == whole.weights_digest
    assert _checkpoint_steps(model_dir)[-1] == 40


def test_with_every_checkpoint_damaged_the_run_says_so_and_writes_nothing_else(tmp_path):
    model_dir = str(tmp_path / "model")
    options = _QUIET_EMBEDDED
    train.run("vae", model_dir, train_steps=20, **options)
    checkpoints = ModelDir(model_dir).checkpoint_dir
    for step in (10, 20):
        _truncate(os.path.join(checkpoints, f"ckpt-{step}.data-00000-of-00001"))
    before = {name: os.path.getmtime(os.path.join(model_dir, name)) for name in (ModelDir.CONFIG, ModelDir.FLAGS)}
    with pytest.raises(loop.CheckpointError, match=r"none of the 2 checkpoints .* restores .*start afresh"):
        train.run("vae", model_dir, train_steps=30, learning_rate=3e-4, **options)
    assert {name: os.path.getmtime(os.path.join(model_dir, name)) for name in before} == before
    assert sorted(os.listdir(os.path.join(checkpoints, loop.DAMAGED))) == [
        f"ckpt-{step}.{part}" for step in (10, 20) for part in ("data-00000-of-00001", "index")
    ]

    # The command line: one sentence, exit 1, no traceback.
    command = [sys.executable, "-m", "train.vae", *_DRILL[:5], "--train_steps=30", f"--model_dir={model_dir}"]
    os.makedirs(os.path.join(checkpoints, "moved"))
    for name in os.listdir(os.path.join(checkpoints, loop.DAMAGED)):
        os.rename(os.path.join(checkpoints, loop.DAMAGED, name), os.path.join(checkpoints, name))
    result = _run(command)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert re.search(r"^error: none of the 2 checkpoints .* restores", result.stderr, re.M), result.stderr[-2000:]


def test_a_damaged_model_file_is_one_sentence_for_load_evaluate_and_export(tmp_path):
    model_dir = str(tmp_path / "model")
    train.run("vae", model_dir, train_steps=2, **{**_QUIET_EMBEDDED, "checkpoint_every": 2})
    _truncate(ModelDir(model_dir).model_file)
    with pytest.raises(ModelDirError, match="model.keras is damaged"):
        zoo.load(model_dir)
    for command in (
        ["evaluate.robustness", f"--model_dir={model_dir}", f"--output_dir={tmp_path / 'eval'}"],
        ["export.encoder", f"--model_dir={model_dir}", f"--export_base={tmp_path / 'export'}"],
    ):
        result = _run([sys.executable, "-m", *command])
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
        assert "model.keras is damaged" in result.stderr.strip().splitlines()[-1]
    # Training again writes it anew from the last checkpoint.
    train.run("vae", model_dir, train_steps=2, **{**_QUIET_EMBEDDED, "checkpoint_every": 2})
    assert int(zoo.load(model_dir).optimizer.iterations.numpy()) == 2
