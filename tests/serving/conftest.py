"""Fixtures for the serving tests: free ports, server processes, small SavedModels.

Servers run as ``python -m serving.model_server`` subprocesses and are
reached only through the official gRPC stubs and plain HTTP. Tests of TF
Serving's official test models run on models of the same kinds built here
(``generated_testdata.py``), and again on TF Serving's own copies in
``../shared/tfserving-testdata`` when that folder is beside the repository
root (our machines and CI have it; a fresh clone elsewhere need not).
"""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from pipeline.serving_check import free_port  # the one free_port, for every test

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_TESTDATA = REPO_ROOT.parent / "shared" / "tfserving-testdata"
TESTDATA_SOURCES = ["generated"] + (["shared"] if SHARED_TESTDATA.is_dir() else [])
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


@pytest.fixture(scope="session")
def generated_testdata(tmp_path_factory) -> Path:
    """TF Serving's test models and config files, built once per session."""
    from tests.serving.generated_testdata import build_testdata

    return build_testdata(tmp_path_factory.mktemp("tfserving-testdata"))


@pytest.fixture(scope="session", params=TESTDATA_SOURCES)
def testdata(request) -> Path:
    """The folder of TF Serving's test models: the generated one, then the shared one when present."""
    if request.param == "shared":
        return SHARED_TESTDATA
    return request.getfixturevalue("generated_testdata")


@pytest.fixture(scope="session")
def model_factory(tmp_path_factory):
    """Builds small SavedModels (tf.Module + tf.function signatures) on demand, cached."""
    import tensorflow as tf

    cache_dir = tmp_path_factory.mktemp("built-models")
    built = {}

    def build(kind: str, factor: float = 1.0) -> Path:
        key = (kind, factor)
        if key in built:
            return built[key]
        path = cache_dir / f"{kind}-{factor}"
        module = tf.Module()
        module.factor = tf.Variable(factor, dtype=tf.float32)
        signatures = {}
        if kind == "linear":

            @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.float32, name="x")])
            def serve(x):
                return {"y": x * module.factor}

            signatures["serving_default"] = serve
        elif kind == "batch_probe":

            @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.float32, name="x")])
            def serve(x):  # answers the size of the batch the request ran in
                return {"batch_size": tf.zeros_like(x) + tf.cast(tf.shape(x)[0], tf.float32) * module.factor}

            module.weights = tf.Variable(tf.random.uniform([384, 384]) / 384.0)

            @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.float32, name="x")])
            def slow(x):
                state = tf.ones([384, 384])
                for _ in range(40):
                    state = tf.tanh(tf.matmul(state, module.weights))
                return {"y": x + tf.reduce_mean(state) * 0.0}

            signatures["serving_default"] = serve
            signatures["slow"] = slow
        else:
            raise ValueError(kind)
        tf.saved_model.save(module, str(path), signatures=signatures)
        built[key] = path
        return path

    return build


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


def wait_for(condition, timeout: float = 30, interval: float = 0.2, message: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {message}")
