"""A TensorFlow-Serving-compatible model server: REST (serving.http) and gRPC.

    python -m serving.server --model_name=N --model_base_path=E/N --rest_api_port=8501 \
        [--port=8500] [--enable_batching --batching_parameters_file=F] [--model_config_file=C]

Every `tensorflow_model_server` flag is accepted with its name and meaning.
The ones this server acts on are listed in `_define_flags`; the others
(`TF_SERVING_IGNORED_FLAGS`: TLS, monitoring, TFLite, XLA, ...) are accepted
and ignored with one warning line. As in TF Serving, the ports open only
once every configured model serves its newest version, a model that cannot
load fails start-up, and `--batching_parameters_file` without
`--enable_batching` is an error.

Differences: both APIs bind `--host` (127.0.0.1 unless told otherwise; TF
Serving binds every interface), `--port=0` disables gRPC (TF Serving then
needs `--grpc_socket_path`), REST request bodies are limited to
`--rest_api_max_request_bytes` (this server's own limit, 413 beyond; the
default holds a batch of 1,000 64x64x3 images as JSON floats), and
`--rest_api_workers=N` runs N processes on the REST port (Python decodes JSON
on one core per process; each worker loads and polls the models itself, so
during a hot swap workers may switch a moment apart). gRPC messages may be
INT32_MAX bytes, as in TF Serving, unless `--grpc_channel_arguments` says
otherwise.

SIGTERM or SIGINT shuts down gracefully: no new connections, in-flight
requests finish (up to `--shutdown_grace_seconds`), queued batches run, then
models are unloaded.

`ModelServer` is the library entry point (explicit arguments); absl flags
live only in `main`.
"""

import asyncio
import gc
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time

log = logging.getLogger("serving")

DEFAULT_MAX_REQUEST_BYTES = 256 * 1024 * 1024


class ModelServer:
    """Owns the model manager, the REST server and the gRPC server."""

    def __init__(
        self,
        model_config,
        host="127.0.0.1",
        rest_api_port=8501,
        grpc_port=0,
        grpc_socket_path=None,
        batching_options=None,
        file_system_poll_wait_seconds=1.0,
        max_num_load_retries=5,
        load_retry_interval_seconds=60.0,
        rest_api_num_threads=None,
        rest_api_timeout_in_ms=30000,
        rest_api_enable_cors_support=False,
        max_request_bytes=DEFAULT_MAX_REQUEST_BYTES,
        grpc_max_threads=None,
        grpc_channel_arguments=None,
        as_tensor_content=False,
        enable_model_warmup=True,
        saved_model_tags=("serve",),
        allow_version_labels_for_unavailable_models=False,
        shutdown_grace_seconds=30.0,
        model_config_file=None,
        model_config_file_poll_wait_seconds=0,
        reuse_port=False,
        on_signal=None,
    ):
        from serving.manager import ModelManager

        cpus = os.cpu_count() or 1
        self.host = host
        self.rest_api_port = rest_api_port
        self.grpc_port = grpc_port
        self.grpc_socket_path = grpc_socket_path
        self.timeout_seconds = rest_api_timeout_in_ms / 1000 if rest_api_timeout_in_ms > 0 else None
        self.enable_cors = rest_api_enable_cors_support
        self.max_request_bytes = max_request_bytes
        self.grpc_max_threads = grpc_max_threads or 4 * cpus
        self.grpc_channel_arguments = grpc_channel_arguments or {}
        self.as_tensor_content = as_tensor_content
        self.shutdown_grace_seconds = shutdown_grace_seconds
        self.model_config_file = model_config_file
        self.model_config_file_poll_wait_seconds = model_config_file_poll_wait_seconds
        self.reuse_port = reuse_port
        self.on_signal = on_signal  # called with the signal number on SIGTERM/SIGINT
        self.manager = ModelManager(
            model_config,
            batching_options=batching_options,
            poll_wait_seconds=file_system_poll_wait_seconds,
            max_num_load_retries=max_num_load_retries,
            load_retry_interval_seconds=load_retry_interval_seconds,
            num_request_threads=rest_api_num_threads or 4 * cpus,
            warmup=enable_model_warmup,
            after_load=_tune_garbage_collector,
            saved_model_tags=saved_model_tags,
            allow_version_labels_for_unavailable_models=allow_version_labels_for_unavailable_models,
        )
        self._stopping = threading.Event()
        self._grpc_server = None
        self._stop_rest = None  # stops the REST event loop, from any thread

    def run(self):
        """Loads the models, opens the ports, serves until SIGTERM/SIGINT; returns after a graceful shutdown."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            if not self.manager.start():  # returns once every model serves: the ports are not open before
                return  # stopped while waiting
            for name in self.manager.model_names():
                states = {s.version: s.state for s in self.manager.model_status(name).model_version_status}
                log.info("model %s: versions %s", name, sorted(states))
            if self.model_config_file and self.model_config_file_poll_wait_seconds > 0:
                threading.Thread(target=self._watch_config, daemon=True).start()
            addresses = [f"{self.host}:{self.grpc_port}"] if self.grpc_port else []
            if self.grpc_socket_path:
                addresses.append(f"unix:{self.grpc_socket_path}")
            if addresses:
                from serving.grpc_service import create_server

                self._grpc_server, ports = create_server(
                    self.manager,
                    addresses,
                    max_workers=self.grpc_max_threads,
                    channel_arguments=self.grpc_channel_arguments,
                    as_tensor_content=self.as_tensor_content,
                )
                if self.grpc_port:
                    _announce(f"Running gRPC ModelServer at {self.host}:{ports[0]} ...")
                if self.grpc_socket_path:
                    _announce(f"Running gRPC ModelServer at UNIX socket {self.grpc_socket_path} ...")
            if self.rest_api_port:
                self._serve_rest()
            else:
                while not self._stopping.wait(0.5):
                    pass
        finally:
            self._shutdown()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum, frame):
        del frame
        if not self._stopping.is_set():
            log.info("received signal %d: shutting down gracefully", signum)
        self._stopping.set()
        self.manager.stop_waiting()  # a start-up still waiting for models gives up
        if self._stop_rest is not None:
            self._stop_rest()
        if self.on_signal is not None:
            self.on_signal(signum)

    def _serve_rest(self):
        from serving.http import HttpServer
        from serving.rest import RestApi

        # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets whose
        # proto says TCP; without it, every response waits for a delayed ACK.
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.reuse_port:  # several worker processes share the port; the kernel spreads connections
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((self.host, self.rest_api_port))
        sock.listen(2048)
        api = RestApi(
            self.manager,
            max_request_bytes=self.max_request_bytes,
            timeout_seconds=self.timeout_seconds,
            enable_cors=self.enable_cors,
        )
        server = HttpServer(api.respond, self.max_request_bytes, shutdown_grace_seconds=self.shutdown_grace_seconds)
        _announce(f"Exporting HTTP/REST API at:{self.host}:{sock.getsockname()[1]} ...")
        try:
            import uvloop
        except ImportError:
            asyncio.run(self._serve_http(server, sock))
        else:
            uvloop.run(self._serve_http(server, sock))

    async def _serve_http(self, server, sock):
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        self._stop_rest = lambda: loop.call_soon_threadsafe(stop.set)
        signals = (signal.SIGTERM, signal.SIGINT)
        for sig in signals:
            loop.add_signal_handler(sig, self._on_signal, sig, None)
        try:
            if self._stopping.is_set():  # a signal came before the loop ran
                stop.set()
            await server.serve(sock, stop)
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)
                signal.signal(sig, self._on_signal)  # until run() restores the handlers it found

    def _shutdown(self):
        self._stopping.set()
        if self._grpc_server is not None:
            self._grpc_server.stop(grace=self.shutdown_grace_seconds).wait()
        self.manager.stop()
        log.info("server stopped")

    def _watch_config(self):
        from serving.manager import read_model_config_file

        last = None
        while not self._stopping.wait(self.model_config_file_poll_wait_seconds):
            try:
                with open(self.model_config_file) as f:
                    text = f.read()
                if text != last:
                    if last is not None:
                        self.manager.reload_config(read_model_config_file(self.model_config_file))
                        log.info("reloaded %s", self.model_config_file)
                    last = text
            except Exception as error:
                log.error("could not reload %s: %s", self.model_config_file, error)


def _tune_garbage_collector():
    """Keeps Python's cyclic GC off the request path.

    With TensorFlow and a model loaded the process holds millions of tracked
    objects, so the full collections that request allocations trigger would
    cost milliseconds per request. The objects alive after start-up
    (TensorFlow, the models) are moved out of the collector's sight, and
    collections of the young generation are made rarer.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def _announce(message):
    log.info(message)
    print(message, file=sys.stderr, flush=True)


# tensorflow_model_server flags (model_servers/main.cc) this server accepts and
# ignores: name -> (absl flag type, default).
TF_SERVING_IGNORED_FLAGS = {
    "num_load_threads": ("integer", 0),
    "num_unload_threads": ("integer", 0),
    "flush_filesystem_caches": ("bool", True),
    "tensorflow_session_config_file": ("string", ""),
    "use_alts_credentials": ("bool", False),
    "ssl_config_file": ("string", ""),
    "platform_config_file": ("string", ""),
    "per_process_gpu_memory_fraction": ("float", 0.0),
    "num_request_iterations_for_warmup": ("integer", 0),
    "monitoring_config_file": ("string", ""),
    "remove_unused_fields_from_bundle_metagraph": ("bool", True),
    "prefer_tflite_model": ("bool", False),
    "num_tflite_pools": ("integer", 0),
    "num_tflite_interpreters_per_pool": ("integer", 1),
    "enable_signature_method_name_check": ("bool", False),
    "xla_cpu_compilation_enabled": ("bool", False),
    "xla_gpu_compilation_enabled": ("bool", False),
    "enable_profiler": ("bool", True),
    "thread_pool_factory_config_file": ("string", ""),
    "mixed_precision": ("string", ""),
    "skip_initialize_tpu": ("bool", False),
    "enable_grpc_healthcheck_service": ("bool", False),
    "enable_per_model_batching_parameters": ("bool", False),
}


def _define_flags():
    from absl import flags

    # tensorflow_model_server's flags this server acts on (its names, defaults and meanings).
    flags.DEFINE_integer("port", 8500, "Port for the gRPC API (PredictionService, ModelService); 0 disables it.")
    flags.DEFINE_string("grpc_socket_path", "", "If set, gRPC is also served on this UNIX socket.")
    flags.DEFINE_integer("rest_api_port", 0, "Port for the HTTP/REST API; 0 disables it.")
    flags.DEFINE_integer("rest_api_num_threads", 0, "Threads running unbatched requests; default 4 x CPUs.")
    flags.DEFINE_integer("rest_api_timeout_in_ms", 30000, "Per-request timeout (504 / DEADLINE_EXCEEDED); 0: none.")
    flags.DEFINE_bool("rest_api_enable_cors_support", False, "Add CORS headers to REST answers.")
    flags.DEFINE_bool("enable_batching", False, "Batch concurrent requests into one model call.")
    flags.DEFINE_bool(
        "allow_version_labels_for_unavailable_models", False,
        "Allow a new version label to point to a version that is not available yet.",
    )  # fmt: skip
    flags.DEFINE_string("batching_parameters_file", "", "BatchingParameters text proto (needs --enable_batching).")
    flags.DEFINE_string("model_config_file", "", "ModelServerConfig text proto (several models, version policies).")
    flags.DEFINE_integer("model_config_file_poll_wait_seconds", 0, "Seconds between re-reads of the config file; 0: never.")
    flags.DEFINE_string("model_name", "default", "Name of the model (ignored with --model_config_file).")
    flags.DEFINE_string("model_base_path", "", "Directory holding the model's integer version directories.")
    flags.DEFINE_integer("max_num_load_retries", 5, "Retries of a failed load before giving up on the version.")
    flags.DEFINE_integer("load_retry_interval_micros", 60_000_000, "Microseconds between load retries.")
    flags.DEFINE_float("file_system_poll_wait_seconds", 1, "Seconds between polls for new versions; 0: poll once.")
    flags.DEFINE_integer("tensorflow_session_parallelism", 0, "TensorFlow intra- and inter-op threads; 0: automatic.")
    flags.DEFINE_integer("tensorflow_intra_op_parallelism", 0, "TensorFlow intra-op threads; 0: automatic.")
    flags.DEFINE_integer("tensorflow_inter_op_parallelism", 0, "TensorFlow inter-op threads; 0: automatic.")
    flags.DEFINE_string("saved_model_tags", "serve", "Comma-separated tags of the MetaGraph to load.")
    flags.DEFINE_string("grpc_channel_arguments", "", "gRPC server arguments, e.g. grpc.max_receive_message_length=1000.")
    flags.DEFINE_integer("grpc_max_threads", 0, "gRPC worker threads; default 4 x CPUs.")
    flags.DEFINE_bool("enable_model_warmup", True, "Run each signature once on zeros after loading.")
    flags.DEFINE_bool("version", False, "Print the version and exit.")
    flags.DEFINE_bool(
        "enable_serialization_as_tensor_content", False,
        "gRPC Predict outputs in tensor_content instead of the typed fields.",
    )  # fmt: skip
    define = {"integer": flags.DEFINE_integer, "bool": flags.DEFINE_bool, "string": flags.DEFINE_string,
              "float": flags.DEFINE_float}  # fmt: skip
    for name, (kind, default) in TF_SERVING_IGNORED_FLAGS.items():
        define[kind](name, default, "tensorflow_model_server flag; accepted and ignored by this server.")
    # This server's own.
    flags.DEFINE_string("host", "127.0.0.1", "Address both APIs bind (use 0.0.0.0 to serve other machines).")
    flags.DEFINE_integer(
        "rest_api_max_request_bytes", DEFAULT_MAX_REQUEST_BYTES,
        "Largest REST request body (413 beyond); this server's own limit (TF Serving has none).",
    )  # fmt: skip
    flags.DEFINE_float("shutdown_grace_seconds", 30, "How long in-flight requests may run after SIGTERM.")
    flags.DEFINE_integer(
        "rest_api_workers", 1,
        "Processes serving REST on the same port (SO_REUSEPORT), each with its own copy of the models: JSON "
        "decoding is bound to one core per process. gRPC is served by the first process only.",
        lower_bound=1,
    )  # fmt: skip
    flags.DEFINE_integer("rest_api_parent_pid", 0, "Internal: set in REST worker processes started by --rest_api_workers.")


def _check_flags(FLAGS):
    """Start-up errors that need no TensorFlow (TF Serving's wording where it has one)."""
    if FLAGS.batching_parameters_file and not FLAGS.enable_batching:
        raise ValueError(
            "server_options.batching_parameters_file is set without setting server_options.enable_batching to true."
        )
    if not FLAGS.model_config_file and not FLAGS.model_base_path:
        raise ValueError("Both server_options.model_base_path and server_options.model_config_file are empty!")
    if FLAGS.port and FLAGS.port == FLAGS.rest_api_port:
        raise ValueError("--port and --rest_api_port must differ")
    if FLAGS.tensorflow_session_parallelism > 0 and FLAGS.tensorflow_intra_op_parallelism > 0 and (
        FLAGS.tensorflow_inter_op_parallelism > 0
    ):
        raise ValueError(
            "Either configure server_options.tensorflow_session_parallelism or "
            "(server_options.tensorflow_intra_op_parallelism, server_options.tensorflow_inter_op_parallelism) "
            "separately. You cannot configure all."
        )
    if FLAGS.rest_api_workers > 1 and not FLAGS.rest_api_port:
        raise ValueError("--rest_api_workers needs a fixed --rest_api_port")


def main(argv):
    from absl import flags

    FLAGS = flags.FLAGS
    if FLAGS.version:
        print("TensorFlow ModelServer: robust-zoo serving.server (TensorFlow Serving APIs)")
        return
    if len(argv) > 1:
        sys.exit(f"error: unexpected arguments: {argv[1:]}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)
    try:
        _check_flags(FLAGS)
        from serving.grpc_service import parse_channel_arguments

        channel_arguments = parse_channel_arguments(FLAGS.grpc_channel_arguments)
    except ValueError as error:
        sys.exit(f"error: {error}")
    ignored = [name for name in TF_SERVING_IGNORED_FLAGS if FLAGS[name].present]
    if ignored:
        log.warning("ignoring tensorflow_model_server flags this server does not implement: %s",
                    ", ".join(f"--{name}" for name in ignored))  # fmt: skip

    import tensorflow as tf

    intra, inter = FLAGS.tensorflow_intra_op_parallelism, FLAGS.tensorflow_inter_op_parallelism
    if not intra and not inter:
        intra = inter = FLAGS.tensorflow_session_parallelism
    if intra:
        tf.config.threading.set_intra_op_parallelism_threads(intra)
    if inter:
        tf.config.threading.set_inter_op_parallelism_threads(inter)

    from serving import batching, manager
    from serving.errors import ServingError

    try:
        if FLAGS.model_config_file:
            config = manager.read_model_config_file(FLAGS.model_config_file)
        else:
            config = manager.single_model_config(FLAGS.model_name, FLAGS.model_base_path)
        batching_options = None
        if FLAGS.enable_batching:
            cpus = os.cpu_count() or 1
            if FLAGS.batching_parameters_file:
                batching_options = batching.read_batching_parameters(FLAGS.batching_parameters_file, num_cpus=cpus)
            else:
                batching_options = batching.BatchingOptions(num_batch_threads=cpus)
    except (OSError, ValueError) as error:
        sys.exit(f"error: {error}")
    except Exception as error:  # text_format.ParseError and friends
        sys.exit(f"error: {type(error).__name__}: {error}")
    workers = []
    if FLAGS.rest_api_workers > 1:
        worker_cmd = [sys.executable, "-m", "serving.server", *sys.argv[1:], "--rest_api_workers=1", "--port=0",
                      "--grpc_socket_path=", f"--rest_api_parent_pid={os.getpid()}"]  # fmt: skip
        workers = [subprocess.Popen(worker_cmd) for _ in range(FLAGS.rest_api_workers - 1)]
    if FLAGS.rest_api_parent_pid:
        _exit_with_parent(FLAGS.rest_api_parent_pid)

    def forward(signum):
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signum)

    try:
        server = ModelServer(
            config,
            host=FLAGS.host,
            rest_api_port=FLAGS.rest_api_port,
            grpc_port=FLAGS.port,
            grpc_socket_path=FLAGS.grpc_socket_path or None,
            batching_options=batching_options,
            file_system_poll_wait_seconds=FLAGS.file_system_poll_wait_seconds,
            max_num_load_retries=FLAGS.max_num_load_retries,
            load_retry_interval_seconds=FLAGS.load_retry_interval_micros / 1e6,
            rest_api_num_threads=FLAGS.rest_api_num_threads or None,
            rest_api_timeout_in_ms=FLAGS.rest_api_timeout_in_ms,
            rest_api_enable_cors_support=FLAGS.rest_api_enable_cors_support,
            max_request_bytes=FLAGS.rest_api_max_request_bytes,
            grpc_max_threads=FLAGS.grpc_max_threads or None,
            grpc_channel_arguments=channel_arguments,
            as_tensor_content=FLAGS.enable_serialization_as_tensor_content,
            enable_model_warmup=FLAGS.enable_model_warmup,
            saved_model_tags=tuple(tag for tag in FLAGS.saved_model_tags.split(",") if tag) or ("serve",),
            allow_version_labels_for_unavailable_models=FLAGS.allow_version_labels_for_unavailable_models,
            shutdown_grace_seconds=FLAGS.shutdown_grace_seconds,
            model_config_file=FLAGS.model_config_file or None,
            model_config_file_poll_wait_seconds=FLAGS.model_config_file_poll_wait_seconds,
            reuse_port=FLAGS.rest_api_workers > 1 or bool(FLAGS.rest_api_parent_pid),
            on_signal=forward,
        )
        server.run()
    except (OSError, RuntimeError, ServingError) as error:  # a port in use, a model that does not load, ...
        forward(signal.SIGTERM)
        sys.exit(f"Failed to start server. Error: {getattr(error, 'message', error)}")
    finally:
        for worker in workers:
            try:
                worker.wait(FLAGS.shutdown_grace_seconds + 30)
            except subprocess.TimeoutExpired:
                worker.kill()


def _exit_with_parent(parent_pid):
    """A REST worker shuts down gracefully when the process that started it is gone."""

    def watch():
        while os.getppid() == parent_pid:
            time.sleep(1)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


if __name__ == "__main__":
    from absl import app

    _define_flags()
    app.run(main)
