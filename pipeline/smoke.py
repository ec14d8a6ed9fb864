"""Stage 7, smoke: prove that the published version is served and answers right.

In:  the publication record and the exported SavedModel (export stage), the
     test windows (window stage), metrics/evaluate.json, and params
     `smoke.*` (which server, how long to wait) and `serving.*`.
Out: metrics/smoke.json: version checked, requests sent, largest absolute
     difference from the in-process SavedModel, gRPC latency p50/p99, server kind.

The server is chosen by `smoke.server`:
- `embedded`: our ModelServer (`python -m serving.model_server`) on free
  loopback ports over the watched directory;
- `binary`:   `tensorflow_model_server` from PATH with the very same flags;
- `external`: a server already running at `smoke.target` (e.g. docker compose).
Everything after that is the same code for all three, through the official
gRPC stubs: wait until the version is AVAILABLE, check the signature, send
single and batched Predict requests built from real test windows to that exact
version, compare with the SavedModel run in-process and with the evaluated
test MAE, and one REST `:predict` when the server has REST. Any mismatch,
timeout or error fails the stage and says what was expected and what came back.
A server the stage started is always stopped, also on failure or Ctrl-C.
"""

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

from pipeline.atomic import write_json
from serving.client import GrpcForecaster, RestForecaster

PARITY_TOLERANCE_DEGC = 1e-4
MAE_TOLERANCE_DEGC = 1e-3
SINGLE_REQUESTS = 50


class SmokeFailure(RuntimeError):
    """The served model is missing, late or wrong; the message says what was expected and what came back."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def server_command(kind: str, grpc_port: int, rest_port: int, model_name: str, base_path: Path) -> list[str]:
    """TensorFlow Serving's command line; ours takes the same flags."""
    program = [sys.executable, "-m", "serving.model_server"] if kind == "embedded" else ["tensorflow_model_server"]
    if kind == "binary" and shutil.which("tensorflow_model_server") is None:
        raise SmokeFailure("smoke.server is 'binary' but tensorflow_model_server is not on PATH")
    return program + [
        f"--port={grpc_port}", f"--rest_api_port={rest_port}", f"--model_name={model_name}",
        f"--model_base_path={base_path.resolve()}", "--file_system_poll_wait_seconds=1",
    ]


@contextlib.contextmanager
def started_server(command: list[str], log_path: Path):
    """Run the server for the block's duration; always stop it, also on errors and Ctrl-C."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))
        try:
            yield process
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def wait_until_available(channel, model_name: str, version: int, timeout_seconds: float, process=None) -> None:
    """Poll GetModelStatus until `version` is AVAILABLE; fail on END, a dead server or the deadline."""
    stub = model_service_pb2_grpc.ModelServiceStub(channel)
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = model_name
    request.model_spec.version.value = version
    deadline = time.monotonic() + timeout_seconds
    last_answer = "no answer"
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise SmokeFailure(f"the model server exited with code {process.returncode} before serving")
        try:
            states = stub.GetModelStatus(request, timeout=5).model_version_status
            state = {status.version: status for status in states}.get(version)
            if state is not None:
                name = get_model_status_pb2.ModelVersionStatus.State.Name(state.state)
                last_answer = f"state {name} {state.status.error_message}".strip()
                if name == "AVAILABLE":
                    return
                if name == "END":
                    raise SmokeFailure(f"version {version} of {model_name} failed to load: {last_answer}")
        except grpc.RpcError as error:
            last_answer = f"{error.code().name}: {error.details()}"
        time.sleep(0.2)
    raise SmokeFailure(f"expected {model_name} version {version} AVAILABLE within {timeout_seconds:.0f} s; "
                       f"last answer: {last_answer}")


def documented_signature(lookback: int) -> dict:
    """serving_default as the README documents it: name -> (dtype, shape)."""
    return {
        "inputs": {"history": ("DT_FLOAT", [-1, lookback, 14]), "timestamps": ("DT_INT64", [-1, lookback])},
        "outputs": {"temperature_degC": ("DT_FLOAT", [-1])},
    }


def described(signature) -> dict:
    """A SignatureDef in the form of documented_signature()."""
    def tensors(infos):
        return {name: (types_pb2.DataType.Name(info.dtype), [dim.size for dim in info.tensor_shape.dim])
                for name, info in infos.items()}
    return {"inputs": tensors(signature.inputs), "outputs": tensors(signature.outputs)}


def check_signature(forecaster: GrpcForecaster, version: int, lookback: int) -> None:
    """The served signature must be the documented one."""
    served, expected = described(forecaster.signature(version)), documented_signature(lookback)
    if served != expected:
        raise SmokeFailure(f"expected signature {expected}, the server has {served}")


def percentile_ms(seconds: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(seconds) * 1000, q))
