"""Status errors with TensorFlow Serving's canonical codes.

Every failure the manager, servables and batcher report is a ``ServingError``
carrying a gRPC status code and a message worded like TensorFlow Serving's.
The gRPC front end passes both through; the REST front end maps the code to
the HTTP status TensorFlow Serving uses (``http_status_for``).
"""

import threading
import time

import grpc

MAX_ERROR_MESSAGE_BYTES = 4000  # with its JSON wrapping, no error reply exceeds 4 kB

_HTTP_STATUS_BY_CODE = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}


class ServingError(Exception):
    """A failed request or load: a gRPC status code plus a message."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def code_name(self) -> str:
        """The code as TensorFlow spells it in status protos, e.g. NOT_FOUND."""
        return self.code.name


def invalid_argument(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


def not_found(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.NOT_FOUND, message)


def failed_precondition(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.FAILED_PRECONDITION, message)


def unavailable(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.UNAVAILABLE, message)


def internal(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.INTERNAL, message)


def http_status_for(code: grpc.StatusCode) -> int:
    """The HTTP status TensorFlow Serving's REST API answers for a gRPC code."""
    return _HTTP_STATUS_BY_CODE.get(code, 500)


def status_code_from_number(number: int) -> grpc.StatusCode:
    """The gRPC code for a canonical error number (TensorFlow uses the same)."""
    for code in grpc.StatusCode:
        if code.value[0] == number:
            return code
    return grpc.StatusCode.UNKNOWN


def error_code_number(code: grpc.StatusCode) -> int:
    """The numeric canonical code (tensorflow.error.Code) for a gRPC code."""
    return code.value[0]


def resource_exhausted(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.RESOURCE_EXHAUSTED, message)


def bounded_message(message: str, limit: int = MAX_ERROR_MESSAGE_BYTES) -> str:
    """``message`` cut so that its UTF-8 (and its ASCII JSON escaping) stays within about ``limit`` bytes."""
    if len(message) * 6 <= limit:  # even \uXXXX for every character fits
        return message
    marker = f" ... [{len(message)} characters, truncated]"
    cut = message
    while len(cut.encode("utf-8", "replace")) > limit - len(marker) or len(ascii(cut)) > limit - len(marker):
        cut = cut[: len(cut) * 3 // 4]
    return cut + marker if cut != message else message


class LogLimiter:
    """At most one log line per kind per ``interval`` seconds; the next one says how many were left out."""

    def __init__(self, interval: float = 60.0):
        self._interval = interval
        self._lock = threading.Lock()
        self._last = {}  # kind -> (monotonic time of the last line, lines left out since)

    def allow(self, kind: str) -> tuple[bool, int]:
        """(whether to log a line for ``kind`` now, how many were left out before it)."""
        now = time.monotonic()
        with self._lock:
            last, left_out = self._last.get(kind, (None, 0))
            if last is not None and now - last < self._interval:
                self._last[kind] = (last, left_out + 1)
                return False, 0
            self._last[kind] = (now, 0)
            return True, left_out
