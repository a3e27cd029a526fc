"""Loads SavedModel versions, polls for new ones and hot-swaps them.

A model is a base path holding one SavedModel per integer-named version
directory (`<base>/<version>/saved_model.pb`, `zoo.export_layout`), as TensorFlow Serving expects.
Any other entry (a temporary export directory, a file) is ignored, so an
exporter that writes to a temporary directory and renames it is never seen
half-written.

Versions follow TF Serving's `model_version_policy` (`latest { num_versions
}`, the default with 1, `all {}`, `specific { versions }`) and its
AvailabilityPreservingPolicy: a new version is loaded and made available
before the version it replaces is unloaded, and the old one is unloaded only
once the requests that hold it have finished. A version that fails to load
(after `max_num_load_retries` retries, `load_retry_interval_seconds` apart)
stays failed while it is aspired, and the version already serving keeps
serving: it is not replaced by an older one. When every version directory is
gone, the model is unloaded; when the base path itself is gone, nothing
changes. Version labels must point to available versions (FAILED_PRECONDITION),
as in TF Serving. `start` returns once every model serves its newest aspired
version and fails if one cannot load, as TF Serving's start-up does.

Each loaded version (`Servable`) reads its signatures generically: the
SignatureDefs of the MetaGraph tagged `saved_model_tags` (what the metadata
API returns) and the matching concrete functions of `tf.saved_model.load`.
"""

import asyncio
import concurrent.futures
import contextlib
import functools
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
from serving.tensor_json import NUMPY_DTYPES, dtype_name
from zoo.export_layout import SAVED_MODEL_PB, SAVED_MODEL_PBTXT, list_versions

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


def read_meta_graph(path, tags=(SERVE_TAG,)):
    """The MetaGraphDef of a SavedModel whose tag set is exactly `tags`."""
    saved_model = saved_model_pb2.SavedModel()
    pb = os.path.join(path, SAVED_MODEL_PB)
    if os.path.isfile(pb):
        with open(pb, "rb") as f:
            saved_model.ParseFromString(f.read())
    else:
        with open(os.path.join(path, SAVED_MODEL_PBTXT)) as f:
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
    """One loaded version of one model.

    Counts the model calls running on it: `unload` waits for them, so a
    version is never unloaded under a call (say, one whose request timed out
    and let go of the version while the call went on).
    """

    def __init__(self, name, version, path, batching_options=None, warmup=True, tags=(SERVE_TAG,)):
        self.name = name
        self.version = version
        self.path = path
        meta_graph = read_meta_graph(path, tags)
        self.signature_defs = dict(meta_graph.signature_def)
        self._loaded = tf.saved_model.load(path, tags=list(tags))
        functions = self._loaded.signatures
        self.signatures = {
            key: Signature(key, self.signature_defs[key], functions[key])
            for key in functions.keys()
            if key in self.signature_defs
        }
        self._calls = threading.Condition()
        self._running = 0
        self._closed = False
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
        with self._calls:
            if self._closed:
                raise ServingError(errors.UNAVAILABLE, f"Servable {self.name} version {self.version} is unloaded")
            self._running += 1
            signature = self.signatures[signature_name]
        try:
            tensors = {key: tf.convert_to_tensor(value) for key, value in inputs.items()}
            outputs = signature.function(**tensors)
            return {key: value.numpy() for key, value in outputs.items()}
        finally:
            with self._calls:
                self._running -= 1
                if not self._running:
                    self._calls.notify_all()

    def submit(self, signature_name, inputs, executor, loop=None):
        """Runs a signature through the batcher (if batching) or `executor`; returns a future of the outputs.

        From the event loop `loop`, an asyncio future; otherwise a concurrent.futures.Future.
        """
        if self.batcher is not None:
            try:
                return self.batcher.submit(signature_name, inputs, loop)
            except ValueError:  # inputs without a common batch dimension are not batched
                pass
        future = executor.submit(self.run, signature_name, inputs)
        return asyncio.wrap_future(future, loop=loop) if loop is not None else future

    def unload(self):
        """Runs the queued batches, waits for running calls, then frees the model."""
        if self.batcher is not None:
            self.batcher.stop()
        with self._calls:
            self._closed = True
            while self._running:
                self._calls.wait()
        self.signatures = {}
        self._loaded = None


class _Model:
    def __init__(self, config):
        self.config = config
        self.labels = {}  # version label -> version, once accepted
        self.available = {}  # version -> Servable
        self.states = {}  # version -> (state, error code, message)
        self.failed = set()  # versions that failed to load, not tried again while aspired
        self.aspired = set()  # what the version policy chose on the last poll
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
        load_retry_interval_seconds=60.0,
        num_request_threads=8,
        warmup=True,
        after_load=None,
        saved_model_tags=(SERVE_TAG,),
        allow_version_labels_for_unavailable_models=False,
    ):
        self.batching_options = batching_options
        self.poll_wait_seconds = poll_wait_seconds
        self.max_num_load_retries = max_num_load_retries
        self.load_retry_interval_seconds = load_retry_interval_seconds
        self.warmup = warmup
        self.after_load = after_load  # called (no arguments) after each successful load
        self.saved_model_tags = tuple(saved_model_tags)
        self.allow_version_labels_for_unavailable_models = allow_version_labels_for_unavailable_models
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
        """Adopts a ModelServerConfig: new models are added, removed ones unloaded on the next poll.

        As TF Serving's ServerCore, a version label must point to a version
        that is available now (FAILED_PRECONDITION otherwise, and nothing
        changes), unless `allow_version_labels_for_unavailable_models` and the
        label is new or keeps its version.
        """
        configs = {model.name: model for model in config.model_config_list.config}
        with self._lock:
            for name, model_config in configs.items():
                model = self._models.get(name)
                for label, version in model_config.version_labels.items():
                    if model is not None and version in model.available:
                        continue
                    current = model.labels.get(label) if model is not None else None
                    if self.allow_version_labels_for_unavailable_models and current in (None, version):
                        continue
                    raise ServingError(
                        errors.FAILED_PRECONDITION,
                        f"Request to assign label to version {version} of model {name}, which is not currently "
                        "available for inference",
                    )
            for name, model_config in configs.items():
                model = self._models.get(name)
                if model is None:
                    model = self._models[name] = _Model(model_config)
                model.config = model_config
                model.labels = dict(model_config.version_labels)
            for name in list(self._models):
                if name not in configs:
                    self._models[name].config = None  # unloaded on the next poll

    def start(self):
        """Loads the models as TF Serving does at start-up; True once each serves a version.

        A model whose base path is missing, or whose newest aspired version
        fails to load, is an error (RuntimeError). A model with no version
        yet is waited for, polling every `poll_wait_seconds` (0: polled once,
        so the wait lasts until `stop_waiting`, after which this returns False).
        """
        with self._lock:
            models = list(self._models.items())
        for name, model in models:
            if not os.path.isdir(model.config.base_path):
                raise RuntimeError(f"Could not find base path {model.config.base_path} for servable {name}")
        self.poll()
        warned = False
        while True:
            failures, waiting = self._unavailable(name for name, _ in models)
            if failures:
                raise RuntimeError(f"{len(failures)} model(s) did not become available: {{{', '.join(failures)}}}")
            if not waiting:
                break
            if not warned:
                log.warning("waiting for a version of %s to serve", ", ".join(waiting))
                warned = True
            if self._stop.wait(self.poll_wait_seconds if self.poll_wait_seconds > 0 else 1.0):
                return False
            if self.poll_wait_seconds > 0:  # TF Serving: 0 polls once, a negative value never
                self.poll()
        if self.poll_wait_seconds > 0:
            self._thread = threading.Thread(target=self._poll_loop, name="version-poller", daemon=True)
            self._thread.start()
        return True

    def stop_waiting(self):
        """Ends a start-up wait, load retries and polling (the server is stopping); safe in a signal handler."""
        self._stop.set()

    def _unavailable(self, names):
        """(failure descriptions, names still waiting) for models whose newest aspired version is not available."""
        failures, waiting = [], []
        with self._lock:
            for name in names:
                model = self._models.get(name)
                if model is None or not model.aspired:
                    waiting.append(name)
                    continue
                newest = max(model.aspired)
                if newest in model.failed:
                    failures.append(f"{{name: {name} version: {newest}}} due to error: {model.states[newest][2]}")
                elif newest not in model.available:
                    waiting.append(name)
        return failures, waiting

    def reload_config(self, config):
        """TF Serving's HandleReloadConfigRequest: adopt `config`, load, and fail if a new model does not load."""
        with self._lock:
            known = set(self._models)
        self.set_config(config)
        self.poll()
        new = [model.name for model in config.model_config_list.config if model.name not in known]
        failures, _ = self._unavailable(new)
        if failures:
            raise ServingError(
                errors.UNKNOWN, f"{len(failures)} model(s) did not become available: {{{', '.join(failures)}}}"
            )

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
        policy = model.config.model_version_policy
        which = policy.WhichOneof("policy_choice")
        if which == "all":
            return set(on_disk)
        if which == "specific":
            return set(on_disk) & set(policy.specific.versions)
        count = policy.latest.num_versions if which == "latest" and policy.latest.num_versions > 0 else 1
        return set(sorted(on_disk)[-count:])

    def _poll_model(self, name, model):
        if model.config is None:  # removed from the config
            for version in list(model.available):
                self._retire(name, model, version)
            with self._lock:
                if not model.available and not any(model.inflight.values()):
                    self._models.pop(name, None)
            return
        base_path = model.config.base_path
        if not os.path.isdir(base_path):  # TF Serving: a poll error; what is loaded stays
            log.error("Could not find base path %s for servable %s", base_path, name)
            return
        on_disk = list_versions(base_path)
        if not on_disk and not model.warned_empty:
            log.warning("No versions of servable %s found under base path %s", name, base_path)
        model.warned_empty = not on_disk
        aspired = self._aspired(model, on_disk)
        with self._lock:
            model.aspired = aspired
            model.failed &= aspired  # a failed version is tried again only once it has left and come back
        # TF Serving's AvailabilityPreservingPolicy, one action at a time until
        # it has none: unload the lowest version that is no longer aspired when
        # nothing is aspired, an aspired version is available, or more than one
        # unaspired version is; otherwise load the highest new aspired version.
        while True:
            unaspired = sorted(v for v in model.available if v not in aspired)
            if unaspired and (not aspired or any(v in model.available for v in aspired) or len(unaspired) > 1):
                self._retire(name, model, unaspired[0])
                continue
            new = sorted(v for v in aspired if v not in model.available and v not in model.failed)
            if not new:
                return
            self._load(name, model, new[-1], on_disk[new[-1]])

    def _load(self, name, model, version, path):
        """Loads one version, retrying as TF Serving does (1 + max_num_load_retries attempts)."""
        with self._lock:
            model.states[version] = (_STATE.LOADING, errors.OK, "")
        log.info("Loading servable version {name: %s version: %d} from %s", name, version, path)
        attempts = 1 + max(self.max_num_load_retries, 0)
        for attempt in range(1, attempts + 1):
            try:
                servable = Servable(
                    name, version, path, self.batching_options, warmup=self.warmup, tags=self.saved_model_tags
                )
                break
            except Exception as error:
                message = (
                    f"Loading servable: {{name: {name} version: {version}}} failed: {type(error).__name__}: {error}"
                )
                log.error("%s (attempt %d of %d)", message, attempt, attempts)
            if attempt == attempts or self._stop.wait(max(self.load_retry_interval_seconds, 0)):
                with self._lock:
                    model.failed.add(version)
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
        servable.unload()  # waits for model calls still running (a timed-out request's, say)
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
            raise invalid_argument(
                f"Both model version ({version}) and model version label ({label}) cannot be supplied."
            )
        if label is not None:
            labels = model.labels if model is not None else {}
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

    def hold(self, name, version=None, label=None):
        """Holds one available version for a request: (servable, release); it is not unloaded before release()."""
        with self._lock:
            model, servable = self._resolve(name, version, label)
            model.inflight[servable.version] = model.inflight.get(servable.version, 0) + 1
        return servable, functools.partial(self._release, model, servable.version)

    def _release(self, model, version):
        with self._lock:
            model.inflight[version] -= 1
            self._lock.notify_all()

    @contextlib.contextmanager
    def acquire(self, name, version=None, label=None):
        """`hold` for the duration of a `with` block."""
        servable, release = self.hold(name, version, label)
        try:
            yield servable
        finally:
            release()

    def model_status(self, name, version=None, label=None):
        """GetModelStatusResponse for one model (all versions, or the one asked for)."""
        with self._lock:
            model = self._models.get(name)
            if label is not None:
                labels = model.labels if model is not None else {}
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
