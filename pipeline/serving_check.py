"""Does a ModelServer serve a version exactly as its SavedModel answers? The checks of export and smoke.

In:  a running ModelServer (gRPC, and REST when it has it), a version number,
     the version's SavedModel on local disk, test windows.
Out: a dict of figures (requests sent, windows checked, the largest absolute
     difference of any output from the SavedModel run in-process, the served
     +24 h MAE, gRPC latency p50/p99), or `CheckFailure` naming what was
     expected and what came back.

`check_served_model` waits until the version is AVAILABLE, checks that its
signature is the documented one (`schema.served_signature`), sends single and
batched Predict requests built from the windows to that exact version through
the official gRPC stubs, compares every output with the SavedModel's own
answers, and ends with one REST `:predict`. `started_server` runs our
ModelServer (`embedded`) or `tensorflow_model_server` from PATH (`binary`) with
TensorFlow Serving's flags, and always stops it.
"""

import contextlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

from forecast.client import GrpcForecaster, RestForecaster
from pipeline import schema
from pipeline.published import read_model_card
from serving.store import is_remote

PARITY_TOLERANCE_DEGC = 1e-4
MAE_TOLERANCE_DEGC = 1e-3
SINGLE_REQUESTS = 50


class CheckFailure(RuntimeError):
    """The served model is missing, late or wrong; the message says what was expected and what came back."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def server_command(kind: str, grpc_port: int, rest_port: int, model_name: str, base_path: Path | str) -> list[str]:
    """TensorFlow Serving's command line; ours takes the same flags. An s3:// or gs:// base path is passed as is."""
    program = [sys.executable, "-m", "serving.model_server"] if kind == "embedded" else ["tensorflow_model_server"]
    if kind == "binary" and shutil.which("tensorflow_model_server") is None:
        raise CheckFailure("server 'binary' asked for, but tensorflow_model_server is not on PATH")
    return program + [
        f"--port={grpc_port}",
        f"--rest_api_port={rest_port}",
        f"--model_name={model_name}",
        f"--model_base_path={base_path if is_remote(base_path) else Path(base_path).resolve()}",
        "--file_system_poll_wait_seconds=1",
    ]


@contextlib.contextmanager
def started_server(command: list[str]):
    """Run the server for the block's duration; always stop it, also on errors and Ctrl-C.

    On an error the end of the server's log is printed, since that is where its reason is.
    """
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            yield process
        except BaseException:
            log.seek(0)
            print(f"the model server's log ends with:\n{log.read()[-4000:]}", file=sys.stderr)
            raise
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
            raise CheckFailure(f"the model server exited with code {process.returncode} before serving")
        try:
            states = stub.GetModelStatus(request, timeout=5).model_version_status
            state = {status.version: status for status in states}.get(version)
            if state is not None:
                name = get_model_status_pb2.ModelVersionStatus.State.Name(state.state)
                last_answer = f"state {name} {state.status.error_message}".strip()
                if name == "AVAILABLE":
                    return
                if name == "END":
                    raise CheckFailure(f"version {version} of {model_name} failed to load: {last_answer}")
        except grpc.RpcError as error:
            last_answer = f"{error.code().name}: {error.details()}"
        time.sleep(0.2)
    raise CheckFailure(
        f"expected {model_name} version {version} AVAILABLE within {timeout_seconds:.0f} s; last answer: {last_answer}"
    )


def documented_signature(lookback: int, horizon: int, quantiles: int) -> dict:
    """`schema.served_signature` as GetModelMetadata shows it: name -> (DT_ dtype, shape with -1 batch)."""

    def as_served(tensors):
        return {
            name: (
                types_pb2.DataType.Name(tf.as_dtype(dtype).as_datatype_enum),
                [-1 if size is None else size for size in shape],
            )
            for name, (dtype, shape) in tensors.items()
        }

    signature = schema.served_signature(lookback, horizon, quantiles)
    return {part: as_served(tensors) for part, tensors in signature.items()}


def described(signature) -> dict:
    """A SignatureDef in the form of documented_signature()."""

    def tensors(infos):
        return {
            name: (types_pb2.DataType.Name(info.dtype), [dim.size for dim in info.tensor_shape.dim])
            for name, info in infos.items()
        }

    return {"inputs": tensors(signature.inputs), "outputs": tensors(signature.outputs)}


def check_signature(forecaster: GrpcForecaster, version: int, lookback: int, horizon: int, quantiles: int) -> None:
    """The served signature must be the documented one."""
    served, expected = described(forecaster.signature(version)), documented_signature(lookback, horizon, quantiles)
    if served != expected:
        raise CheckFailure(f"expected signature {expected}, the server has {served}")


def percentile_ms(seconds: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(seconds) * 1000, q))


def in_process_predictions(
    saved_model: Path, history: np.ndarray, timestamps: np.ndarray, batch_size: int
) -> dict[str, np.ndarray]:
    """The SavedModel's own answers, every output, computed here: the reference for the served ones."""
    serve = tf.saved_model.load(str(saved_model)).signatures[schema.SIGNATURE_NAME]
    batches = [
        serve(
            **{
                schema.HISTORY_INPUT: tf.constant(history[i : i + batch_size]),
                schema.TIMESTAMPS_INPUT: tf.constant(timestamps[i : i + batch_size]),
            }
        )
        for i in range(0, len(history), batch_size)
    ]
    return {name: np.concatenate([batch[name].numpy() for batch in batches]) for name in batches[0]}


def forecast_outputs(forecast) -> dict[str, np.ndarray]:
    """A client Forecast as the signature's outputs (those it received)."""
    outputs = {
        schema.TEMPERATURE_OUTPUT: forecast.temperatures_degC,
        schema.VALID_TIME_OUTPUT: forecast.valid_times,
        schema.PATH_OUTPUT: forecast.paths,
        schema.QUANTILES_OUTPUT: forecast.quantiles,
        schema.QUANTILE_LEVELS_OUTPUT: forecast.levels,
    }
    return {name: values for name, values in outputs.items() if values is not None}


def served_predictions(forecaster, history, timestamps, version: int, batch_size: int) -> dict[str, np.ndarray]:
    """Batched Predict requests addressed to `version`; every answer must come from it."""
    answers = []
    for i in range(0, len(history), batch_size):
        forecast = forecaster.predict(history[i : i + batch_size], timestamps[i : i + batch_size], version=version)
        if forecast.version not in (None, version):
            raise CheckFailure(f"asked version {version}, answered by version {forecast.version}")
        answers.append(forecast_outputs(forecast))
    return {name: np.concatenate([answer[name] for answer in answers]) for name in answers[0]}


def single_request_latencies(forecaster, history, timestamps, version: int, count: int) -> list[float]:
    """Wall time of `count` batch-1 Predict requests."""
    latencies = []
    for i in range(count):
        started = time.perf_counter()
        forecaster.predict(history[i : i + 1], timestamps[i : i + 1], version=version)
        latencies.append(time.perf_counter() - started)
    return latencies


def element(output: str, index: tuple) -> str:
    """An output's element in words: `sample 3`, `sample 3, hour +2, quantile 0`."""
    words = [f"sample {index[0]}"]
    if len(index) > 1:
        words.append(f"hour +{index[1] + 1}" if output != schema.QUANTILE_LEVELS_OUTPUT else f"quantile {index[1]}")
    if len(index) > 2:
        words.append(f"quantile {index[2]}")
    return ", ".join(words)


def compare(name: str, served: dict[str, np.ndarray], reference: dict[str, np.ndarray], tolerance: float) -> float:
    """Largest absolute difference over every float output (temperatures, quantile levels); the
    integer outputs (valid times) must be equal. Either failing names the output and the first
    offending element (its sample, and hour and quantile where the output has them)."""
    if served.keys() != reference.keys():
        raise CheckFailure(f"{name}: expected outputs {sorted(reference)}, got {sorted(served)}")
    worst_float = 0.0
    for output, expected in reference.items():
        answer = served[output]
        if answer.shape != expected.shape:
            raise CheckFailure(f"{name}: {output}: expected shape {expected.shape}, got {answer.shape}")
        is_float = expected.dtype.kind == "f"
        allowed = tolerance if is_float else 0
        difference = np.abs(answer.astype(np.float64) - expected.astype(np.float64))
        difference[np.isnan(difference)] = np.inf
        worst = np.unravel_index(int(np.argmax(difference)), difference.shape)
        if not difference[worst] <= allowed:
            raise CheckFailure(
                f"{name}: {output}: {element(output, worst)}: expected {expected[worst]}, "
                f"got {answer[worst]} (tolerance {allowed})"
            )
        if is_float:
            worst_float = max(worst_float, float(difference[worst]))
    return worst_float


@contextlib.contextmanager
def served_by(kind: str, model_name: str, directory: Path | str):
    """A ModelServer of `kind` (embedded or binary) on free loopback ports watching `directory` for the
    block's duration: yields (gRPC target, REST target, process)."""
    if kind not in ("embedded", "binary"):
        raise CheckFailure(f"the server must be embedded or binary, got {kind!r}")
    grpc_port, rest_port = free_port(), free_port()
    with started_server(server_command(kind, grpc_port, rest_port, model_name, directory)) as process:
        yield f"127.0.0.1:{grpc_port}", f"127.0.0.1:{rest_port}", process


@contextlib.contextmanager
def candidate_directory(saved_model: Path, model_name: str, version: int):
    """A temporary model directory holding a copy of `saved_model` as `version`, for a server to load
    a candidate that is not published."""
    with tempfile.TemporaryDirectory(prefix="candidate-") as base:
        directory = Path(base) / model_name
        shutil.copytree(saved_model, directory / str(version))
        yield directory


def check_served_model(
    target: str,
    rest_target: str | None,
    model_name: str,
    version: int,
    saved_model: Path,
    windows,
    starts: np.ndarray,
    *,
    expected_mae: float | None = None,
    batch_size: int = 256,
    timeout_seconds: float = 120,
    purpose: str = "smoke",
    process=None,
    credentials=None,
) -> dict:
    """All checks against a running server, on the windows starting at `starts`; returns the figures.

    With `expected_mae` the +horizon MAE of the served answers on those windows must equal it (within
    MAE_TOLERANCE_DEGC); `purpose` prefixes the progress lines.
    """
    forecaster = GrpcForecaster(target, model_name, credentials=credentials)
    try:
        print(f"{purpose}: waiting for {model_name} version {version} at {target}", flush=True)
        wait_until_available(forecaster.channel, model_name, version, timeout_seconds, process)
        levels = read_model_card(saved_model)["forecast"]["quantile_levels"]
        check_signature(forecaster, version, windows.lookback, windows.horizon, len(levels))
        print(
            f"{purpose}: version {version} is AVAILABLE with the documented signature; "
            f"checking {len(starts)} test windows",
            flush=True,
        )
        history, timestamps = windows.history(starts)
        observed = windows.targets(starts)
        reference = in_process_predictions(saved_model, history, timestamps, batch_size)
        served = served_predictions(forecaster, history, timestamps, version, batch_size)
        max_difference = compare("gRPC Predict", served, reference, PARITY_TOLERANCE_DEGC)
        served_mae = float(np.mean(np.abs(served[schema.TEMPERATURE_OUTPUT] - observed)))
        if expected_mae is not None and abs(served_mae - expected_mae) > MAE_TOLERANCE_DEGC:
            raise CheckFailure(
                f"test MAE from served answers is {served_mae:.4f} C, metrics/evaluate.json says {expected_mae:.4f} C"
            )
        latencies = single_request_latencies(
            forecaster, history, timestamps, version, min(SINGLE_REQUESTS, len(history))
        )
        requests_sent = len(latencies) + -(-len(history) // batch_size)
        if rest_target is not None:
            few = slice(0, 8)
            rest = RestForecaster(rest_target, model_name).predict(history[few], timestamps[few], version=version)
            first_few = {output: values[few] for output, values in reference.items()}
            max_difference = max(
                max_difference, compare("REST :predict", forecast_outputs(rest), first_few, PARITY_TOLERANCE_DEGC)
            )
            requests_sent += 1
    except grpc.RpcError as error:
        raise CheckFailure(f"{target}: {error.code().name}: {error.details()}") from None
    finally:
        forecaster.close()
    return {
        "version": version,
        "requests_sent": requests_sent,
        "windows_checked": len(history),
        "max_abs_difference_degC": max_difference,
        "served_test_mae_degC": served_mae,
        "expected_mae_degC": expected_mae,
        "latency_p50_ms": percentile_ms(latencies, 50),
        "latency_p99_ms": percentile_ms(latencies, 99),
        "rest_checked": rest_target is not None,
    }
