"""The gRPC front end: TensorFlow Serving's PredictionService and ModelService.

Handlers only translate: they ask the manager for the servable a ModelSpec
names, call it, and turn a ``ServingError`` into the gRPC status TF Serving
would answer. The standard ``grpc.health.v1`` service is added on request.
Messages of any size up to INT_MAX are accepted, as in TF Serving, and extra
channel arguments come from ``--grpc_channel_arguments`` (which may lower that
limit: ``grpc.max_receive_message_length=N`` answers larger requests with
RESOURCE_EXHAUSTED). With ``credentials`` (TLS or ALTS, built by
``model_server.py`` as TF Serving builds them) both listening addresses are
secure; otherwise plaintext.

The handlers are coroutines, served one of two ways:

* With batching, by ``grpc.aio`` on one event-loop thread. A Predict to a
  batching servable is decoded and checked on the loop and then only awaits
  its batch, so that many waiting requests cost no thread each (under
  Python's GIL every thread a request wakes costs all requests time). Work
  that blocks (other calls, loading a new config) runs on a pool of
  ``--grpc_max_threads`` threads.
* Without batching every call blocks a thread anyway, so ``grpc.server``
  runs each handler to completion on its own thread of that pool, with no
  hand-off to and from an event loop: a lone request is answered about
  0.2 ms sooner.
"""

import asyncio
import concurrent.futures
import functools
import logging
import os
import stat
import threading
import time

import grpc
from google.protobuf import message_factory
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2,
    model_service_pb2_grpc,
    prediction_service_pb2,
    prediction_service_pb2_grpc,
)

from serving.errors import LogLimiter, ServingError, bounded_message, error_code_number, invalid_argument
from serving.monitoring import Metrics

log = logging.getLogger("serving")

MAX_MESSAGE_SIZE = 2**31 - 1
SERVICE_NAMES = ("tensorflow.serving.PredictionService", "tensorflow.serving.ModelService")
_STATE_ENUM = get_model_status_pb2.ModelVersionStatus.State
_FAULTS_LOG = LogLimiter()


def _answering_errors(api: str | None = None):
    """Decorator: ServingError -> gRPC status; records request metrics for ``api``."""

    def decorate(handler):
        @functools.wraps(handler)
        async def wrapper(self, request, context):
            started = time.perf_counter()
            status = "OK"
            try:
                return await handler(self, request, context)
            except ServingError as error:
                status = error.code_name
                await context.abort(error.code, bounded_message(error.message))
            except MemoryError:
                status = "RESOURCE_EXHAUSTED"
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "Out of memory while processing the request")
            except Exception as error:  # a server fault; never let a request take the server down
                status = "INTERNAL"
                allowed, left_out = _FAULTS_LOG.allow(f"{handler.__name__} {type(error).__name__}")
                if allowed:
                    log.error(
                        "%s failed%s",
                        handler.__name__,
                        f" ({left_out} more of this kind not logged)" if left_out else "",
                        exc_info=error,
                    )
                await context.abort(grpc.StatusCode.INTERNAL, bounded_message(f"{type(error).__name__}: {error}"))
            finally:
                if api and request.model_spec.name:
                    self.metrics.record_request(
                        request.model_spec.name, api, "GRPC", status, time.perf_counter() - started
                    )

        return wrapper

    return decorate


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, manager, metrics: Metrics, blocking):
        self.manager = manager
        self.metrics = metrics
        self.blocking = blocking  # runs a blocking call off the event loop, returns an awaitable

    async def _in_pool(self, model_spec, call):
        """call(servable) on the pool, the servable counted in use until it returns (even if the client gives up)."""

        def run():
            with self.manager.serving(model_spec) as servable:
                return call(servable)

        return await self.blocking(run)

    @_answering_errors("predict")
    async def Predict(self, request, context):
        with self.manager.serving(request.model_spec) as servable:
            if servable.batcher is not None:  # decoded here; only the batch is awaited
                call = servable.prepare_request(request)
                outputs = await asyncio.wrap_future(servable.batcher.submit(call.signature_name, call.feeds))
                return servable.predict_response(call, outputs)
        # Resolved again on the pool, so that the servable stays in use for as long as the call runs.
        return await self._in_pool(request.model_spec, lambda servable: servable.predict_request(request))

    @_answering_errors()
    async def GetModelMetadata(self, request, context):
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
    async def Classify(self, request, context):
        return await self._in_pool(request.model_spec, lambda servable: servable.classify(request))

    @_answering_errors("regress")
    async def Regress(self, request, context):
        return await self._in_pool(request.model_spec, lambda servable: servable.regress(request))

    @_answering_errors()
    async def MultiInference(self, request, context):
        if not request.tasks:
            raise invalid_argument("Tasks is empty")
        return await self._in_pool(request.tasks[0].model_spec, lambda servable: servable.multi_inference(request))


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
    def __init__(self, manager, blocking):
        self.manager = manager
        self.blocking = blocking

    @_answering_errors()
    async def GetModelStatus(self, request, context):
        return model_status_response(self.manager.model_status(request.model_spec))

    @_answering_errors()
    async def HandleReloadConfigRequest(self, request, context):
        if request.config.WhichOneof("config") != "model_config_list":
            raise invalid_argument(
                "ServerModelConfig type not supported by HandleReloadConfigRequest. "
                "Only ModelConfigList is currently supported"
            )
        for index, model in enumerate(request.config.model_config_list.config):
            log.info(
                "Config entry index : %d path : %s name : %s platform : %s",
                index,
                model.base_path,
                model.name,
                model.model_platform,
            )
        try:
            await self.blocking(self.manager.apply_config, request.config)
        except ServingError as error:
            log.error("ServerCore failed to reload config: %s", error.message)
            raise
        return model_management_pb2.ReloadConfigResponse()


def _serialize(response) -> bytes:
    """A response message's bytes; a response already serialized (Predict's, see Servable) as it is."""
    return response if isinstance(response, bytes) else response.SerializeToString()


def _add_service(server, service, servicer, wrap=None) -> None:
    """Registers each method of a proto service (all unary), so that gRPC's core
    matches incoming calls to them instead of a Python lookup per request."""
    handlers = {
        method.name: grpc.unary_unary_rpc_method_handler(
            (wrap or (lambda handler: handler))(getattr(servicer, method.name)),
            request_deserializer=message_factory.GetMessageClass(method.input_type).FromString,
            response_serializer=_serialize,
        )
        for method in service.methods
    }
    server.add_registered_method_handlers(service.full_name, handlers)


async def _call_inline(function, *args):
    return function(*args)


def _on_this_thread(coroutine_function):
    """A blocking gRPC handler that runs a handler coroutine on the calling thread.

    Without an event loop every ``blocking`` call is ``_call_inline``, which
    never suspends, so one step runs the coroutine to its end.
    """

    def handler(request, context):
        coroutine = coroutine_function(request, context)
        try:
            coroutine.send(None)
        except StopIteration as finished:
            return finished.value
        coroutine.close()
        raise RuntimeError(f"{coroutine_function.__name__} waited for an event loop; it needs the asynchronous server")

    return handler


class GrpcServer:
    """Owns the gRPC server (with ``asynchronous``, its event-loop thread): TCP port, UNIX socket, services."""

    def __init__(
        self,
        manager,
        metrics: Metrics,
        host: str,
        port: int,
        socket_path: str,
        channel_arguments: list,
        max_threads: int,
        enable_health: bool,
        asynchronous: bool,
        credentials: grpc.ServerCredentials | None = None,
    ):
        # As in TF Serving, --grpc_channel_arguments override the INT_MAX message sizes (gRPC keeps
        # the first of two values for one key, so the defaults go only where the user set none).
        chosen = {key for key, _ in channel_arguments}
        options = list(channel_arguments) + [
            (key, MAX_MESSAGE_SIZE)
            for key in ("grpc.max_send_message_length", "grpc.max_receive_message_length")
            if key not in chosen
        ]
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=max_threads, thread_name_prefix="grpc")
        self._loop = None
        if asynchronous:
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=self._loop.run_forever, name="grpc-loop", daemon=True)
            self._thread.start()
            self._server = self._on_loop(self._create_server(options))

            def blocking(function, *args):
                return self._loop.run_in_executor(self._pool, function, *args)

            wrap = None
        else:
            self._server = grpc.server(self._pool, options=options)
            blocking, wrap = _call_inline, _on_this_thread

        _add_service(
            self._server,
            prediction_service_pb2.DESCRIPTOR.services_by_name["PredictionService"],
            PredictionService(manager, metrics, blocking),
            wrap,
        )
        _add_service(
            self._server,
            model_service_pb2.DESCRIPTOR.services_by_name["ModelService"],
            ModelService(manager, blocking),
            wrap,
        )
        self._health = None
        if enable_health:
            self._health = health.aio.HealthServicer() if asynchronous else health.HealthServicer()
            health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
            for name in ("",) + SERVICE_NAMES:
                self._run(self._health.set(name, health_pb2.HealthCheckResponse.SERVING))
        self.addresses = []

        def listen(address):  # TF Serving puts the same credentials on the TCP port and the UNIX socket
            if credentials is None:
                return self._server.add_insecure_port(address)
            return self._server.add_secure_port(address, credentials)

        try:
            if port:
                bound = listen(f"{host}:{port}")
                self.addresses.append(f"{host}:{bound}")
            if socket_path:
                socket_path = os.path.abspath(socket_path)
                if os.path.exists(socket_path) and stat.S_ISSOCK(os.stat(socket_path).st_mode):
                    os.unlink(socket_path)
                listen(f"unix:{socket_path}")
                self.addresses.append(f"unix:{socket_path}")
        except Exception:
            self._release_threads()
            raise

    @staticmethod
    async def _create_server(options):
        return grpc.aio.server(options=options)  # made on the loop, which then runs it

    def _on_loop(self, coroutine):
        """Runs a coroutine on the server's event loop and waits for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def _run(self, result):
        """The aio server's methods are coroutines (run them on the loop); grpc.server's are not."""
        return self._on_loop(result) if self._loop is not None else result

    def start(self) -> None:
        try:
            self._run(self._server.start())
        except Exception:
            self._release_threads()
            raise

    def stop(self, grace_seconds: float) -> None:
        if self._health is not None:
            self._run(self._health.enter_graceful_shutdown())
        stopping = self._server.stop(grace_seconds)
        if self._loop is not None:
            self._on_loop(stopping)
        else:
            stopping.wait()
        self._release_threads()

    def _release_threads(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()
        self._pool.shutdown(wait=True)
