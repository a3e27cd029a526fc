"""The server's options, declared once, as TensorFlow Serving's `Server::Options` struct declares them.

`ServerOptions` is one validated dataclass (`zoo.config`): each field is a `tensorflow_model_server` flag this
server acts on (its name, default and meaning), or one of this server's own. `python -m serving.server` makes
one flag of each field (`zoo.config.define_flags`, as `python -m train` does of its settings), fills the
options from the flags, and `serving.server.ModelServer` takes them. The other `tensorflow_model_server`
flags (`IgnoredTFServingFlags`: TLS, monitoring, TFLite, XLA, ...) are made the same way, accepted and ignored.

Free of TensorFlow, so that a wrong option fails before TensorFlow loads.
"""

import dataclasses

from zoo.config import AT_LEAST_ONE, Config, setting

# Holds a batch of 1,000 64x64x3 images as JSON floats.
DEFAULT_MAX_REQUEST_BYTES = 256 * 1024 * 1024


def parse_channel_arguments(text):
    """`--grpc_channel_arguments` ("k=v,k=v") -> {key: int or str}, as TF Serving parses them."""
    arguments = {}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--grpc_channel_arguments: expected key=value, got {item!r}")
        try:
            number = int(value)
            arguments[key] = number if -(2**31) <= number < 2**31 else value  # gRPC takes a C int
        except ValueError:
            arguments[key] = value
    return arguments


@dataclasses.dataclass(frozen=True)
class ServerOptions(Config):
    """What to serve and how: `tensorflow_model_server`'s flags this server acts on, then its own.

    Every field is a flag of the same name and default. A value of 0 or "" means what it means to TF Serving
    (none, or automatic); a wrong value, or options that contradict each other, raise ValueError with one
    sentence (TF Serving's wording where it has one).
    """

    # tensorflow_model_server's flags this server acts on (its names, defaults and meanings).
    port: int = setting(8500, "Port for the gRPC API (PredictionService, ModelService); 0 disables it.")
    grpc_socket_path: str = setting("", "If set, gRPC is also served on this UNIX socket.")
    rest_api_port: int = setting(0, "Port for the HTTP/REST API; 0 disables it.")
    rest_api_num_threads: int = setting(0, "Threads running unbatched requests; default 4 x CPUs.")
    rest_api_timeout_in_ms: int = setting(30000, "Per-request timeout (504 / DEADLINE_EXCEEDED); 0: none.")
    rest_api_enable_cors_support: bool = setting(False, "Add CORS headers to REST answers.")
    enable_batching: bool = setting(False, "Batch concurrent requests into one model call.")
    allow_version_labels_for_unavailable_models: bool = setting(
        False, "Allow a new version label to point to a version that is not available yet."
    )
    batching_parameters_file: str = setting("", "BatchingParameters text proto (needs --enable_batching).")
    model_config_file: str = setting("", "ModelServerConfig text proto (several models, version policies).")
    model_config_file_poll_wait_seconds: int = setting(0, "Seconds between re-reads of the config file; 0: never.")
    model_name: str = setting("default", "Name of the model (ignored with --model_config_file).")
    model_base_path: str = setting("", "Directory holding the model's integer version directories.")
    max_num_load_retries: int = setting(5, "Retries of a failed load before giving up on the version.")
    load_retry_interval_micros: int = setting(60_000_000, "Microseconds between load retries.")
    file_system_poll_wait_seconds: float = setting(1.0, "Seconds between polls for new versions; 0: poll once.")
    tensorflow_session_parallelism: int = setting(0, "TensorFlow intra- and inter-op threads; 0: automatic.")
    tensorflow_intra_op_parallelism: int = setting(0, "TensorFlow intra-op threads; 0: automatic.")
    tensorflow_inter_op_parallelism: int = setting(0, "TensorFlow inter-op threads; 0: automatic.")
    saved_model_tags: str = setting("serve", "Comma-separated tags of the MetaGraph to load.")
    grpc_channel_arguments: str = setting("", "gRPC server arguments, e.g. grpc.max_receive_message_length=1000.")
    grpc_max_threads: int = setting(0, "gRPC worker threads; default 4 x CPUs.")
    enable_model_warmup: bool = setting(True, "Run each signature once on zeros after loading.")
    enable_serialization_as_tensor_content: bool = setting(
        False, "gRPC Predict outputs in tensor_content instead of the typed fields."
    )
    # This server's own.
    host: str = setting("127.0.0.1", "Address both APIs bind (use 0.0.0.0 to serve other machines).")
    rest_api_max_request_bytes: int = setting(
        DEFAULT_MAX_REQUEST_BYTES,
        "Largest REST request body (413 beyond); this server's own limit (TF Serving has none).",
    )
    shutdown_grace_seconds: float = setting(30.0, "How long in-flight requests may run after SIGTERM.")
    rest_api_workers: int = setting(
        1,
        "Processes serving REST on the same port (SO_REUSEPORT), each with its own copy of the models: JSON "
        "decoding is bound to one core per process. gRPC is served by the first process only.",
        check=AT_LEAST_ONE,
    )
    rest_api_parent_pid: int = setting(0, "Internal: set in REST worker processes started by --rest_api_workers.")

    def check(self):
        if self.batching_parameters_file and not self.enable_batching:
            raise self.error(
                "server_options.batching_parameters_file is set without setting server_options.enable_batching to true."
            )
        if not self.model_config_file and not self.model_base_path:
            raise self.error("Both server_options.model_base_path and server_options.model_config_file are empty!")
        if self.port and self.port == self.rest_api_port:
            raise self.error("--port and --rest_api_port must differ")
        if (
            self.tensorflow_session_parallelism > 0
            and self.tensorflow_intra_op_parallelism > 0
            and (self.tensorflow_inter_op_parallelism > 0)
        ):
            raise self.error(
                "Either configure server_options.tensorflow_session_parallelism or "
                "(server_options.tensorflow_intra_op_parallelism, server_options.tensorflow_inter_op_parallelism) "
                "separately. You cannot configure all."
            )
        if self.rest_api_workers > 1 and not self.rest_api_port:
            raise self.error("--rest_api_workers needs a fixed --rest_api_port")
        parse_channel_arguments(self.grpc_channel_arguments)  # malformed, it fails here rather than at gRPC's start

    @property
    def channel_arguments(self):
        """`grpc_channel_arguments` as {key: int or str}."""
        return parse_channel_arguments(self.grpc_channel_arguments)

    @property
    def meta_graph_tags(self):
        """The tags of `saved_model_tags`; "serve" when it names none."""
        return tuple(tag for tag in self.saved_model_tags.split(",") if tag) or ("serve",)

    @property
    def shares_rest_port(self):
        """Whether this process is one of several serving REST on one port (`--rest_api_workers`)."""
        return self.rest_api_workers > 1 or bool(self.rest_api_parent_pid)


_IGNORED = "tensorflow_model_server flag; accepted and ignored by this server."


@dataclasses.dataclass(frozen=True)
class IgnoredTFServingFlags(Config):
    """`tensorflow_model_server`'s flags (model_servers/main.cc) this server accepts, with TF Serving's defaults,
    and ignores with one warning line: a command line written for TF Serving runs here unchanged."""

    num_load_threads: int = setting(0, _IGNORED)
    num_unload_threads: int = setting(0, _IGNORED)
    flush_filesystem_caches: bool = setting(True, _IGNORED)
    tensorflow_session_config_file: str = setting("", _IGNORED)
    use_alts_credentials: bool = setting(False, _IGNORED)
    ssl_config_file: str = setting("", _IGNORED)
    platform_config_file: str = setting("", _IGNORED)
    per_process_gpu_memory_fraction: float = setting(0.0, _IGNORED)
    num_request_iterations_for_warmup: int = setting(0, _IGNORED)
    monitoring_config_file: str = setting("", _IGNORED)
    remove_unused_fields_from_bundle_metagraph: bool = setting(True, _IGNORED)
    prefer_tflite_model: bool = setting(False, _IGNORED)
    num_tflite_pools: int = setting(0, _IGNORED)
    num_tflite_interpreters_per_pool: int = setting(1, _IGNORED)
    enable_signature_method_name_check: bool = setting(False, _IGNORED)
    xla_cpu_compilation_enabled: bool = setting(False, _IGNORED)
    xla_gpu_compilation_enabled: bool = setting(False, _IGNORED)
    enable_profiler: bool = setting(True, _IGNORED)
    thread_pool_factory_config_file: str = setting("", _IGNORED)
    mixed_precision: str = setting("", _IGNORED)
    skip_initialize_tpu: bool = setting(False, _IGNORED)
    enable_grpc_healthcheck_service: bool = setting(False, _IGNORED)
    enable_per_model_batching_parameters: bool = setting(False, _IGNORED)
