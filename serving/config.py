"""Parsing of the text-format configuration files TensorFlow Serving reads.

* ``--model_config_file``: a ``tensorflow.serving.ModelServerConfig`` (proto
  from the tensorflow-serving-api package).
* ``--batching_parameters_file``: ``tensorflow.serving.BatchingParameters``,
  ``--monitoring_config_file``: ``tensorflow.serving.MonitoringConfig`` and
  ``--ssl_config_file``: ``tensorflow.serving.SSLConfig``. The pip package
  does not ship these three protos, so this module declares compatible
  messages at run time (same names, field names and numbers) and parses the
  files with protobuf's own text-format parser.
* ``--tensorflow_session_config_file``: a ``tensorflow.ConfigProto`` (from
  TensorFlow).
* ``--grpc_channel_arguments``: ``key=value`` pairs separated by commas.
"""

import dataclasses
import os

from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    message_factory,
    text_format,
    wrappers_pb2,  # noqa: F401  (registers wrappers.proto in the pool)
)
from tensorflow_serving.config import model_server_config_pb2

from serving.store import is_remote


class ConfigError(Exception):
    """A configuration file or flag that cannot be used.

    ``code`` is the status TF Serving reports it with; ``parse_error`` is the
    text-format parser's own complaint (naming the proto, line and column),
    which TF Serving's protobuf library logs before the status.
    """

    def __init__(self, message: str, code: str = "INVALID_ARGUMENT", parse_error: str | None = None):
        super().__init__(message)
        self.code = code
        self.parse_error = parse_error


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except OSError as error:
        code = {FileNotFoundError: "NOT_FOUND", PermissionError: "PERMISSION_DENIED"}.get(type(error), "UNKNOWN")
        raise ConfigError(f"{path}; {error.strerror}", code=code) from error
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"Invalid protobuf file: '{path}'", parse_error=f"{path} is not UTF-8 text: {error}"
        ) from error


def _parse_into(text: str, message, path: str):
    """TF Serving's ParseProtoTextFile: status ``Invalid protobuf file: '<path>'``."""
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as error:
        position = f"{error.GetLine()}:{error.GetColumn()}: " if error.GetLine() is not None else ""
        detail = str(error).split(" : ", 1)[-1]
        raise ConfigError(
            f"Invalid protobuf file: '{path}'",
            parse_error=(f"Error parsing text-format {message.DESCRIPTOR.full_name}: {position}{detail}"),
        ) from error
    return message


def parse_model_server_config(path: str) -> model_server_config_pb2.ModelServerConfig:
    """Reads and validates a ModelServerConfig text file."""
    config = _parse_into(_read_text(path), model_server_config_pb2.ModelServerConfig(), path)
    validate_model_server_config(config)
    return config


def validate_model_server_config(config) -> None:
    """Rejects configs this server cannot serve, with TF Serving's wording."""
    if config.WhichOneof("config") != "model_config_list":
        raise ConfigError("ModelServer does not yet support custom model config.")
    names = set()
    for model in config.model_config_list.config:
        if not model.name:
            raise ConfigError("Model name must not be empty")
        if model.name in names:
            raise ConfigError(f"Illegal to list model {model.name} multiple times in config list")
        names.add(model.name)
        if not model.base_path:
            raise ConfigError(f"Model {model.name} has no base_path")
        if model.model_platform not in ("", "tensorflow"):
            raise ConfigError(f"Model {model.name} requested unsupported platform {model.model_platform}")


def single_model_config(model_name: str, model_base_path: str):
    """The config TF Serving builds from --model_name/--model_base_path."""
    config = model_server_config_pb2.ModelServerConfig()
    model = config.model_config_list.config.add()
    model.name = model_name
    # URLs (s3://, gs://) stay as given; local paths become absolute, as TF Serving's do.
    model.base_path = model_base_path if is_remote(model_base_path) else os.path.abspath(model_base_path)
    model.model_platform = "tensorflow"
    return config


def _build_message_classes():
    """Declares BatchingParameters, MonitoringConfig and SSLConfig like TF Serving's protos."""
    file_proto = descriptor_pb2.FileDescriptorProto(
        name="wetterfrosch_serving/tf_serving_configs.proto",
        package="tensorflow.serving",
        syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"],
    )
    field = descriptor_pb2.FieldDescriptorProto
    optional, repeated = field.LABEL_OPTIONAL, field.LABEL_REPEATED

    def add_message(name, fields):
        message = file_proto.message_type.add(name=name)
        for number, (field_name, kind, type_name, label) in enumerate(fields, start=1):
            if field_name is None:
                continue
            spec = message.field.add(name=field_name, number=number, label=label, type=kind)
            if type_name:
                spec.type_name = type_name

    int64_value = ".google.protobuf.Int64Value"
    message_kind = field.TYPE_MESSAGE
    add_message(
        "BatchingParameters",
        [
            ("max_batch_size", message_kind, int64_value, optional),
            ("batch_timeout_micros", message_kind, int64_value, optional),
            ("max_enqueued_batches", message_kind, int64_value, optional),
            ("num_batch_threads", message_kind, int64_value, optional),
            ("thread_pool_name", message_kind, ".google.protobuf.StringValue", optional),
            ("allowed_batch_sizes", field.TYPE_INT64, None, repeated),
            ("pad_variable_length_inputs", field.TYPE_BOOL, None, optional),
            ("enable_large_batch_splitting", message_kind, ".google.protobuf.BoolValue", optional),
            ("max_execution_batch_size", message_kind, int64_value, optional),
            ("batch_padding_policy", message_kind, ".google.protobuf.StringValue", optional),
        ],
    )
    add_message(
        "PrometheusConfig",
        [
            ("enable", field.TYPE_BOOL, None, optional),
            ("path", field.TYPE_STRING, None, optional),
        ],
    )
    add_message(
        "MonitoringConfig",
        [
            ("prometheus_config", message_kind, ".tensorflow.serving.PrometheusConfig", optional),
        ],
    )
    add_message(
        "SSLConfig",
        [  # tensorflow_serving/config/ssl_config.proto
            ("server_key", field.TYPE_STRING, None, optional),
            ("server_cert", field.TYPE_STRING, None, optional),
            ("custom_ca", field.TYPE_STRING, None, optional),
            ("client_verify", field.TYPE_BOOL, None, optional),
        ],
    )
    pool = descriptor_pool.Default()
    pool.Add(file_proto)
    file_descriptor = pool.FindFileByName(file_proto.name)
    return tuple(
        message_factory.GetMessageClass(file_descriptor.message_types_by_name[name])
        for name in ("BatchingParameters", "MonitoringConfig", "SSLConfig")
    )


BatchingParametersProto, MonitoringConfigProto, SSLConfigProto = _build_message_classes()


@dataclasses.dataclass(frozen=True)
class BatchingParameters:
    """Batching settings with TF Serving's defaults for absent fields."""

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = os.cpu_count() or 1
    allowed_batch_sizes: tuple = ()


def parse_batching_parameters(path: str | None) -> BatchingParameters:
    """Reads --batching_parameters_file; no file means the defaults."""
    if not path:
        return BatchingParameters()
    proto = _parse_into(_read_text(path), BatchingParametersProto(), path)
    defaults = BatchingParameters()

    def wrapped(name):
        return getattr(proto, name).value if proto.HasField(name) else getattr(defaults, name)

    parameters = BatchingParameters(
        max_batch_size=wrapped("max_batch_size"),
        batch_timeout_micros=wrapped("batch_timeout_micros"),
        max_enqueued_batches=wrapped("max_enqueued_batches"),
        num_batch_threads=wrapped("num_batch_threads"),
        allowed_batch_sizes=tuple(proto.allowed_batch_sizes),
    )
    if parameters.max_batch_size <= 0:
        raise ConfigError("max_batch_size must be positive")
    if parameters.num_batch_threads <= 0:
        raise ConfigError("num_batch_threads must be positive")
    if parameters.allowed_batch_sizes and parameters.allowed_batch_sizes[-1] != parameters.max_batch_size:
        raise ConfigError("The last entry in allowed_batch_sizes must equal max_batch_size")
    return parameters


@dataclasses.dataclass(frozen=True)
class MonitoringConfig:
    prometheus_enabled: bool = False
    prometheus_path: str = "/monitoring/prometheus/metrics"


def parse_monitoring_config(path: str | None) -> MonitoringConfig:
    """Reads --monitoring_config_file; no file means monitoring is off."""
    if not path:
        return MonitoringConfig()
    proto = _parse_into(_read_text(path), MonitoringConfigProto(), path)
    prometheus = proto.prometheus_config
    return MonitoringConfig(
        prometheus_enabled=prometheus.enable,
        prometheus_path=prometheus.path or MonitoringConfig.prometheus_path,
    )


@dataclasses.dataclass(frozen=True)
class SslConfig:
    """PEM texts for the gRPC port's TLS; ``client_verify`` requires a client certificate signed by ``custom_ca``."""

    server_key: str
    server_cert: str
    custom_ca: str
    client_verify: bool


def parse_ssl_config(path: str) -> SslConfig:
    """Reads --ssl_config_file. TF Serving hands these fields to gRPC as they are; gRPC would
    refuse the missing ones only when the server starts, so they are refused here, naming the file."""
    proto = _parse_into(_read_text(path), SSLConfigProto(), path)
    missing = [name for name in ("server_key", "server_cert") if not getattr(proto, name).strip()]
    if missing:
        raise ConfigError(f"SSLConfig in '{path}' has no {' and no '.join(missing)}")
    if proto.client_verify and not proto.custom_ca.strip():
        raise ConfigError(
            f"SSLConfig in '{path}' sets client_verify but no custom_ca to verify client certificates with"
        )
    return SslConfig(proto.server_key, proto.server_cert, proto.custom_ca, proto.client_verify)


def parse_session_config(path: str):
    """Reads --tensorflow_session_config_file (a text ``tensorflow.ConfigProto``)."""
    from tensorflow.core.protobuf import config_pb2

    return _parse_into(_read_text(path), config_pb2.ConfigProto(), path)


def parse_grpc_channel_arguments(text: str) -> list[tuple[str, int | str]]:
    """``a=1,b=x`` -> [("a", 1), ("b", "x")]; integers are passed as ints."""
    arguments = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, separator, value = item.partition("=")
        if not separator or not key:
            raise ConfigError(f"Malformed --grpc_channel_arguments entry '{item}': expected key=value")
        try:
            arguments.append((key, int(value)))
        except ValueError:
            arguments.append((key, value))
    return arguments
