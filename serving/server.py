"""A TensorFlow-Serving-compatible model server: REST (Starlette + uvicorn) and gRPC.

    python -m serving.server --model_name=N --model_base_path=E/N --rest_api_port=8501 \
        [--port=8500] [--enable_batching --batching_parameters_file=F] [--model_config_file=C]

Flags carry `tensorflow_model_server`'s names and meanings (`--port=0`
disables gRPC, `--rest_api_port=0` disables REST, `--file_system_poll_wait_seconds=0`
polls once). Differences: both APIs bind `--host` (127.0.0.1 unless told
otherwise; TF Serving binds every interface), REST request bodies are
limited to `--rest_api_max_request_bytes` (413 beyond), and
`--rest_api_workers=N` runs N processes on the REST port (Python decodes
JSON on one core per process; each worker loads and polls the models itself,
so during a hot swap workers may switch a moment apart).

SIGTERM or SIGINT shuts down gracefully: no new connections, in-flight
requests finish (up to `--shutdown_grace_seconds`), queued batches run, then
models are unloaded.

`ModelServer` is the library entry point (explicit arguments); absl flags
live only in `main`.
"""

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


class ModelServer:
    """Owns the model manager, the REST server and the gRPC server."""

    def __init__(
        self,
        model_config,
        host="127.0.0.1",
        rest_api_port=8501,
        grpc_port=0,
        batching_options=None,
        file_system_poll_wait_seconds=1.0,
        max_num_load_retries=5,
        rest_api_num_threads=None,
        rest_api_timeout_in_ms=30000,
        max_request_bytes=64 * 1024 * 1024,
        grpc_max_threads=None,
        enable_model_warmup=True,
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
        self.timeout_seconds = rest_api_timeout_in_ms / 1000 if rest_api_timeout_in_ms > 0 else None
        self.max_request_bytes = max_request_bytes
        self.grpc_max_threads = grpc_max_threads or 4 * cpus
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
            num_request_threads=rest_api_num_threads or 4 * cpus,
            warmup=enable_model_warmup,
            after_load=_tune_garbage_collector,
        )
        self._stopping = threading.Event()
        self._grpc_server = None
        self._uvicorn = None

    def run(self):
        """Serves until SIGTERM/SIGINT; returns after a graceful shutdown."""
        self.manager.start()
        for name in self.manager.model_names():
            try:
                status = self.manager.model_status(name)
                states = {s.version: s.state for s in status.model_version_status}
                log.info("model %s: versions %s", name, sorted(states))
            except Exception:
                log.warning("model %s: no version loaded yet", name)
        if self.model_config_file and self.model_config_file_poll_wait_seconds > 0:
            threading.Thread(target=self._watch_config, daemon=True).start()
        if self.grpc_port:
            from serving.grpc_service import create_server

            self._grpc_server, port = create_server(
                self.manager,
                f"{self.host}:{self.grpc_port}",
                max_workers=self.grpc_max_threads,
                max_message_bytes=self.max_request_bytes,
                timeout_seconds=self.timeout_seconds,
            )
            _announce(f"Running gRPC ModelServer at {self.host}:{port} ...")
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
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
        if self._uvicorn is not None:
            self._uvicorn.should_exit = True
        if self.on_signal is not None:
            self.on_signal(signum)

    def _serve_rest(self):
        import uvicorn

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
        api = RestApi(self.manager, max_request_bytes=self.max_request_bytes, timeout_seconds=self.timeout_seconds)
        config = uvicorn.Config(
            api.app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=self.shutdown_grace_seconds,
            timeout_keep_alive=30,
            backlog=2048,
        )
        self._uvicorn = uvicorn.Server(config)
        _announce(f"Exporting HTTP/REST API at:{self.host}:{sock.getsockname()[1]} ...")
        if self._stopping.is_set():
            return
        # uvicorn installs its own SIGTERM/SIGINT handlers while serving, shuts
        # down gracefully on them, then re-raises the signal to the handler
        # installed before it: ours, which only records it.
        self._uvicorn.run(sockets=[sock])

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
                        self.manager.set_config(read_model_config_file(self.model_config_file))
                        self.manager.poll()
                        log.info("reloaded %s", self.model_config_file)
                    last = text
            except Exception as error:
                log.error("could not reload %s: %s", self.model_config_file, error)


def _tune_garbage_collector():
    """Keeps Python's cyclic GC off the request path.

    A JSON request body becomes thousands of small lists; with TensorFlow and
    a model loaded the process holds millions of tracked objects, so the
    frequent full collections those allocations trigger would cost
    milliseconds per request. The objects alive after start-up (TensorFlow,
    the models) are moved out of the collector's sight, and collections of
    the young generation are made rarer.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def _announce(message):
    log.info(message)
    print(message, file=sys.stderr, flush=True)


def _define_flags():
    from absl import flags

    flags.DEFINE_integer("port", 8500, "Port for the gRPC API (PredictionService, ModelService); 0 disables it.")
    flags.DEFINE_integer("rest_api_port", 0, "Port for the HTTP/REST API; 0 disables it.")
    flags.DEFINE_string("host", "127.0.0.1", "Address both APIs bind (use 0.0.0.0 to serve other machines).")
    flags.DEFINE_string("model_name", "default", "Name of the model (ignored with --model_config_file).")
    flags.DEFINE_string("model_base_path", "", "Directory holding the model's integer version directories.")
    flags.DEFINE_string("model_config_file", "", "ModelServerConfig text proto (several models, version policies).")
    flags.DEFINE_integer("model_config_file_poll_wait_seconds", 0, "Seconds between re-reads of the config file; 0: never.")
    flags.DEFINE_float("file_system_poll_wait_seconds", 1, "Seconds between polls for new versions; 0: poll once.")
    flags.DEFINE_bool("enable_batching", False, "Batch concurrent requests into one model call.")
    flags.DEFINE_string("batching_parameters_file", "", "BatchingParameters text proto (implies nothing without --enable_batching).")
    flags.DEFINE_integer("max_num_load_retries", 5, "Attempts to load a version before giving up on it.")
    flags.DEFINE_integer("rest_api_num_threads", 0, "Threads running unbatched requests; default 4 x CPUs.")
    flags.DEFINE_integer("rest_api_timeout_in_ms", 30000, "Per-request timeout (504 / DEADLINE_EXCEEDED); 0: none.")
    flags.DEFINE_integer("rest_api_max_request_bytes", 64 * 1024 * 1024, "Largest REST body (413 beyond); also the gRPC message limit.")
    flags.DEFINE_integer("grpc_max_threads", 0, "gRPC worker threads; default 4 x CPUs.")
    flags.DEFINE_bool("enable_model_warmup", True, "Run each signature once on zeros after loading.")
    flags.DEFINE_integer("tensorflow_intra_op_parallelism", 0, "TensorFlow intra-op threads; 0: TensorFlow's choice.")
    flags.DEFINE_integer("tensorflow_inter_op_parallelism", 0, "TensorFlow inter-op threads; 0: TensorFlow's choice.")
    flags.DEFINE_float("shutdown_grace_seconds", 30, "How long in-flight requests may run after SIGTERM.")
    flags.DEFINE_integer(
        "rest_api_workers", 1,
        "Processes serving REST on the same port (SO_REUSEPORT), each with its own copy of the models: JSON "
        "decoding is bound to one core per process. gRPC is served by the first process only.",
        lower_bound=1,
    )  # fmt: skip
    flags.DEFINE_integer("rest_api_parent_pid", 0, "Internal: set in REST worker processes started by --rest_api_workers.")


def main(argv):
    from absl import flags

    FLAGS = flags.FLAGS
    if len(argv) > 1:
        sys.exit(f"error: unexpected arguments: {argv[1:]}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)

    import tensorflow as tf

    if FLAGS.tensorflow_intra_op_parallelism:
        tf.config.threading.set_intra_op_parallelism_threads(FLAGS.tensorflow_intra_op_parallelism)
    if FLAGS.tensorflow_inter_op_parallelism:
        tf.config.threading.set_inter_op_parallelism_threads(FLAGS.tensorflow_inter_op_parallelism)

    from serving import batching, manager

    try:
        if FLAGS.model_config_file:
            config = manager.read_model_config_file(FLAGS.model_config_file)
        elif FLAGS.model_base_path:
            config = manager.single_model_config(FLAGS.model_name, FLAGS.model_base_path)
        else:
            sys.exit("error: give --model_base_path (with --model_name) or --model_config_file")
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
    if FLAGS.port and FLAGS.port == FLAGS.rest_api_port:
        sys.exit("error: --port and --rest_api_port must differ")
    workers = []
    if FLAGS.rest_api_workers > 1:
        if not FLAGS.rest_api_port:
            sys.exit("error: --rest_api_workers needs a fixed --rest_api_port")
        worker_cmd = [sys.executable, "-m", "serving.server", *sys.argv[1:], "--rest_api_workers=1", "--port=0",
                      f"--rest_api_parent_pid={os.getpid()}"]  # fmt: skip
        workers = [subprocess.Popen(worker_cmd) for _ in range(FLAGS.rest_api_workers - 1)]
    if FLAGS.rest_api_parent_pid:
        _exit_with_parent(FLAGS.rest_api_parent_pid)

    def forward(signum):
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signum)

    server = ModelServer(
        config,
        host=FLAGS.host,
        rest_api_port=FLAGS.rest_api_port,
        grpc_port=FLAGS.port,
        batching_options=batching_options,
        file_system_poll_wait_seconds=FLAGS.file_system_poll_wait_seconds,
        max_num_load_retries=FLAGS.max_num_load_retries,
        rest_api_num_threads=FLAGS.rest_api_num_threads or None,
        rest_api_timeout_in_ms=FLAGS.rest_api_timeout_in_ms,
        max_request_bytes=FLAGS.rest_api_max_request_bytes,
        grpc_max_threads=FLAGS.grpc_max_threads or None,
        enable_model_warmup=FLAGS.enable_model_warmup,
        shutdown_grace_seconds=FLAGS.shutdown_grace_seconds,
        model_config_file=FLAGS.model_config_file or None,
        model_config_file_poll_wait_seconds=FLAGS.model_config_file_poll_wait_seconds,
        reuse_port=FLAGS.rest_api_workers > 1 or bool(FLAGS.rest_api_parent_pid),
        on_signal=forward,
    )
    try:
        server.run()
    except OSError as error:  # e.g. a port in use
        forward(signal.SIGTERM)
        sys.exit(f"error: {error}")
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
