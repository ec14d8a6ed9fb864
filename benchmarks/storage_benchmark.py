"""Benchmark of serving from object storage: moto's S3 and gcp-storage-emulator on loopback.

Prints, for each store, in one run:
* publish time: publishing a SavedModel shaped like ours (Keras GRU) as a new
  version with the pipeline's publisher (serving.store, as the export stage
  does: claim a number, decide, upload with saved_model.pb last, record);
* publish-to-serving latency: from the end of that publication until a ModelServer
  replica reading the s3:// or gs:// base path answers Predict with the new
  version (--file_system_poll_wait_seconds=1);
* requests at the store per minute per replica while nothing changes, at the
  default poll (1 s) and at 30 s, for a ModelServer reading the store directly
  and for `serving.sync` (the sidecar in front of real TF Serving on S3),
  counted from the emulators' own request logs (one line per HTTP request)
  and split into LIST (object listings), GET (object reads and metadata) and
  other (bucket checks, HEAD).

Run: .venv/bin/python benchmarks/storage_benchmark.py [--idle_seconds 30] [--slow_idle_seconds 90]
"""

import argparse
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import grpc  # noqa: E402
from serving_benchmark import REPO_ROOT, build_model, make_request, start_server, stop_server  # noqa: E402
from tensorflow_serving.apis import prediction_service_pb2_grpc  # noqa: E402

sys.path.insert(0, str(REPO_ROOT))
from serving.store import publish  # noqa: E402
from tests.helpers.object_storage import GcsServer, S3Server, forget_clients  # noqa: E402

REQUEST_LINE = re.compile(r'"([A-Z]+) (\S+) HTTP/[0-9.]+"')
# moto logs through werkzeug, the GCS emulator through its own logger: one line per request.
REQUEST_LOGGERS = ("werkzeug", "gcp_storage_emulator.server")


class RequestLog(logging.Handler):
    """Every HTTP request the store answered, as (method, decoded path and query)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def emit(self, record):
        match = REQUEST_LINE.search(record.getMessage())
        if match:
            with self._lock:
                self.requests.append((match.group(1), urllib.parse.unquote(match.group(2))))

    def reset(self) -> None:
        with self._lock:
            self.requests = []

    def counts(self, prefix: str) -> dict[str, int]:
        """LIST / GET / other requests about the key prefix `prefix` (listings of it, reads of objects under it)."""
        counts = {"LIST": 0, "GET": 0, "other": 0}
        with self._lock:
            requests = list(self.requests)
        for method, target in requests:
            path, _, query = target.partition("?")
            if method == "GET" and f"prefix={prefix}/" in query:
                counts["LIST"] += 1
            elif f"/{prefix}/" in path:
                counts["GET" if method == "GET" else "other"] += 1
        return counts

    def total(self) -> int:
        with self._lock:
            return len(self.requests)


def served_version(port: int) -> int:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        return stub.Predict(make_request(), timeout=10).model_spec.version.value


def wait_until_served(port: int, version: int, timeout: float = 120) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            if served_version(port) == version:
                return time.monotonic() - started
        except grpc.RpcError:
            pass
        time.sleep(0.02)
    raise RuntimeError(f"version {version} not served within {timeout} s")


def start_sync(source: str, destination: Path, poll_seconds: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "serving.sync", source, str(destination), f"--poll_seconds={poll_seconds}"],
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def per_minute(counts: dict[str, int], seconds: float) -> str:
    return ", ".join(f"{kind} {count * 60 / seconds:.1f}/min" for kind, count in counts.items())


def report(scheme: str, poll_seconds: int, request_log: RequestLog, seconds: float) -> None:
    replica, sync = request_log.counts("jena"), request_log.counts("jena-sync")
    unattributed = request_log.total() - sum(replica.values()) - sum(sync.values())
    print(
        f"{scheme} poll {poll_seconds} s, idle {seconds:.0f} s: ModelServer replica {per_minute(replica, seconds)}; "
        f"serving.sync {per_minute(sync, seconds)}; other requests {unattributed}"
    )


def measure(
    store_class,
    models: tuple[Path, Path],
    request_log: RequestLog,
    idle_seconds: float,
    slow_idle_seconds: float,
    work: Path,
) -> None:
    store = store_class().start()
    os.environ.update(store.environment)
    forget_clients()
    try:
        bucket = store.create_bucket("bench")
        direct, mirrored = f"{bucket}/jena", f"{bucket}/jena-sync"
        first, second = models  # two trainings' weights: the publisher skips a model identical to the newest
        publish(first, direct, keep_versions=5)
        publish(first, mirrored, keep_versions=5)
        size = sum(path.stat().st_size for path in second.rglob("*") if path.is_file())
        files = sum(1 for path in second.rglob("*") if path.is_file())

        replica, port = start_server(direct, ["--file_system_poll_wait_seconds=1"])
        try:
            wait_until_served(port, 1)
            started = time.monotonic()
            assert publish(second, direct, keep_versions=5).version == 2
            publish_seconds = time.monotonic() - started
            latency = wait_until_served(port, 2)
            print(
                f"{store.scheme}: publish {files} files / {size / 1e3:.0f} kB: {publish_seconds:.3f} s; "
                f"publish-to-serving at 1 s poll: {latency:.2f} s"
            )

            sync = start_sync(mirrored, work / f"{store.scheme}-fast", 1)
            time.sleep(3)  # the sync's first copy is not idle traffic
            request_log.reset()
            time.sleep(idle_seconds)
            report(store.scheme, 1, request_log, idle_seconds)
            stop_server(sync)
        finally:
            stop_server(replica)

        replica, port = start_server(direct, ["--file_system_poll_wait_seconds=30"])
        sync = start_sync(mirrored, work / f"{store.scheme}-slow", 30)
        try:
            wait_until_served(port, 2)
            time.sleep(3)
            request_log.reset()
            time.sleep(slow_idle_seconds)
            report(store.scheme, 30, request_log, slow_idle_seconds)
        finally:
            stop_server(sync)
            stop_server(replica)
    finally:
        store.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--idle_seconds", type=float, default=30)
    parser.add_argument("--slow_idle_seconds", type=float, default=90)
    args = parser.parse_args()
    request_log = RequestLog()
    for name in REQUEST_LOGGERS:
        logger = logging.getLogger(name)
        logger.addHandler(request_log)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    work = Path(tempfile.mkdtemp(prefix="storage-benchmark-"))
    try:
        models = (build_model(work / "first") / "1", build_model(work / "second") / "1")
        for store_class in (S3Server, GcsServer):
            measure(store_class, models, request_log, args.idle_seconds, args.slow_idle_seconds, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
