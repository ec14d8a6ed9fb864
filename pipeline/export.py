"""Stage 6, export: the trained model as a TensorFlow Serving SavedModel, published if blessed.

In:  models/model.keras, data/windows/ (test-split windows for the warm-up
     requests and the validation), metrics/evaluate.json (metrics and
     blessing), the raw CSV (hashed for the model card) and params `seed`,
     `export.*` (the validation server and how many windows it must answer),
     `serving.*` (`model_name`, `base_path`, `keep_versions`, `config_file`)
     and `evaluate.margin`, `evaluate.tolerance` and `evaluate.coverage_goal`
     (the blessing, checked again at publication).
Out: models/export/, a SavedModel whose `serving_default` signature
     (`schema.served_signature`) takes
       `history`     float32 [batch, lookback_hours, 14], raw hourly
                     measurements in the CSV's units and column order,
       `timestamps`  int64 [batch, lookback_hours], unix seconds of each row,
     and returns `temperature_degC` float32 [batch] (the median at +horizon),
     `temperature_path_degC` float32 [batch, horizon] (the medians of the hours
     +1 .. +horizon), `temperature_quantiles_degC` float32 [batch, horizon,
     quantiles], `quantile_levels` float32 [batch, quantiles] and `valid_time`
     int64 [batch] (the unix seconds of the last hour: last row + horizon), with
       assets.extra/tf_serving_warmup_requests  PredictionLog records of real
                     test-split requests, replayed by the server before it serves,
       assets.extra/model_card.json  params, data source and hash, metrics, git
                     commit, creation time, the model's fingerprint, its
                     forecast (quantile levels and hour offsets) and the
                     training split's `input_statistics` (per measurement
                     mean, std, deciles overall and by month, longest
                     unchanged run: pipeline.input_statistics), against
                     which forecast.drift holds new readings;
     if the model is blessed and a ModelServer serves it right, that
     SavedModel as the next numbered version in
     `<serving.base_path>/<serving.model_name>/`, a local directory, s3://
     or gs:// (serving.store, which documents the publication protocol); and
     models/publication.json, what the publication did and why.

Validate, then publish, as TFX's InfraValidator comes before its Pusher: a
blessed candidate is first served by a ModelServer of `export.validation_server`
from a temporary directory, where it must become AVAILABLE (replaying its
warm-up requests), show the documented signature and answer
`export.validation_windows` test windows, every output equal to the
SavedModel's own (pipeline.serving_check). Only then is it published, so no
watching server ever loads a version nobody has asked a question. A candidate
that fails is not published and the stage fails; a model that is not blessed
is not published and the stage succeeds, saying why.

dvc.yaml declares models/publication.json with `cache: false`, which keeps
this stage out of DVC's run-cache: DVC never restores the outputs without
running the command, so a new model is never left unpublished.
"""

import datetime
import hashlib
import json
import subprocess
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from forecast.client import predict_request
from pipeline import schema
from pipeline.atomic import atomic_directory, write_json
from pipeline.blessing import bless
from pipeline.config import (
    EVALUATE_METRICS,
    EXPORT_DIR,
    MODEL_PATH,
    PUBLICATION_RECORD,
    RAW_CSV,
    WINDOWS_DIR,
    load_params,
    stage_command_line,
)
from pipeline.dataset import Windows, load_windows
from pipeline.input_statistics import measurement_statistics
from pipeline.model import median_position  # importing pipeline.model registers its layers for load_model
from pipeline.published import MODEL_CARD, labelled_versions, model_directory, read_model_card
from pipeline.serving_check import CheckFailure, candidate_directory, check_served_model, served_by
from serving.store import PublicationRefused, StoreError, fingerprint, publish

WARMUP_FILE = Path("assets.extra/tf_serving_warmup_requests")
WARMUP_BATCH_SIZES = (1, 8, 32)


def quantile_levels(model: keras.Model) -> list[float]:
    """The levels of the model's quantiles, ascending."""
    return list(model.get_layer(schema.QUANTILES_OUTPUT).quantiles)


def serving_function(model: keras.Model, lookback: int, horizon: int) -> tf.types.experimental.PolymorphicFunction:
    """The `serving_default` signature (`schema.served_signature`): raw history and timestamps in;
    the +horizon median, the hourly medians and quantiles in degrees Celsius, the quantiles' levels
    and the moment of the last hour out."""
    inputs = schema.served_signature(lookback)["inputs"]
    specs = [tf.TensorSpec(shape, dtype, name=name) for name, (dtype, shape) in inputs.items()]
    levels = quantile_levels(model)
    median = median_position(levels)

    @tf.function(input_signature=specs)
    def serve(history, timestamps):
        inputs = {schema.HISTORY_INPUT: history, schema.TIMESTAMPS_INPUT: timestamps}
        quantiles = model(inputs, training=False)
        batch = tf.shape(history)[:1]
        return {
            schema.TEMPERATURE_OUTPUT: quantiles[:, -1, median],
            schema.PATH_OUTPUT: quantiles[:, :, median],
            schema.QUANTILES_OUTPUT: quantiles,
            schema.QUANTILE_LEVELS_OUTPUT: tf.tile(tf.constant([levels], tf.float32), tf.concat([batch, [1]], 0)),
            schema.VALID_TIME_OUTPUT: timestamps[:, -1] + horizon * 3600,
        }

    return serve


def save_servable(model: keras.Model, lookback: int, horizon: int, directory: Path) -> None:
    """Write the SavedModel. In a fresh process the same weights give the same bytes (but for
    fingerprint.pb's random id), so re-exporting a model reproduces its fingerprint."""
    servable = tf.Module()
    servable.model = model
    # Keras' dropout seed generators hold their state in variables that tf.Module
    # does not find on its own; listing every variable makes the graph's captures tracked.
    servable.model_variables = list(model.variables)
    servable.serve = serving_function(model, lookback, horizon)
    tf.saved_model.save(servable, str(directory), signatures={schema.SIGNATURE_NAME: servable.serve})


def warmup_requests(windows: Windows, model_name: str, batch_sizes=WARMUP_BATCH_SIZES) -> list:
    """One Predict request per batch size, from test-split windows spread over the whole split."""
    test_starts = windows.starts["test"]
    logs = []
    for batch_size in batch_sizes:
        picks = np.linspace(0, len(test_starts) - 1, batch_size).round().astype(np.int64)
        history, timestamps = windows.history(test_starts[picks])
        request = predict_request(model_name, history, timestamps)
        logs.append(prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request)))
    return logs


def write_warmup_requests(path: Path, logs: list) -> None:
    """A TFRecord file of the logs; deterministic serialisation fixes the order of the `inputs` map."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for log in logs:
            writer.write(log.SerializeToString(deterministic=True))


def file_md5(path: Path) -> str:
    """MD5 of a file, as DVC records it in dvc.lock."""
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def git_state() -> dict:
    """The commit checked out and whether tracked files differ from it (as during `dvc exp run -S`)."""

    def git(*args):
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}


def model_card(params: dict, metrics: dict, raw_csv: Path, lookback: int) -> dict:
    """What a served version is and where it came from (the fingerprint is added once exported)."""
    data = params["data"]
    origin = (
        data["url"] if data["source"] == "jena" else f"synthetic {data['synthetic_start']} to {data['synthetic_end']}"
    )
    horizon, levels = params["window"]["horizon_hours"], params["model"]["quantiles"]
    return {
        "model_name": params["serving"]["model_name"],
        "signature": {"name": schema.SIGNATURE_NAME, **schema.served_signature(lookback, horizon, len(levels))},
        # what the outputs' last axes mean: temperature_path_degC[:, i] is hour_offsets[i] hours after
        # the last history row, temperature_quantiles_degC[..., j] the quantile of level quantile_levels[j]
        "forecast": {"hour_offsets": list(range(1, horizon + 1)), "quantile_levels": levels},
        "measurements": schema.MEASUREMENTS,
        "data": {"source": data["source"], "origin": origin, "file": str(raw_csv), "md5": file_md5(raw_csv)},
        # the params that made the model (not serving or smoke settings, which do not change it)
        "params": {
            "seed": params["seed"],
            "epochs": params["epochs"],
            "data": data,
            "prepare": params["prepare"],
            "window": params["window"],
            "model": params["model"],
            "train": params["train"],
        },
        "metrics": metrics,
        "git": git_state(),
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def training_input_statistics(windows: Windows) -> dict:
    """`input_statistics` of the rows of the training split (pipeline.input_statistics)."""
    first, end = windows.normalization["split_bounds"]["train"]
    return measurement_statistics(windows.hourly[first:end], windows.timestamps[first:end])


def write_export(model: keras.Model, windows: Windows, card: dict, directory: Path = EXPORT_DIR) -> dict:
    """SavedModel, warm-up requests and model card (with the training split's input statistics) into
    `directory`, atomically; returns the card."""
    with atomic_directory(directory) as temporary:
        save_servable(model, windows.lookback, windows.horizon, temporary)
        write_warmup_requests(temporary / WARMUP_FILE, warmup_requests(windows, card["model_name"]))
        card = {**card, "input_statistics": training_input_statistics(windows), "fingerprint": fingerprint(temporary)}
        write_json(temporary / MODEL_CARD, card)
    return card


def still_blessed_at(newest: Path | None, metrics: dict, evaluate: dict) -> tuple[bool, str]:
    """The blessing again, under the publication lock, against the version newest now.

    Evaluate compared the model with `metrics["published_version"]` on the same
    test samples. If another version has landed since, its recorded test MAE
    counts only when its model card shows the same test data (and, without its
    per-sample errors, the difference itself is judged, with no interval);
    otherwise nothing honest can be said without evaluating again, and the
    model is refused.
    """
    if newest is None:
        return bless(metrics, None, evaluate)
    version = int(newest.name)
    if version == metrics.get("published_version"):
        return metrics["blessed"], metrics["blessing_reason"]
    card = read_model_card(newest).get("metrics", {})
    if card.get("test_data_fingerprint") != metrics.get("test_data_fingerprint"):
        return False, (
            f"version {version} was published after this model was evaluated, measured on other "
            f"test data; run the evaluate stage again"
        )
    same_data = {
        "version": version,
        "mae_degC": float(card["test_mae_degC"]),
        "model_mae_degC": metrics["test_mae_degC"],
        "samples": metrics["test_samples"],
    }
    return bless(metrics, same_data, evaluate)


def validate_candidate(saved_model: Path, windows: Windows, model_name: str, export_params: dict) -> dict:
    """Serve the candidate from a temporary directory with the `export.validation_server` kind and check
    that it answers `export.validation_windows` test windows as its SavedModel does; the figures, or
    `CheckFailure`."""
    test_starts = windows.starts["test"]
    picks = np.unique(
        np.linspace(0, len(test_starts) - 1, export_params["validation_windows"]).round().astype(np.int64)
    )
    with candidate_directory(saved_model, model_name, 1) as directory:
        with served_by(export_params["validation_server"], model_name, directory) as (target, rest_target, process):
            figures = check_served_model(
                target,
                rest_target,
                model_name,
                1,
                saved_model,
                windows,
                test_starts[picks],
                timeout_seconds=export_params["validation_timeout_seconds"],
                purpose="export",
                process=process,
            )
    return {
        "server": export_params["validation_server"],
        **{
            key: figures[key]
            for key in ("windows_checked", "requests_sent", "max_abs_difference_degC", "latency_p50_ms", "rest_checked")
        },
    }


def publication(saved_model: Path, metrics: dict, serving: dict, evaluate: dict) -> dict:
    """Publish a blessed export into the watched directory; say what happened, or why nothing did.

    The blessing is checked again against the version that is newest when the
    model is published, which may have landed after the model was evaluated.
    """
    record = {"fingerprint": fingerprint(saved_model), "test_mae_degC": metrics["test_mae_degC"]}
    not_published = {**record, "published": False, "version": None, "path": None}
    if not metrics["blessed"]:
        return {**not_published, "reason": f"not blessed: {metrics['blessing_reason']}"}

    protected = labelled_versions(Path(serving["config_file"]), serving["model_name"])
    try:
        result = publish(
            saved_model,
            model_directory(serving),
            serving["keep_versions"],
            protected,
            lambda newest: still_blessed_at(newest, metrics, evaluate),
        )
    except PublicationRefused as refusal:
        return {**not_published, "reason": f"no longer blessed against the newest published version: {refusal}"}
    reason = (
        f"published as version {result.version}"
        if result.created
        else f"identical to version {result.version}, already the newest; no new version"
    )
    return {**record, **result.as_dict(), "published": True, "reason": reason}


def main() -> None:
    params = load_params()
    for needed, stage in ((MODEL_PATH, "train"), (EVALUATE_METRICS, "evaluate")):
        if not needed.exists():
            raise SystemExit(f"export: {needed} not found; run `dvc repro {stage}` first")
    metrics = json.loads(EVALUATE_METRICS.read_text(encoding="utf-8"))
    keras.utils.set_random_seed(params["seed"])  # the model's seed-generator state is exported too
    model = keras.saving.load_model(MODEL_PATH, compile=False)
    windows = load_windows(WINDOWS_DIR)

    card = write_export(model, windows, model_card(params, metrics, RAW_CSV, windows.lookback), EXPORT_DIR)
    validation = None
    if metrics["blessed"]:
        try:
            validation = validate_candidate(EXPORT_DIR, windows, params["serving"]["model_name"], params["export"])
        except CheckFailure as failure:
            reason = f"the candidate failed validation in a ModelServer: {failure}"
            write_json(
                PUBLICATION_RECORD,
                {
                    "fingerprint": card["fingerprint"],
                    "test_mae_degC": metrics["test_mae_degC"],
                    "published": False,
                    "version": None,
                    "path": None,
                    "reason": reason,
                },
            )
            raise SystemExit(f"export: not published: {reason}") from None
    try:
        record = publication(EXPORT_DIR, metrics, params["serving"], params["evaluate"])
    except (StoreError, ValueError, OSError) as error:
        raise SystemExit(f"export: not published: {error}") from None
    record["validation"] = validation
    write_json(PUBLICATION_RECORD, record)
    print(
        f"export: {EXPORT_DIR}/ fingerprint {card['fingerprint'][:12]}, test MAE {metrics['test_mae_degC']:.3f} C; "
        f"{record['reason']}" + (f" ({record['path']})" if record["published"] else "")
    )


if __name__ == "__main__":
    stage_command_line(__doc__, __spec__.name)
    main()
