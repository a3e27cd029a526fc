"""A TensorFlow-Serving-compatible model server: REST (serving.http) and gRPC.

    python -m serving.server --model_name=N --model_base_path=E/N --rest_api_port=8501 \
        [--port=8500] [--enable_batching --batching_parameters_file=F] [--model_config_file=C]

Every `tensorflow_model_server` flag is accepted with its name and meaning.
The ones this server acts on are the fields of `serving.options.ServerOptions`,
from which the flags are made; the others (`IgnoredTFServingFlags`: TLS,
monitoring, TFLite, XLA, ...) are accepted and ignored with one warning line. As in TF Serving, the ports open only
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

`ModelServer(ServerOptions(...))` is the library entry point; absl flags live
only in `main`, which fills the options from them.
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

from serving.options import IgnoredTFServingFlags, ServerOptions
from zoo.config import define_flags

log = logging.getLogger("serving")


class ModelServer:
    """Serves what its `ServerOptions` say, as `tensorflow_model_server` serves what its flags say.

    Owns the model manager, the REST server and the gRPC server. Constructing it reads the model config
    (`model_config_file`, or `model_name` and `model_base_path`) and the batching parameters, and loads nothing:
    `run` loads the models and opens the ports. A config or batching file that cannot be read or parsed raises
    OSError, ValueError or protobuf's ParseError; a version label on a version that is not available, ServingError.
    """

    def __init__(self, options, on_signal=None):
        from serving.manager import ModelManager

        cpus = os.cpu_count() or 1
        self.options = options
        self.on_signal = on_signal  # called with the signal number on SIGTERM/SIGINT
        self.manager = ModelManager(
            _model_config(options),
            batching_options=_batching_options(options, cpus),
            poll_wait_seconds=options.file_system_poll_wait_seconds,
            max_num_load_retries=options.max_num_load_retries,
            load_retry_interval_seconds=options.load_retry_interval_micros / 1e6,
            num_request_threads=options.rest_api_num_threads or 4 * cpus,
            warmup=options.enable_model_warmup,
            after_load=_tune_garbage_collector,
            saved_model_tags=options.meta_graph_tags,
            allow_version_labels_for_unavailable_models=options.allow_version_labels_for_unavailable_models,
        )
        self._grpc_max_threads = options.grpc_max_threads or 4 * cpus
        self._stopping = threading.Event()
        self._grpc_server = None
        self._stop_rest = None  # stops the REST event loop, from any thread

    def run(self):
        """Loads the models, opens the ports, serves until SIGTERM/SIGINT; returns after a graceful shutdown."""
        options = self.options
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            if not self.manager.start():  # returns once every model serves: the ports are not open before
                return  # stopped while waiting
            for name in self.manager.model_names():
                states = {s.version: s.state for s in self.manager.model_status(name).model_version_status}
                log.info("model %s: versions %s", name, sorted(states))
            if options.model_config_file and options.model_config_file_poll_wait_seconds > 0:
                threading.Thread(target=self._watch_config, daemon=True).start()
            addresses = [f"{options.host}:{options.port}"] if options.port else []
            if options.grpc_socket_path:
                addresses.append(f"unix:{options.grpc_socket_path}")
            if addresses:
                from serving.grpc_service import create_server

                self._grpc_server, ports = create_server(
                    self.manager,
                    addresses,
                    max_workers=self._grpc_max_threads,
                    channel_arguments=options.channel_arguments,
                    as_tensor_content=options.enable_serialization_as_tensor_content,
                )
                if options.port:
                    _announce(f"Running gRPC ModelServer at {options.host}:{ports[0]} ...")
                if options.grpc_socket_path:
                    _announce(f"Running gRPC ModelServer at UNIX socket {options.grpc_socket_path} ...")
            if options.rest_api_port:
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

        options = self.options
        # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets whose
        # proto says TCP; without it, every response waits for a delayed ACK.
        family = socket.AF_INET6 if ":" in options.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if options.shares_rest_port:  # several worker processes share the port; the kernel spreads connections
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((options.host, options.rest_api_port))
        sock.listen(2048)
        timeout_ms = options.rest_api_timeout_in_ms
        api = RestApi(
            self.manager,
            max_request_bytes=options.rest_api_max_request_bytes,
            timeout_seconds=timeout_ms / 1000 if timeout_ms > 0 else None,
            enable_cors=options.rest_api_enable_cors_support,
        )
        server = HttpServer(
            api.respond, options.rest_api_max_request_bytes, shutdown_grace_seconds=options.shutdown_grace_seconds
        )
        _announce(f"Exporting HTTP/REST API at:{options.host}:{sock.getsockname()[1]} ...")
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
            self._grpc_server.stop(grace=self.options.shutdown_grace_seconds).wait()
        self.manager.stop()
        log.info("server stopped")

    def _watch_config(self):
        from serving.manager import read_model_config_file

        path = self.options.model_config_file
        last = None
        while not self._stopping.wait(self.options.model_config_file_poll_wait_seconds):
            try:
                with open(path) as f:
                    text = f.read()
                if text != last:
                    if last is not None:
                        self.manager.reload_config(read_model_config_file(path))
                        log.info("reloaded %s", path)
                    last = text
            except Exception as error:
                log.error("could not reload %s: %s", path, error)


def _model_config(options):
    """The ModelServerConfig the options name: `model_config_file`'s, or the one model of `model_name`."""
    from serving import manager

    if options.model_config_file:
        return manager.read_model_config_file(options.model_config_file)
    return manager.single_model_config(options.model_name, options.model_base_path)


def _batching_options(options, cpus):
    """The BatchingOptions of `batching_parameters_file` (TF Serving's defaults without one), or None unbatched."""
    from serving import batching

    if not options.enable_batching:
        return None
    if options.batching_parameters_file:
        return batching.read_batching_parameters(options.batching_parameters_file, num_cpus=cpus)
    return batching.BatchingOptions(num_batch_threads=cpus)


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


def _define_flags():
    from absl import flags

    define_flags(ServerOptions, sys.argv[0])
    define_flags(IgnoredTFServingFlags, sys.argv[0])
    # A command rather than an option of the server, as in TF Serving's main.cc.
    flags.DEFINE_bool("version", False, "Print the version and exit.")


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
    try:  # start-up errors that need no TensorFlow
        options = ServerOptions(**{field.name: FLAGS[field.name].value for field in ServerOptions.fields()})
    except ValueError as error:
        sys.exit(f"error: {error}")
    ignored = [field.name for field in IgnoredTFServingFlags.fields() if FLAGS[field.name].present]
    if ignored:
        log.warning(
            "ignoring tensorflow_model_server flags this server does not implement: %s",
            ", ".join(f"--{name}" for name in ignored),
        )

    import tensorflow as tf

    intra, inter = options.tensorflow_intra_op_parallelism, options.tensorflow_inter_op_parallelism
    if not intra and not inter:
        intra = inter = options.tensorflow_session_parallelism
    if intra:
        tf.config.threading.set_intra_op_parallelism_threads(intra)
    if inter:
        tf.config.threading.set_inter_op_parallelism_threads(inter)

    from serving.errors import ServingError

    workers = []

    def forward(signum):
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signum)

    try:
        server = ModelServer(options, on_signal=forward)
    except ServingError as error:  # a version label on a version that is not available
        sys.exit(f"Failed to start server. Error: {error.message}")
    except (OSError, ValueError) as error:  # the config or batching file
        sys.exit(f"error: {error}")
    except Exception as error:  # text_format.ParseError and friends
        sys.exit(f"error: {type(error).__name__}: {error}")
    if options.rest_api_workers > 1:
        worker_cmd = [
            sys.executable,
            "-m",
            "serving.server",
            *sys.argv[1:],
            "--rest_api_workers=1",
            "--port=0",
            "--grpc_socket_path=",
            f"--rest_api_parent_pid={os.getpid()}",
        ]
        workers += [subprocess.Popen(worker_cmd) for _ in range(options.rest_api_workers - 1)]
    if options.rest_api_parent_pid:
        _exit_with_parent(options.rest_api_parent_pid)

    try:
        server.run()
    except (OSError, RuntimeError, ServingError) as error:  # a port in use, a model that does not load, ...
        forward(signal.SIGTERM)
        sys.exit(f"Failed to start server. Error: {getattr(error, 'message', error)}")
    finally:
        for worker in workers:
            try:
                worker.wait(options.shutdown_grace_seconds + 30)
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
