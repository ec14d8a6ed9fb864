"""The abuse probes of the fault catalogue at full size, against `python -m serving.model_server`.

Serves TF Serving's half_plus_two (built by tests/helpers/tfserving_testdata.py)
on loopback and prints, per probe: status, time, reply bytes and the peak
growth of the server process's resident memory (its own /proc VmHWM, reset
before each probe, so other processes on the machine do not count):

* gRPC Predict promising x of shape [1e8, 1] with no values (bound: 2.5 GB);
  and [3e8, 1] against --max_tensor_bytes=1e9 (RESOURCE_EXHAUSTED);
* REST: 200 arrays nested 500 deep (error reply under 4 kB); an integer of
  400 digits, a version of 5,000 digits, a lone surrogate (400 each);
* 150 REST clients connecting at the same moment (all answered, worst within
  500 ms);
* a 64 MiB REST body of small numbers;
* with --rest_api_num_threads=1 --rest_api_timeout_in_ms=1000: that body
  again and a normal request 0.5 s after it (504, then answered).

Run: .venv/bin/python benchmarks/abuse_benchmark.py   (about 2 minutes)
"""

import os
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import grpc  # noqa: E402
from tensorflow_serving.apis import prediction_service_pb2_grpc  # noqa: E402

from tests.helpers import abuse  # noqa: E402
from tests.helpers.model_server import ServerProcess  # noqa: E402
from tests.helpers.tfserving_testdata import build_testdata  # noqa: E402

MODEL = "half"
HUGE_ROWS = 100_000_000
BODY_BYTES = 64 * 1024 * 1024 - 64


def report(probe: str, status, seconds: float, reply_bytes: int, growth_bytes: int | None) -> None:
    growth = "" if growth_bytes is None else f"{growth_bytes / 1e9:6.2f} GB"
    print(f"{probe:<44} {str(status):<20} {seconds:7.2f} s {reply_bytes:>12,} B  {growth}", flush=True)


def small_numbers_body() -> bytes:
    """About 64 MiB of ``{"instances": [[1.5], [1.5], ...]}``."""
    head, tail, item = b'{"instances": [', b"[1.5]]}", b"[1.5],"
    return head + item * ((BODY_BYTES - len(head) - len(tail)) // len(item)) + tail


def grpc_probes(server: ServerProcess) -> None:
    options = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
    with grpc.insecure_channel(f"127.0.0.1:{server.port}", options=options) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for rows in (HUGE_ROWS, 3 * HUGE_ROWS):
            with abuse.PeakRssGrowth(server.process.pid) as growth:
                started = time.perf_counter()
                try:
                    response, status = stub.Predict(abuse.huge_shape_request(MODEL, rows), timeout=300), "OK"
                    size = response.ByteSize()
                except grpc.RpcError as error:
                    status, size = error.code().name, len(error.details())
            report(
                f"gRPC Predict x [{rows:.0e}, 1], no values", status, time.perf_counter() - started, size, growth.bytes
            )


def rest_probe(server: ServerProcess, probe: str, path: str, body: bytes) -> None:
    with abuse.PeakRssGrowth(server.process.pid) as growth:
        started = time.perf_counter()
        status, reply = abuse.post(server.rest_port, path, body, timeout=600)
    report(probe, status, time.perf_counter() - started, len(reply), growth.bytes)


def timeout_probe(log_dir: Path, base_path: Path, body: bytes) -> None:
    server = ServerProcess(
        log_dir,
        f"--model_name={MODEL}",
        f"--model_base_path={base_path}",
        "--rest_api_num_threads=1",
        "--rest_api_timeout_in_ms=1000",
    )
    try:
        answers = {}

        def send(name, request_body):
            started = time.perf_counter()
            status, reply = abuse.post(server.rest_port, f"/v1/models/{MODEL}:predict", request_body, timeout=600)
            answers[name] = (status, time.perf_counter() - started, len(reply))

        slow = threading.Thread(target=send, args=("slow", body))
        slow.start()
        time.sleep(0.5)
        send("normal", b'{"instances": [[1.0]]}')
        slow.join(600)
        report("timeout 1 s, 1 thread: 64 MiB body", *answers["slow"], None)
        report("  ... normal request 0.5 s after it", *answers["normal"], None)
    finally:
        server.stop()


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="abuse-benchmark-") as scratch:
        scratch = Path(scratch)
        base_path = build_testdata(scratch / "testdata") / "saved_model_half_plus_two_cpu"
        print(f"{'probe':<44} {'status':<20} {'time':>9} {'reply':>14}  peak RSS growth (server)")
        server = ServerProcess(
            scratch, f"--model_name={MODEL}", f"--model_base_path={base_path}", "--max_tensor_bytes=1000000000"
        )
        try:
            grpc_probes(server)
            predict = f"/v1/models/{MODEL}:predict"
            rest_probe(server, "REST 200 arrays nested 500 deep", predict, abuse.deep_arrays_body())
            for probe, path, body in abuse.bad_requests(MODEL):
                rest_probe(server, f"REST {probe}", path, body)
            results = abuse.burst(server.rest_port, f"/v1/models/{MODEL}", clients=150)
            answered = sum(status == 200 for status, _ in results)
            report(
                "REST 150 simultaneous connections",
                f"{answered}/150 answered",
                max(seconds for _, seconds in results),
                0,
                None,
            )
            body = small_numbers_body()
            rest_probe(server, "REST 64 MiB of small numbers", predict, body)
            log_text = server.log_text()
            print(f"server log: {len(log_text):,} bytes, {log_text.count('Traceback')} tracebacks")
        finally:
            server.stop()
        timeout_probe(scratch, base_path, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
