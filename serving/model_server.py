"""Entry point: ``python -m serving.model_server --model_base_path=... [flags]``.

Accepts every flag of TensorFlow Serving's ``tensorflow_model_server`` with
its default. The ones this server implements behave like TF Serving's. Of
the rest, those that would change security, answers or resource limits
refuse to start when set (``UNSUPPORTED_FLAGS``), and the harmless ones
(performance tuning, hardware this server does not use) are accepted, have
no effect and are named in one startup log line (``NO_EFFECT_FLAGS``).
Every file a flag names is parsed before any port is opened.
``--host`` (ours) chooses the bind address and defaults to loopback.
``--model_cache_dir`` (ours) keeps the local copies of s3:// and gs:// base
paths (default: a temporary directory removed at exit; serving/store/mirror.py).
``--max_tensor_bytes`` (ours, 0 = no limit) refuses larger input and output
tensors with RESOURCE_EXHAUSTED; ``--rest_api_listen_backlog`` (ours, 0 = as
many as the system allows) sets the REST socket's queue of connections.
Unknown flags are an error (exit code 2). SIGTERM and SIGINT shut the server
down cleanly: servers stop accepting, in-flight requests finish, models unload.
"""

import argparse
import atexit
import dataclasses
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import grpc  # noqa: E402
import tensorflow as tf  # noqa: E402  (after the log level is set)

from serving import config as config_files  # noqa: E402
from serving.errors import ServingError  # noqa: E402
from serving.grpc_server import GrpcServer  # noqa: E402
from serving.manager import ManagerOptions, ModelManager  # noqa: E402
from serving.monitoring import Metrics  # noqa: E402
from serving.rest_server import RestApi, RestServer  # noqa: E402
from serving.store import BadBasePath, ModelCache, is_remote, list_versions  # noqa: E402

log = logging.getLogger("serving")

SERVER_VERSION = "2.21.0-wetterfrosch"
CPUS = os.cpu_count() or 1

# Flags TensorFlow Serving has that change nothing a client or operator can rely on here:
# tuning of TF Serving's own loader and runtime, and hardware this server does not use
# (flag, type, default, what it does in TF Serving, why it changes nothing here).
NO_EFFECT_FLAGS = [
    ("num_load_threads", int, 0, "threads that load versions", "versions load on a thread each"),
    ("num_unload_threads", int, 0, "threads that unload versions", "versions unload on a thread each"),
    ("flush_filesystem_caches", "bool", True, "flush file-system caches after the initial load", "no such caches"),
    (
        "remove_unused_fields_from_bundle_metagraph",
        "bool",
        True,
        "drop unused MetaGraphDef fields to save memory",
        "nothing kept to drop",
    ),
    ("per_process_gpu_memory_fraction", float, 0.0, "GPU memory share", "no GPU is used (refused if one is visible)"),
    ("num_tflite_pools", int, 1, "TFLite interpreter pools", "only with --prefer_tflite_model, which is refused"),
    ("num_tflite_interpreters_per_pool", int, 1, "TFLite interpreters per pool", "as --num_tflite_pools"),
    ("xla_cpu_compilation_enabled", "bool", False, "XLA JIT on CPU", "graphs run as TensorFlow compiles them"),
    ("xla_gpu_compilation_enabled", "bool", False, "XLA JIT on GPU", "no GPU"),
    ("enable_profiler", "bool", True, "the profiler service", "no profiler service: its RPCs answer UNIMPLEMENTED"),
    ("skip_initialize_tpu", "bool", False, "skip TPU initialisation", "no TPU"),
]

# Flags that would change answers, security or resource limits and are not implemented:
# any value but the default refuses to start (flag, type, default, why).
UNSUPPORTED_FLAGS = [
    (
        "enable_per_model_batching_parameters",
        "bool",
        False,
        "per-model batching_params.pbtxt is not read; use --batching_parameters_file",
    ),
    ("platform_config_file", str, "", "platform configs are not supported; use the flags"),
    ("prefer_tflite_model", "bool", False, "TFLite models are not supported"),
    ("enable_signature_method_name_check", "bool", False, "signature method names are not checked"),
    ("thread_pool_factory_config_file", str, "", "custom thread pools are not supported"),
    ("mixed_precision", str, "", "mixed precision is not supported"),
    ("enable_serialization_as_tensor_content", "bool", False, "responses are always written in the typed *_val fields"),
    (
        "use_alts_credentials",
        "bool",
        False,
        "grpcio cannot make ALTS server credentials (gRPC answers creds==NULL); use --ssl_config_file",
    ),
]

# Flags served as TF Serving serves them, and three of ours (flag, type, default, one-line help).
IMPLEMENTED_FLAGS = [
    ("port", int, 8500, "gRPC port"),
    ("grpc_socket_path", str, "", "also serve gRPC on this UNIX socket"),
    ("rest_api_port", int, 0, "REST port (0: no REST API)"),
    ("rest_api_num_threads", int, 4 * CPUS, "REST worker threads"),
    ("rest_api_timeout_in_ms", int, 30000, "REST request deadline; later answers are 504"),
    ("rest_api_enable_cors_support", "bool", False, "answer CORS preflights and add CORS headers"),
    ("enable_batching", "bool", False, "batch concurrent Predict requests"),
    ("allow_version_labels_for_unavailable_models", "bool", False, "let labels point at versions not yet loaded"),
    ("batching_parameters_file", str, "", "BatchingParameters text proto for --enable_batching"),
    ("model_config_file", str, "", "ModelServerConfig text proto: models, version policies, labels"),
    ("model_config_file_poll_wait_seconds", int, 0, "re-read --model_config_file this often (0: never)"),
    ("model_name", str, "default", "the model's name, with --model_base_path"),
    ("model_base_path", str, "", "directory (or s3://, gs:// URL) of the model's numbered versions"),
    ("max_num_load_retries", int, 5, "retries of a version that fails to load"),
    ("load_retry_interval_micros", int, 60 * 1000 * 1000, "wait between those retries"),
    ("file_system_poll_wait_seconds", int, 1, "list the base paths for new versions this often (0: once)"),
    ("tensorflow_session_parallelism", int, 0, "TensorFlow threads for both pools (0: TensorFlow's choice)"),
    ("tensorflow_intra_op_parallelism", int, 0, "TensorFlow threads within an op"),
    ("tensorflow_inter_op_parallelism", int, 0, "TensorFlow threads across ops"),
    ("saved_model_tags", str, "serve", "comma-separated MetaGraph tags to load"),
    ("grpc_channel_arguments", str, "", "comma-separated gRPC server channel arguments, key=value"),
    ("grpc_max_threads", int, max(64, 4 * CPUS), "gRPC worker threads"),
    ("enable_model_warmup", "bool", True, "replay assets.extra/tf_serving_warmup_requests before serving"),
    ("num_request_iterations_for_warmup", int, 1, "times each warm-up request is replayed"),
    ("version", "bool", False, "print the version and exit"),
    ("monitoring_config_file", str, "", "MonitoringConfig text proto: the Prometheus endpoint"),
    ("enable_grpc_healthcheck_service", "bool", False, "serve grpc.health.v1"),
    ("ssl_config_file", str, "", "SSLConfig text proto: TLS on the gRPC port and socket"),
    ("tensorflow_session_config_file", str, "", "ConfigProto text proto for TensorFlow sessions"),
    ("host", str, "127.0.0.1", "address to listen on (ours: TF Serving listens on all)"),
    ("model_cache_dir", str, "", "ours: local cache of s3:// and gs:// versions (default: a temporary directory)"),
    ("max_tensor_bytes", int, 0, "ours: refuse larger request and reply tensors, RESOURCE_EXHAUSTED (0: no cap)"),
    ("rest_api_listen_backlog", int, 0, "ours: REST connection queue (0: the system's maximum)"),
]


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got '{text}'")


def build_parser() -> argparse.ArgumentParser:
    """TensorFlow Serving's flags, grouped as `--help` shows them: served, accepted without effect, refused."""
    parser = argparse.ArgumentParser(
        prog="python -m serving.model_server",
        usage="%(prog)s [--flag=value ...]",
        description="A ModelServer speaking TensorFlow Serving's gRPC and REST APIs, with its flags.",
        allow_abbrev=False,
    )
    groups = [
        ("served", "as TensorFlow Serving serves them", [(*flag[:3], flag[3]) for flag in IMPLEMENTED_FLAGS]),
        (
            "accepted without effect",
            "they tune TensorFlow Serving's own runtime",
            [(name, kind, default, f"{what}: {why}") for name, kind, default, what, why in NO_EFFECT_FLAGS],
        ),
        (
            "refused",
            "any value but the default stops the server at startup",
            [(name, kind, default, why) for name, kind, default, why in UNSUPPORTED_FLAGS],
        ),
    ]
    for title, description, flags in groups:
        group = parser.add_argument_group(title, description)
        for name, kind, default, help_text in flags:
            shown = f"{help_text} (default: {default!r})"
            if kind == "bool":
                group.add_argument(
                    f"--{name}", type=_parse_bool, nargs="?", const=True, default=default, metavar="BOOL", help=shown
                )
            else:
                group.add_argument(f"--{name}", type=kind, default=default, metavar=kind.__name__.upper(), help=shown)
    return parser


class _GlogFormatter(logging.Formatter):
    """I1125 21:44:48.123456  1234 file.py:12] message — TF Serving's log layout."""

    def format(self, record):
        stamp = time.strftime("%m%d %H:%M:%S", time.localtime(record.created))
        micros = int(record.msecs * 1000)
        line = (
            f"{record.levelname[0]}{stamp}.{micros:06d} {record.thread % 100000:6d} "
            f"{record.filename}:{record.lineno}] {record.getMessage()}"
        )
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _configure_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_GlogFormatter())
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    tf.get_logger().setLevel(logging.ERROR)


def _check_flags(flags) -> None:
    """Refuses what TF Serving refuses, and every flag that would silently change nothing here."""
    if flags.use_alts_credentials and flags.ssl_config_file:  # TF Serving's own check comes first
        raise config_files.ConfigError("Either use_alts_credentials must be false or ssl_config_file must be empty.")
    for name, _kind, default, why in UNSUPPORTED_FLAGS:
        value = getattr(flags, name)
        if value != default and not (name == "enable_per_model_batching_parameters" and not flags.enable_batching):
            raise config_files.ConfigError(
                f"--{name}={value} is not supported by this ModelServer: {why}", code="UNIMPLEMENTED"
            )
    if flags.per_process_gpu_memory_fraction and tf.config.list_physical_devices("GPU"):
        raise config_files.ConfigError(
            "--per_process_gpu_memory_fraction is not supported by this ModelServer on a machine with GPUs",
            code="UNIMPLEMENTED",
        )
    if flags.batching_parameters_file and not flags.enable_batching:
        raise config_files.ConfigError(
            "server_options.batching_parameters_file is set without setting server_options.enable_batching to true."
        )
    if (
        flags.tensorflow_intra_op_parallelism > 0
        and flags.tensorflow_inter_op_parallelism > 0
        and flags.tensorflow_session_parallelism > 0
    ):
        raise config_files.ConfigError(
            "Either configure server_options.tensorflow_session_parallelism or "
            "(server_options.tensorflow_intra_op_parallelism, server_options.tensorflow_inter_op_parallelism) "
            "separately. You cannot configure all."
        )


SESSION_CONFIG_FIELDS = {"intra_op_parallelism_threads", "inter_op_parallelism_threads"}


def _configure_tensorflow(flags) -> None:
    """Thread pools from the parallelism flags, else from --tensorflow_session_config_file."""
    from_file = {}
    if flags.tensorflow_session_config_file:
        session_config = config_files.parse_session_config(flags.tensorflow_session_config_file)
        unsupported = sorted(
            field.name for field, _ in session_config.ListFields() if field.name not in SESSION_CONFIG_FIELDS
        )
        if unsupported:
            raise config_files.ConfigError(
                f"--tensorflow_session_config_file '{flags.tensorflow_session_config_file}' sets "
                f"{', '.join(unsupported)}, which this ModelServer cannot apply (it applies only "
                f"{' and '.join(sorted(SESSION_CONFIG_FIELDS))})",
                code="UNIMPLEMENTED",
            )
        from_file = {field.name: value for field, value in session_config.ListFields()}
    intra = (
        flags.tensorflow_intra_op_parallelism
        or flags.tensorflow_session_parallelism
        or from_file.get("intra_op_parallelism_threads", 0)
    )
    inter = (
        flags.tensorflow_inter_op_parallelism
        or flags.tensorflow_session_parallelism
        or from_file.get("inter_op_parallelism_threads", 0)
    )
    if intra:
        tf.config.threading.set_intra_op_parallelism_threads(intra)
    if inter:
        tf.config.threading.set_inter_op_parallelism_threads(inter)
    if from_file:
        log.info(
            "TensorFlow threads from --tensorflow_session_config_file: intra_op %d, inter_op %d "
            "(0: TensorFlow's choice; the parallelism flags take precedence)",
            intra,
            inter,
        )


def _server_credentials(flags):
    """TF Serving's BuildServerCredentials: TLS from an SSLConfig file, or plaintext (None).

    As in TF Serving, ``client_verify`` requires and verifies a client certificate (against
    ``custom_ca``), and the same credentials go on the TCP port and the UNIX socket."""
    if not flags.ssl_config_file:
        log.info("Using InsecureServerCredentials")
        return None
    ssl = config_files.parse_ssl_config(flags.ssl_config_file)
    log.info("Using SSL credentials")
    return grpc.ssl_server_credentials(
        [(ssl.server_key.encode(), ssl.server_cert.encode())],
        root_certificates=ssl.custom_ca.encode() or None,
        require_client_auth=ssl.client_verify,
    )


class ConfigFilePoller:
    """Re-reads --model_config_file periodically; a broken file keeps the running config."""

    def __init__(self, manager: ModelManager, path: str, interval_seconds: int, applied):
        self._manager, self._path, self._interval = manager, path, interval_seconds
        self._applied = applied
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="config-poller", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                config = config_files.parse_model_server_config(self._path)
            except config_files.ConfigError as error:
                if error.parse_error:
                    log.error("%s", error.parse_error)
                log.error("Failed to read ModelServerConfig file: %s (keeping the running config)", error)
                continue
            if config == self._applied:
                continue
            try:
                self._manager.apply_config(config)
            except ServingError as error:
                log.error("PollFilesystemAndReloadConfig failed to ReloadConfig: %s", error.message)
            self._applied = config


def _check_remote_base_paths(server_config) -> None:
    """Refuses a remote base path that can never work (BadBasePath); an unreachable store is retried on polls."""
    for model in server_config.model_config_list.config:
        if is_remote(model.base_path):
            try:
                list_versions(model.base_path)
            except BadBasePath:
                raise
            except OSError as error:
                log.warning(
                    "Base path %s of model %s cannot be listed yet (%s); retrying every poll",
                    model.base_path,
                    model.name,
                    error,
                )


class StartupFailure(Exception):
    """The server cannot start; the message follows TF Serving's `Failed to start server. Error: `."""


@dataclasses.dataclass
class Startup:
    """Everything the flags and their files say, checked before a model loads or a port opens."""

    server_config: object
    batching: object
    monitoring: object
    channel_arguments: list
    credentials: object


def read_startup(flags) -> Startup:
    """Check every flag and read every file they name; `StartupFailure` with TF Serving's status otherwise."""
    try:
        _check_flags(flags)
        _configure_tensorflow(flags)
        if flags.model_config_file:
            server_config = config_files.parse_model_server_config(flags.model_config_file)
        elif flags.model_base_path:
            log.info(
                "Building single TensorFlow model file config:  model_name: %s model_base_path: %s",
                flags.model_name,
                flags.model_base_path,
            )
            server_config = config_files.single_model_config(flags.model_name, flags.model_base_path)
        else:
            raise config_files.ConfigError(
                "Both server_options.model_base_path and server_options.model_config_file are empty!"
            )
        startup = Startup(
            server_config=server_config,
            batching=(
                config_files.parse_batching_parameters(flags.batching_parameters_file)
                if flags.enable_batching
                else None
            ),
            monitoring=config_files.parse_monitoring_config(flags.monitoring_config_file),
            channel_arguments=config_files.parse_grpc_channel_arguments(flags.grpc_channel_arguments),
            credentials=_server_credentials(flags),
        )
        _check_remote_base_paths(server_config)
        return startup
    except config_files.ConfigError as error:
        if error.parse_error:  # what TF Serving's protobuf library logs before the status
            log.error("%s", error.parse_error)
        raise StartupFailure(f"{error.code}: {error}") from None
    except BadBasePath as error:
        raise StartupFailure(f"INVALID_ARGUMENT: {error}") from None


def build_manager(flags, startup: Startup, metrics: Metrics) -> ModelManager:
    """The model manager with the configured models loaded (as TF Serving, startup waits for them), polling."""
    # Local copies of remote (s3://, gs://) versions; a directory of our own unless one is given.
    cache_dir = flags.model_cache_dir or tempfile.mkdtemp(prefix="model-cache-")
    if not flags.model_cache_dir:
        atexit.register(shutil.rmtree, cache_dir, ignore_errors=True)
    options = ManagerOptions(
        file_system_poll_wait_seconds=flags.file_system_poll_wait_seconds,
        max_num_load_retries=flags.max_num_load_retries,
        load_retry_interval_seconds=flags.load_retry_interval_micros / 1e6,
        enable_model_warmup=flags.enable_model_warmup,
        num_request_iterations_for_warmup=flags.num_request_iterations_for_warmup,
        saved_model_tags=frozenset(tag.strip() for tag in flags.saved_model_tags.split(",") if tag.strip()),
        allow_version_labels_for_unavailable_models=flags.allow_version_labels_for_unavailable_models,
        max_tensor_bytes=max(flags.max_tensor_bytes, 0),
        batching=startup.batching,
        on_load_attempt=metrics.record_load_attempt,
        local_base_path=ModelCache(cache_dir).local_base_path,
    )
    manager = ModelManager(options)
    try:
        manager.apply_config(startup.server_config)
    except ServingError as error:
        manager.stop()
        raise StartupFailure(f"{error.code_name}: {error.message}") from None
    manager.start_polling()
    return manager


def start_servers(flags, startup: Startup, manager: ModelManager, metrics: Metrics):
    """The gRPC server and, with --rest_api_port, the REST server, started: (gRPC server, REST server or None)."""
    try:
        grpc_server = GrpcServer(
            manager,
            metrics,
            flags.host,
            flags.port,
            flags.grpc_socket_path,
            startup.channel_arguments,
            flags.grpc_max_threads,
            flags.enable_grpc_healthcheck_service,
            asynchronous=flags.enable_batching,
            credentials=startup.credentials,
        )
        grpc_server.start()
        for address in grpc_server.addresses:
            log.info("Running gRPC ModelServer at %s ...", address)
        rest_server = None
        if flags.rest_api_port and flags.rest_api_port == flags.port:
            log.error(
                "--rest_api_port cannot be same as --port. Please use a different port for HTTP/REST "
                "API. Skipped exporting HTTP/REST API."
            )
        elif flags.rest_api_port:
            monitoring = startup.monitoring
            prometheus_path = monitoring.prometheus_path if monitoring.prometheus_enabled else None
            rest_server = RestServer(
                RestApi(manager, metrics, prometheus_path),
                flags.host,
                flags.rest_api_port,
                flags.rest_api_num_threads,
                flags.rest_api_timeout_in_ms,
                flags.rest_api_enable_cors_support,
                listen_backlog=flags.rest_api_listen_backlog,
            )
            rest_server.start()
            host = "localhost" if flags.host in ("127.0.0.1", "localhost") else flags.host
            log.info("Exporting HTTP/REST API at:%s:%d ...", host, rest_server.port)
    except (OSError, RuntimeError) as error:
        raise StartupFailure(str(error)) from None
    return grpc_server, rest_server


def stop_on_signals() -> threading.Event:
    """An event that SIGTERM or SIGINT sets (from now on: before, they end the process at once)."""
    stop_requested = threading.Event()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signal_number, lambda number, frame: stop_requested.set())
    return stop_requested


def main(argv=None) -> int:
    flags = build_parser().parse_args(argv)
    if flags.version:
        print(f"TensorFlow ModelServer: {SERVER_VERSION}\nTensorFlow Library: {tf.__version__}")
        return 0
    _configure_logging()
    log.info(
        "Flags accepted for compatibility that have no effect here: %s",
        ", ".join(f"--{name}" for name, *_ in NO_EFFECT_FLAGS),
    )
    metrics = Metrics()
    manager = None
    try:
        startup = read_startup(flags)
        manager = build_manager(flags, startup, metrics)
        stop_requested = stop_on_signals()
        grpc_server, rest_server = start_servers(flags, startup, manager, metrics)
    except StartupFailure as failure:
        print(f"Failed to start server. Error: {failure}", file=sys.stderr)
        if manager is not None:
            manager.stop()
        return 1

    config_poller = None
    if flags.model_config_file and flags.model_config_file_poll_wait_seconds > 0:
        config_poller = ConfigFilePoller(
            manager, flags.model_config_file, flags.model_config_file_poll_wait_seconds, startup.server_config
        )
        config_poller.start()
    while not stop_requested.wait(0.5):
        pass

    log.info("Shutting down the ModelServer ...")
    if config_poller:
        config_poller.stop()
    if rest_server:
        rest_server.stop()
    grpc_server.stop(grace_seconds=5)
    manager.stop()
    log.info("ModelServer stopped.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
