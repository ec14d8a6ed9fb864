"""The whole pipeline under DVC, in a temporary copy of the repository on a small synthetic range.

One scenario, in the order a user meets it: a fresh `dvc repro` runs every
stage down to the smoke test and publishes version 1, which a ModelServer
watching the directory serves; a second `dvc repro` runs nothing;
`dvc exp run -S epochs=...` reruns train and what follows (not the data
stages), publishes version 2 and keeps 1, the watching server serves 2
without a restart, and `dvc exp show` lists its metrics; a stage restored from
DVC's run-cache never skips a publication; an unblessed model is not
published. The model is tiny and poor: what is checked is the plumbing.
"""

import csv
import io
import json
import shutil

import grpc
import pytest
import tensorflow as tf
import yaml
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2, prediction_service_pb2_grpc

from pipeline.export import WARMUP_FILE
from pipeline.serving_check import free_port, server_command, started_server, wait_until_available
from serving.store import complete_versions, fingerprint
from tests.helpers.repository import quick

pytestmark = pytest.mark.slow

MODEL_NAME = "jena_temperature"


def served_version(channel, export_dir) -> int:
    """Predict without a version with the export's first warm-up request; the version that answered."""
    record = next(iter(tf.data.TFRecordDataset(str(export_dir / WARMUP_FILE))))
    request = prediction_log_pb2.PredictionLog.FromString(record.numpy()).predict_log.request
    request = predict_pb2.PredictRequest(inputs=request.inputs, model_spec={"name": MODEL_NAME})
    response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
    assert "temperature_degC" in response.outputs
    return response.model_spec.version.value


def test_repro_publishes_exp_run_adds_a_served_version_and_unchanged_repro_adds_none(pipeline_repo):
    root, versions = pipeline_repo.root, quick(pipeline_repo)

    fresh = pipeline_repo.dvc("repro")  # 1. fresh clone: every stage, down to the smoke test
    assert "Running stage 'smoke'" in fresh.stdout, fresh.stdout
    assert complete_versions(versions) == [1]
    first = json.loads((root / "models/publication.json").read_text())
    assert (first["version"], first["created"], first["published"]) == (1, True, True)
    evaluation = json.loads((root / "metrics/evaluate.json").read_text())
    assert {
        "test_mae_degC",
        "test_rmse_degC",
        "persistence_mae_degC",
        "climatology_mae_degC",
        "skill_vs_persistence",
        "blessed",
        "blessing_reason",
        "test_mae_1h_degC",
        "band_coverage",
        "band_width_degC",
        "mean_pinball_loss_degC",
    } <= set(evaluation)
    smoke = json.loads((root / "metrics/smoke.json").read_text())
    assert smoke["version"] == 1 and smoke["server"] == "embedded" and smoke["max_abs_difference_degC"] < 1e-4
    assert abs(smoke["served_test_mae_degC"] - evaluation["test_mae_degC"]) < 1e-3
    plots = json.loads(pipeline_repo.dvc("plots", "show", "--json").stdout)["data"]
    assert {
        "Learning curve, MAE (degC)",
        "Test period, observed and predicted temperature",
        "Test MAE by month of the year",
        "Residuals, predicted - observed",
    } <= set(plots)
    assert (root / "models/architecture/summary.txt").is_file()
    if shutil.which("dot"):  # the architecture diagram needs Graphviz, which CI installs (.ci/run)
        assert [plot["type"] for plot in plots["models/architecture/model.png"]] == ["image"]

    port = free_port()  # a ModelServer watching the published versions, as in production
    command = server_command("embedded", port, 0, MODEL_NAME, versions)
    with started_server(command) as server, grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        wait_until_available(channel, MODEL_NAME, 1, 120, server)
        assert served_version(channel, root / "models/export") == 1

        unchanged = pipeline_repo.dvc("repro")  # 2. nothing changed: nothing runs
        assert "Running stage" not in unchanged.stdout, unchanged.stdout
        assert "up to date" in pipeline_repo.dvc("status").stdout
        pipeline_repo.commit("run")

        experiment = pipeline_repo.dvc("exp", "run", "-S", "epochs=3")  # 3. an experiment, while the server watches
        assert "Running stage 'train'" in experiment.stdout and "Running stage 'smoke'" in experiment.stdout
        assert "Running stage 'window'" not in experiment.stdout, experiment.stdout
        assert complete_versions(versions) == [1, 2]
        assert fingerprint(versions / "2") == fingerprint(root / "models/export")
        wait_until_available(channel, MODEL_NAME, 2, 120, server)
        assert served_version(channel, root / "models/export") == 2
        assert server.poll() is None, "the server stopped"
    assert json.loads((root / "metrics/smoke.json").read_text())["version"] == 2
    rows = list(csv.DictReader(io.StringIO(pipeline_repo.dvc("exp", "show", "--csv").stdout)))
    runs = [row for row in rows if row["epochs"] == "3" and row["typ"] != "workspace"]
    assert runs and float(runs[0]["test_mae_degC"]) > 0 and runs[0]["blessed"] == "True", rows

    unchanged = pipeline_repo.dvc("repro")  # 4. nothing changed after the experiment
    assert "Running stage" not in unchanged.stdout, unchanged.stdout
    assert complete_versions(versions) == [1, 2]

    # Back to the first params: export has no run-cache entry (its cache: false
    # output), so DVC runs it rather than restoring it, and it publishes. Training
    # is deterministic, so the re-export of version 1's weights has its fingerprint.
    back = pipeline_repo.dvc("exp", "run", "-S", "epochs=1")
    assert "Running stage 'export'" in back.stdout and "Stage 'export' is cached" not in back.stdout, back.stdout
    assert complete_versions(versions) == [1, 2, 3]
    assert fingerprint(versions / "3") == fingerprint(versions / "1")

    # A model that is not blessed: the stage succeeds, says why and publishes nothing.
    refused = pipeline_repo.dvc("exp", "run", "-S", "evaluate.margin=0.99")
    assert "not blessed" in refused.stdout, refused.stdout
    assert complete_versions(versions) == [1, 2, 3]
    record = yaml.safe_load((pipeline_repo.root / "models/publication.json").read_text())
    assert (record["published"], record["version"]) == (False, None)
