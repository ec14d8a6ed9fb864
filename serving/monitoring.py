"""Request and load metrics in Prometheus text format, named as TF Serving names them.

TensorFlow Serving exports its monitoring metrics with ``/`` replaced by
``:``, so ``/tensorflow/serving/request_count`` becomes
``:tensorflow:serving:request_count``. This module keeps the counters and
histograms the server records and renders them for the REST endpoint at the
monitoring config's path (default ``/monitoring/prometheus/metrics``).
"""

import threading
from collections import defaultdict

REQUEST_COUNT = ":tensorflow:serving:request_count"
REQUEST_LATENCY = ":tensorflow:serving:request_latency"
RUNTIME_LATENCY = ":tensorflow:serving:runtime_latency"
REQUEST_EXAMPLE_COUNTS = ":tensorflow:serving:request_example_counts"
LOAD_ATTEMPT_COUNT = ":tensorflow:cc:saved_model:load_attempt_count"

# Microsecond buckets like TF Serving's latency histograms (powers of 1.8 from 10us).
LATENCY_BUCKETS_MICROS = [10 * 1.8**power for power in range(33)]
EXAMPLE_COUNT_BUCKETS = [2**power for power in range(12)]

_HELP = {
    REQUEST_COUNT: ("counter", "The total number of requests."),
    REQUEST_LATENCY: ("histogram", "Distribution of wall time (in microseconds) for Tensorflow Serving request."),
    RUNTIME_LATENCY: ("histogram", "Distribution of wall time (in microseconds) for Tensorflow runtime."),
    REQUEST_EXAMPLE_COUNTS: ("histogram", "The number of tensorflow.Examples per request."),
    LOAD_ATTEMPT_COUNT: ("counter", "The number of times a SavedModel was successfully loaded."),
}


class _Histogram:
    def __init__(self, bounds):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        index = next((i for i, bound in enumerate(self.bounds) if value <= bound), len(self.bounds))
        self.counts[index] += 1
        self.total += value
        self.count += 1


class Metrics:
    """Thread-safe metric store with a Prometheus text renderer."""

    def __init__(self):
        self._lock = threading.Lock()
        self._counters = defaultdict(int)  # (name, labels) -> value
        self._histograms = {}  # (name, labels) -> _Histogram

    def record_request(self, model_name: str, api: str, entrypoint: str, status: str, latency_seconds: float) -> None:
        micros = latency_seconds * 1e6
        with self._lock:
            self._counters[(REQUEST_COUNT, (("model_name", model_name), ("status", status)))] += 1
            self._observe(
                REQUEST_LATENCY,
                (("model_name", model_name), ("API", api), ("entrypoint", entrypoint)),
                micros,
                LATENCY_BUCKETS_MICROS,
            )

    def record_runtime(self, model_name: str, api: str, latency_seconds: float) -> None:
        with self._lock:
            self._observe(
                RUNTIME_LATENCY,
                (("model_name", model_name), ("API", api), ("runtime", "TF1")),
                latency_seconds * 1e6,
                LATENCY_BUCKETS_MICROS,
            )

    def record_examples(self, model_name: str, count: int) -> None:
        with self._lock:
            self._observe(REQUEST_EXAMPLE_COUNTS, (("model_name", model_name),), count, EXAMPLE_COUNT_BUCKETS)

    def record_load_attempt(self, model_path: str, status: str) -> None:
        with self._lock:
            self._counters[(LOAD_ATTEMPT_COUNT, (("model_path", model_path), ("status", status)))] += 1

    def _observe(self, name, labels, value, bounds) -> None:
        histogram = self._histograms.get((name, labels))
        if histogram is None:
            histogram = self._histograms[(name, labels)] = _Histogram(bounds)
        histogram.observe(value)

    def render(self) -> str:
        """The Prometheus text exposition of every metric recorded so far."""
        lines = []
        with self._lock:
            for name in _HELP:
                kind, help_text = _HELP[name]
                counters = sorted(
                    (labels, value) for (metric, labels), value in self._counters.items() if metric == name
                )
                histograms = sorted(
                    (labels, histogram) for (metric, labels), histogram in self._histograms.items() if metric == name
                )
                if not counters and not histograms:
                    continue
                lines.append(f"# HELP {name} {help_text}")
                lines.append(f"# TYPE {name} {kind}")
                for labels, value in counters:
                    lines.append(f"{name}{_labels(labels)} {value}")
                for labels, histogram in histograms:
                    cumulative = 0
                    for bound, count in zip(histogram.bounds + [float("inf")], histogram.counts):
                        cumulative += count
                        edge = "+Inf" if bound == float("inf") else f"{bound:g}"
                        lines.append(f"{name}_bucket{_labels(labels + (('le', edge),))} {cumulative}")
                    lines.append(f"{name}_sum{_labels(labels)} {histogram.total:g}")
                    lines.append(f"{name}_count{_labels(labels)} {histogram.count}")
        return "\n".join(lines) + "\n"


def _labels(pairs) -> str:
    escaped = (
        f'{key}="{str(value).replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
        for key, value in pairs
    )
    return "{" + ",".join(escaped) + "}"
