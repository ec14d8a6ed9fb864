"""The gRPC front end: TensorFlow Serving's PredictionService and ModelService.

Handlers only translate: they ask the manager for the servable a ModelSpec
names, call it, and turn a ``ServingError`` into the gRPC status TF Serving
would answer. The standard ``grpc.health.v1`` service is added on request.
Messages of any size up to INT_MAX are accepted, as in TF Serving, and extra
channel arguments come from ``--grpc_channel_arguments``.
"""

import concurrent.futures
import functools
import logging
import os
import stat
import time

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from google.protobuf import message_factory
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2,
    model_service_pb2_grpc,
    prediction_service_pb2,
    prediction_service_pb2_grpc,
)

from serving.errors import ServingError, error_code_number, invalid_argument
from serving.monitoring import Metrics

log = logging.getLogger("serving")

MAX_MESSAGE_SIZE = 2**31 - 1
SERVICE_NAMES = ("tensorflow.serving.PredictionService", "tensorflow.serving.ModelService")
_STATE_ENUM = get_model_status_pb2.ModelVersionStatus.State


def _answering_errors(api: str | None = None):
    """Decorator: ServingError -> gRPC status; records request metrics for ``api``."""

    def decorate(handler):
        @functools.wraps(handler)
        def wrapper(self, request, context):
            started = time.perf_counter()
            status = "OK"
            try:
                return handler(self, request, context)
            except ServingError as error:
                status = error.code_name
                context.abort(error.code, error.message)
            except Exception as error:  # never let a request take the server down
                status = "INTERNAL"
                log.exception("%s failed", handler.__name__)
                context.abort(grpc.StatusCode.INTERNAL, f"{type(error).__name__}: {error}")
            finally:
                if api and request.model_spec.name:
                    self.metrics.record_request(request.model_spec.name, api, "GRPC", status,
                                                time.perf_counter() - started)

        return wrapper

    return decorate


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, manager, metrics: Metrics):
        self.manager = manager
        self.metrics = metrics

    @_answering_errors("predict")
    def Predict(self, request, context):
        with self.manager.serving(request.model_spec) as servable:
            return servable.predict_request(request)

    @_answering_errors()
    def GetModelMetadata(self, request, context):
        if not request.HasField("model_spec"):
            raise invalid_argument("Missing model_spec")
        if not request.metadata_field:
            raise invalid_argument("GetModelMetadataRequest must specify at least one metadata_field")
        for field in request.metadata_field:
            if field != "signature_def":
                raise invalid_argument(f"Metadata field {field} is not supported")
        with self.manager.serving(request.model_spec) as servable:
            return servable.metadata_response()

    @_answering_errors("classify")
    def Classify(self, request, context):
        with self.manager.serving(request.model_spec) as servable:
            return servable.classify(request)

    @_answering_errors("regress")
    def Regress(self, request, context):
        with self.manager.serving(request.model_spec) as servable:
            return servable.regress(request)

    @_answering_errors()
    def MultiInference(self, request, context):
        if not request.tasks:
            raise invalid_argument("Tasks is empty")
        with self.manager.serving(request.tasks[0].model_spec) as servable:
            return servable.multi_inference(request)


def model_status_response(statuses) -> get_model_status_pb2.GetModelStatusResponse:
    """Manager VersionStatus list -> GetModelStatusResponse (REST uses it too)."""
    response = get_model_status_pb2.GetModelStatusResponse()
    for status in statuses:
        entry = response.model_version_status.add(version=status.version, state=_STATE_ENUM.Value(status.state))
        entry.status.SetInParent()  # TF Serving always reports a status, OK included
        if status.error is not None:
            entry.status.error_code = error_code_number(status.error.code)
            entry.status.error_message = status.error.message
    return response


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, manager):
        self.manager = manager

    @_answering_errors()
    def GetModelStatus(self, request, context):
        return model_status_response(self.manager.model_status(request.model_spec))

    @_answering_errors()
    def HandleReloadConfigRequest(self, request, context):
        if request.config.WhichOneof("config") != "model_config_list":
            raise invalid_argument("ServerModelConfig type not supported by HandleReloadConfigRequest. "
                                   "Only ModelConfigList is currently supported")
        for index, model in enumerate(request.config.model_config_list.config):
            log.info("Config entry index : %d path : %s name : %s platform : %s",
                     index, model.base_path, model.name, model.model_platform)
        try:
            self.manager.apply_config(request.config)
        except ServingError as error:
            log.error("ServerCore failed to reload config: %s", error.message)
            raise
        return model_management_pb2.ReloadConfigResponse()


def _add_service(server: grpc.Server, service, servicer) -> None:
    """Registers each method of a proto service (all unary), so that gRPC's core
    matches incoming calls to them instead of a Python lookup per request."""
    handlers = {
        method.name: grpc.unary_unary_rpc_method_handler(
            getattr(servicer, method.name),
            request_deserializer=message_factory.GetMessageClass(method.input_type).FromString,
            response_serializer=message_factory.GetMessageClass(method.output_type).SerializeToString)
        for method in service.methods
    }
    server.add_registered_method_handlers(service.full_name, handlers)


class GrpcServer:
    """Owns the grpc.Server: TCP port, optional UNIX socket, services."""

    def __init__(self, manager, metrics: Metrics, host: str, port: int, socket_path: str,
                 channel_arguments: list, max_threads: int, enable_health: bool):
        options = [("grpc.max_send_message_length", MAX_MESSAGE_SIZE),
                   ("grpc.max_receive_message_length", MAX_MESSAGE_SIZE)] + list(channel_arguments)
        self._server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=max_threads,
                                                                         thread_name_prefix="grpc"),
                                   options=options)
        _add_service(self._server, prediction_service_pb2.DESCRIPTOR.services_by_name["PredictionService"],
                     PredictionService(manager, metrics))
        _add_service(self._server, model_service_pb2.DESCRIPTOR.services_by_name["ModelService"],
                     ModelService(manager))
        self._health = None
        if enable_health:
            self._health = health.HealthServicer()
            health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
            for name in ("",) + SERVICE_NAMES:
                self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self.addresses = []
        if port:
            bound = self._server.add_insecure_port(f"{host}:{port}")
            self.addresses.append(f"{host}:{bound}")
        if socket_path:
            socket_path = os.path.abspath(socket_path)
            if os.path.exists(socket_path) and stat.S_ISSOCK(os.stat(socket_path).st_mode):
                os.unlink(socket_path)
            self._server.add_insecure_port(f"unix:{socket_path}")
            self.addresses.append(f"unix:{socket_path}")

    def start(self) -> None:
        self._server.start()

    def stop(self, grace_seconds: float) -> None:
        if self._health is not None:
            self._health.enter_graceful_shutdown()
        self._server.stop(grace_seconds).wait()
