"""The export stage under DVC, in a temporary copy of the repository on a small synthetic range.

The issue's four scenarios: a fresh `dvc repro` publishes version 1; `dvc exp
run -S epochs=...` publishes version 2 and keeps 1; `dvc repro` with nothing
changed publishes nothing; and a ModelServer watching the directory serves
the new version without a restart. Also: a stage restored from DVC's
run-cache never skips a publication.
"""

import os
import socket
import subprocess
import sys
import time

import grpc
import pytest
import tensorflow as tf
import yaml
from tensorflow_serving.apis import (
    get_model_status_pb2, model_service_pb2_grpc, predict_pb2, prediction_log_pb2, prediction_service_pb2_grpc,
)

from conftest import set_params
from pipeline.export import WARMUP_FILE
from pipeline.publish import fingerprint, version_numbers

pytestmark = pytest.mark.slow

# Until the lead merges the train, evaluate and export stages into dvc.yaml and
# params.yaml, the copy gets these; stages and sections already there win.
PROPOSED_STAGES = yaml.safe_load("""
train:
  cmd: python -m pipeline.train
  deps: [pipeline/train.py, pipeline/model.py, pipeline/features.py, data/windows]
  params: [seed, epochs, model, train]
  outs: [models/model.keras]
  metrics: [{dvclive/metrics.json: {cache: false}}]
evaluate:
  cmd: python -m pipeline.evaluate
  deps: [pipeline/evaluate.py, pipeline/train.py, models/model.keras, data/windows]
  params: [evaluate]
  metrics: [{metrics/evaluate.json: {cache: false}}]
export:
  cmd: python -m pipeline.export
  deps: [pipeline/export.py, pipeline/publish.py, pipeline/model.py, pipeline/features.py, models/model.keras,
         data/windows, data/raw/jena_climate_2009_2016.csv, metrics/evaluate.json, serving/models.config]
  params: [seed, serving]
  outs: [models/export, {models/publication.json: {cache: false}}]
""")
PROPOSED_PARAMS = {
    "model": {"cell": "gru", "layers": 1, "units": 32, "dropout": 0.0, "recurrent_dropout": 0.0, "residual": True},
    "train": {"optimizer": "adam", "learning_rate": 0.001, "batch_size": 256, "loss_function": "mae", "patience": 3},
    "evaluate": {"margin": 0.05, "tolerance": 0.05, "climatology_window_days": 15, "plot_days": 14},
    "serving": {"model_name": "jena_temperature", "base_path": "models/serving", "keep_versions": 5,
                "config_file": "serving/models.config"},
}
# A tiny, quick model; every model is blessed (the gate has its own tests).
QUICK = {
    "epochs": 1,
    "window.lookback_hours": 24, "window.horizon_hours": 6,
    "model.units": 4, "train.batch_size": 64, "train.learning_rate": 0.01,
    "evaluate.margin": -1.0, "evaluate.tolerance": 100.0,
}
MODEL_NAME = "jena_temperature"


def with_export_stage(repo):
    """The copy's dvc.yaml and params.yaml with the export stage (and what it needs), committed."""
    dvc_yaml_path, params_path = repo.root / "dvc.yaml", repo.root / "params.yaml"
    dvc_yaml = yaml.safe_load(dvc_yaml_path.read_text())
    for name, stage in PROPOSED_STAGES.items():
        dvc_yaml["stages"].setdefault(name, stage)
    dvc_yaml_path.write_text(yaml.safe_dump(dvc_yaml, sort_keys=False))
    params = yaml.safe_load(params_path.read_text())
    for section, values in PROPOSED_PARAMS.items():
        params.setdefault(section, values)
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    set_params(params_path, QUICK)
    repo.run("git", "-c", "user.name=test", "-c", "user.email=test@example.com", "commit", "-q", "-am", "quick")
    return repo.root / "models/serving" / MODEL_NAME


def test_repro_publishes_exp_run_adds_a_version_and_unchanged_repro_adds_none(pipeline_repo):
    versions = with_export_stage(pipeline_repo)

    pipeline_repo.dvc("repro")  # 1. fresh clone
    assert version_numbers(versions) == [1]
    first = yaml.safe_load((pipeline_repo.root / "models/publication.json").read_text())
    assert (first["version"], first["created"], first["published"]) == (1, True, True)

    pipeline_repo.dvc("exp", "run", "-S", "epochs=3")  # 2. an experiment
    assert version_numbers(versions) == [1, 2]
    assert fingerprint(versions / "2") == fingerprint(pipeline_repo.root / "models/export")

    unchanged = pipeline_repo.dvc("repro")  # 3. nothing changed
    assert "Running stage 'export'" not in unchanged.stdout, unchanged.stdout
    assert version_numbers(versions) == [1, 2]

    # Back to the first params: train and evaluate come from the run-cache, export
    # has no run-cache entry (its cache: false output), so it runs and publishes.
    # The re-export of version 1's weights in a new process has version 1's fingerprint.
    back = pipeline_repo.dvc("exp", "run", "-S", "epochs=1")
    assert "Stage 'train' is cached - skipping run" in back.stdout, back.stdout
    assert "Running stage 'export'" in back.stdout and "Stage 'export' is cached" not in back.stdout
    assert version_numbers(versions) == [1, 2, 3]
    assert fingerprint(versions / "3") == fingerprint(versions / "1")

    # A model that is not blessed: the stage succeeds, says why and publishes nothing.
    refused = pipeline_repo.dvc("exp", "run", "-S", "evaluate.margin=0.99")
    assert "not blessed" in refused.stdout, refused.stdout
    assert version_numbers(versions) == [1, 2, 3]
    record = yaml.safe_load((pipeline_repo.root / "models/publication.json").read_text())
    assert (record["published"], record["version"]) == (False, None)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_available_version(channel, version: int, timeout: float = 120) -> None:
    stub = model_service_pb2_grpc.ModelServiceStub(channel)
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = MODEL_NAME
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            states = {status.version: status.state
                      for status in stub.GetModelStatus(request, timeout=5).model_version_status}
            if states.get(version) == get_model_status_pb2.ModelVersionStatus.AVAILABLE:
                return
            last = states
        except grpc.RpcError as error:
            last = error.details()
        time.sleep(0.5)
    raise AssertionError(f"version {version} not AVAILABLE after {timeout} s; last status: {last}")


def served_version(channel, export_dir) -> int:
    """Predict without a version with the export's first warm-up request; the version that answered."""
    record = next(iter(tf.data.TFRecordDataset(str(export_dir / WARMUP_FILE))))
    request = prediction_log_pb2.PredictionLog.FromString(record.numpy()).predict_log.request
    request = predict_pb2.PredictRequest(inputs=request.inputs, model_spec={"name": MODEL_NAME})
    response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
    assert "temperature_degC" in response.outputs
    return response.model_spec.version.value


def test_exp_run_is_served_by_a_watching_server_without_restart(pipeline_repo):
    pytest.importorskip("serving.model_server")
    versions = with_export_stage(pipeline_repo)
    pipeline_repo.dvc("repro")
    port = free_port()
    environment = dict(os.environ, PYTHONPATH=str(pipeline_repo.root))
    server = subprocess.Popen(
        [sys.executable, "-m", "serving.model_server", "--port", str(port), "--model_name", MODEL_NAME,
         "--model_base_path", str(versions), "--file_system_poll_wait_seconds", "1"],
        cwd=pipeline_repo.root, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            wait_for_available_version(channel, 1)
            assert served_version(channel, pipeline_repo.root / "models/export") == 1

            pipeline_repo.dvc("exp", "run", "-S", "epochs=3")  # 4. while the server watches
            assert version_numbers(versions) == [1, 2]
            wait_for_available_version(channel, 2)
            assert served_version(channel, pipeline_repo.root / "models/export") == 2
        assert server.poll() is None, "the server stopped"
    finally:
        server.terminate()
        try:
            _, errors = server.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            _, errors = server.communicate()
    assert server.returncode in (0, -15), errors[-3000:]
