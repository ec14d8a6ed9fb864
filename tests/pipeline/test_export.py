"""The exported SavedModel: signature, raw-unit parity with Keras, warm-up requests, model card, blessing gate.

One small untrained forecaster (pipeline.model on small synthetic windows) is
exported once per module; the tests read that export.
"""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from pipeline import export, schema
from pipeline.model import build_model
from pipeline.published import MODEL_CARD, model_directory
from serving.store import complete_versions, fingerprint, publish
from tests.helpers.exports import BLESSED_METRICS, fake_export
from tests.helpers.repository import REPO_ROOT
from tests.helpers.training import EVALUATE_PARAMS, TINY_MODEL, small_windows

LOOKBACK = 24
# Dropout on: its seed generators hold state variables that tf.saved_model.save must export too.
DROPOUT_MODEL = {**TINY_MODEL, "dropout": 0.2, "recurrent_dropout": 0.1}
HORIZON = 6


@pytest.fixture(scope="module")
def windows():
    return small_windows(days=60, lookback=LOOKBACK, horizon=HORIZON)


@pytest.fixture(scope="module")
def model(windows):
    keras.utils.set_random_seed(0)
    return build_model(windows.normalization, DROPOUT_MODEL)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, model, windows) -> Path:
    directory = tmp_path_factory.mktemp("export") / "export"
    export.write_export(model, windows, {"model_name": "jena_temperature", "metrics": BLESSED_METRICS}, directory)
    return directory


@pytest.fixture(scope="module")
def serving_default(exported):
    return tf.saved_model.load(str(exported)).signatures["serving_default"]


def keras_predictions(model, history, timestamps):
    return model.predict({"history": np.asarray(history), "timestamps": np.asarray(timestamps)}, verbose=0)


def test_saved_model_cli_shows_the_documented_signature(exported):
    cli = Path(sys.executable).parent / "saved_model_cli"
    shown = subprocess.run(
        [str(cli), "show", "--all", "--dir", str(exported)], capture_output=True, text=True, check=True
    ).stdout
    print(shown)
    signature = shown.split("signature_def['serving_default']:")[1].split("signature_def[")[0]
    normalised = " ".join(signature.split())
    assert f"inputs['history'] tensor_info: dtype: DT_FLOAT shape: (-1, {LOOKBACK}, 14)" in normalised
    assert f"inputs['timestamps'] tensor_info: dtype: DT_INT64 shape: (-1, {LOOKBACK})" in normalised
    assert "outputs['temperature_degC'] tensor_info: dtype: DT_FLOAT shape: (-1)" in normalised
    assert f"outputs['temperature_path_degC'] tensor_info: dtype: DT_FLOAT shape: (-1, {HORIZON})" in normalised
    assert f"outputs['temperature_quantiles_degC'] tensor_info: dtype: DT_FLOAT shape: (-1, {HORIZON}, 3)" in normalised
    assert "outputs['quantile_levels'] tensor_info: dtype: DT_FLOAT shape: (-1, 3)" in normalised
    assert "outputs['valid_time'] tensor_info: dtype: DT_INT64 shape: (-1)" in normalised
    assert "Method name is: tensorflow/serving/predict" in normalised


def test_signature_names_dtypes_and_shapes(serving_default):
    _, inputs = serving_default.structured_input_signature
    assert inputs == {
        "history": tf.TensorSpec([None, LOOKBACK, len(schema.MEASUREMENTS)], tf.float32, name="history"),
        "timestamps": tf.TensorSpec([None, LOOKBACK], tf.int64, name="timestamps"),
    }
    outputs = {name: (spec.shape.as_list(), spec.dtype) for name, spec in serving_default.structured_outputs.items()}
    assert outputs == {
        "temperature_degC": ([None], tf.float32),
        "temperature_path_degC": ([None, HORIZON], tf.float32),
        "temperature_quantiles_degC": ([None, HORIZON, 3], tf.float32),
        "quantile_levels": ([None, 3], tf.float32),
        "valid_time": ([None], tf.int64),
    }
    documented = schema.served_signature(LOOKBACK, HORIZON, 3)["outputs"]
    assert outputs == {name: (shape, tf.as_dtype(dtype)) for name, (dtype, shape) in documented.items()}


@pytest.mark.parametrize("batch", [1, 7, None])
def test_predictions_equal_the_keras_models_on_raw_windows(serving_default, model, windows, batch):
    starts = windows.starts["test"][:batch]
    history, timestamps = windows.history(starts)
    answer = serving_default(history=tf.constant(history), timestamps=tf.constant(timestamps))
    quantiles = keras_predictions(model, history, timestamps)
    served = answer["temperature_degC"]
    assert served.shape == (len(starts),) and served.dtype == tf.float32
    np.testing.assert_allclose(served.numpy(), quantiles[:, -1, 1], rtol=0, atol=1e-4)  # the median at +horizon
    np.testing.assert_allclose(answer["temperature_path_degC"].numpy(), quantiles[..., 1], rtol=0, atol=1e-4)
    np.testing.assert_allclose(answer["temperature_quantiles_degC"].numpy(), quantiles, rtol=0, atol=1e-4)
    assert (np.diff(answer["temperature_quantiles_degC"].numpy(), axis=-1) >= 0).all()
    levels = np.tile(np.float32([0.1, 0.5, 0.9]), (len(starts), 1))
    np.testing.assert_array_equal(answer["quantile_levels"].numpy(), levels)
    # valid_time is the last target hour's time: the horizon comes from the model itself
    np.testing.assert_array_equal(answer["valid_time"].numpy(), windows.timestamps[windows.target_rows(starts)[:, -1]])


def read_warmup(exported) -> list:
    records = tf.data.TFRecordDataset(str(exported / export.WARMUP_FILE))
    return [prediction_log_pb2.PredictionLog.FromString(record.numpy()) for record in records]


def test_warmup_requests_are_prediction_logs_that_the_signature_accepts(exported, serving_default, model):
    logs = read_warmup(exported)
    assert 1 <= len(logs) <= 1000
    for log in logs:
        request = log.predict_log.request
        assert (request.model_spec.name, request.model_spec.signature_name) == ("jena_temperature", "serving_default")
        inputs = {name: tf.make_ndarray(proto) for name, proto in request.inputs.items()}
        answer = serving_default(**{name: tf.constant(value) for name, value in inputs.items()})
        np.testing.assert_allclose(
            answer["temperature_quantiles_degC"].numpy(), keras_predictions(model, **inputs), rtol=0, atol=1e-4
        )
        assert set(answer) == set(schema.served_signature(LOOKBACK)["outputs"])
    assert [len(tf.make_ndarray(log.predict_log.request.inputs["history"])) for log in logs] == list(
        export.WARMUP_BATCH_SIZES
    )


def test_warmup_requests_are_real_test_windows(exported, windows):
    request = read_warmup(exported)[-1].predict_log.request
    history = tf.make_ndarray(request.inputs["history"])
    timestamps = tf.make_ndarray(request.inputs["timestamps"])
    test_first, _ = windows.normalization["split_bounds"]["test"]
    assert timestamps.min() >= windows.timestamps[test_first]
    assert not np.isnan(history).any()
    np.testing.assert_array_equal(history[0], windows.history(windows.starts["test"][:1])[0][0])


def test_model_card_tells_what_and_whence(exported, tmp_path):
    raw_csv = tmp_path / "raw.csv"
    raw_csv.write_text("a,b\n1,2\n")
    made_by = {
        "seed": 1,
        "epochs": 2,
        "data": {"source": "synthetic", "synthetic_start": "2009-01-01", "synthetic_end": "2009-03-01"},
        "prepare": {"max_fill_hours": 3},
        "window": {"lookback_hours": LOOKBACK, "horizon_hours": HORIZON},
        "model": DROPOUT_MODEL,
        "train": {"batch_size": 64},
    }
    params = {**made_by, "serving": {"model_name": "jena_temperature"}, "smoke": {"server": "embedded"}}
    card = export.model_card(params, BLESSED_METRICS, raw_csv, LOOKBACK)
    assert card["data"] == {
        "source": "synthetic",
        "origin": "synthetic 2009-01-01 to 2009-03-01",
        "file": str(raw_csv),
        "md5": hashlib.md5(raw_csv.read_bytes()).hexdigest(),
    }
    assert card["params"] == made_by and card["metrics"] == BLESSED_METRICS  # serving and smoke do not make the model
    assert set(card["git"]) == {"commit", "dirty"} and "T" in card["created"]
    assert card["signature"]["inputs"]["history"][1] == [None, LOOKBACK, 14]
    assert card["signature"]["outputs"]["temperature_quantiles_degC"] == ("float32", [None, HORIZON, 3])
    assert card["forecast"] == {"hour_offsets": [1, 2, 3, 4, 5, 6], "quantile_levels": [0.1, 0.5, 0.9]}

    written = json.loads((exported / MODEL_CARD).read_text())
    assert written["fingerprint"] == fingerprint(exported)
    assert written["metrics"] == BLESSED_METRICS


def test_the_model_card_holds_the_training_splits_input_statistics(exported, windows):
    """forecast.drift holds new readings against these: they are the training rows', not the test rows'."""
    statistics = json.loads((exported / MODEL_CARD).read_text())["input_statistics"]
    first, end = windows.normalization["split_bounds"]["train"]
    train = np.asarray(windows.hourly[first:end], dtype=np.float64)
    assert statistics["rows"] == end - first  # the helper's table has no gaps
    assert set(statistics["measurements"]) == set(schema.MEASUREMENTS)
    pressure = statistics["measurements"]["p (mbar)"]
    column = train[:, schema.column_index("p (mbar)")]
    assert pressure["mean"] == pytest.approx(column.mean(), abs=1e-5)
    assert pressure["std"] == pytest.approx(column.std(), abs=1e-5)
    assert pressure["decile_edges"] == pytest.approx(np.quantile(column, np.linspace(0.1, 0.9, 9)), abs=1e-5)
    assert pressure["proportions"] == pytest.approx([0.1] * 10, abs=0.01)  # continuous values: a tenth per bin
    # the training split (the first 30 of the helper's 60 days from 1 January) lies in January only
    assert [month is not None for month in pressure["monthly"]] == [True] + [False] * 11
    assert pressure["longest_constant_hours"] == 1  # noisy pressure never repeats an hour's value


EXPORT_IN_A_NEW_PROCESS = """
import sys
from pathlib import Path
import keras
from pipeline import export
from tests.helpers.training import small_windows
keras.utils.set_random_seed(0)
model = keras.saving.load_model(sys.argv[1])
windows = small_windows(days=60, lookback=24, horizon=6)
print(export.write_export(model, windows, {"model_name": "jena_temperature"}, Path(sys.argv[2]))["fingerprint"])
"""


def test_exporting_the_same_model_again_reproduces_its_fingerprint(model, tmp_path):
    """What keeps an unchanged model from becoming a new version: each export runs in a new process, as the
    stage does (TensorFlow numbers traced functions per process, so an export in a process that traced
    other functions first differs)."""
    model.save(tmp_path / "model.keras")
    fingerprints = []
    for hash_seed in ("1", "2"):
        environment = dict(os.environ, PYTHONHASHSEED=hash_seed, PYTHONPATH=str(REPO_ROOT))
        printed = subprocess.run(
            [sys.executable, "-c", EXPORT_IN_A_NEW_PROCESS, str(tmp_path / "model.keras"), str(tmp_path / hash_seed)],
            env=environment,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        fingerprints.append(printed.split()[-1])
    assert fingerprints[0] == fingerprints[1]


def local_serving(tmp_path) -> dict:
    """params.yaml's serving section for versions under tmp_path/serving/jena_temperature."""
    return {
        "base_path": str(tmp_path / "serving"),
        "model_name": "jena_temperature",
        "keep_versions": 3,
        "config_file": str(REPO_ROOT / "serving/models.config"),
    }


def test_only_a_blessed_model_is_published_and_only_once(exported, tmp_path):
    serving = local_serving(tmp_path)
    versions = tmp_path / "serving/jena_temperature"

    refused = export.publication(
        exported, {**BLESSED_METRICS, "blessed": False, "blessing_reason": "too weak"}, serving, EVALUATE_PARAMS
    )
    assert refused["published"] is False and refused["version"] is None
    assert refused["reason"] == "not blessed: too weak"
    assert complete_versions(versions) == []

    first = export.publication(exported, BLESSED_METRICS, serving, EVALUATE_PARAMS)
    assert (first["published"], first["created"], first["version"]) == (True, True, 1)
    assert first["path"] == str(versions / "1") and first["fingerprint"] == fingerprint(exported)
    assert complete_versions(versions)[-1] == 1

    again = export.publication(exported, BLESSED_METRICS, serving, EVALUATE_PARAMS)
    assert (again["published"], again["created"], again["version"]) == (True, False, 1)
    assert "no new version" in again["reason"]
    assert complete_versions(versions) == [1]


def test_a_model_outrun_by_a_better_publication_is_not_published(exported, tmp_path):
    """Two queued experiments: both blessed against version 1; the better one publishes first."""
    serving = local_serving(tmp_path)
    versions = tmp_path / "serving/jena_temperature"
    publish(fake_export(tmp_path / "version-1", "first", test_mae=2.0), versions, keep_versions=3)
    evaluated_against_version_1 = {
        **BLESSED_METRICS,
        "published_version": 1,
        "test_samples": 100,
        "test_data_fingerprint": "test data",
    }  # 1.9 <= 2.0 + 0.05: blessed
    publish(fake_export(tmp_path / "better", "better", test_mae=1.5), versions, keep_versions=3)

    record = export.publication(exported, evaluated_against_version_1, serving, EVALUATE_PARAMS)
    assert record["published"] is False and record["version"] is None
    assert record["reason"].startswith("no longer blessed against the newest published version: ")
    assert "published version 2's 1.500 C" in record["reason"]
    assert complete_versions(versions) == [1, 2]


def test_the_recheck_never_compares_numbers_from_different_data(exported, tmp_path):
    versions = tmp_path / "jena_temperature"
    publish(fake_export(tmp_path / "v1", "first", test_mae=2.0), versions, keep_versions=3)
    evaluated = {**BLESSED_METRICS, "published_version": 1, "test_samples": 100, "test_data_fingerprint": "ours"}
    # the version evaluate compared against is still the newest: its decision stands
    assert export.still_blessed_at(versions / "1", evaluated, EVALUATE_PARAMS) == (
        True,
        BLESSED_METRICS["blessing_reason"],
    )
    # a version measured on other data has landed since: a worse recorded MAE must not bless, nothing can
    publish(fake_export(tmp_path / "v2", "second", test_mae=9.0, test_data="other data"), versions, keep_versions=3)
    blessed, reason = export.still_blessed_at(versions / "2", evaluated, EVALUATE_PARAMS)
    assert not blessed and "measured on other test data; run the evaluate stage again" in reason
    # everything rolled back: only persistence is left to beat
    assert export.still_blessed_at(None, evaluated, EVALUATE_PARAMS)[0] is True


def test_model_directory_joins_base_path_and_model_name(tmp_path):
    assert model_directory({"base_path": "models/serving", "model_name": "m"}) == Path("models/serving/m")
    assert model_directory({"base_path": str(tmp_path), "model_name": "m"}) == tmp_path / "m"
    assert model_directory({"base_path": "s3://bucket/models/", "model_name": "m"}) == "s3://bucket/models/m"
