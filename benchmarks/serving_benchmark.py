"""Benchmark of serving/ with a model shaped like ours (Keras GRU, history [None, 120, 14] -> [None]).

Prints, in one run:
* the in-process signature call latency p50 at batch 1 (the floor);
* gRPC Predict p50/p99 at batch 1 through `python -m serving.model_server`;
* throughput with 32 concurrent clients sending batch-1 requests, without and
  with --enable_batching, each with TensorFlow's default thread pools and
  single-threaded (--tensorflow_inter_op_parallelism=1
  --tensorflow_intra_op_parallelism=1), and the ratios against the targets
  (gRPC p50 <= floor + 1 ms; batching >= 3x and >= 1,000 predictions/s).
  The speed-up compares the best setting with batching against the best
  without, as one would tune either server: on two cores, concurrent
  unbatched calls gain from TensorFlow's parallelism, while one batched call
  at a time runs best on one core, leaving the other to request handling.

The floor and the gRPC latency are sampled in alternating rounds (the server
idles while the floor is measured) so that load from other processes on the
machine affects both alike instead of skewing their difference.

Batching parameters: this model's call costs about the same at batch 1 and
batch 64 (its 120 recurrent steps dominate, not the rows), so one batch
thread that takes everything queued as soon as it is free
(batch_timeout_micros 0) gives the fewest, fullest model calls; a second
thread only splits the queue into smaller batches that compete for the two
cores, and a timeout only delays a worker that has nothing else to do.

Run: .venv/bin/python benchmarks/serving_benchmark.py [--seconds 8]
"""

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import grpc  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc  # noqa: E402

from pipeline.serving_check import free_port  # noqa: E402

CONCURRENT_CLIENTS = 32
# One inter-op and one intra-op thread: a model call then keeps to one core,
# leaving the other to the request handling.
SINGLE_THREADED_TF = ["--tensorflow_inter_op_parallelism=1", "--tensorflow_intra_op_parallelism=1"]
BATCHING_PARAMETERS = """
max_batch_size { value: 64 }
batch_timeout_micros { value: 0 }
max_enqueued_batches { value: 1000 }
num_batch_threads { value: 1 }
"""


def build_model(directory: Path) -> Path:
    """A GRU forecaster like the pipeline's, exported with a `history` signature."""
    history = keras.Input(shape=(120, 14), name="history")
    hidden = keras.layers.GRU(32)(history)
    output = keras.layers.Dense(1)(hidden)
    model = keras.Model(history, output)

    class Exported(tf.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        @tf.function(input_signature=[tf.TensorSpec([None, 120, 14], tf.float32, name="history")])
        def serve(self, history):
            return {"prediction": tf.reshape(self.model(history), [-1])}

    exported = Exported()
    path = directory / "gru" / "1"
    tf.saved_model.save(exported, str(path), signatures={"serving_default": exported.serve})
    return path.parent


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def in_process_latencies(function, calls: int) -> list[float]:
    """The floor: the signature called in this process, input converted and output fetched."""
    history = np.random.rand(1, 120, 14).astype(np.float32)
    for _ in range(20):
        function(history=tf.constant(history))
    timings = []
    for _ in range(calls):
        started = time.perf_counter()
        function(history=tf.constant(history))["prediction"].numpy()
        timings.append(time.perf_counter() - started)
    return timings


def start_server(model_base: Path, extra_flags: list[str]) -> tuple[subprocess.Popen, int]:
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "serving.model_server",
            f"--port={port}",
            "--model_name=gru",
            f"--model_base_path={model_base}",
            *extra_flags,
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            stub.Predict(make_request(), timeout=5)
            channel.close()
            return process, port
        except grpc.RpcError:
            time.sleep(0.5)
    process.kill()
    raise RuntimeError("server did not start")


def stop_server(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=60)


def make_request() -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "gru"
    request.inputs["history"].CopyFrom(tf.make_tensor_proto(np.random.rand(1, 120, 14).astype(np.float32)))
    return request


def grpc_latencies(stub, calls: int) -> list[float]:
    """Batch-1 Predict round trips; the request is built once, outside the timed loop."""
    request = make_request()
    for _ in range(20):
        stub.Predict(request, timeout=30)
    timings = []
    for _ in range(calls):
        started = time.perf_counter()
        stub.Predict(request, timeout=30)
        timings.append(time.perf_counter() - started)
    return timings


def latencies(model_base: Path, port: int, calls: int, rounds: int = 3) -> tuple[list[float], list[float]]:
    """(floor, gRPC) latencies, measured in alternating rounds of ``calls / rounds`` each."""
    function = tf.saved_model.load(str(model_base / "1")).signatures["serving_default"]
    floor, remote = [], []
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for _ in range(rounds):
            floor += in_process_latencies(function, max(calls // rounds, 1))
            remote += grpc_latencies(stub, max(calls // rounds, 1))
    return floor, remote


async def _throughput(port: int, seconds: float) -> tuple[float, int]:
    request = make_request()
    completed, failures = 0, 0
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for _ in range(10):
            await stub.Predict(request, timeout=30)
        stop_at = time.perf_counter() + seconds

        async def client():
            nonlocal completed, failures
            while time.perf_counter() < stop_at:
                try:
                    await stub.Predict(request, timeout=30)
                    completed += 1
                except grpc.RpcError:
                    failures += 1

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(CONCURRENT_CLIENTS)))
        elapsed = time.perf_counter() - started
    return completed / elapsed, failures


def throughput(port: int, seconds: float) -> tuple[float, int]:
    return asyncio.run(_throughput(port, seconds))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="duration of each throughput run")
    parser.add_argument("--calls", type=int, default=300, help="latency samples per measurement")
    arguments = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        model_base = build_model(Path(scratch))
        parameters = Path(scratch) / "batching.config"
        parameters.write_text(BATCHING_PARAMETERS)
        batching = ["--enable_batching", f"--batching_parameters_file={parameters}"]
        rates = {}
        for label, flags in (
            ("no batching", []),
            ("no batching, TF single-threaded", SINGLE_THREADED_TF),
            ("with batching", batching),
            ("with batching, TF single-threaded", batching + SINGLE_THREADED_TF),
        ):
            process, port = start_server(model_base, flags)
            try:
                if not flags:
                    floor_samples, grpc_samples = latencies(model_base, port, arguments.calls)
                rates[label] = throughput(port, arguments.seconds)
            finally:
                stop_server(process)

    floor = statistics.median(floor_samples)
    p50, p99 = statistics.median(grpc_samples), percentile(grpc_samples, 0.99)
    plain_rate = max(rate for label, (rate, _) in rates.items() if label.startswith("no batching"))
    batched_rate = max(rate for label, (rate, _) in rates.items() if label.startswith("with batching"))
    ratio = batched_rate / plain_rate
    print(f"in-process signature call p50 (floor): {floor * 1e3:7.3f} ms")
    print(
        f"gRPC Predict batch 1 p50:              {p50 * 1e3:7.3f} ms  (floor + {(p50 - floor) * 1e3:.3f} ms; "
        f"target <= +1 ms: {'met' if p50 - floor <= 1e-3 else 'MISSED'})"
    )
    print(f"gRPC Predict batch 1 p99:              {p99 * 1e3:7.3f} ms")
    for label, (rate, failures) in rates.items():
        print(
            f"throughput, {CONCURRENT_CLIENTS} clients, {label + ':':35} {rate:7.1f} predictions/s "
            f"({failures} failures)"
        )
    print(
        f"batching speed-up, best with over best without: {ratio:.2f}x "
        f"(target >= 3x: {'met' if ratio >= 3 else 'MISSED'}); "
        f">= 1,000 predictions/s: {'met' if batched_rate >= 1000 else 'MISSED'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
