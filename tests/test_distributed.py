"""tf.distribute: mirrored on virtual CPUs equals one device; two workers agree; chief-only outputs.

Virtual CPUs must be configured before TensorFlow initialises its devices, and a multi-worker
strategy owns its process, so these run training in subprocesses (tiny: mlp, latent 8).
"""

import json
import os
import re
import socket
import subprocess
import sys

import numpy as np
import pytest

import zoo
from train import distribute
from zoo.model_dir import ModelDir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# One device vs MirroredStrategy over 2 virtual CPUs on the same global batch of 8, through the
# model's own train_step under keras fit. The posterior is made (numerically) deterministic,
# std = exp(-30), and the delusion is the decoder's mean image, so the per-replica noise streams, which
# differ by design, do not enter the comparison; everything else (loss scaling over replicas, metric averaging) does.
_MIRRORED_SCRIPT = r"""
import json
import numpy as np
from train import distribute, loop
distribute.split_cpu(2)
import keras, tensorflow as tf
import zoo

IMAGE = (28, 28, 3)
x = tf.random.stateless_uniform([8, *IMAGE], seed=[1, 2])
data = tf.data.Dataset.from_tensors((x, {"digit": tf.zeros([8], tf.int32)})).repeat()
one = tf.distribute.OneDeviceStrategy("/cpu:0")
mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
out = {"replicas": mirrored.num_replicas_in_sync}

def build(strategy, weights):
    # delusion="mean": a sampled delusion is noise too, drawn per replica by design.
    model = loop.build_model(zoo.get_model_class("avae"), strategy, learning_rate=1e-3, image_shape=IMAGE, arch="mlp",
                             latent_dim=8, delusion="mean")
    if weights is not None:
        model.set_weights(weights)
    return model

def deterministic(model):
    head = model.encoder.get_layer("z_log_var")
    head.kernel.assign(np.zeros(head.kernel.shape, "float32"))
    head.bias.assign(np.full(head.bias.shape, -60.0, "float32"))
    return model.get_weights()

keras.utils.set_random_seed(0)
start = deterministic(build(one, None))
for optimizer, steps in (("sgd", 1), ("adam", 2)):
    results = {}
    for name, strategy in (("one", one), ("mirrored", mirrored)):
        model = build(strategy, start)
        if optimizer == "sgd":  # Adam's first steps hardly depend on the gradient's scale; SGD's do
            with strategy.scope():
                model.compile(optimizer=keras.optimizers.SGD(1e-4))
        history = model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0)
        results[name] = (model, history.history)
    deltas = [[w - s for w, s in zip(results[name][0].get_weights(), start)] for name in ("one", "mirrored")]
    scale = max(float(np.max(np.abs(d))) for d in deltas[0])
    out[optimizer] = {
        "max_delta": scale,
        "max_delta_difference": max(float(np.max(np.abs(a - b))) for a, b in zip(*deltas)),
        "fraction_off": float(np.mean(np.concatenate([np.abs(a - b).ravel() for a, b in zip(*deltas)]) > 1e-3 * scale)),
        "history": {name: results[name][1] for name in results},
        "replicas_in_sync": all(
            np.array_equal(*[t.numpy() for t in mirrored.experimental_local_results(v.value)])
            for v in results["mirrored"][0].trainable_variables
        ),
    }

# Per-replica noise seeds at the current step, and the noise they draw.
model = results["mirrored"][0]
step = int(model.optimizer.iterations.numpy())
seeds = mirrored.run(tf.function(lambda: model.noise_seed(0)))
noise = mirrored.run(tf.function(lambda: tf.random.stateless_normal([4], seed=model.noise_seed(0))))
out["step"] = step
out["seeds"] = [t.numpy().tolist() for t in mirrored.experimental_local_results(seeds)]
out["noise"] = [t.numpy().tolist() for t in mirrored.experimental_local_results(noise)]

# --jit_compile cannot compile a multi-replica step: build_model turns it off, training still runs.
jit = loop.build_model(zoo.get_model_class("vae"), mirrored, jit_compile=True, image_shape=IMAGE, arch="mlp", latent_dim=8)
out["jit_compile_under_mirrored"] = bool(jit.jit_compile)
out["jit_history"] = jit.fit(data, steps_per_epoch=1, epochs=1, verbose=0).history
print("RESULT " + json.dumps(out))
"""


def _python(code_or_args, env=None, timeout=600):
    args = ["-c", code_or_args] if isinstance(code_or_args, str) else code_or_args
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    full_env.pop("TF_CONFIG", None)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout
    )


def _result(process):
    assert process.returncode == 0, process.stderr[-3000:]
    lines = [line for line in process.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, process.stdout[-2000:]
    return json.loads(lines[-1][len("RESULT ") :])


@pytest.fixture(scope="module")
def mirrored_run():
    return _result(_python(_MIRRORED_SCRIPT))


def test_mirrored_on_two_virtual_cpus_equals_one_device(mirrored_run):
    assert mirrored_run["replicas"] == 2
    for optimizer in ("sgd", "adam"):
        run = mirrored_run[optimizer]
        assert run["max_delta"] > 0
        # Same update: the loss is divided by the replica count, the gradients summed over replicas.
        # SGD shows a wrong gradient scale at once. Adam is nearly scale-free and turns the
        # summation-order rounding of near-zero gradients into a few larger differences: almost
        # every weight must agree.
        if optimizer == "sgd":
            assert run["max_delta_difference"] <= 1e-3 * run["max_delta"], run
        else:
            assert run["fraction_off"] <= 1e-4, run
        # Same reported numbers: the metrics are per-example means, not per-replica shares.
        one, mirrored = run["history"]["one"], run["history"]["mirrored"]
        assert set(one) == set(mirrored) >= {"loss", "elbo", "kl", "coupling_log_prob", "delusion_entropy"}
        for name in one:
            np.testing.assert_allclose(mirrored[name], one[name], rtol=1e-5, atol=1e-5, err_msg=name)
        assert run["replicas_in_sync"], "the replicas' copies of the weights differ"


def test_replicas_draw_different_noise_from_seeded_streams(mirrored_run):
    step, seeds, noise = mirrored_run["step"], mirrored_run["seeds"], mirrored_run["noise"]
    # model seed 0: [salt, step * replicas + replica], so every (step, replica) has its own stream.
    assert seeds == [[0, 2 * step], [0, 2 * step + 1]]
    assert not np.allclose(noise[0], noise[1])


def test_jit_compile_is_turned_off_not_fatal_with_several_replicas(mirrored_run):
    assert mirrored_run["jit_compile_under_mirrored"] is False
    assert np.isfinite(mirrored_run["jit_history"]["loss"][0])


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _tiny_avae_on_color_mnist(strategy, tfds_dir, model_dir, *flags, train_steps, checkpoint_every):
    """`python -m train.avae` arguments: a tiny run (mlp, latent 8, batches of 16, 40 validation examples) on
    ColorMNIST, under `strategy`, with `flags` besides."""
    return [
        "-m",
        "train.avae",
        f"--strategy={strategy}",
        *flags,
        "--dataset=color_mnist",
        f"--data_dir={tfds_dir}",
        "--download=false",
        "--arch=mlp",
        "--latent_dim=8",
        "--batch_size=16",
        f"--train_steps={train_steps}",
        f"--checkpoint_every={checkpoint_every}",
        "--eval_examples=40",
        f"--model_dir={model_dir}",
    ]


def test_two_workers_train_to_identical_weights_and_only_the_chief_writes(tmp_path, tfds_dir):
    model_dir = tmp_path / "model"
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    args = _tiny_avae_on_color_mnist("multi_worker", tfds_dir, model_dir, train_steps=6, checkpoint_every=3)
    processes = []
    for index in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "TF_CONFIG": json.dumps(tf_config)}
        processes.append(
            subprocess.Popen(
                [sys.executable, *args], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    outputs = []
    try:
        for process in processes:
            outputs.append(process.communicate(timeout=600))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    # Both workers' logs: when one crashes, the other only reports missed heartbeats.
    logs = "\n".join(
        f"--- worker {index} (exit {process.returncode}) ---\n{stderr[-3000:]}"
        for index, (process, (_, stderr)) in enumerate(zip(processes, outputs))
    )
    assert all(process.returncode == 0 for process in processes), logs
    digests = [re.search(r"to step 6 \(weights digest (\w+)\)", stdout) for stdout, _ in outputs]
    assert all(digests), [stdout for stdout, _ in outputs]
    assert digests[0].group(1) == digests[1].group(1), "the workers ended with different weights"
    assert "model saved in" in outputs[0][0] and "the chief saved the model" in outputs[1][0]
    # The chief's summary (default on) runs after the other worker has gone: it must need no collective.
    assert "test ELBO" in outputs[0][0] and "robustness check (digit" in outputs[0][0]

    # One set of outputs, the chief's; the other worker's temporary directory is gone.
    directory = ModelDir(model_dir)
    assert sorted(os.listdir(model_dir)) == sorted(
        [
            ModelDir.CHECKPOINTS,
            ModelDir.CONFIG,
            ModelDir.FLAGS,
            ModelDir.LOGS,
            ModelDir.MODEL,
            ModelDir.SUMMARY,
            ModelDir.TIMING,
        ]
    )
    with open(directory.timing_file) as f:
        assert [int(row.split(",")[0]) for row in f.read().split()[1:]] == [1, 2, 3, 4, 5, 6]
    model = zoo.load(model_dir)
    assert zoo.weights_digest(model) == digests[0].group(1)
    assert int(model.optimizer.iterations.numpy()) == 6


def test_multi_worker_without_tf_config_fails_clearly(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="TF_CONFIG"):
        distribute.make_strategy("multi_worker")


def test_the_command_line_trains_mirrored_on_two_virtual_cpus(tmp_path, tfds_dir):
    # 40 validation examples in batches of 16 end with a batch of 8, which the split into per-replica
    # batches of 8 would leave replica 2 without: validation keeps whole global batches.
    model_dir = tmp_path / "model"
    result = _python(
        _tiny_avae_on_color_mnist(
            "mirrored", tfds_dir, model_dir, "--virtual_cpus=2", "--nosummary", train_steps=4, checkpoint_every=2
        )
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "trained avae to step 4" in result.stdout
    assert ModelDir(model_dir).has_model()


def test_a_mirrored_run_stopped_and_resumed_ends_with_the_weights_of_the_run_never_stopped(tmp_path):
    # The data order is a pure function of (seed, epoch) and every draw of (seed, step, replica): a resumed
    # mirrored run reads and draws what the uninterrupted one did.
    flags = [
        "-m",
        "train.avae",
        "--strategy=mirrored",
        "--virtual_cpus=2",
        "--arch=mlp",
        "--latent_dim=8",
        "--batch_size=16",
        "--checkpoint_every=10",
        "--eval_examples=0",
        "--nosummary",
    ]

    def digest(model_dir, steps):
        result = _python([*flags, f"--train_steps={steps}", f"--model_dir={model_dir}"])
        assert result.returncode == 0, result.stderr[-3000:]
        return re.search(rf"to step {steps} \(weights digest (\w+)\)", result.stdout).group(1)

    whole = digest(tmp_path / "whole", 40)
    digest(tmp_path / "resumed", 20)
    assert digest(tmp_path / "resumed", 40) == whole
