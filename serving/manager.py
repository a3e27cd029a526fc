"""Loads SavedModel versions, polls for new ones and hot-swaps them.

A model is a base path holding one SavedModel per integer-named version
directory (`<base>/<version>/saved_model.pb`), as TensorFlow Serving expects.
Any other entry (a temporary export directory, a file) is ignored, so an
exporter that writes to a temporary directory and renames it is never seen
half-written.

Versions follow TF Serving's `model_version_policy` (`latest { num_versions
}`, the default with 1, `all {}`, `specific { versions }`) and its
availability-preserving policy: a new version is loaded and made available
before the version it replaces is unloaded, and the old one is unloaded only
once the requests that hold it have finished. A version that fails to load
is retried on later polls, then given up, and the previous one keeps serving.

Each loaded version (`Servable`) reads its signatures generically: the
SignatureDefs of the `serve` MetaGraph (what the metadata API returns) and
the matching concrete functions of `tf.saved_model.load`.
"""

import concurrent.futures
import contextlib
import logging
import os
import threading
import time

import numpy as np
import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2
from tensorflow_serving.config import model_server_config_pb2

from serving import batching, errors
from serving.errors import ServingError, invalid_argument, not_found
from serving.tensor_json import DT_STRING, NUMPY_DTYPES, dtype_name

log = logging.getLogger("serving")

SERVE_TAG = "serve"
DEFAULT_SIGNATURE = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"
_STATE = get_model_status_pb2.ModelVersionStatus.State


def single_model_config(name, base_path):
    """The ModelServerConfig of `--model_name` / `--model_base_path`."""
    config = model_server_config_pb2.ModelServerConfig()
    model = config.model_config_list.config.add()
    model.name = name
    model.base_path = base_path
    model.model_platform = "tensorflow"
    return config


def read_model_config_file(path):
    """A ModelServerConfig text proto (`--model_config_file`)."""
    config = model_server_config_pb2.ModelServerConfig()
    with open(path) as f:
        text_format.Parse(f.read(), config)
    if config.WhichOneof("config") != "model_config_list":
        raise ValueError(f"{path}: only model_config_list is supported")
    names = [model.name for model in config.model_config_list.config]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: model names must be unique, got {names}")
    for model in config.model_config_list.config:
        if not model.name or not model.base_path:
            raise ValueError(f"{path}: every config needs a name and a base_path")
        if model.model_platform not in ("", "tensorflow"):
            raise ValueError(f"{path}: model {model.name}: only model_platform 'tensorflow' is supported")
    return config


def list_versions(base_path):
    """{version: path} of the SavedModel version directories under `base_path`."""
    versions = {}
    try:
        entries = os.listdir(base_path)
    except OSError:
        return versions
    for entry in entries:
        if not entry.isdigit():
            continue
        path = os.path.join(base_path, entry)
        if os.path.isfile(os.path.join(path, "saved_model.pb")) or os.path.isfile(
            os.path.join(path, "saved_model.pbtxt")
        ):
            versions[int(entry)] = path
    return versions


def read_meta_graph(path, tags=(SERVE_TAG,)):
    """The MetaGraphDef of a SavedModel whose tag set is exactly `tags`."""
    saved_model = saved_model_pb2.SavedModel()
    pb = os.path.join(path, "saved_model.pb")
    if os.path.isfile(pb):
        with open(pb, "rb") as f:
            saved_model.ParseFromString(f.read())
    else:
        with open(os.path.join(path, "saved_model.pbtxt")) as f:
            text_format.Parse(f.read(), saved_model)
    for meta_graph in saved_model.meta_graphs:
        if set(meta_graph.meta_info_def.tags) == set(tags):
            return meta_graph
    found = [sorted(m.meta_info_def.tags) for m in saved_model.meta_graphs]
    raise ValueError(f"SavedModel {path} has no MetaGraph tagged {list(tags)}; found {found}")


def _shape_list(shape_proto):
    return None if shape_proto.unknown_rank else [int(d.size) for d in shape_proto.dim]


class Signature:
    """One signature: its SignatureDef and the function that runs it."""

    def __init__(self, name, signature_def, function):
        self.name = name
        self.signature_def = signature_def
        self.function = function
        self.method_name = signature_def.method_name
        self.input_dtypes = {key: info.dtype for key, info in signature_def.inputs.items()}
        self.input_shapes = {key: _shape_list(info.tensor_shape) for key, info in signature_def.inputs.items()}
        self.output_names = sorted(signature_def.outputs)

    def check_inputs(self, inputs):
        """Raises INVALID_ARGUMENT unless `inputs` match the signature's names, dtypes and shapes."""
        sent, wanted = set(inputs), set(self.input_dtypes)
        if sent != wanted:
            raise invalid_argument(
                f"input size does not match signature: {len(sent)}!={len(wanted)} "
                f"len({{{','.join(sorted(sent))}}}) != len({{{','.join(sorted(wanted))}}}). "
                f"Sent extra: {{{','.join(sorted(sent - wanted))}}}. "
                f"Missing but required: {{{','.join(sorted(wanted - sent))}}}."
            )
        for key, array in inputs.items():
            dtype = self.input_dtypes[key]
            expected = NUMPY_DTYPES.get(dtype)
            if expected is object:
                ok = array.dtype == object or array.dtype.kind in "SU"
            else:
                ok = expected is not None and array.dtype == np.dtype(expected)
            if not ok:
                raise invalid_argument(
                    f"input '{key}' of signature '{self.name}' has dtype {array.dtype}, expected {dtype_name(dtype)}"
                )
            shape = self.input_shapes[key]
            if shape is None:
                continue
            if array.ndim != len(shape) or any(d >= 0 and d != a for d, a in zip(shape, array.shape)):
                raise invalid_argument(
                    f"input '{key}' of signature '{self.name}' has shape [{','.join(map(str, array.shape))}], "
                    f"expected [{','.join(map(str, shape))}] (-1: any size)"
                )

    def warmup_inputs(self):
        """Zeros of batch 1 when every input has a known numeric shape, else None."""
        inputs = {}
        for key, shape in self.input_shapes.items():
            dtype = NUMPY_DTYPES.get(self.input_dtypes[key])
            if shape is None or not shape or dtype is None or dtype is object or any(d < 0 for d in shape[1:]):
                return None
            inputs[key] = np.zeros([1] + shape[1:], dtype=dtype)
        return inputs


class Servable:
    """One loaded version of one model."""

    def __init__(self, name, version, path, batching_options=None, warmup=True):
        self.name = name
        self.version = version
        self.path = path
        meta_graph = read_meta_graph(path)
        self.signature_defs = dict(meta_graph.signature_def)
        self._loaded = tf.saved_model.load(path, tags=[SERVE_TAG])
        functions = self._loaded.signatures
        self.signatures = {
            key: Signature(key, self.signature_defs[key], functions[key])
            for key in functions.keys()
            if key in self.signature_defs
        }
        self.batcher = None
        if batching_options is not None:
            self.batcher = batching.BatchScheduler(self.run, batching_options, name=f"{name}/{version}")
        if warmup:
            self._warmup()

    def _warmup(self):
        for signature in self.signatures.values():
            inputs = signature.warmup_inputs()
            if inputs is not None:
                try:
                    self.run(signature.name, inputs)
                except Exception as error:  # a model may reject zeros; serving goes on
                    log.info("warm-up of %s/%s:%s failed: %s", self.name, self.version, signature.name, error)

    def signature(self, name):
        name = name or DEFAULT_SIGNATURE
        signature = self.signatures.get(name)
        if signature is None:
            raise invalid_argument(f'Serving signature name: "{name}" not found in signature def')
        return signature

    def run(self, signature_name, inputs):
        """Runs one signature on numpy inputs now, in this thread; returns numpy outputs."""
        signature = self.signatures[signature_name]
        tensors = {key: tf.convert_to_tensor(value) for key, value in inputs.items()}
        outputs = signature.function(**tensors)
        return {key: value.numpy() for key, value in outputs.items()}

    def submit(self, signature_name, inputs, executor):
        """Runs a signature through the batcher (if batching) or `executor`; returns a Future."""
        if self.batcher is not None:
            try:
                return self.batcher.submit(signature_name, inputs)
            except ValueError:  # inputs without a common batch dimension are not batched
                pass
        return executor.submit(self.run, signature_name, inputs)

    def unload(self):
        if self.batcher is not None:
            self.batcher.stop()
        self.signatures = {}
        self._loaded = None


class _Model:
    def __init__(self, config):
        self.config = config
        self.available = {}  # version -> Servable
        self.states = {}  # version -> (state, error code, message)
        self.failures = {}  # version -> failed load attempts
        self.inflight = {}  # version -> requests holding it
        self.warned_empty = False


class ModelManager:
    """Serves the models of a ModelServerConfig; thread-safe."""

    def __init__(
        self,
        config,
        batching_options=None,
        poll_wait_seconds=1.0,
        max_num_load_retries=5,
        num_request_threads=8,
        warmup=True,
        after_load=None,
    ):
        self.batching_options = batching_options
        self.poll_wait_seconds = poll_wait_seconds
        self.max_num_load_retries = max_num_load_retries
        self.warmup = warmup
        self.after_load = after_load  # called (no arguments) after each successful load
        self.executor = concurrent.futures.ThreadPoolExecutor(num_request_threads, thread_name_prefix="predict")
        self._lock = threading.Condition()
        self._poll_lock = threading.Lock()
        self._models = {}
        self._stop = threading.Event()
        self._thread = None
        self._unloaders = []
        self.set_config(config)

    # -- configuration and polling --------------------------------------------

    def set_config(self, config):
        """Adopts a ModelServerConfig: new models are added, removed ones unloaded on the next poll."""
        configs = {model.name: model for model in config.model_config_list.config}
        with self._lock:
            for name, model_config in configs.items():
                if name in self._models:
                    self._models[name].config = model_config
                else:
                    self._models[name] = _Model(model_config)
            for name in list(self._models):
                if name not in configs:
                    self._models[name].config = None  # unloaded on the next poll

    def start(self):
        """Loads what is on disk now, then polls every `poll_wait_seconds` (0: never again)."""
        self.poll()
        if self.poll_wait_seconds > 0:
            self._thread = threading.Thread(target=self._poll_loop, name="version-poller", daemon=True)
            self._thread.start()

    def _poll_loop(self):
        while not self._stop.wait(self.poll_wait_seconds):
            try:
                self.poll()
            except Exception:  # never let the poller die
                log.exception("polling for model versions failed")

    def poll(self):
        """One scan of every model's base path: loads new versions, unloads retired ones."""
        with self._poll_lock:
            with self._lock:
                models = list(self._models.items())
            for name, model in models:
                self._poll_model(name, model)

    def _aspired(self, model, on_disk):
        loadable = sorted(v for v in on_disk if model.failures.get(v, 0) < self.max_num_load_retries)
        policy = model.config.model_version_policy
        which = policy.WhichOneof("policy_choice")
        if which == "all":
            return set(loadable)
        if which == "specific":
            return set(loadable) & set(policy.specific.versions)
        count = policy.latest.num_versions if which == "latest" and policy.latest.num_versions > 0 else 1
        return set(loadable[-count:])

    def _poll_model(self, name, model):
        if model.config is None:  # removed from the config
            for version in list(model.available):
                self._retire(name, model, version)
            with self._lock:
                if not model.available and not any(model.inflight.values()):
                    self._models.pop(name, None)
            return
        on_disk = list_versions(model.config.base_path)
        if not on_disk and not model.warned_empty:
            log.warning("No versions of servable %s found under base path %s", name, model.config.base_path)
            model.warned_empty = True
        aspired = self._aspired(model, on_disk)
        for version in sorted(aspired - set(model.available), reverse=True):
            self._load(name, model, version, on_disk[version])
        if any(v in model.available for v in aspired):
            for version in list(model.available):
                if version not in aspired:
                    self._retire(name, model, version)

    def _load(self, name, model, version, path):
        with self._lock:
            model.states[version] = (_STATE.LOADING, errors.OK, "")
        log.info("Loading servable version {name: %s version: %d} from %s", name, version, path)
        try:
            servable = Servable(name, version, path, self.batching_options, warmup=self.warmup)
        except Exception as error:
            failures = model.failures.get(version, 0) + 1
            message = f"Loading servable: {{name: {name} version: {version}}} failed: {type(error).__name__}: {error}"
            log.error("%s (attempt %d of %d)", message, failures, self.max_num_load_retries)
            with self._lock:
                model.failures[version] = failures
                model.states[version] = (_STATE.END, errors.UNKNOWN, message)
            return
        with self._lock:
            model.available[version] = servable
            model.inflight.setdefault(version, 0)
            model.states[version] = (_STATE.AVAILABLE, errors.OK, "")
            self._lock.notify_all()
        log.info("Successfully loaded servable version {name: %s version: %d}", name, version)
        if self.after_load is not None:
            self.after_load()

    def _retire(self, name, model, version):
        """Stops routing to `version`; unloads it in the background once its requests finish."""
        with self._lock:
            servable = model.available.pop(version, None)
            if servable is None:
                return
            model.states[version] = (_STATE.UNLOADING, errors.OK, "")
        thread = threading.Thread(target=self._unload, args=(name, model, servable), daemon=True)
        self._unloaders.append(thread)
        thread.start()

    def _unload(self, name, model, servable, drain_timeout=120.0):
        deadline = time.monotonic() + drain_timeout
        with self._lock:
            while model.inflight.get(servable.version, 0) > 0 and time.monotonic() < deadline:
                self._lock.wait(deadline - time.monotonic())
        servable.unload()
        with self._lock:
            model.states[servable.version] = (_STATE.END, errors.OK, "")
        log.info("Unloaded servable version {name: %s version: %d}", name, servable.version)

    def stop(self):
        """Stops polling and unloads everything (after in-flight requests finish)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            models = list(self._models.items())
        for name, model in models:
            for version in list(model.available):
                self._retire(name, model, version)
        for thread in self._unloaders:
            thread.join(timeout=30)
        self.executor.shutdown(wait=True)

    # -- request-time lookups --------------------------------------------------

    def _resolve(self, name, version, label):
        model = self._models.get(name)
        if version is not None and label is not None:
            raise invalid_argument(f"Both model version ({version}) and model version label ({label}) cannot be supplied.")
        if label is not None:
            labels = dict(model.config.version_labels) if model is not None and model.config is not None else {}
            if label not in labels:
                raise invalid_argument(f"Unrecognized servable version label: {label}")
            version = labels[label]
        request = f"Specific({name}, {version})" if version is not None else f"Latest({name})"
        if model is None or not model.available:
            raise not_found(f"Servable not found for request: {request}")
        if version is None:
            version = max(model.available)
        if version not in model.available:
            raise not_found(f"Servable not found for request: {request}")
        return model, model.available[version]

    @contextlib.contextmanager
    def acquire(self, name, version=None, label=None):
        """Holds one available version for the duration of a request (it is not unloaded meanwhile)."""
        with self._lock:
            model, servable = self._resolve(name, version, label)
            model.inflight[servable.version] = model.inflight.get(servable.version, 0) + 1
        try:
            yield servable
        finally:
            with self._lock:
                model.inflight[servable.version] -= 1
                self._lock.notify_all()

    def model_status(self, name, version=None, label=None):
        """GetModelStatusResponse for one model (all versions, or the one asked for)."""
        with self._lock:
            model = self._models.get(name)
            if label is not None:
                labels = dict(model.config.version_labels) if model is not None and model.config else {}
                if label not in labels:
                    raise invalid_argument(f"Unrecognized servable version label: {label}")
                version = labels[label]
            states = dict(model.states) if model is not None else {}
        response = get_model_status_pb2.GetModelStatusResponse()
        if version is not None:
            if version not in states:
                raise not_found(f"Could not find version {version} of model {name}")
            versions = [version]
        else:
            if not states:
                raise not_found(f"Could not find any versions of model {name}")
            versions = sorted(states, reverse=True)
        for v in versions:
            state, code, message = states[v]
            status = response.model_version_status.add(version=v, state=state)
            enum = status.status.DESCRIPTOR.fields_by_name["error_code"].enum_type
            status.status.error_code = enum.values_by_name[code].number
            status.status.error_message = message
        return response

    def model_metadata(self, name, version=None, label=None):
        """GetModelMetadataResponse with the `signature_def` field, as TF Serving returns it."""
        with self.acquire(name, version, label) as servable:
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.name = name
            response.model_spec.version.value = servable.version
            signature_map = get_model_metadata_pb2.SignatureDefMap()
            for key, signature_def in servable.signature_defs.items():
                signature_map.signature_def[key].CopyFrom(signature_def)
            response.metadata["signature_def"].Pack(signature_map)
            return response, signature_map

    def model_names(self):
        with self._lock:
            return sorted(self._models)
