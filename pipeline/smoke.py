"""Stage 7, smoke: prove that the served model answers right, and say which model that is.

In:  the publication record and the exported candidate (export stage), the
     test windows (window stage), metrics/evaluate.json, and params
     `smoke.*` (which server, how long to wait) and `serving.*`.
Out: metrics/smoke.json: what was checked (`checked`: "version N" or
     "candidate"), requests sent, largest absolute difference of any output
     from the in-process SavedModel, served test MAE, gRPC latency p50/p99,
     server kind.

What is checked, in this order of preference:
1. the version this run published (export validated it in a ModelServer
   before publishing; here it is checked again as served from the watched
   directory, local, s3:// or gs://);
2. when this run published nothing (not blessed, or identical to the newest
   version), the newest published version: what clients get;
3. when nothing is published at all, the candidate in models/export, served
   from a temporary directory: the pipeline did its job (it refused the model
   with a reason), and the model it refused still serves correctly.

The server is chosen by `smoke.server`:
- `embedded`: our ModelServer (`python -m serving.model_server`) on free
  loopback ports over the watched directory;
- `binary`:   `tensorflow_model_server` from PATH with the very same flags;
- `external`: a server already running at `smoke.target` (e.g. docker compose),
  over TLS when `smoke.tls_ca_file` (the CA that signed the server's
  certificate) is set, with a client certificate from `smoke.tls_cert_file`
  and `smoke.tls_key_file` for servers that verify clients. A candidate is
  never on an external server: it is checked on the embedded one.
The checks (pipeline.serving_check) run on every test window: the version
AVAILABLE, its signature the documented one, every output of single and
batched gRPC Predict requests equal to the SavedModel's own, the served MAE
equal to the evaluated one (where it was measured on these test windows), one
REST `:predict`. Any mismatch, timeout or error fails the stage and says what
was expected and what came back. A server the stage started is always stopped.
"""

import json

from forecast.client import tls_credentials
from pipeline.atomic import write_json
from pipeline.config import (
    EVALUATE_METRICS,
    EXPORT_DIR,
    PUBLICATION_RECORD,
    SMOKE_METRICS,
    WINDOWS_DIR,
    load_params,
    stage_command_line,
)
from pipeline.dataset import load_windows
from pipeline.published import model_directory, read_model_card
from pipeline.serving_check import CheckFailure, candidate_directory, check_served_model, served_by
from serving.store import StoreError, complete_versions, local_version


def version_to_check(record: dict, directory) -> int | None:
    """The version this run published or, when it published nothing, the newest one; None when there is none."""
    if record.get("published"):
        return int(record["version"])
    versions = complete_versions(directory)
    return versions[-1] if versions else None


def expected_mae(saved_model, evaluation: dict, published_now: bool) -> float | None:
    """The +24 h test MAE the served answers must reproduce: the evaluated one for the model evaluated in
    this run, a version's recorded one when it was measured on the same test data, otherwise none."""
    if published_now:
        return evaluation["test_mae_degC"]
    recorded = read_model_card(saved_model).get("metrics", {})
    if recorded.get("test_data_fingerprint") == evaluation.get("test_data_fingerprint"):
        return recorded["test_mae_degC"]
    return None


def grpc_credentials(smoke: dict):
    """TLS channel credentials from `smoke.tls_*` (None: plaintext)."""
    ca_file, cert_file, key_file = smoke.get("tls_ca_file"), smoke.get("tls_cert_file"), smoke.get("tls_key_file")
    if not (ca_file or cert_file or key_file):
        return None
    try:
        return tls_credentials(ca_file, cert_file, key_file)
    except ValueError as error:
        raise CheckFailure(f"params.yaml: smoke.tls_cert_file and smoke.tls_key_file: {error}") from None
    except OSError as error:
        raise CheckFailure(f"params.yaml: smoke.tls_*: {error.filename}: {error.strerror}") from None


def check(smoke: dict, model_name: str, directory, version: int, saved_model, windows, mae: float | None) -> dict:
    """Serve `directory` with the `smoke.server` kind (or use the external server) and check `version`."""
    checks = dict(
        model_name=model_name,
        version=version,
        saved_model=saved_model,
        windows=windows,
        starts=windows.starts["test"],
        expected_mae=mae,
        batch_size=smoke["batch_size"],
        timeout_seconds=smoke["timeout_seconds"],
    )
    credentials = grpc_credentials(smoke)
    kind = smoke["server"]
    if kind == "external":
        return check_served_model(smoke["target"], smoke.get("rest_target"), **checks, credentials=credentials)
    if credentials is not None:
        raise CheckFailure(
            f"params.yaml: smoke.tls_* apply to smoke.server 'external'; "
            f"the {kind} server the stage starts speaks plaintext"
        )
    if kind not in ("embedded", "binary"):
        raise CheckFailure(f"params.yaml: smoke.server must be embedded, binary or external, got {kind!r}")
    with served_by(kind, model_name, directory) as (target, rest_target, process):
        return check_served_model(target, rest_target, **checks, process=process)


def main() -> None:
    params = load_params()
    smoke, serving = params["smoke"], params["serving"]
    record = json.loads(PUBLICATION_RECORD.read_text(encoding="utf-8"))
    evaluation = json.loads(EVALUATE_METRICS.read_text(encoding="utf-8"))
    directory, model_name = model_directory(serving), serving["model_name"]
    windows = load_windows(WINDOWS_DIR)
    try:
        version = version_to_check(record, directory)
        if version is not None:
            checked = f"version {version}"
            with local_version(directory, version) as saved_model:
                mae = expected_mae(saved_model, evaluation, bool(record.get("published")))
                metrics = check(smoke, model_name, directory, version, saved_model, windows, mae)
        else:
            checked = f"candidate {EXPORT_DIR} ({record.get('reason', 'not published')})"
            print(f"smoke: no version is published; checking the {checked}", flush=True)
            candidate_smoke = {**smoke, "server": "embedded"} if smoke["server"] == "external" else smoke
            with candidate_directory(EXPORT_DIR, model_name, 1) as candidate:
                metrics = check(
                    candidate_smoke, model_name, candidate, 1, EXPORT_DIR, windows, evaluation["test_mae_degC"]
                )
            metrics["version"] = None
    except (CheckFailure, StoreError) as failure:
        raise SystemExit(f"smoke: FAILED: {failure}") from None
    metrics["checked"] = "candidate" if version is None else checked
    metrics["server"] = "embedded" if version is None and smoke["server"] == "external" else smoke["server"]
    write_json(SMOKE_METRICS, metrics)
    mae_said = (
        f"served test MAE {metrics['served_test_mae_degC']:.3f} C as evaluated"
        if metrics["expected_mae_degC"] is not None
        else "its test MAE was measured on other test data, so not compared"
    )
    print(
        f"smoke: {checked} of {model_name} ({metrics['server']} server): "
        f"{metrics['windows_checked']} test windows match within {metrics['max_abs_difference_degC']:.1e} C; "
        f"{mae_said}; p50 {metrics['latency_p50_ms']:.1f} ms, p99 {metrics['latency_p99_ms']:.1f} ms"
    )


if __name__ == "__main__":
    stage_command_line(__doc__, __spec__.name)
    main()
