"""Requests an attacker or a careless client sends, and how to measure what they cost the server.

Shared by the fault catalogue (``test_faults.py``, small sizes) and
``benchmarks/abuse_benchmark.py`` (full sizes). Everything talks to 127.0.0.1.
"""

import http.client
import socket
import threading
import time

from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import predict_pb2


def huge_shape_request(model: str, rows: int) -> predict_pb2.PredictRequest:
    """A Predict whose float input ``x`` promises shape [rows, 1] and carries no values (about 30 bytes)."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    tensor = request.inputs["x"]
    tensor.dtype = types_pb2.DT_FLOAT
    tensor.tensor_shape.dim.add(size=rows)
    tensor.tensor_shape.dim.add(size=1)
    return request


def deep_arrays_body(arrays: int = 200, depth: int = 500) -> bytes:
    """A JSON document that is not an object: ``arrays`` arrays, each nested ``depth`` deep."""
    nested = b"[" * depth + b"]" * depth
    return b"[" + b",".join([nested] * arrays) + b"]"


def bad_requests(model: str) -> list[tuple[str, str, bytes]]:
    """(probe, path, body) of client mistakes that must each be a 400."""
    predict = f"/v1/models/{model}:predict"
    return [
        ("integer of 400 digits as a float", predict, b'{"instances": [[' + b"9" * 400 + b"]]}"),
        ("version of 5,000 digits", f"/v1/models/{model}/versions/{'7' * 5000}:predict", b'{"instances": [[1.0]]}'),
        ("lone surrogate as signature_name", predict, b'{"signature_name": "\\ud800", "instances": [[1.0]]}'),
    ]


def post(port: int, path: str, body: bytes, timeout: float = 60) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def burst(port: int, path: str, clients: int, timeout: float = 10) -> list[tuple[int | str, float]]:
    """``clients`` connections opened at the same moment, each sending GET ``path``: (status or error, seconds)."""
    ready = threading.Barrier(clients)
    results = [("not run", 0.0)] * clients

    def client(index: int):
        ready.wait(timeout)
        started = time.perf_counter()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
                sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
                response = http.client.HTTPResponse(sock)
                response.begin()
                response.read()
                results[index] = (response.status, time.perf_counter() - started)
        except OSError as error:
            results[index] = (type(error).__name__, time.perf_counter() - started)

    threads = [threading.Thread(target=client, args=(index,)) for index in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout * 2)
    return results


def _status_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


class PeakRssGrowth:
    """How far a process's resident memory rose above its level at the start (``with`` block), in bytes.

    Resets the kernel's high-water mark (``/proc/<pid>/clear_refs``) first, so the
    peak is that of this block alone, measured on the server process itself.
    """

    def __init__(self, pid: int):
        self.pid = pid
        self.bytes = 0

    def __enter__(self):
        with open(f"/proc/{self.pid}/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        self._start = _status_kib(self.pid, "VmRSS")
        return self

    def __exit__(self, *exc):
        self.bytes = (_status_kib(self.pid, "VmHWM") - self._start) * 1024
        return False
