"""smoke: the stage against our ModelServer, its failure modes, and the forecast client over the wire.

A module fixture runs the stages before smoke, as `python -m pipeline.<stage>`,
in a temporary directory on a few weeks of synthetic data with a tiny model; the
tests on it are marked slow. What smoke checks a served model with is tested in
test_serving_check.py.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from forecast.client import main as client_main
from forecast.client import tls_credentials
from pipeline.serving_check import (
    free_port,
    server_command,
    started_server,
    wait_until_available,
)
from pipeline.smoke import version_to_check
from tests.helpers.commands import run_main
from tests.helpers.repository import QUICK_PARAMS, REPO_ROOT, run_stage, set_params
from tests.helpers.tls import make_tls_files

TINY = {
    "data.source": "synthetic",
    "data.synthetic_start": "2009-01-01",
    "data.synthetic_end": "2009-02-15",
    **QUICK_PARAMS,
}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A directory in which every stage up to export has run; version 1 is published."""
    root = tmp_path_factory.mktemp("smoke")
    shutil.copy(REPO_ROOT / "params.yaml", root / "params.yaml")
    shutil.copytree(REPO_ROOT / "serving", root / "serving", ignore=shutil.ignore_patterns("__pycache__"))
    set_params(root / "params.yaml", TINY)
    for stage in ("download", "prepare", "window", "train", "evaluate", "export"):
        result = run_stage(stage, root)
        assert result.returncode == 0, f"{stage}:\n{result.stdout}\n{result.stderr}"
    assert (root / "models/serving/jena_temperature/1/saved_model.pb").exists()
    return root


def server_processes_over(directory: Path) -> list[str]:
    """Command lines of running processes that mention `directory` (a leaked server would)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(directory) in text and "serving.model_server" in text:
            found.append(text)
    return found


@pytest.mark.slow
def test_smoke_stage_checks_the_published_version(workspace):
    result = run_stage("smoke", workspace)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((workspace / "metrics/smoke.json").read_text())
    evaluation = json.loads((workspace / "metrics/evaluate.json").read_text())
    assert metrics["version"] == 1 and metrics["server"] == "embedded" and metrics["rest_checked"]
    assert metrics["max_abs_difference_degC"] < 1e-4
    assert metrics["served_test_mae_degC"] == pytest.approx(evaluation["test_mae_degC"], abs=1e-3)
    assert metrics["requests_sent"] > 50 and 0 < metrics["latency_p50_ms"] <= metrics["latency_p99_ms"]
    assert server_processes_over(workspace) == []


@pytest.mark.slow
def test_smoke_stage_fails_on_a_wrong_mae_and_stops_its_server(workspace, tmp_path):
    evaluation_path = workspace / "metrics/evaluate.json"
    original = evaluation_path.read_text()
    (workspace / "metrics/smoke.json").unlink(missing_ok=True)
    evaluation = json.loads(original)
    evaluation["test_mae_degC"] += 0.5
    evaluation_path.write_text(json.dumps(evaluation))
    try:
        result = run_stage("smoke", workspace)
    finally:
        evaluation_path.write_text(original)
    assert result.returncode != 0
    assert "smoke: FAILED: test MAE from served answers is" in result.stderr
    assert f"metrics/evaluate.json says {evaluation['test_mae_degC']:.4f} C" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (workspace / "metrics/smoke.json").exists()
    assert server_processes_over(workspace) == []


@pytest.mark.slow
def test_forecast_client_asks_the_served_model(workspace, capsys):
    grpc_port, rest_port = free_port(), free_port()
    directory = workspace / "models/serving/jena_temperature"
    csv = workspace / "data/raw/jena_climate_2009_2016.csv"
    with started_server(server_command("embedded", grpc_port, rest_port, "jena_temperature", directory)) as server:
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            wait_until_available(channel, "jena_temperature", 1, 120, server)
        # as a user runs it, TensorFlow's log level not turned down
        grpc_answer = subprocess.run(
            [sys.executable, "-m", "forecast.client", csv, "--model-name", "jena_temperature"]
            + ["--target", f"127.0.0.1:{grpc_port}", "--brief"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            env=without_tf_log_level(),
        )
        rest_answer, table_answer, card_answer = (
            run_main(client_main, capsys, csv, *flags)
            for flags in (
                ["--model-name", "jena_temperature", "--rest", "--target", f"127.0.0.1:{rest_port}", "--json"],
                ["--model-name", "jena_temperature", "--target", f"127.0.0.1:{grpc_port}"],
                # the name, measurement order and gap filling from the version's model card
                ["--model-card", directory / "1", "--target", f"127.0.0.1:{grpc_port}", "--brief"],
            )
        )
    assert grpc_answer.returncode == 0, grpc_answer.stderr
    assert grpc_answer.stderr == ""  # no TensorFlow start-up noise
    assert card_answer == (0, grpc_answer.stdout, "")
    # The synthetic range ends 2009-02-15 00:00: the latest complete hour is the last row; the
    # tiny model's horizon (6 h, from its own valid_time output) names the valid time.
    assert grpc_answer.stdout.startswith(
        "forecast for 2009-02-15 06:00 (6 h after the last reading at 2009-02-15 00:00): "
    )
    assert grpc_answer.stdout.rstrip().endswith(" C (model jena_temperature, version 1)")
    code, out, err = rest_answer
    assert code == 0, err
    answer = json.loads(out)
    temperature = float(grpc_answer.stdout.split("): ")[1].split(" C")[0])
    assert answer["temperature_degC"] == pytest.approx(temperature, abs=0.05)
    assert {key: answer[key] for key in ("valid_time", "last_reading", "horizon_hours", "model_name")} == {
        "valid_time": "2009-02-15 06:00",
        "last_reading": "2009-02-15 00:00",
        "horizon_hours": 6,
        "model_name": "jena_temperature",
    }
    assert answer["quantile_levels"] == [0.1, 0.5, 0.9]
    assert [hour["hour"] for hour in answer["hours"]] == [1, 2, 3, 4, 5, 6]
    assert answer["hours"][0]["valid_time"] == "2009-02-15 01:00"
    assert answer["hours"][-1]["median_degC"] == answer["temperature_degC"]
    for hour in answer["hours"]:
        low, median, high = hour["quantiles_degC"]
        assert low <= median == hour["median_degC"] <= high
    code, out, err = table_answer
    assert code == 0, err
    table = out.splitlines()
    assert table[0] == "forecast after the last reading at 2009-02-15 00:00 (model jena_temperature, version 1)"
    assert len(table) == 2 + 6 and table[-1].split()[:4] == ["+6", "h", "2009-02-15", "06:00"]
    assert float(table[-1].split()[4]) == pytest.approx(temperature, abs=0.05)


def single_output_model(directory: Path, lookback: int) -> None:
    """A SavedModel with the signature served before the hourly forecast: temperature_degC and valid_time
    only (the last temperature, 24 h later)."""
    import tensorflow as tf

    module = tf.Module()

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, lookback, 14], tf.float32, name="history"),
            tf.TensorSpec([None, lookback], tf.int64, name="timestamps"),
        ]
    )
    def serve(history, timestamps):
        return {"temperature_degC": history[:, -1, 1], "valid_time": timestamps[:, -1] + 24 * 3600}

    module.serve = serve
    tf.saved_model.save(module, str(directory), signatures={"serving_default": serve})


@pytest.mark.slow
def test_the_client_still_reads_a_model_that_serves_only_the_day_ahead_temperature(workspace, tmp_path, capsys):
    single_output_model(tmp_path / "old" / "1", lookback=24)
    grpc_port, rest_port = free_port(), free_port()
    with started_server(server_command("embedded", grpc_port, rest_port, "old", tmp_path / "old")) as server:
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            wait_until_available(channel, "old", 1, 120, server)
        csv = workspace / "data/raw/jena_climate_2009_2016.csv"
        table, rest = (
            run_main(client_main, capsys, csv, "--model-name", "old", *flags)
            for flags in (
                ["--target", f"127.0.0.1:{grpc_port}"],
                ["--rest", "--target", f"127.0.0.1:{rest_port}", "--json"],
            )
        )
    assert table[0] == 0, table[2]
    assert table[1].startswith("forecast for 2009-02-16 00:00 (24 h after the last reading at 2009-02-15 00:00): ")
    assert rest[0] == 0, rest[2]
    answer = json.loads(rest[1])
    assert answer["horizon_hours"] == 24 and "hours" not in answer


def without_tf_log_level() -> dict:
    """The environment a user has: TensorFlow's log level not turned down."""
    return {name: value for name, value in os.environ.items() if name != "TF_CPP_MIN_LOG_LEVEL"}


def test_version_to_check(tmp_path):
    assert version_to_check({"published": True, "version": 4}, tmp_path) == 4
    for name in ("2", "10", ".staging-x"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "saved_model.pb").write_bytes(b"")
    assert version_to_check({"published": False}, tmp_path) == 10
    assert version_to_check({"published": False, "reason": "not blessed: worse"}, tmp_path / "empty") is None


def smoke_with(workspace, overrides: dict, environment: dict | None = None):
    """Run the smoke stage with some `smoke.*` params changed, then put the params back."""

    params_file = workspace / "params.yaml"
    original = params_file.read_text()
    set_params(params_file, overrides)
    try:
        return run_stage("smoke", workspace, environment=environment)
    finally:
        params_file.write_text(original)


@pytest.mark.slow
def test_binary_mode_starts_tensorflow_model_server_from_path_with_the_same_flags(workspace, tmp_path):
    # A stand-in binary that records its flags and execs our server with them.
    binary = tmp_path / "tensorflow_model_server"
    binary.write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/flags\nexec {sys.executable} -m serving.model_server "$@"\n')
    binary.chmod(0o755)

    result = smoke_with(workspace, {"smoke.server": "binary"}, {"PATH": f"{tmp_path}:{os.environ['PATH']}"})
    assert result.returncode == 0, result.stderr
    assert json.loads((workspace / "metrics/smoke.json").read_text())["server"] == "binary"
    flags = (tmp_path / "flags").read_text().split()
    assert "--model_name=jena_temperature" in flags and "--file_system_poll_wait_seconds=1" in flags
    assert f"--model_base_path={workspace / 'models/serving/jena_temperature'}" in flags


@pytest.mark.slow
def test_binary_mode_without_the_binary_says_so(workspace):
    result = smoke_with(workspace, {"smoke.server": "binary"}, {"PATH": str(Path(sys.executable).parent)})
    assert result.returncode != 0
    assert "smoke: FAILED: server 'binary' asked for, but tensorflow_model_server is not on PATH" in result.stderr


@pytest.mark.slow
def test_external_mode_checks_a_server_someone_else_runs(workspace):
    grpc_port, rest_port = free_port(), free_port()
    directory = workspace / "models/serving/jena_temperature"
    with started_server(server_command("embedded", grpc_port, rest_port, "jena_temperature", directory)):
        result = smoke_with(
            workspace,
            {
                "smoke.server": "external",
                "smoke.target": f"127.0.0.1:{grpc_port}",
                "smoke.rest_target": f"127.0.0.1:{rest_port}",
            },
        )
    assert result.returncode == 0, result.stderr
    metrics = json.loads((workspace / "metrics/smoke.json").read_text())
    assert metrics["server"] == "external" and metrics["rest_checked"] and metrics["version"] == 1


@pytest.mark.slow
def test_external_mode_with_the_versions_in_s3(workspace, s3_server):
    """serving.base_path on s3://: the version is read from the store (the reference runs on a copy of it)
    while a server someone else runs (here over a local mirror, as `serving.sync` keeps one) is checked."""
    from serving import store

    base_path = f"{s3_server.create_bucket('models')}/serving"
    local = workspace / "models/serving/jena_temperature"
    assert store.publish(local / "1", f"{base_path}/jena_temperature", keep_versions=5).version == 1
    grpc_port, rest_port = free_port(), free_port()
    with started_server(server_command("embedded", grpc_port, rest_port, "jena_temperature", local)):
        result = smoke_with(
            workspace,
            {"serving.base_path": base_path, "smoke.server": "external", "smoke.target": f"127.0.0.1:{grpc_port}"},
            s3_server.environment,
        )
    assert result.returncode == 0, result.stderr
    metrics = json.loads((workspace / "metrics/smoke.json").read_text())
    assert metrics["server"] == "external" and metrics["version"] == 1
    assert metrics["max_abs_difference_degC"] <= 1e-4


@pytest.mark.slow
def test_a_store_without_the_version_fails_smoke_in_one_line(workspace, s3_server):
    base_path = f"{s3_server.create_bucket('models')}/serving"
    result = smoke_with(workspace, {"serving.base_path": base_path}, s3_server.environment)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == (
        f"smoke: FAILED: {base_path}/jena_temperature: no complete version 1"
    )


@pytest.mark.slow
def test_external_mode_and_the_client_over_mutual_tls(workspace, tmp_path, capsys):
    tls = make_tls_files(tmp_path / "tls")
    grpc_port, rest_port = free_port(), free_port()
    directory = workspace / "models/serving/jena_temperature"
    command = server_command("embedded", grpc_port, rest_port, "jena_temperature", directory)
    client_files = {"ca": str(tls / "ca.pem"), "cert": str(tls / "client.pem"), "key": str(tls / "client.key")}
    with started_server(command + [f"--ssl_config_file={tls / 'mtls.config'}"]) as server:
        credentials = tls_credentials(client_files["ca"], client_files["cert"], client_files["key"])
        with grpc.secure_channel(f"127.0.0.1:{grpc_port}", credentials) as channel:
            wait_until_available(channel, "jena_temperature", 1, 120, server)
        result = smoke_with(
            workspace,
            {
                "smoke.server": "external",
                "smoke.target": f"127.0.0.1:{grpc_port}",
                "smoke.tls_ca_file": client_files["ca"],
                "smoke.tls_cert_file": client_files["cert"],
                "smoke.tls_key_file": client_files["key"],
            },
        )
        csv = workspace / "data/raw/jena_climate_2009_2016.csv"
        target = ["--model-name", "jena_temperature", "--target", f"127.0.0.1:{grpc_port}", "--brief"]
        answers = [
            run_main(client_main, capsys, csv, *target, *flags)
            for flags in (
                ["--tls-ca", client_files["ca"], "--tls-cert", client_files["cert"], "--tls-key", client_files["key"]],
                ["--tls-ca", client_files["ca"]],  # no client certificate
                [],  # plaintext
            )
        ]
    assert result.returncode == 0, result.stderr
    assert json.loads((workspace / "metrics/smoke.json").read_text())["server"] == "external"
    (code, out, err), *refused = answers
    assert code == 0, err
    assert out.startswith("forecast for 2009-02-15 06:00")
    for code, _, err in refused:
        assert code == 1 and "UNAVAILABLE" in err


@pytest.mark.slow
def test_tls_params_with_a_server_the_stage_starts_are_an_error(workspace, tmp_path):
    tls = make_tls_files(tmp_path / "tls")
    result = smoke_with(workspace, {"smoke.tls_ca_file": str(tls / "ca.pem")})
    assert result.returncode != 0
    assert (
        "smoke: FAILED: params.yaml: smoke.tls_* apply to smoke.server 'external'; "
        "the embedded server the stage starts speaks plaintext"
    ) in result.stderr
    missing = smoke_with(workspace, {"smoke.server": "external", "smoke.tls_ca_file": "/nonexistent/ca.pem"})
    assert "smoke: FAILED: params.yaml: smoke.tls_*: /nonexistent/ca.pem: No such file or directory" in missing.stderr


@pytest.mark.slow
def test_embedded_mode_serves_and_checks_the_version_in_s3(workspace, s3_server):
    """`dvc repro` with an s3:// base path: the stage's own ModelServer reads the store, as TF Serving does gs://."""
    from serving import store

    base_path = f"{s3_server.create_bucket('models')}/serving"
    assert (
        store.publish(
            workspace / "models/serving/jena_temperature/1", f"{base_path}/jena_temperature", keep_versions=5
        ).version
        == 1
    )
    result = smoke_with(workspace, {"serving.base_path": base_path}, s3_server.environment)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((workspace / "metrics/smoke.json").read_text())
    assert metrics["server"] == "embedded" and metrics["version"] == 1
    assert metrics["max_abs_difference_degC"] <= 1e-4


def with_record(workspace, record: dict, overrides: dict):
    """Run the smoke stage as after an export that published nothing (`record`), then put things back."""
    record_path = workspace / "models/publication.json"
    original = record_path.read_text()
    record_path.write_text(json.dumps(record))
    try:
        return smoke_with(workspace, overrides)
    finally:
        record_path.write_text(original)


@pytest.mark.slow
def test_with_nothing_published_smoke_checks_the_candidate_and_succeeds(workspace, tmp_path):
    result = with_record(
        workspace,
        {"published": False, "version": None, "reason": "not blessed: too weak"},
        {"serving.base_path": str(tmp_path / "empty")},
    )
    assert result.returncode == 0, result.stderr
    metrics = json.loads((workspace / "metrics/smoke.json").read_text())
    evaluation = json.loads((workspace / "metrics/evaluate.json").read_text())
    assert metrics["checked"] == "candidate" and metrics["version"] is None and metrics["server"] == "embedded"
    assert metrics["max_abs_difference_degC"] <= 1e-4 and metrics["rest_checked"]
    assert metrics["served_test_mae_degC"] == pytest.approx(evaluation["test_mae_degC"], abs=1e-3)
    assert "smoke: candidate models/export (not blessed: too weak) of jena_temperature" in result.stdout
    assert not (tmp_path / "empty").exists() and server_processes_over(workspace) == []


@pytest.mark.slow
def test_when_this_run_published_nothing_smoke_checks_the_newest_published_version(workspace):
    result = with_record(workspace, {"published": False, "version": None, "reason": "not blessed: too weak"}, {})
    assert result.returncode == 0, result.stderr
    metrics = json.loads((workspace / "metrics/smoke.json").read_text())
    assert metrics["checked"] == "version 1" and metrics["version"] == 1
    assert metrics["expected_mae_degC"] is not None  # the version's card shows the same test data
    assert "smoke: version 1 of jena_temperature (embedded server)" in result.stdout


@pytest.mark.slow
def test_export_never_publishes_a_candidate_that_a_model_server_cannot_serve(workspace, tmp_path):
    """A `binary` validation server that cannot load the model (here our server asked for a tag the
    SavedModel lacks): the candidate is refused, nothing new is published, and the stage fails clearly."""
    binary = tmp_path / "tensorflow_model_server"
    binary.write_text(
        f'#!/bin/sh\nexec {sys.executable} -m serving.model_server "$@" --saved_model_tags=gpu '
        "--max_num_load_retries=0\n"
    )
    binary.chmod(0o755)
    params_file, record_file = workspace / "params.yaml", workspace / "models/publication.json"
    originals = params_file.read_text(), record_file.read_text()
    versions = workspace / "models/serving/jena_temperature"
    before = sorted(path.name for path in versions.iterdir())
    set_params(
        params_file,
        {"export.validation_server": "binary", "export.validation_timeout_seconds": 300, "serving.keep_versions": 5},
    )
    # the candidate's temporary directory lies in this test's own TMPDIR: another test's validation
    # server, running at the same time, is not this one's leak
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    try:
        result = run_stage(
            "export", workspace, environment={"PATH": f"{tmp_path}:{os.environ['PATH']}", "TMPDIR": str(scratch)}
        )
        record = json.loads(record_file.read_text())
    finally:
        params_file.write_text(originals[0])
        record_file.write_text(originals[1])
    assert result.returncode != 0
    assert re.match(
        r"export: not published: the candidate failed validation in a ModelServer: (version 1 of "
        r"jena_temperature failed to load|the model server exited with code 1 before serving)",
        result.stderr.strip().splitlines()[-1],
    ), result.stderr
    assert record["published"] is False and record["reason"].startswith("the candidate failed validation")
    assert sorted(path.name for path in versions.iterdir()) == before
    assert server_processes_over(scratch) == [] and list(scratch.iterdir()) == []
