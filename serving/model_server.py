"""Entry point: ``python -m serving.model_server --model_base_path=... [flags]``.

Accepts every flag of TensorFlow Serving's ``tensorflow_model_server`` with
its default; the ones this server implements behave like TF Serving's, the
rest are accepted, have no effect and are named in one startup log line.
``--host`` (ours) chooses the bind address and defaults to loopback.
``--model_cache_dir`` (ours) keeps the local copies of s3:// and gs:// base
paths (default: a temporary directory removed at exit; serving/storage.py).
Unknown flags are an error (exit code 2). SIGTERM and SIGINT shut the server
down cleanly: servers stop accepting, in-flight requests finish, models unload.
"""

import argparse
import atexit
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402  (after the log level is set)

from serving import config as config_files  # noqa: E402
from serving.batching import Batcher  # noqa: E402
from serving.errors import ServingError  # noqa: E402
from serving.grpc_server import GrpcServer  # noqa: E402
from serving.manager import ManagerOptions, ModelManager  # noqa: E402
from serving.monitoring import Metrics  # noqa: E402
from serving.rest_server import RestApi, RestServer  # noqa: E402
from serving.storage import BadBasePath, ModelCache, is_remote, list_versions  # noqa: E402

log = logging.getLogger("serving")

SERVER_VERSION = "2.21.0-wetterfrosch"
CPUS = os.cpu_count() or 1

# Flags TensorFlow Serving has that change nothing here.
ACCEPTED_ONLY_FLAGS = [
    ("enable_per_model_batching_parameters", "bool", False),
    ("num_load_threads", int, 0),
    ("num_unload_threads", int, 0),
    ("flush_filesystem_caches", "bool", True),
    ("tensorflow_session_config_file", str, ""),
    ("use_alts_credentials", "bool", False),
    ("ssl_config_file", str, ""),
    ("platform_config_file", str, ""),
    ("per_process_gpu_memory_fraction", float, 0.0),
    ("remove_unused_fields_from_bundle_metagraph", "bool", True),
    ("prefer_tflite_model", "bool", False),
    ("num_tflite_pools", int, 1),
    ("num_tflite_interpreters_per_pool", int, 1),
    ("enable_signature_method_name_check", "bool", False),
    ("xla_cpu_compilation_enabled", "bool", False),
    ("xla_gpu_compilation_enabled", "bool", False),
    ("enable_profiler", "bool", True),
    ("thread_pool_factory_config_file", str, ""),
    ("mixed_precision", str, ""),
    ("skip_initialize_tpu", "bool", False),
    ("enable_serialization_as_tensor_content", "bool", False),
]

IMPLEMENTED_FLAGS = [
    ("port", int, 8500),
    ("grpc_socket_path", str, ""),
    ("rest_api_port", int, 0),
    ("rest_api_num_threads", int, 4 * CPUS),
    ("rest_api_timeout_in_ms", int, 30000),
    ("rest_api_enable_cors_support", "bool", False),
    ("enable_batching", "bool", False),
    ("allow_version_labels_for_unavailable_models", "bool", False),
    ("batching_parameters_file", str, ""),
    ("model_config_file", str, ""),
    ("model_config_file_poll_wait_seconds", int, 0),
    ("model_name", str, "default"),
    ("model_base_path", str, ""),
    ("max_num_load_retries", int, 5),
    ("load_retry_interval_micros", int, 60 * 1000 * 1000),
    ("file_system_poll_wait_seconds", int, 1),
    ("tensorflow_session_parallelism", int, 0),
    ("tensorflow_intra_op_parallelism", int, 0),
    ("tensorflow_inter_op_parallelism", int, 0),
    ("saved_model_tags", str, "serve"),
    ("grpc_channel_arguments", str, ""),
    ("grpc_max_threads", int, max(64, 4 * CPUS)),
    ("enable_model_warmup", "bool", True),
    ("num_request_iterations_for_warmup", int, 1),
    ("version", "bool", False),
    ("monitoring_config_file", str, ""),
    ("enable_grpc_healthcheck_service", "bool", False),
    ("host", str, "127.0.0.1"),
    ("model_cache_dir", str, ""),
]


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got '{text}'")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m serving.model_server",
        description="A ModelServer speaking TensorFlow Serving's gRPC and REST APIs.",
        allow_abbrev=False,
    )
    for name, kind, default in IMPLEMENTED_FLAGS + ACCEPTED_ONLY_FLAGS:
        if kind == "bool":
            parser.add_argument(f"--{name}", type=_parse_bool, nargs="?", const=True, default=default)
        else:
            parser.add_argument(f"--{name}", type=kind, default=default)
    return parser


class _GlogFormatter(logging.Formatter):
    """I1125 21:44:48.123456  1234 file.py:12] message — TF Serving's log layout."""

    def format(self, record):
        stamp = time.strftime("%m%d %H:%M:%S", time.localtime(record.created))
        micros = int(record.msecs * 1000)
        line = (f"{record.levelname[0]}{stamp}.{micros:06d} {record.thread % 100000:6d} "
                f"{record.filename}:{record.lineno}] {record.getMessage()}")
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


def _configure_tensorflow(flags) -> None:
    intra = flags.tensorflow_intra_op_parallelism or flags.tensorflow_session_parallelism
    inter = flags.tensorflow_inter_op_parallelism or flags.tensorflow_session_parallelism
    if intra:
        tf.config.threading.set_intra_op_parallelism_threads(intra)
    if inter:
        tf.config.threading.set_inter_op_parallelism_threads(inter)


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
                log.warning("Base path %s of model %s cannot be listed yet (%s); retrying every poll",
                            model.base_path, model.name, error)


def main(argv=None) -> int:
    flags = build_parser().parse_args(argv)
    if flags.version:
        print(f"TensorFlow ModelServer: {SERVER_VERSION}\nTensorFlow Library: {tf.__version__}")
        return 0
    _configure_logging()
    _configure_tensorflow(flags)
    log.info("Flags accepted for compatibility that have no effect here: %s",
             ", ".join(f"--{name}" for name, _, _ in ACCEPTED_ONLY_FLAGS))
    try:
        if flags.model_config_file:
            server_config = config_files.parse_model_server_config(flags.model_config_file)
        elif flags.model_base_path:
            log.info("Building single TensorFlow model file config:  model_name: %s model_base_path: %s",
                     flags.model_name, flags.model_base_path)
            server_config = config_files.single_model_config(flags.model_name, flags.model_base_path)
        else:
            raise config_files.ConfigError(
                "Both server_options.model_base_path and server_options.model_config_file are empty!")
        batching = (config_files.parse_batching_parameters(flags.batching_parameters_file)
                    if flags.enable_batching else None)
        monitoring = config_files.parse_monitoring_config(flags.monitoring_config_file)
        channel_arguments = config_files.parse_grpc_channel_arguments(flags.grpc_channel_arguments)
        _check_remote_base_paths(server_config)
    except (config_files.ConfigError, BadBasePath) as error:
        print(f"Failed to start server. Error: {error}", file=sys.stderr)
        return 1

    # Local copies of remote (s3://, gs://) versions; a directory of our own unless one is given.
    cache_dir = flags.model_cache_dir or tempfile.mkdtemp(prefix="model-cache-")
    if not flags.model_cache_dir:
        atexit.register(shutil.rmtree, cache_dir, ignore_errors=True)
    metrics = Metrics()
    options = ManagerOptions(
        file_system_poll_wait_seconds=flags.file_system_poll_wait_seconds,
        max_num_load_retries=flags.max_num_load_retries,
        load_retry_interval_seconds=flags.load_retry_interval_micros / 1e6,
        enable_model_warmup=flags.enable_model_warmup,
        num_request_iterations_for_warmup=flags.num_request_iterations_for_warmup,
        saved_model_tags=frozenset(tag.strip() for tag in flags.saved_model_tags.split(",") if tag.strip()),
        allow_version_labels_for_unavailable_models=flags.allow_version_labels_for_unavailable_models,
        prepare_servable=(lambda servable: setattr(servable, "batcher", Batcher(servable.execute, batching)))
        if batching else None,
        on_load_attempt=metrics.record_load_attempt,
        local_base_path=ModelCache(cache_dir).local_base_path,
    )
    manager = ModelManager(options)
    try:
        manager.apply_config(server_config)
    except ServingError as error:
        print(f"Failed to start server. Error: {error.code_name}: {error.message}", file=sys.stderr)
        manager.stop()
        return 1
    manager.start_polling()

    stop_requested = threading.Event()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signal_number, lambda number, frame: stop_requested.set())

    try:
        grpc_server = GrpcServer(manager, metrics, flags.host, flags.port, flags.grpc_socket_path,
                                 channel_arguments, flags.grpc_max_threads, flags.enable_grpc_healthcheck_service,
                                 asynchronous=flags.enable_batching)
        grpc_server.start()
        for address in grpc_server.addresses:
            log.info("Running gRPC ModelServer at %s ...", address)
        rest_server = None
        if flags.rest_api_port and flags.rest_api_port == flags.port:
            log.error("--rest_api_port cannot be same as --port. Please use a different port for HTTP/REST "
                      "API. Skipped exporting HTTP/REST API.")
        elif flags.rest_api_port:
            prometheus_path = monitoring.prometheus_path if monitoring.prometheus_enabled else None
            rest_server = RestServer(RestApi(manager, metrics, prometheus_path), flags.host, flags.rest_api_port,
                                     flags.rest_api_num_threads, flags.rest_api_timeout_in_ms,
                                     flags.rest_api_enable_cors_support)
            rest_server.start()
            host = "localhost" if flags.host in ("127.0.0.1", "localhost") else flags.host
            log.info("Exporting HTTP/REST API at:%s:%d ...", host, rest_server.port)
    except (OSError, RuntimeError) as error:
        print(f"Failed to start server. Error: {error}", file=sys.stderr)
        manager.stop()
        return 1

    config_poller = None
    if flags.model_config_file and flags.model_config_file_poll_wait_seconds > 0:
        config_poller = ConfigFilePoller(manager, flags.model_config_file,
                                         flags.model_config_file_poll_wait_seconds, server_config)
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
