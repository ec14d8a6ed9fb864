"""The HTTP/REST front end, with TensorFlow Serving's routes and JSON rules.

Routes (model name, then optionally ``/versions/<n>`` or ``/labels/<l>``):

* ``POST /v1/models/<name>...:predict`` row format (``instances`` ->
  ``predictions``) or columnar (``inputs`` -> ``outputs``); bytes as
  ``{"b64": ...}`` (outputs whose name ends in ``_bytes`` are written so).
* ``POST ...:classify`` / ``...:regress`` with ``examples`` (and optional
  ``context``) as JSON features -> ``{"results": ...}``.
* ``GET /v1/models/<name>...`` (GetModelStatus) and ``.../metadata``.
* ``GET <prometheus path>`` when the monitoring config enables it.

JSON conversion lives in ``serving.json_tensor``. Errors are
``{"error": "..."}`` with the HTTP status TF Serving maps from the gRPC code;
unknown routes are INVALID_ARGUMENT "Malformed request", as in TF Serving.
"""

import concurrent.futures
import http.server
import json
import logging
import re
import threading
import time

from google.protobuf import json_format
from tensorflow_serving.apis import classification_pb2, get_model_metadata_pb2, model_pb2, regression_pb2

from serving import json_tensor
from serving.errors import ServingError, http_status_for, invalid_argument
from serving.grpc_server import model_status_response
from serving.monitoring import Metrics

log = logging.getLogger("serving")

_SPEC = r"/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?"
INFERENCE_ROUTE = re.compile(_SPEC + r":(?P<verb>classify|regress|predict)", re.IGNORECASE)
STATUS_ROUTE = re.compile(r"/v1/models(?:/(?P<name>[^/:]*))?"
                          r"(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?(?P<metadata>/metadata)?",
                          re.IGNORECASE)

# ------------------------------------------------------------------ server
MAX_VERSION = 2**63 - 1


def _model_spec(match) -> model_pb2.ModelSpec:
    spec = model_pb2.ModelSpec(name=match.group("name") or "")
    if match.group("version"):
        version = int(match.group("version"))
        if version > MAX_VERSION:
            raise invalid_argument(f"Failed to convert version: {match.group('version')} to numeric.")
        spec.version.value = version
    elif match.group("label"):
        spec.version_label = match.group("label")
    return spec


def _proto_json(message) -> str:
    return json_format.MessageToJson(message, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True, indent=1)


class RestApi:
    """Request routing and translation, independent of the HTTP server."""

    def __init__(self, manager, metrics: Metrics, prometheus_path: str | None):
        self.manager = manager
        self.metrics = metrics
        self.prometheus_path = prometheus_path

    def handle(self, method: str, path: str, body: bytes) -> tuple[int, str, str]:
        """Returns (HTTP status, content type, body text)."""
        started = time.perf_counter()
        model_name, api, status = None, None, "OK"
        try:
            path = path.split("?", 1)[0]
            if method == "GET" and self.prometheus_path and path == self.prometheus_path:
                return 200, "text/plain; version=0.0.4", self.metrics.render()
            match = INFERENCE_ROUTE.fullmatch(path)
            if method == "POST" and match:
                model_name, api = match.group("name"), match.group("verb").lower()
                return 200, "application/json", self._inference(match, api, body)
            match = STATUS_ROUTE.fullmatch(path)
            if method == "GET" and match:
                return 200, "application/json", self._status_or_metadata(match)
            raise invalid_argument(f"Malformed request: {method} {path}")
        except ServingError as error:
            status = error.code_name
            return http_status_for(error.code), "application/json", json.dumps({"error": error.message})
        except Exception as error:  # never let a request take the server down
            log.exception("REST request failed")
            status = "INTERNAL"
            return 500, "application/json", json.dumps({"error": f"{type(error).__name__}: {error}"})
        finally:
            if api:
                self.metrics.record_request(model_name, api, "REST", status, time.perf_counter() - started)

    def _status_or_metadata(self, match) -> str:
        spec = _model_spec(match)
        if not match.group("metadata"):
            return _proto_json(model_status_response(self.manager.model_status(spec)))
        if not spec.name:
            raise invalid_argument("Missing model name in request.")
        with self.manager.serving(spec) as servable:
            response = servable.metadata_response()
        signature_map = json.loads(_proto_json(
            _unpack_signature_map(response.metadata["signature_def"])))
        model_spec = json.loads(_proto_json(response.model_spec))
        return json.dumps({"model_spec": model_spec, "metadata": {"signature_def": signature_map}}, indent=1)

    def _inference(self, match, verb: str, body: bytes) -> str:
        spec = _model_spec(match)
        document = json_tensor.parse_document(body)
        spec.signature_name = json_tensor.signature_name(document)
        with self.manager.serving(spec) as servable:
            if verb == "predict":
                _, signature = servable.signature(spec.signature_name, lambda name: invalid_argument(
                    f'Serving signature name: "{name}" not found in signature def'))
                inputs, row_format = json_tensor.predict_inputs(document, signature)
                _, outputs = servable.predict(spec.signature_name, inputs)
                return json_tensor.predict_outputs(outputs, row_format)
            if verb == "classify":
                request = classification_pb2.ClassificationRequest(model_spec=spec)
                json_tensor.fill_examples(document, request.input)
                return json_tensor.classification_result(servable.classify(request).result)
            request = regression_pb2.RegressionRequest(model_spec=spec)
            json_tensor.fill_examples(document, request.input)
            return json_tensor.regression_result(servable.regress(request).result)


def _unpack_signature_map(any_message):
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    any_message.Unpack(signature_map)
    return signature_map


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "TensorFlowServing-compatible"
    api: RestApi
    timeout_seconds: float
    enable_cors: bool
    workers: concurrent.futures.Executor

    def _answer(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        future = self.workers.submit(self.api.handle, method, self.path, body)
        try:
            status, content_type, text = future.result(timeout=self.timeout_seconds)
        except concurrent.futures.TimeoutError:
            status, content_type, text = 504, "application/json", json.dumps({"error": "Deadline Exceeded"})
        payload = text.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        if self.enable_cors:
            self.send_header("Access-Control-Allow-Origin", "*")
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self):
        self._answer("GET")

    def do_POST(self):
        self._answer("POST")

    def do_OPTIONS(self):
        self.send_response(200 if self.enable_cors else 405)
        if self.enable_cors:
            self.send_header("Access-Control-Allow-Origin", "*")
            self.send_header("Access-Control-Allow-Methods", "GET, POST, OPTIONS")
            self.send_header("Access-Control-Allow-Headers", "Content-Type")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format, *args):  # noqa: A002  (BaseHTTPRequestHandler's signature)
        log.debug("REST %s", format % args)


class RestServer:
    """ThreadingHTTPServer running RestApi on host:port in a background thread."""

    def __init__(self, api: RestApi, host: str, port: int, num_threads: int, timeout_ms: int, enable_cors: bool):
        self._workers = concurrent.futures.ThreadPoolExecutor(max_workers=num_threads, thread_name_prefix="rest")
        handler = type("Handler", (_Handler,), {
            "api": api, "timeout_seconds": timeout_ms / 1000 if timeout_ms > 0 else None,
            "enable_cors": enable_cors, "workers": self._workers,
        })
        self._server = http.server.ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="rest", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._workers.shutdown(wait=False, cancel_futures=True)
