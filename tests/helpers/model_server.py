"""Our ModelServer as a subprocess, and what the serving tests ask it.

Servers run as ``python -m serving.model_server`` subprocesses and are reached
only through the official gRPC stubs and plain HTTP. `ServerProcess` starts one
on free loopback ports and waits until it answers; `check_predict`,
`served_version` and `statuses` ask it as TF Serving's own harness does;
`install_version` and `with_warmup_requests` lay out versions on disk;
`SteadyClient` keeps requests flowing while a test changes versions.
The small "linear" models they ask come from the `model_factory` fixture
(``tests/serving/conftest.py``): version v multiplies x by v.
"""

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_log_pb2,
    prediction_service_pb2_grpc,
)

from pipeline.serving_check import free_port
from tests.helpers.repository import REPO_ROOT

STARTUP_TIMEOUT_SECONDS = 120


class ServerProcess:
    """One model server subprocess with its ports and log file."""

    def __init__(
        self,
        log_dir: Path,
        *flags: str,
        rest: bool = True,
        launcher: tuple = (),
        channel_credentials: grpc.ChannelCredentials | None = None,
    ):
        self.port = free_port()
        self.rest_port = free_port() if rest else 0
        self.log_path = log_dir / f"server-{self.port}.log"
        command = [
            *launcher,
            sys.executable,
            "-m",
            "serving.model_server",
            f"--port={self.port}",
            f"--rest_api_port={self.rest_port}",
            *flags,
        ]
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=self._log, stderr=subprocess.STDOUT)
        self.channel = (
            grpc.secure_channel(f"127.0.0.1:{self.port}", channel_credentials)
            if channel_credentials
            else grpc.insecure_channel(f"127.0.0.1:{self.port}")
        )
        self.predict_stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self._wait_until_up()

    @property
    def rest(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _wait_until_up(self) -> None:
        """TF Serving's harness: up once Predict on an unknown model says NOT_FOUND ... Servable."""
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "no-such-model-probe"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited with {self.process.returncode}:\n{self.log_text()}")
            try:
                self.predict_stub.Predict(request, timeout=2)
            except grpc.RpcError as error:
                if error.code() == grpc.StatusCode.NOT_FOUND and "Servable" in error.details():
                    return
            time.sleep(0.3)
        self.stop()
        raise AssertionError(f"server did not come up:\n{self.log_text()}")

    def stop(self, timeout: float = 30, signal_number: int = signal.SIGTERM) -> int:
        self.channel.close()
        if self.process.poll() is None:
            self.process.send_signal(signal_number)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode


def check_predict(
    stub,
    expected: float,
    version: int,
    model: str = "default",
    signature: str = "serving_default",
    output_filter: tuple = ("y",),
    shape: tuple = (1,),
    alias: str = "x",
    output: str = "y",
) -> None:
    """Predict x = 2.0 and check the answer as TF Serving's own harness does (``VerifyPredictRequest``).

    In: a PredictionService stub, the one float expected in ``output`` and the version expected to answer.
    The input is a float tensor of ``shape`` holding 2.0 in ``float_val``; ``output_filter`` may be empty.
    Out: nothing; fails unless ``output`` is a DT_FLOAT with exactly ``expected`` in ``float_val`` and the
    response's model spec names ``model``, ``signature`` and ``version``.
    """
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    request.inputs[alias].dtype = types_pb2.DT_FLOAT
    request.inputs[alias].float_val.append(2.0)
    for size in shape:
        request.inputs[alias].tensor_shape.dim.add(size=size)
    request.output_filter.extend(output_filter)
    response = stub.Predict(request, timeout=20)
    assert output in response.outputs, list(response.outputs)
    assert response.outputs[output].dtype == types_pb2.DT_FLOAT
    assert list(response.outputs[output].float_val) == [expected]
    assert (response.model_spec.name, response.model_spec.signature_name, response.model_spec.version.value) == (
        model,
        signature,
        version,
    )


def install_version(base_path: Path, version: int, source: Path) -> Path:
    """Copies a SavedModel to base_path/<version> atomically (copy, then rename)."""
    staging = base_path / f".staging-{version}"
    shutil.copytree(source, staging)
    target = base_path / str(version)
    os.rename(staging, target)
    return target


def served_version(stub, model: str = "linear") -> tuple[int, float]:
    """Predict x = 1 on `model`: the version that answered and its y."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.inputs["x"].CopyFrom(tf.make_tensor_proto([[1.0]], dtype=tf.float32))
    response = stub.Predict(request, timeout=10)
    return response.model_spec.version.value, float(tf.make_ndarray(response.outputs["y"])[0][0])


def statuses(server, model: str = "linear") -> dict:
    """GetModelStatus of `model`: {version: (state, error code, error message)}."""
    stub = model_service_pb2_grpc.ModelServiceStub(server.channel)
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = model
    response = stub.GetModelStatus(request, timeout=10)
    return {
        status.version: (status.state, status.status.error_code, status.status.error_message)
        for status in response.model_version_status
    }


def with_warmup_requests(source, staging, requests_count: int):
    """A copy of a SavedModel with assets.extra/tf_serving_warmup_requests (PredictionLogs)."""
    shutil.copytree(source, staging)
    (staging / "assets.extra").mkdir()
    with tf.io.TFRecordWriter(str(staging / "assets.extra" / "tf_serving_warmup_requests")) as writer:
        for _ in range(requests_count):
            log = prediction_log_pb2.PredictionLog()
            log.predict_log.request.model_spec.name = "linear"
            log.predict_log.request.inputs["x"].CopyFrom(tf.make_tensor_proto([[1.0]], dtype=tf.float32))
            writer.write(log.SerializeToString())
    return staging


class SteadyClient:
    """Concurrent clients sending Predict in a loop, recording every failure and version seen."""

    def __init__(self, stub, threads: int = 4):
        self.stub, self.failures, self.versions, self.count = stub, [], set(), 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        for thread in self._threads:
            thread.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                version, value = served_version(self.stub)
                assert value == float(version), (version, value)  # model v multiplies by v
                self.versions.add(version)
            except Exception as error:  # recorded, asserted on below
                self.failures.append(repr(error))
            self.count += 1

    def stop(self):
        self._stop.set()
        for thread in self._threads:
            thread.join()
