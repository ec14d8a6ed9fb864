"""Stage 7, smoke: prove that the published version is served and answers right.

In:  the publication record and the exported SavedModel (export stage), the
     test windows (window stage), metrics/evaluate.json, and params
     `smoke.*` (which server, how long to wait) and `serving.*`.
Out: metrics/smoke.json: version checked, requests sent, largest absolute
     difference of any output from the in-process SavedModel, gRPC latency p50/p99, server kind.

The server is chosen by `smoke.server`:
- `embedded`: our ModelServer (`python -m serving.model_server`) on free
  loopback ports over the watched directory (local, s3:// or gs://; the
  in-process reference runs on a temporary copy of the version from a store);
- `binary`:   `tensorflow_model_server` from PATH with the very same flags;
- `external`: a server already running at `smoke.target` (e.g. docker compose),
  over TLS when `smoke.tls_ca_file` (the CA that signed the server's
  certificate) is set, with a client certificate from `smoke.tls_cert_file`
  and `smoke.tls_key_file` for servers that verify clients.
Everything after that is the same code for all three, through the official
gRPC stubs: wait until the version is AVAILABLE, check the signature, send
single and batched Predict requests built from real test windows to that exact
version, compare with the SavedModel run in-process and with the evaluated
test MAE, and one REST `:predict` when the server has REST. Any mismatch,
timeout or error fails the stage and says what was expected and what came back.
A server the stage started is always stopped, also on failure or Ctrl-C.
"""

import contextlib
import json
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

from pipeline import schema
from pipeline.atomic import write_json
from pipeline.client import GrpcForecaster, RestForecaster, tls_credentials
from pipeline.config import EVALUATE_METRICS, PUBLICATION_RECORD, SMOKE_METRICS, WINDOWS_DIR, load_params
from pipeline.publish import model_directory, read_model_card
from pipeline.store import StoreError, complete_versions, is_store_url, local_version
from pipeline.window import load_windows


PARITY_TOLERANCE_DEGC = 1e-4
MAE_TOLERANCE_DEGC = 1e-3
SINGLE_REQUESTS = 50


class SmokeFailure(RuntimeError):
    """The served model is missing, late or wrong; the message says what was expected and what came back."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def server_command(kind: str, grpc_port: int, rest_port: int, model_name: str, base_path: Path | str) -> list[str]:
    """TensorFlow Serving's command line; ours takes the same flags. An s3:// or gs:// base path is passed as is."""
    program = [sys.executable, "-m", "serving.model_server"] if kind == "embedded" else ["tensorflow_model_server"]
    if kind == "binary" and shutil.which("tensorflow_model_server") is None:
        raise SmokeFailure("smoke.server is 'binary' but tensorflow_model_server is not on PATH")
    return program + [
        f"--port={grpc_port}", f"--rest_api_port={rest_port}", f"--model_name={model_name}",
        f"--model_base_path={base_path if is_store_url(base_path) else Path(base_path).resolve()}", "--file_system_poll_wait_seconds=1",
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
            print(f"smoke: the model server's log ends with:\n{log.read()[-4000:]}", file=sys.stderr)
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


def documented_signature(lookback: int, horizon: int, quantiles: int) -> dict:
    """`schema.served_signature` as GetModelMetadata shows it: name -> (DT_ dtype, shape with -1 batch)."""
    def as_served(tensors):
        return {name: (types_pb2.DataType.Name(tf.as_dtype(dtype).as_datatype_enum),
                       [-1 if size is None else size for size in shape])
                for name, (dtype, shape) in tensors.items()}
    signature = schema.served_signature(lookback, horizon, quantiles)
    return {part: as_served(tensors) for part, tensors in signature.items()}


def described(signature) -> dict:
    """A SignatureDef in the form of documented_signature()."""
    def tensors(infos):
        return {name: (types_pb2.DataType.Name(info.dtype), [dim.size for dim in info.tensor_shape.dim])
                for name, info in infos.items()}
    return {"inputs": tensors(signature.inputs), "outputs": tensors(signature.outputs)}


def check_signature(forecaster: GrpcForecaster, version: int, lookback: int, horizon: int, quantiles: int) -> None:
    """The served signature must be the documented one."""
    served, expected = described(forecaster.signature(version)), documented_signature(lookback, horizon, quantiles)
    if served != expected:
        raise SmokeFailure(f"expected signature {expected}, the server has {served}")


def percentile_ms(seconds: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(seconds) * 1000, q))


def version_to_check(record: dict, directory: Path | str) -> int:
    """The version this run published, or (when it published nothing) the newest one served."""
    if record.get("published"):
        return int(record["version"])
    versions = complete_versions(directory)
    if not versions:
        raise SmokeFailure(f"nothing to check: no version in {directory} ({record.get('reason', 'not published')})")
    return versions[-1]


def in_process_predictions(saved_model: Path, history: np.ndarray, timestamps: np.ndarray,
                           batch_size: int) -> dict[str, np.ndarray]:
    """The SavedModel's own answers, every output, computed here: the reference for the served ones."""
    serve = tf.saved_model.load(str(saved_model)).signatures[schema.SIGNATURE_NAME]
    batches = [serve(**{schema.HISTORY_INPUT: tf.constant(history[i:i + batch_size]),
                        schema.TIMESTAMPS_INPUT: tf.constant(timestamps[i:i + batch_size])})
               for i in range(0, len(history), batch_size)]
    return {name: np.concatenate([batch[name].numpy() for batch in batches]) for name in batches[0]}


def forecast_outputs(forecast) -> dict[str, np.ndarray]:
    """A client Forecast as the signature's outputs (those it received)."""
    outputs = {schema.TEMPERATURE_OUTPUT: forecast.temperatures_degC, schema.VALID_TIME_OUTPUT: forecast.valid_times,
               schema.PATH_OUTPUT: forecast.paths, schema.QUANTILES_OUTPUT: forecast.quantiles,
               schema.QUANTILE_LEVELS_OUTPUT: forecast.levels}
    return {name: values for name, values in outputs.items() if values is not None}


def served_predictions(forecaster, history, timestamps, version: int, batch_size: int) -> dict[str, np.ndarray]:
    """Batched Predict requests addressed to `version`; every answer must come from it."""
    answers = []
    for i in range(0, len(history), batch_size):
        forecast = forecaster.predict(history[i:i + batch_size], timestamps[i:i + batch_size], version=version)
        if forecast.version not in (None, version):
            raise SmokeFailure(f"asked version {version}, answered by version {forecast.version}")
        answers.append(forecast_outputs(forecast))
    return {name: np.concatenate([answer[name] for answer in answers]) for name in answers[0]}


def single_request_latencies(forecaster, history, timestamps, version: int, count: int) -> list[float]:
    """Wall time of `count` batch-1 Predict requests."""
    latencies = []
    for i in range(count):
        started = time.perf_counter()
        forecaster.predict(history[i:i + 1], timestamps[i:i + 1], version=version)
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
        raise SmokeFailure(f"{name}: expected outputs {sorted(reference)}, got {sorted(served)}")
    worst_float = 0.0
    for output, expected in reference.items():
        answer = served[output]
        if answer.shape != expected.shape:
            raise SmokeFailure(f"{name}: {output}: expected shape {expected.shape}, got {answer.shape}")
        is_float = expected.dtype.kind == "f"
        allowed = tolerance if is_float else 0
        difference = np.abs(answer.astype(np.float64) - expected.astype(np.float64))
        difference[np.isnan(difference)] = np.inf
        worst = np.unravel_index(int(np.argmax(difference)), difference.shape)
        if not difference[worst] <= allowed:
            raise SmokeFailure(f"{name}: {output}: {element(output, worst)}: expected {expected[worst]}, "
                               f"got {answer[worst]} (tolerance {allowed})")
        if is_float:
            worst_float = max(worst_float, float(difference[worst]))
    return worst_float


def grpc_credentials(smoke: dict):
    """TLS channel credentials from `smoke.tls_*` (None: plaintext)."""
    ca_file, cert_file, key_file = smoke.get("tls_ca_file"), smoke.get("tls_cert_file"), smoke.get("tls_key_file")
    if not (ca_file or cert_file or key_file):
        return None
    try:
        return tls_credentials(ca_file, cert_file, key_file)
    except ValueError as error:
        raise SmokeFailure(f"params.yaml: smoke.tls_cert_file and smoke.tls_key_file: {error}") from None
    except OSError as error:
        raise SmokeFailure(f"params.yaml: smoke.tls_*: {error.filename}: {error.strerror}") from None


def check_served_model(target: str, rest_target: str | None, model_name: str, version: int, saved_model: Path,
                       windows, expected_mae: float, smoke: dict, process=None, credentials=None) -> dict:
    """All checks against a running server; returns the smoke metrics."""
    forecaster = GrpcForecaster(target, model_name, credentials=credentials)
    try:
        print(f"smoke: waiting for {model_name} version {version} at {target}", flush=True)
        wait_until_available(forecaster.channel, model_name, version, smoke["timeout_seconds"], process)
        levels = read_model_card(saved_model)["forecast"]["quantile_levels"]
        check_signature(forecaster, version, windows.lookback, windows.horizon, len(levels))
        starts = windows.starts["test"]
        print(f"smoke: version {version} is AVAILABLE with the documented signature; "
              f"checking {len(starts)} test windows", flush=True)
        history, timestamps = windows.history(starts)
        observed = windows.targets(starts)
        reference = in_process_predictions(saved_model, history, timestamps, smoke["batch_size"])
        served = served_predictions(forecaster, history, timestamps, version, smoke["batch_size"])
        max_difference = compare("gRPC Predict", served, reference, PARITY_TOLERANCE_DEGC)
        served_mae = float(np.mean(np.abs(served[schema.TEMPERATURE_OUTPUT] - observed)))
        if abs(served_mae - expected_mae) > MAE_TOLERANCE_DEGC:
            raise SmokeFailure(f"test MAE from served answers is {served_mae:.4f} C, "
                               f"metrics/evaluate.json says {expected_mae:.4f} C")
        latencies = single_request_latencies(forecaster, history, timestamps, version, SINGLE_REQUESTS)
        requests_sent = len(latencies) + -(-len(history) // smoke["batch_size"])
        if rest_target is not None:
            few = slice(0, 8)
            rest = RestForecaster(rest_target, model_name).predict(history[few], timestamps[few], version=version)
            first_few = {output: values[few] for output, values in reference.items()}
            max_difference = max(max_difference, compare("REST :predict", forecast_outputs(rest), first_few,
                                                          PARITY_TOLERANCE_DEGC))
            requests_sent += 1
    except grpc.RpcError as error:
        raise SmokeFailure(f"{target}: {error.code().name}: {error.details()}") from None
    finally:
        forecaster.close()
    return {
        "version": version,
        "requests_sent": requests_sent,
        "windows_checked": len(history),
        "max_abs_difference_degC": max_difference,
        "served_test_mae_degC": served_mae,
        "latency_p50_ms": percentile_ms(latencies, 50),
        "latency_p99_ms": percentile_ms(latencies, 99),
        "rest_checked": rest_target is not None,
    }


def main() -> None:
    params = load_params()
    smoke, serving = params["smoke"], params["serving"]
    record = json.loads(PUBLICATION_RECORD.read_text(encoding="utf-8"))
    directory = model_directory(serving)
    kind = smoke["server"]
    try:
        version = version_to_check(record, directory)
        with local_version(directory, version) as saved_model:
            expected_mae = (json.loads(EVALUATE_METRICS.read_text())["test_mae_degC"] if record.get("published")
                            else read_model_card(saved_model)["metrics"]["test_mae_degC"])
            windows = load_windows(WINDOWS_DIR)
            checks = dict(model_name=serving["model_name"], version=version, saved_model=saved_model,
                          windows=windows, expected_mae=expected_mae, smoke=smoke)
            credentials = grpc_credentials(smoke)
            if kind == "external":
                metrics = check_served_model(smoke["target"], smoke.get("rest_target"), **checks,
                                             credentials=credentials)
            elif credentials is not None:
                raise SmokeFailure(f"params.yaml: smoke.tls_* apply to smoke.server 'external'; "
                                   f"the {kind} server the stage starts speaks plaintext")
            elif kind in ("embedded", "binary"):
                grpc_port, rest_port = free_port(), free_port()
                command = server_command(kind, grpc_port, rest_port, serving["model_name"], directory)
                with started_server(command) as process:
                    metrics = check_served_model(f"127.0.0.1:{grpc_port}", f"127.0.0.1:{rest_port}", **checks,
                                                 process=process)
            else:
                raise SmokeFailure(f"params.yaml: smoke.server must be embedded, binary or external, got {kind!r}")
    except (SmokeFailure, StoreError) as failure:
        raise SystemExit(f"smoke: FAILED: {failure}") from None
    metrics["server"] = kind
    write_json(SMOKE_METRICS, metrics)
    print(f"smoke: version {version} of {serving['model_name']} ({kind} server): "
          f"{metrics['windows_checked']} test windows match within {metrics['max_abs_difference_degC']:.1e} C, "
          f"p50 {metrics['latency_p50_ms']:.1f} ms, p99 {metrics['latency_p99_ms']:.1f} ms")


if __name__ == "__main__":
    main()
