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

The HTTP layer bounds what a client can hold: a body over ``MAX_BODY_BYTES``
is refused (413) before any of it is read; a malformed ``Content-Length``, a
broken chunked body or an unparsable request line gets a 400 (all as JSON
errors) and the connection is closed; a connection that sends or takes
nothing for ``IO_TIMEOUT_SECONDS`` (libevent's, as in TF Serving) is closed.
Each connection is read on a thread of its own, so a slow client holds no
worker. The socket queues as many new connections as the system allows
(``listen_backlog``), so that a burst of clients is not reset.

Requests run in ``num_threads`` slots. ``--rest_api_timeout_in_ms`` is a
deadline: a request still queued then never runs, one still running answers
504, gives its slot to the next request and stops at its next step (parsing,
conversion, the model call, the reply). Every client mistake is a 4xx; only
server faults are 5xx, logged once per kind and minute (``LogLimiter``);
no error reply exceeds 4 kB.
"""

import concurrent.futures
import gc
import http
import http.server
import json
import logging
import re
import socket
import sys
import threading
import time
import urllib.parse
import zlib

import grpc
from google.protobuf import json_format
from tensorflow_serving.apis import classification_pb2, get_model_metadata_pb2, model_pb2, regression_pb2

from serving import json_tensor
from serving.errors import (
    LogLimiter,
    ServingError,
    bounded_message,
    http_status_for,
    invalid_argument,
    resource_exhausted,
)
from serving.grpc_server import model_status_response
from serving.monitoring import Metrics

log = logging.getLogger("serving")

# TF Serving's routes (http_rest_api_util.cc), matched against the path with its query string.
_SPEC = r"/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?"
INFERENCE_ROUTE = re.compile(_SPEC + r":(?P<verb>classify|regress|predict)", re.IGNORECASE | re.ASCII)
STATUS_ROUTE = re.compile(
    r"/v1/models(?:/(?P<name>[^/:]+))?"
    r"(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?(?P<metadata>/metadata)?",
    re.IGNORECASE | re.ASCII,
)
# Only these paths reach TF Serving's REST handler (kHTTPRestApiHandlerPathRegex); the HTTP server answers others.
HANDLER_PATHS = re.compile(r"/v1/.*", re.IGNORECASE)
# The HTTP methods libevent's server accepts in TF Serving; others get 501 from libevent.
ALLOWED_METHODS = ("GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH")
# What libevent labels an answer that has no Content-Type of its own (its error pages too).
LIBEVENT_CONTENT_TYPE = "text/html; charset=ISO-8859-1"

# ------------------------------------------------------------------ server
MAX_VERSION = 2**63 - 1
# TF Serving's HTTP server (libevent's evhttp) takes bodies of any size; we refuse
# more than this (413) before reading any of it, so that no request can hold the memory.
MAX_BODY_BYTES = 64 * 1024 * 1024
# libevent's read/write timeout for HTTP connections (HTTP_READ_TIMEOUT), kept by TF Serving.
IO_TIMEOUT_SECONDS = 50
_DECIMAL = re.compile(r"[0-9]{1,19}", re.ASCII)
_DEADLINE_EXCEEDED = (504, "application/json", json.dumps({"error": "Deadline Exceeded"}))
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")
_MAX_CHUNK_LINE = 4096
_MAX_TRAILER_LINES = 100


def _model_spec(match) -> model_pb2.ModelSpec:
    """Name, version and label of a route match; name and label are percent-decoded as TF Serving's curl does."""
    spec = model_pb2.ModelSpec(name=urllib.parse.unquote(match.group("name") or ""))
    if match.group("version"):
        digits = match.group("version")
        version = int(digits) if len(digits) <= 19 else MAX_VERSION + 1  # more digits: out of range, not parsed
        if version > MAX_VERSION:
            raise invalid_argument(f"Failed to convert version: {digits} to numeric.")
        spec.version.value = version
    elif match.group("label"):
        spec.version_label = urllib.parse.unquote(match.group("label"))
    return spec


def libevent_error_page(status: int) -> str:
    """The HTML page libevent's evhttp_send_error writes, e.g. for a path TF Serving does not route."""
    reason = http.HTTPStatus(status).phrase
    return f"<HTML><HEAD>\n<TITLE>{status} {reason}</TITLE>\n</HEAD><BODY>\n<H1>{reason}</H1>\n</BODY></HTML>\n"


def _proto_json(message) -> str:
    return json_format.MessageToJson(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True, indent=1
    )


def _error_reply(status: int, message: str) -> tuple[int, str, str]:
    return status, "application/json", json.dumps({"error": bounded_message(message)})


def _check_deadline(deadline: float | None) -> None:
    """Stops a request whose answer (504) has already been sent: its remaining steps would be wasted."""
    if deadline is not None and time.monotonic() > deadline:
        raise ServingError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")


class CyclicGcPause:
    """Python's cyclic garbage collector held off from ``with`` until ``resume()`` (or the block's end).

    A request's JSON document is millions of lists and numbers, and no cycles: while it is built,
    the collector would walk all of it again every few thousand allocations (about 3/4 of the
    parse time). It is paused while any request holds a pause, and the document is freed before
    resuming, so the collector never sees it.
    """

    _lock = threading.Lock()
    _holders = 0
    _was_enabled = True

    def __enter__(self):
        with self._lock:
            if CyclicGcPause._holders == 0:
                CyclicGcPause._was_enabled = gc.isenabled()
                gc.disable()
            CyclicGcPause._holders += 1
        self._held = True
        return self

    def resume(self) -> None:
        with self._lock:
            if not self._held:
                return
            self._held = False
            CyclicGcPause._holders -= 1
            if CyclicGcPause._holders == 0 and CyclicGcPause._was_enabled:
                gc.enable()

    def __exit__(self, *exc):
        self.resume()
        return False


class RestApi:
    """Request routing and translation, independent of the HTTP server."""

    def __init__(self, manager, metrics: Metrics, prometheus_path: str | None):
        self.manager = manager
        self.metrics = metrics
        self.prometheus_path = prometheus_path
        self._faults_log = LogLimiter()

    def handle(self, method: str, path: str, body: bytes, deadline: float | None = None) -> tuple[int, str, str]:
        """Returns (HTTP status, content type, body text); work stops at ``deadline`` (time.monotonic)."""
        started = time.perf_counter()
        model_name, api, status = None, None, "OK"
        try:
            if self.prometheus_path and path.split("?", 1)[0] == self.prometheus_path:
                if path != self.prometheus_path:
                    message = f"Unexpected path: {path}. Should be {self.prometheus_path}"
                    return 400, "text/plain", bounded_message(message)
                return 200, "text/plain", self.metrics.render()
            match = INFERENCE_ROUTE.fullmatch(path)
            if method == "POST" and match:
                model_name, api = match.group("name"), match.group("verb").lower()
                return 200, "application/json", self._inference(match, api, body, deadline)
            match = STATUS_ROUTE.fullmatch(path)
            if method == "GET" and match:
                return 200, "application/json", self._status_or_metadata(match)
            raise invalid_argument(f"Malformed request: {method} {path}")
        except ServingError as error:
            status = error.code_name
            return _error_reply(http_status_for(error.code), error.message)
        except MemoryError:
            status = "RESOURCE_EXHAUSTED"
            error = resource_exhausted("Out of memory while processing the request")
            return _error_reply(http_status_for(error.code), error.message)
        except Exception as error:  # a server fault; never let a request take the server down
            status = "INTERNAL"
            allowed, left_out = self._faults_log.allow(type(error).__name__)
            if allowed:
                log.error(
                    "REST request failed%s",
                    f" ({left_out} more of this kind not logged)" if left_out else "",
                    exc_info=error,
                )
            return _error_reply(500, f"{type(error).__name__}: {error}")
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
        signature_map = json.loads(_proto_json(_unpack_signature_map(response.metadata["signature_def"])))
        model_spec = json.loads(_proto_json(response.model_spec))
        return json.dumps({"model_spec": model_spec, "metadata": {"signature_def": signature_map}}, indent=1)

    def _inference(self, match, verb: str, body: bytes, deadline: float | None) -> str:
        spec = _model_spec(match)
        with CyclicGcPause() as pause:  # while the document lives
            document = json_tensor.parse_document(body)
            _check_deadline(deadline)
            spec.signature_name = json_tensor.signature_name(document)
            if verb != "predict":  # as in TF Serving, the whole body is read before the model is looked up
                request_type = (
                    classification_pb2.ClassificationRequest if verb == "classify" else regression_pb2.RegressionRequest
                )
                request = request_type(model_spec=spec)
                json_tensor.fill_examples(document, request.input)
                del document
                pause.resume()
            with self.manager.serving(spec) as servable:
                if verb == "classify":
                    return json_tensor.classification_result(servable.classify(request).result)
                if verb == "regress":
                    return json_tensor.regression_result(servable.regress(request).result)
                _, signature = servable.signature(
                    spec.signature_name,
                    lambda name: invalid_argument(f'Serving signature name: "{name}" not found in signature def'),
                )
                inputs, row_format = json_tensor.predict_inputs(document, signature)
                del document  # its Python objects can be many times the tensors' size: free them first
                pause.resume()
                _check_deadline(deadline)
                _, outputs = servable.predict(spec.signature_name, inputs)
                del inputs
                _check_deadline(deadline)
                return json_tensor.predict_outputs(outputs, row_format)


def _unpack_signature_map(any_message):
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    any_message.Unpack(signature_map)
    return signature_map


class _Slots:
    """``num_threads`` request slots on a pool of threads, with a deadline per request.

    A request waits for a slot until its deadline; one that passes its deadline
    while running gives its slot to the next request at once (its thread stops
    at the request's next step), so that requests queued behind it are not
    starved. Twice as many threads as slots bound the abandoned ones."""

    def __init__(self, num_threads: int):
        self._free = threading.BoundedSemaphore(num_threads)
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=2 * num_threads, thread_name_prefix="rest")

    def run(self, call, timeout_seconds: float | None):
        """call(deadline) in a slot; None if the deadline passed first."""
        deadline = None if timeout_seconds is None else time.monotonic() + timeout_seconds
        guard, owned = threading.Lock(), []  # owned: [True] while this request holds its slot

        def release():  # once, by whichever side gets here first: the finished work or the timed-out wait
            with guard:
                if not owned:
                    return
                owned.clear()
            self._free.release()

        def work():
            if not self._free.acquire(timeout=None if deadline is None else max(deadline - time.monotonic(), 0)):
                return None
            with guard:
                owned.append(True)
            try:
                return None if deadline is not None and time.monotonic() > deadline else call(deadline)
            finally:
                release()

        future = self._pool.submit(work)
        try:
            return future.result(timeout=None if deadline is None else max(deadline - time.monotonic(), 0))
        except concurrent.futures.TimeoutError:
            future.cancel()  # never starts if it is still queued
            release()
            return None

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class _HttpError(Exception):
    """A request the HTTP layer refuses before it reaches the API: status and message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def inflate_gzip(body: bytes, limit: int) -> bytes:
    """A gzip request body inflated, as TF Serving's HTTP server inflates one sent with ``Content-Encoding: gzip``.

    A body that does not inflate becomes empty there (and so "The document is empty"); one that inflates
    beyond ``limit`` is refused here, as a body of that size would be.
    """
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        inflated = inflater.decompress(body, limit + 1)
    except zlib.error:
        return b""
    if len(inflated) > limit:
        raise _HttpError(413, f"Request body inflates to more than the limit of {limit} bytes")
    return inflated if inflater.eof else b""


def _read_chunked(rfile, limit: int) -> bytes:
    """A ``Transfer-Encoding: chunked`` body, refused if malformed or over ``limit`` bytes."""
    chunks, total = [], 0
    while True:
        line = rfile.readline(_MAX_CHUNK_LINE)
        size_text = line.split(b";", 1)[0].strip()
        if not line.endswith(b"\n") or not _CHUNK_SIZE.fullmatch(size_text):
            raise _HttpError(400, f"Malformed chunked request body: bad chunk size line {line[:40]!r}")
        size = int(size_text, 16)
        if size == 0:
            break
        total += size
        if total > limit:
            raise _HttpError(413, f"Request body exceeds the limit of {limit} bytes")
        data = rfile.read(size)
        if len(data) < size or rfile.readline(3) not in (b"\r\n", b"\n"):
            raise _HttpError(400, "Malformed chunked request body: a chunk is cut off or not followed by CRLF")
        chunks.append(data)
    for _ in range(_MAX_TRAILER_LINES):  # trailer fields are read and ignored
        if rfile.readline(_MAX_CHUNK_LINE) in (b"\r\n", b"\n", b""):
            break
    return b"".join(chunks)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    api: RestApi
    timeout_seconds: float
    enable_cors: bool
    slots: _Slots
    # StreamRequestHandler applies it to every read and write of the connection: a client that
    # stalls (also mid-request) is disconnected after it, and an idle keep-alive connection too.
    timeout = IO_TIMEOUT_SECONDS

    def _read_body(self) -> bytes:
        encoding = self.headers.get("Transfer-Encoding")
        lengths = self.headers.get_all("Content-Length") or []
        if encoding is not None:
            if encoding.strip().lower() != "chunked" or lengths:
                raise _HttpError(
                    400, f"Unsupported Transfer-Encoding: {encoding}" + (" with Content-Length" if lengths else "")
                )
            return _read_chunked(self.rfile, MAX_BODY_BYTES)
        if not lengths:
            return b""
        if len(set(lengths)) > 1 or not _DECIMAL.fullmatch(lengths[0].strip()):
            raise _HttpError(400, f"Invalid Content-Length: {', '.join(lengths)}")
        length = int(lengths[0])
        if length > MAX_BODY_BYTES:
            raise _HttpError(413, f"Request body of {length} bytes exceeds the limit of {MAX_BODY_BYTES} bytes")
        body = self.rfile.read(length)
        if len(body) < length:
            raise _HttpError(400, f"Request body ended after {len(body)} of {length} bytes")
        return body

    def _answer(self, method: str) -> None:
        """Routes as TF Serving's HTTP server does: the metrics path, ``/v1/...`` to the API, else libevent's 404."""
        try:
            body = self._read_body()
            if "gzip" in (self.headers.get("Content-Encoding") or ""):  # TF Serving's auto_uncompress_input
                body = inflate_gzip(body, MAX_BODY_BYTES)
        except _HttpError as error:
            self._reply(error.status, "application/json", json.dumps({"error": str(error)}), close=True)
            return
        if self.path.split("?", 1)[0] == self.api.prometheus_path:
            status, content_type, text = self.api.handle(method, self.path, body)
            self._reply(status, content_type, text, cors=False)
            return
        if not HANDLER_PATHS.fullmatch(self.path):
            self._reply(404, LIBEVENT_CONTENT_TYPE, libevent_error_page(404), close=True, cors=False)
            return
        if method == "OPTIONS":  # a CORS preflight: no body, 400 without an http(s) Origin
            origin = self.headers.get("Origin") or ""
            self._reply(200 if re.search("https?://", origin) else 400, LIBEVENT_CONTENT_TYPE, "")
            return
        answer = self.slots.run(
            lambda deadline: self.api.handle(method, self.path, body, deadline), self.timeout_seconds
        )
        self._reply(*(answer or _DEADLINE_EXCEEDED))

    def send_response(self, code, message=None):
        """Status line and Date; no Server header, as libevent sends none in TF Serving."""
        self.log_request(code)
        self.send_response_only(code, message)
        self.send_header("Date", self.date_time_string())

    def _reply(self, status: int, content_type: str, text: str, close: bool = False, cors: bool = True) -> None:
        payload = text.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        if cors and self.enable_cors:  # TF Serving's AddCORSHeaders, on every answer of its REST handler
            self.send_header("Access-Control-Allow-Origin", "*")
            self.send_header("Access-Control-Allow-Methods", "POST, GET")
            self.send_header("Access-Control-Allow-Headers", "Content-Type")
        if close:  # the rest of the stream cannot be trusted to start a request
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def send_error(self, code, message=None, explain=None):
        """The HTTP parser's own refusals (bad request line, headers too long, ...) as JSON errors.

        A method libevent does not accept in TF Serving gets libevent's 501 page instead.
        """
        if self.request_version == "HTTP/0.9":  # an unparsable request line; answer with a status line anyway
            self.request_version = self.protocol_version
        if code == http.HTTPStatus.NOT_IMPLEMENTED:
            self._reply(code, LIBEVENT_CONTENT_TYPE, libevent_error_page(code), close=True, cors=False)
            return
        self._reply(
            code,
            "application/json",
            json.dumps({"error": message or self.responses.get(code, ("Error",))[0]}),
            close=True,
        )

    def log_message(self, format, *args):  # noqa: A002  (BaseHTTPRequestHandler's signature)
        log.debug("REST %s", format % args)


for _method in ALLOWED_METHODS:
    setattr(_Handler, f"do_{_method}", lambda self, method=_method: self._answer(method))


def system_max_backlog() -> int:
    """The largest queue of pending connections the kernel grants a listening socket."""
    try:
        with open("/proc/sys/net/core/somaxconn") as limit:
            return int(limit.read())
    except (OSError, ValueError):
        return socket.SOMAXCONN


class _HttpServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, handler, backlog: int):
        self.request_queue_size = backlog  # read by server_activate's listen()
        super().__init__(address, handler)

    def handle_error(self, request, client_address):
        """A connection that breaks (reset, timed out while writing) ends quietly: one log line."""
        log.debug("REST connection from %s ended: %s", client_address[0], sys.exc_info()[1])


class RestServer:
    """ThreadingHTTPServer running RestApi on host:port in a background thread.

    Each connection has a thread of its own that reads the request (so a slow
    client holds no worker), and ``num_threads`` slots run the requests. ``listen_backlog`` 0 queues as
    many new connections as the system allows.
    """

    def __init__(
        self,
        api: RestApi,
        host: str,
        port: int,
        num_threads: int,
        timeout_ms: int,
        enable_cors: bool,
        io_timeout_seconds: float = IO_TIMEOUT_SECONDS,
        listen_backlog: int = 0,
    ):
        self._slots = _Slots(num_threads)
        handler = type(
            "Handler",
            (_Handler,),
            {
                "api": api,
                "timeout_seconds": timeout_ms / 1000 if timeout_ms > 0 else None,
                "enable_cors": enable_cors,
                "slots": self._slots,
                "timeout": io_timeout_seconds,
            },
        )
        backlog = listen_backlog if listen_backlog > 0 else system_max_backlog()
        self._server = _HttpServer((host, port), handler, backlog)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="rest", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._slots.shutdown()
