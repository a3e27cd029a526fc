"""serving.server in a subprocess: TF Serving's REST and gRPC APIs, errors, flags, load, hot swap, SIGTERM."""

import base64
import concurrent.futures
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import keras
import numpy as np
import orjson
import pytest
import tensorflow as tf

from export import encoder
from train import loop
from zoo import registry

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPE = (28, 28, 1)
LATENT = 8
NAME = "avae"
MAX_BYTES = 2_000_000
BATCHING = "max_batch_size { value: 32 }\nbatch_timeout_micros { value: 2000 }\nnum_batch_threads { value: 2 }\n"


IGNORED_FLAGS = [
    "--flush_filesystem_caches=false",
    "--ssl_config_file=/nonexistent/ssl.config",
    "--per_process_gpu_memory_fraction=0.5",
    "--monitoring_config_file=/nonexistent/monitoring.config",
    "--xla_cpu_compilation_enabled=true",
    "--enable_profiler=false",
    "--num_load_threads=2",
]
TF_SERVING_FLAGS = [
    "--rest_api_enable_cors_support",
    "--grpc_channel_arguments=grpc.max_receive_message_length=65536",
    "--saved_model_tags=serve",
    "--max_num_load_retries=0",
    "--load_retry_interval_micros=0",
    "--file_system_poll_wait_seconds=0.2",
    "--tensorflow_session_parallelism=2",
    "--enable_serialization_as_tensor_content=false",
    *IGNORED_FLAGS,
]


def tiny_model(seed):
    registry.import_all_models()
    keras.utils.set_random_seed(seed)  # its weights: two seeds, two different models to swap between
    model = loop.build_model(
        registry.get_model_class("avae"),
        tf.distribute.get_strategy(),
        image_shape=SHAPE,
        arch="mlp",
        latent_dim=LATENT,
        seed=seed,
    )
    keras_seed_images = np.random.default_rng(seed).uniform(size=(2, *SHAPE)).astype(np.float32)
    model(keras_seed_images)
    return model


def images(n, seed):
    return np.random.default_rng(seed).uniform(size=(n, *SHAPE)).astype(np.float32)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """`python -m serving.server` on free loopback ports."""

    def __init__(self, base_path, *flags):
        self.rest_port, self.grpc_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.rest_port}"
        cmd = [
            sys.executable,
            "-m",
            "serving.server",
            f"--model_name={NAME}",
            f"--model_base_path={base_path}",
            f"--rest_api_port={self.rest_port}",
            f"--port={self.grpc_port}",
            *flags,
        ]
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
        self.log = open(os.path.join(os.path.dirname(base_path), f"server-{self.rest_port}.log"), "w+")
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout=180, processes=1):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                ready = (
                    self.output(tail=None).count("Exporting HTTP/REST API at:") >= 2 * processes
                )  # logged and printed
                if ready and httpx.get(f"{self.url}/v1/models/{NAME}", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"server not ready after {timeout}s:\n{self.output()}")

    def output(self, tail=5000):
        self.log.flush()
        self.log.seek(0)
        text = self.log.read()
        return text[-tail:] if tail else text

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def reference(path):
    """In-process results of the exported SavedModel, per signature."""
    loaded = tf.saved_model.load(path)

    def run(signature="serving_default", **inputs):
        outputs = loaded.signatures[signature](**{k: tf.constant(v) for k, v in inputs.items()})
        return {k: v.numpy() for k, v in outputs.items()}

    run.loaded = loaded
    return run


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("serving")
    batched_base, swap_base = root / "batched" / NAME, root / "swap" / NAME
    path = encoder.export(tiny_model(seed=1), str(root / "batched"), NAME)
    swap_base.mkdir(parents=True)
    (root / "batching.txt").write_text(BATCHING)
    # Two REST worker processes share the port: every REST test runs against both.
    batched = Server(
        str(batched_base),
        "--enable_batching",
        f"--batching_parameters_file={root / 'batching.txt'}",
        f"--rest_api_max_request_bytes={MAX_BYTES}",
        "--rest_api_workers=2",
    )
    # The unbatched server starts with tensorflow_model_server's flags and no version: it must wait with its
    # ports closed (the flags test, first in file order, watches that and adds version 1); hot swap and SIGTERM
    # tests run on it next.
    swap = Server(str(swap_base), *TF_SERVING_FLAGS)
    try:
        ref = reference(path)
        yield {
            "server": batched.wait_ready(processes=2),
            "swap_server": swap,
            "ref": ref,
            "swap_base": swap_base,
            "export": path,
        }
    finally:
        batched.stop()
        swap.stop()


def swap_server(setup):
    """The unbatched server, serving version 1 at least."""
    if not (setup["swap_base"] / "1").exists():
        shutil.copytree(setup["export"], setup["swap_base"] / "1")
    return setup["swap_server"].wait_ready()


def post(url, body, **kwargs):
    content = body if isinstance(body, bytes) else orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    return httpx.post(url, content=content, timeout=30, **kwargs)


def close(actual, expected):
    np.testing.assert_allclose(np.asarray(actual, np.float32), expected, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------
# Documented request shapes


def test_status_and_metadata(setup):
    url = setup["server"].url
    expected = {
        "model_version_status": [
            {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
        ]
    }
    for path in (f"/v1/models/{NAME}", f"/v1/models/{NAME}/versions/1", f"/V1/MODELS/{NAME}"):
        response = httpx.get(url + path)
        assert response.status_code == 200 and response.headers["content-type"] == "application/json"
        assert response.json() == expected
    metadata = httpx.get(f"{url}/v1/models/{NAME}/versions/1/metadata").json()
    assert metadata["model_spec"] == {"name": NAME, "signature_name": "", "version": "1"}
    signatures = metadata["metadata"]["signature_def"]["signature_def"]
    assert set(encoder.SIGNATURES) <= set(signatures)
    default = signatures["serving_default"]
    assert default["method_name"] == "tensorflow/serving/predict"
    assert default["inputs"]["images"]["dtype"] == "DT_FLOAT"
    assert [d["size"] for d in default["inputs"]["images"]["tensor_shape"]["dim"]] == ["-1", "28", "28", "1"]
    assert set(default["outputs"]) == {"embedding", "stddev"}
    assert [d["size"] for d in default["outputs"]["embedding"]["tensor_shape"]["dim"]] == ["-1", str(LATENT)]
    assert signatures["encode_image"]["inputs"]["image_bytes"]["dtype"] == "DT_STRING"
    assert set(signatures["decode"]["inputs"]) == {"latents"}
    assert httpx.get(f"{url}/v1/models/{NAME}/metadata").json() == metadata


def test_predict_row_and_columnar_formats(setup):
    url, ref = setup["server"].url, setup["ref"]
    x = images(3, seed=10)
    expected = ref(images=x)
    rows = post(f"{url}/v1/models/{NAME}:predict", {"instances": x}).json()["predictions"]
    assert len(rows) == 3 and all(set(row) == {"embedding", "stddev"} for row in rows)
    close([row["embedding"] for row in rows], expected["embedding"])
    close([row["stddev"] for row in rows], expected["stddev"])
    named_rows = post(f"{url}/v1/models/{NAME}/versions/1:predict", {"instances": [{"images": im} for im in x]}).json()
    close([row["embedding"] for row in named_rows["predictions"]], expected["embedding"])
    columns = post(
        f"{url}/v1/models/{NAME}:predict", {"signature_name": "serving_default", "inputs": {"images": x}}
    ).json()
    close(columns["outputs"]["embedding"], expected["embedding"])
    close(columns["outputs"]["stddev"], expected["stddev"])
    plain_columns = post(f"{url}/v1/models/{NAME}:predict", {"inputs": x}).json()
    close(plain_columns["outputs"]["stddev"], expected["stddev"])
    # Single-output signatures: the output name is omitted.
    recon = post(f"{url}/v1/models/{NAME}:predict", {"signature_name": "reconstruct", "instances": x}).json()
    close(recon["predictions"], ref("reconstruct", images=x)["reconstruction"])
    z = np.random.default_rng(3).normal(size=(2, LATENT)).astype(np.float32)
    decoded = post(f"{url}/v1/models/{NAME}:predict", {"signature_name": "decode", "inputs": z}).json()
    close(decoded["outputs"], ref("decode", latents=z)["images"])


def test_predict_binary_images_with_b64(setup):
    url, ref = setup["server"].url, setup["ref"]
    pixels = (images(2, seed=11) * 255).round().astype(np.uint8)
    pngs = [tf.io.encode_png(p).numpy() for p in pixels]
    expected = ref(images=pixels.astype(np.float32) / 255)
    b64 = [{"b64": base64.b64encode(p).decode()} for p in pngs]
    rows = post(f"{url}/v1/models/{NAME}:predict", {"signature_name": "encode_image", "instances": b64}).json()
    close([r["embedding"] for r in rows["predictions"]], expected["embedding"])
    named = [{"image_bytes": item} for item in b64]
    rows = post(f"{url}/v1/models/{NAME}:predict", {"signature_name": "encode_image", "instances": named}).json()
    close([r["stddev"] for r in rows["predictions"]], expected["stddev"])
    columns = post(
        f"{url}/v1/models/{NAME}:predict", {"signature_name": "encode_image", "inputs": {"image_bytes": b64}}
    )
    close(columns.json()["outputs"]["embedding"], expected["embedding"])


def test_gzip_request_body(setup):
    import gzip

    x = images(1, seed=12)
    body = gzip.compress(orjson.dumps({"inputs": x}, option=orjson.OPT_SERIALIZE_NUMPY))
    response = post(f"{setup['server'].url}/v1/models/{NAME}:predict", body, headers={"Content-Encoding": "gzip"})
    close(response.json()["outputs"]["embedding"], setup["ref"](images=x)["embedding"])


# ----------------------------------------------------------------------------
# Bad requests: TF Serving's status codes and {"error": ...} bodies

_IMAGE = images(1, seed=13)[0].tolist()
_SMALL = [[[0.5]] * 27] * 27
BAD_REQUESTS = [
    ("malformed_json", ":predict", b'{"instances": [', 400, "JSON Parse error"),
    ("empty_body", ":predict", b"", 400, "JSON Parse error: The document is empty"),
    ("not_an_object", ":predict", b"[1, 2]", 400, "Is not object"),
    (
        "both_keys",
        ":predict",
        {"instances": [_IMAGE], "inputs": [_IMAGE]},
        400,
        "expecting only one of 'inputs' or 'instances'",
    ),
    ("no_inputs", ":predict", {"signature_name": "serving_default"}, 400, "Missing 'inputs' or 'instances' key"),
    ("empty_instances", ":predict", {"instances": []}, 400, "No values in 'instances' array"),
    ("instances_not_list", ":predict", {"instances": {"images": 1}}, 400, "Excepting 'instances' to be an list/array"),
    (
        "signature_not_string",
        ":predict",
        {"signature_name": 3, "instances": [_IMAGE]},
        400,
        "'signature_name' key must be a string",
    ),
    ("wrong_shape", ":predict", {"instances": [_SMALL]}, 400, "has shape [1,27,27,1], expected [-1,28,28,1]"),
    ("ragged", ":predict", {"instances": [_IMAGE, _IMAGE[:5]]}, 400, "Failed to process element: 1"),
    ("wrong_dtype_string", ":predict", {"instances": [[["a"]]]}, 400, "Type: String is not of expected type: float"),
    (
        "wrong_dtype_bool",
        ":predict",
        {"inputs": {"images": [[[[True]]]]}},
        400,
        "Type: True is not of expected type: float",
    ),
    ("b64_for_float", ":predict", {"instances": [{"b64": "AAAA"}]}, 400, "is not of expected type: float"),
    (
        "missing_named_input",
        ":predict",
        {"inputs": {"pixels": [_IMAGE]}},
        400,
        "Missing named input: images in 'inputs' object.",
    ),
    (
        "unknown_key_in_row",
        ":predict",
        {"instances": [{"images": _IMAGE, "x": 1}]},
        400,
        "does not have named input: x",
    ),
    (
        "unknown_signature",
        ":predict",
        {"signature_name": "nope", "instances": [_IMAGE]},
        400,
        'Serving signature name: "nope" not found in signature def',
    ),
    (
        "bad_base64",
        ":predict",
        {"signature_name": "encode_image", "instances": [{"b64": "%%%"}]},
        400,
        "Unable to base64 decode",
    ),
    ("not_an_image", ":predict", {"signature_name": "encode_image", "instances": [{"b64": "aGVsbG8="}]}, 400, ""),
    (
        "classify",
        ":classify",
        {"examples": [{"x": 1.0}]},
        400,
        "Expected classification signature method_name to be tensorflow/serving/classify",
    ),
    ("regress", ":regress", {"examples": [{"x": 1.0}]}, 400, "Expected regression signature method_name"),
    ("unknown_verb", ":explode", {"instances": [_IMAGE]}, 400, "Malformed request: POST"),
]


def _float_body(token):
    """A valid image whose first pixel is the JSON token `token` (NaN, Infinity, -Infinity)."""
    image = np.full(SHAPE, 0.5, np.float32)
    text = orjson.dumps({"instances": [image]}, option=orjson.OPT_SERIALIZE_NUMPY)
    return text.replace(b"0.5", token.encode(), 1)


BAD_REQUESTS += [
    ("nan", ":predict", _float_body("NaN"), 400, "must be finite"),
    ("infinity", ":predict", _float_body("Infinity"), 400, "must be finite"),
    ("minus_infinity", ":predict", _float_body("-Infinity"), 400, "must be finite"),
    ("float_overflow", ":predict", _float_body("1e39"), 400, "must be finite"),  # TF Serving: cast to +inf
    (
        "true_among_floats",
        ":predict",
        _float_body("true"),
        400,
        "JSON Value: true Type: True is not of expected type: float",
    ),
    ("string_among_floats", ":predict", _float_body('"0.5"'), 400, "Type: String is not of expected type: float"),
    (
        "over_max_batch_size",
        ":predict",
        {"instances": images(33, seed=21)},
        400,
        "Task size 33 is larger than maximum input batch size 32",
    ),
]


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=[case[0] for case in BAD_REQUESTS])
def test_bad_request(setup, case):
    _, verb, body, status, message = case
    response = post(f"{setup['server'].url}/v1/models/{NAME}{verb}", body)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()
    assert list(error) == ["error"] and message in error["error"], error


@pytest.mark.parametrize(
    "method, path, status, message",
    [
        ("POST", "/v1/models/nope:predict", 404, "Servable not found for request: Latest(nope)"),
        (
            "POST",
            f"/v1/models/{NAME}/versions/99:predict",
            404,
            f"Servable not found for request: Specific({NAME}, 99)",
        ),
        ("GET", "/v1/models/nope", 404, "Could not find any versions of model nope"),
        ("GET", f"/v1/models/{NAME}/versions/99", 404, f"Could not find version 99 of model {NAME}"),
        ("GET", f"/v1/models/{NAME}/versions/99/metadata", 404, "Servable not found"),
        ("GET", "/v1/models/nope/metadata", 404, "Servable not found for request: Latest(nope)"),
        ("POST", f"/v1/models/{NAME}/labels/stable:predict", 400, "Unrecognized servable version label: stable"),
        ("GET", "/v1/models", 400, "Missing model name in request."),
        ("PUT", f"/v1/models/{NAME}", 400, "Malformed request: PUT"),
        ("GET", "/nothing/here", 404, "Not found"),
    ],
)
def test_unknown_models_versions_and_paths(setup, method, path, status, message):
    body = orjson.dumps({"instances": [_IMAGE]}) if method != "GET" else None
    response = httpx.request(method, setup["server"].url + path, content=body, timeout=30)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]


def test_oversized_body_is_refused_with_413(setup):
    body = b'{"instances": [' + b"0.5," * (MAX_BYTES // 4) + b"0.5]}"
    response = post(f"{setup['server'].url}/v1/models/{NAME}:predict", body)
    assert response.status_code == 413
    assert "exceeds the limit" in response.json()["error"]


def test_server_still_answers_after_bad_requests(setup):
    # Runs after the bad-request tests (file order): the server is intact.
    x = images(2, seed=14)
    response = post(f"{setup['server'].url}/v1/models/{NAME}:predict", {"instances": x})
    assert response.status_code == 200
    close([r["embedding"] for r in response.json()["predictions"]], setup["ref"](images=x)["embedding"])
    assert setup["server"].proc.poll() is None


# ----------------------------------------------------------------------------
# gRPC and the client


def test_grpc_prediction_and_model_service(setup):
    import grpc
    from tensorflow_serving.apis import (
        get_model_metadata_pb2,
        get_model_status_pb2,
        model_service_pb2_grpc,
        predict_pb2,
        prediction_service_pb2_grpc,
    )

    channel = grpc.insecure_channel(f"127.0.0.1:{setup['server'].grpc_port}")
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    x = images(3, seed=15)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = NAME
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(x))
    response = stub.Predict(request, timeout=30)
    assert response.model_spec.version.value == 1 and response.model_spec.signature_name == "serving_default"
    expected = setup["ref"](images=x)
    # TF Serving fills the typed fields: a client reading float_val gets the embedding.
    embedding = response.outputs["embedding"]
    assert not embedding.tensor_content and [d.size for d in embedding.tensor_shape.dim] == [3, LATENT]
    close(np.reshape(embedding.float_val, (3, LATENT)), expected["embedding"])
    close(tf.make_ndarray(response.outputs["stddev"]), expected["stddev"])
    # Messages up to INT32_MAX bytes (TF Serving), whatever the REST limit (2 MB here): a 3 MB request
    # reaches the batcher, which refuses 1,000 rows.
    big = predict_pb2.PredictRequest()
    big.model_spec.name = NAME
    big.inputs["images"].CopyFrom(tf.make_tensor_proto(images(1000, seed=22)))
    assert big.ByteSize() > MAX_BYTES
    with pytest.raises(grpc.RpcError) as error:
        stub.Predict(big, timeout=60)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Task size 1000 is larger than maximum input batch size 32" in error.value.details()
    request.output_filter.append("stddev")
    assert list(stub.Predict(request, timeout=30).outputs) == ["stddev"]

    metadata_request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    metadata_request.model_spec.name = NAME
    metadata = stub.GetModelMetadata(metadata_request, timeout=30)
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    metadata.metadata["signature_def"].Unpack(signature_map)
    assert set(encoder.SIGNATURES) <= set(signature_map.signature_def)

    status_request = get_model_status_pb2.GetModelStatusRequest()
    status_request.model_spec.name = NAME
    status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(status_request, timeout=30)
    assert [(s.version, s.state) for s in status.model_version_status] == [
        (1, get_model_status_pb2.ModelVersionStatus.AVAILABLE)
    ]

    request.model_spec.name = "nope"
    with pytest.raises(grpc.RpcError) as error:
        stub.Predict(request, timeout=30)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    bad = predict_pb2.PredictRequest()
    bad.model_spec.name = NAME
    bad.inputs["images"].CopyFrom(tf.make_tensor_proto(np.zeros((1, 5), np.float32)))
    with pytest.raises(grpc.RpcError) as error:
        stub.Predict(bad, timeout=30)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    channel.close()


def test_python_client_rest_and_grpc(setup):
    from serving.client import ServingClient, ServingClientError

    server, ref = setup["server"], setup["ref"]
    x = images(4, seed=16)
    expected = ref(images=x)
    with (
        ServingClient(server.url, NAME) as rest,
        ServingClient(server.url, NAME, grpc_target=f"127.0.0.1:{server.grpc_port}") as rpc,
    ):
        for client in (rest, rpc):
            embedding, stddev = client.embed(x)
            close(embedding, expected["embedding"])
            close(stddev, expected["stddev"])
            pixels = (x * 255).round().astype(np.uint8)
            from_png, _ = client.embed_image_bytes([tf.io.encode_png(p).numpy() for p in pixels])
            close(from_png, ref(images=pixels.astype(np.float32) / 255)["embedding"])
            close(client.reconstruct(x), ref("reconstruct", images=x)["reconstruction"])
        assert rest.status()["model_version_status"][0]["state"] == "AVAILABLE"
        with pytest.raises(ServingClientError) as error:
            ServingClient(server.url, "nope").embed(x)
        assert error.value.status == 404


# ----------------------------------------------------------------------------
# tensorflow_model_server's flags, start-up and CORS


def test_tf_serving_flags_readiness_cors_and_grpc_channel_arguments(setup):
    import grpc
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    server = setup["swap_server"]
    deadline = time.monotonic() + 180
    while "waiting for a version of avae" not in server.output(tail=None):
        assert server.proc.poll() is None, f"every tensorflow_model_server flag is accepted:\n{server.output()}"
        assert time.monotonic() < deadline, server.output()
        time.sleep(0.2)
    warnings = [line for line in server.output(tail=None).splitlines() if "tensorflow_model_server flags" in line]
    assert len(warnings) == 1, warnings
    assert all(flag.split("=")[0] in warnings[0] for flag in IGNORED_FLAGS), warnings[0]
    assert "--rest_api_enable_cors_support" not in warnings[0] and "--grpc_channel_arguments" not in warnings[0]
    for port in (server.rest_port, server.grpc_port):  # no model yet: no port open
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
    swap_server(setup)

    url = f"{server.url}/v1/models/{NAME}"
    preflight = httpx.options(url + ":predict", headers={"Origin": "https://app.example"})
    assert preflight.status_code == 200 and preflight.content == b""
    assert preflight.headers["access-control-allow-origin"] == "*"
    assert preflight.headers["access-control-allow-methods"] == "POST, GET"
    assert preflight.headers["access-control-allow-headers"] == "Content-Type"
    no_origin = httpx.options(url)
    assert no_origin.status_code == 400 and no_origin.json() == {"error": "Origin header is missing in CORS preflight"}
    x = images(1, seed=23)
    answer = post(url + ":predict", {"instances": x})
    assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == "*"
    close([r["embedding"] for r in answer.json()["predictions"]], setup["ref"](images=x)["embedding"])

    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = NAME
        request.inputs["images"].CopyFrom(tf.make_tensor_proto(x))
        assert list(stub.Predict(request, timeout=30).outputs["embedding"].float_val)
        request.inputs["images"].CopyFrom(tf.make_tensor_proto(images(30, seed=24)))  # 94 KB > 64 KB
        with pytest.raises(grpc.RpcError) as error:
            stub.Predict(request, timeout=30)
        assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # --grpc_channel_arguments applies


def test_batching_parameters_file_without_enable_batching_is_a_start_up_error(tmp_path):
    parameters = tmp_path / "batching.txt"
    parameters.write_text(BATCHING)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "serving.server",
            f"--model_base_path={tmp_path}",
            f"--batching_parameters_file={parameters}",
            f"--rest_api_port={free_port()}",
            f"--port={free_port()}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "batching_parameters_file is set without setting server_options.enable_batching to true" in result.stderr


# ----------------------------------------------------------------------------
# Load and batching


def test_32_concurrent_clients_get_their_own_rows(setup):
    """32 clients x 50 requests of 1-4 images each through the batching server: no error, no mixed rows."""
    url, ref = setup["server"].url, setup["ref"]
    clients, per_client = 32, 50
    rng = np.random.default_rng(17)
    sizes = rng.integers(1, 5, size=(clients, per_client))
    all_images = rng.uniform(size=(int(sizes.sum()), *SHAPE)).astype(np.float32)
    expected = ref(images=all_images)
    offsets = np.concatenate([[0], np.cumsum(sizes.reshape(-1))]).reshape(-1)[:-1].reshape(clients, per_client)
    failures, mismatches = [], []

    def run_client(c):
        with httpx.Client(timeout=60) as http:
            for i in range(per_client):
                start, n = offsets[c, i], sizes[c, i]
                body = orjson.dumps({"instances": all_images[start : start + n]}, option=orjson.OPT_SERIALIZE_NUMPY)
                try:
                    response = http.post(f"{url}/v1/models/{NAME}:predict", content=body)
                except httpx.HTTPError as error:
                    failures.append(repr(error))
                    continue
                if response.status_code != 200:
                    failures.append(response.text)
                    continue
                rows = orjson.loads(response.content)["predictions"]
                got = np.array([row["embedding"] for row in rows], np.float32)
                if got.shape != (n, LATENT) or not np.allclose(
                    got, expected["embedding"][start : start + n], rtol=1e-4, atol=1e-5
                ):
                    mismatches.append((c, i))

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        list(pool.map(run_client, range(clients)))
    assert not failures, failures[:3]
    assert not mismatches, f"{len(mismatches)} responses differ from the in-process result, e.g. {mismatches[:3]}"


def test_a_rejected_request_fails_alone_in_its_batch(setup):
    url = setup["server"].url
    good = images(16, seed=18)
    expected = setup["ref"](images=good)["embedding"]

    def send(i):
        if i % 4 == 3:
            return "bad", post(f"{url}/v1/models/{NAME}:predict", _float_body("NaN"))
        return i, post(f"{url}/v1/models/{NAME}:predict", {"instances": good[i : i + 1]})

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(send, range(16)))
    for key, response in results:
        if key == "bad":
            assert response.status_code == 400
        else:
            assert response.status_code == 200, response.text
            close([r["embedding"] for r in response.json()["predictions"]], expected[key : key + 1])


# ----------------------------------------------------------------------------
# Hot swap and graceful shutdown (the unbatched server, after the flags test)


def test_hot_swap_to_a_new_version_under_load(setup):
    server, swap_base = swap_server(setup), setup["swap_base"]
    x = images(2, seed=19)
    v1 = setup["ref"](images=x)["embedding"]
    stop, results, failures = threading.Event(), [], []

    def run_client():
        with httpx.Client(timeout=60) as http:
            while not stop.is_set():
                sent = time.monotonic()  # when the request left: a reply can be read late on a busy machine
                try:
                    response = http.post(
                        f"{server.url}/v1/models/{NAME}:predict",
                        content=orjson.dumps({"instances": x}, option=orjson.OPT_SERIALIZE_NUMPY),
                    )
                except httpx.HTTPError as error:
                    failures.append(repr(error))
                    continue
                if response.status_code != 200:
                    failures.append(response.text)
                    continue
                results.append((sent, np.array([r["embedding"] for r in response.json()["predictions"]], np.float32)))

    threads = [threading.Thread(target=run_client) for _ in range(8)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.5)
        path = encoder.export(tiny_model(seed=2), str(swap_base.parent), NAME)  # atomic: temp dir, then rename
        assert path == str(swap_base / "2")
        v2 = reference(path)(images=x)["embedding"]
        assert not np.allclose(v1, v2, atol=1e-3)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status = httpx.get(f"{server.url}/v1/models/{NAME}").json()["model_version_status"]
            states = {s["version"]: s["state"] for s in status}
            if states.get("2") == "AVAILABLE" and states.get("1") == "END":
                break
            time.sleep(0.2)
        switched = time.monotonic()
        time.sleep(0.5)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert states == {"2": "AVAILABLE", "1": "END"}, states
    assert not failures, failures[:3]
    matches_v1 = [np.allclose(r, v1, rtol=1e-4, atol=1e-5) for _, r in results]
    matches_v2 = [np.allclose(r, v2, rtol=1e-4, atol=1e-5) for _, r in results]
    assert all(a or b for a, b in zip(matches_v1, matches_v2)), "every answer comes from version 1 or version 2"
    assert matches_v1[0] and any(matches_v2)
    assert all(m for (t, _), m in zip(results, matches_v2) if t > switched), (
        "sent after the swap, only version 2 answers"
    )


def test_sigterm_lets_in_flight_requests_finish(setup):
    server = swap_server(setup)
    body = orjson.dumps({"instances": images(1, seed=20)}, option=orjson.OPT_SERIALIZE_NUMPY)
    head = (
        f"POST /v1/models/{NAME}:predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", server.rest_port), timeout=30) as sock:
        sock.sendall(head + body[: len(body) // 2])  # the request is in flight: half its body is sent
        time.sleep(0.5)
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert server.proc.poll() is None, "the server waits for the in-flight request"
        sock.sendall(body[len(body) // 2 :])
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert b'"predictions"' in answer
    assert server.proc.wait(30) == 0
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{server.url}/v1/models/{NAME}", timeout=5)
