"""A small client for robust embeddings from a TensorFlow Serving endpoint.

Works against `serving.server` and the real `tensorflow_model_server` alike:
REST (httpx + orjson, columnar `inputs` requests) by default, gRPC
(`tensorflow-serving-api` PredictionService) when given `grpc_target`.

    from serving.client import ServingClient
    with ServingClient("http://127.0.0.1:8501", model_name="avae") as client:
        embedding, stddev = client.embed(images)          # float32 [N, H, W, C] in [0, 1]
        embedding, stddev = client.embed_image_bytes([open("digit.png", "rb").read()])

From the shell: `python -m serving.client --server=http://127.0.0.1:8501 --model_name=avae a.png b.jpg`
prints one JSON line per image.
"""

import base64

import numpy as np
import orjson

DEFAULT_SIGNATURE = "serving_default"


class ServingClientError(RuntimeError):
    """An error answer: `status` is the HTTP status (or gRPC code name), `message` the server's text."""

    def __init__(self, status, message):
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


class ServingClient:
    def __init__(
        self, server="http://127.0.0.1:8501", model_name="default", version=None, grpc_target=None, timeout=30.0
    ):
        self.server = server.rstrip("/")
        self.model_name = model_name
        self.version = version
        self.timeout = timeout
        self.grpc_target = grpc_target
        self._http = None
        self._stub = None

    # -- plumbing ---------------------------------------------------------------

    def _model_path(self):
        path = f"{self.server}/v1/models/{self.model_name}"
        return f"{path}/versions/{self.version}" if self.version is not None else path

    def _client(self):
        if self._http is None:
            import httpx

            self._http = httpx.Client(timeout=self.timeout)
        return self._http

    def _check(self, response):
        if response.status_code != 200:
            try:
                message = orjson.loads(response.content).get("error", response.text)
            except (orjson.JSONDecodeError, AttributeError):
                message = response.text
            raise ServingClientError(response.status_code, message)
        return orjson.loads(response.content)

    def close(self):
        if self._http is not None:
            self._http.close()
            self._http = None
        if self._stub is not None:
            self._channel.close()
            self._stub = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- API -----------------------------------------------------------------------

    def status(self):
        return self._check(self._client().get(self._model_path()))

    def metadata(self):
        return self._check(self._client().get(self._model_path() + "/metadata"))

    def predict(self, inputs, signature_name=DEFAULT_SIGNATURE):
        """{input name: array} -> {output name: numpy array}. Bytes inputs: lists of `bytes`.

        Over REST, a signature with a single output answers without its name:
        it comes back under the key None.
        """
        if self.grpc_target:
            return self._predict_grpc(inputs, signature_name)
        columns = {}
        for name, value in inputs.items():
            if isinstance(value, (list, tuple)) and value and isinstance(value[0], bytes):
                columns[name] = [{"b64": base64.b64encode(item).decode("ascii")} for item in value]
            else:
                columns[name] = np.ascontiguousarray(value, dtype=np.float32)
        body = orjson.dumps({"signature_name": signature_name, "inputs": columns}, option=orjson.OPT_SERIALIZE_NUMPY)
        response = self._client().post(
            self._model_path() + ":predict", content=body, headers={"Content-Type": "application/json"}
        )
        outputs = self._check(response)["outputs"]
        if not isinstance(outputs, dict):  # TF Serving leaves a signature's only output unnamed
            outputs = {None: outputs}
        return {name: np.asarray(value, dtype=np.float32) for name, value in outputs.items()}

    def _predict_grpc(self, inputs, signature_name):
        import grpc
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

        if self._stub is None:
            self._channel = grpc.insecure_channel(
                self.grpc_target, options=[("grpc.max_receive_message_length", 256 * 1024 * 1024)]
            )
            self._stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = self.model_name
        request.model_spec.signature_name = signature_name
        if self.version is not None:
            request.model_spec.version.value = int(self.version)
        for name, value in inputs.items():
            if isinstance(value, (list, tuple)) and value and isinstance(value[0], bytes):
                request.inputs[name].CopyFrom(tf.make_tensor_proto(list(value), dtype=tf.string))
            else:
                request.inputs[name].CopyFrom(tf.make_tensor_proto(np.asarray(value, dtype=np.float32)))
        try:
            response = self._stub.Predict(request, timeout=self.timeout)
        except grpc.RpcError as error:
            raise ServingClientError(error.code().name, error.details()) from None
        return {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}

    def embed(self, images):
        """float32 images [N, H, W, C] in [0, 1] -> (embedding [N, D], stddev [N, D])."""
        outputs = self.predict({"images": images})
        return outputs["embedding"], outputs["stddev"]

    def embed_image_bytes(self, encoded_images):
        """JPEG/PNG bytes (a list) -> (embedding, stddev), through the `encode_image` signature."""
        outputs = self.predict({"image_bytes": list(encoded_images)}, signature_name="encode_image")
        return outputs["embedding"], outputs["stddev"]

    def reconstruct(self, images):
        return _only(self.predict({"images": images}, signature_name="reconstruct"), "reconstruction")

    def decode(self, latents):
        return _only(self.predict({"latents": latents}, signature_name="decode"), "images")


def _only(outputs, name):
    """The output `name` (REST answers leave a single output unnamed: key None)."""
    return outputs[name] if name in outputs else outputs[None]


def main(argv):
    import json

    from absl import flags

    FLAGS = flags.FLAGS
    client = ServingClient(FLAGS.server, FLAGS.model_name, FLAGS.version, FLAGS.grpc_target or None)
    with client:
        paths = argv[1:]
        if not paths:
            print(json.dumps(client.status()))
            return
        images = []
        for path in paths:
            with open(path, "rb") as f:
                images.append(f.read())
        embedding, stddev = client.embed_image_bytes(images)
        for path, mean, spread in zip(paths, embedding, stddev):
            print(json.dumps({"image": path, "embedding": mean.tolist(), "stddev": spread.tolist()}))


if __name__ == "__main__":
    from absl import app, flags

    flags.DEFINE_string("server", "http://127.0.0.1:8501", "REST address of the model server.")
    flags.DEFINE_string("grpc_target", "", "host:port of the gRPC API; when set, gRPC is used.")
    flags.DEFINE_string("model_name", "default", "Model name.")
    flags.DEFINE_integer("version", None, "Model version; default: the latest.")
    app.run(main)
