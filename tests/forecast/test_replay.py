"""The loop closed on a replay: a model made by the pipeline's own stages is served by our ModelServer, a forecast
is issued every simulated hour of 60 days of its test split, and verification scores them as the evaluate stage
scored the same hours.

The record is pipeline.synthetic's, January 2009 to August 2010 (the test split, the last quarter, lies in months
the training split holds). prepare, window, train (one epoch of a small model), evaluate and export run as the
stages run them (their functions, in this process); the blessing is set to pass whatever the model's skill (it has
tests of its own), and the export is published as version 1 into the directory the server watches. Time is
simulated: at each hour the issue step (forecast.issue.issue, over gRPC, what `wetterfrosch-issue` runs) sees the
readings up to that hour, as if they had just arrived. forecast.verify then runs as of the day after the last issue,
on the readings so far and the repository's params.yaml.
"""

import contextlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pandas as pd
import pytest
import yaml

from forecast import archive, issue, verify
from forecast.client import GrpcForecaster, read_model_card
from pipeline import evaluate, export, schema, synthetic
from pipeline.dataset import Windows
from pipeline.prepare import prepare
from pipeline.serving_check import free_port, server_command, started_server, wait_until_available
from pipeline.train import train
from pipeline.window import make_windows

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL_NAME = "jena_temperature"
DAYS = 60
HOURS = DAYS * 24
HOUR = pd.Timedelta(hours=1)
# params.yaml with a record, a model and a training run small enough for a test
SMALL = {
    "seed": 42,
    "epochs": 1,
    "data": {"source": "synthetic", "synthetic_start": "2009-01-01", "synthetic_end": "2010-09-01"},
    "window": {"lookback_hours": 24, "horizon_hours": 24},
    "model": {"units": 8, "dropout": 0.0},
    "train": {"batch_size": 1024, "schedule": "constant", "learning_rate": 0.01},
    "evaluate": {"margin": -1.0, "tolerance": 100.0, "coverage_goal": [0.0, 1.0]},  # blessed whatever its skill
}


def small_params(serving_base: Path) -> dict:
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text(encoding="utf-8"))
    for section, values in SMALL.items():
        params[section] = {**params[section], **values} if isinstance(values, dict) else values
    params["serving"] = {
        **params["serving"],
        "base_path": str(serving_base),
        "config_file": str(REPO_ROOT / "serving/models.config"),
    }
    return params


@dataclass
class Pipeline:
    """What the stages made: the record, its windows, the model and the published version's directory."""

    readings: pd.DataFrame
    windows: Windows
    model: object
    params: dict
    version_dir: Path


def run_stages(directory: Path, params: dict) -> Pipeline:
    """download (synthetic), prepare, window, train, evaluate and export as the stages do, and publish."""
    data = params["data"]
    readings = synthetic.generate_readings(data["synthetic_start"], data["synthetic_end"], seed=params["seed"])
    raw_csv = directory / "jena_climate_2009_2016.csv"
    synthetic.write_jena_csv(readings, raw_csv)
    hourly, _ = prepare(readings, params["prepare"]["max_fill_hours"])
    made = make_windows(hourly.reset_index(), params["window"])
    windows = Windows(made["hourly"], made["timestamps"], made["starts"], made["normalization"])
    model, _ = train(windows, params, verbose=0)
    levels = export.quantile_levels(model)
    result = evaluate.forecasts(model, windows, params["evaluate"]["climatology_window_days"], levels)
    metrics = evaluate.judged_metrics(result, levels, None, params["evaluate"], params["seed"])
    metrics["test_data_fingerprint"] = evaluate.test_data_fingerprint(windows)
    card = export.model_card(params, metrics, raw_csv, windows.lookback)
    export.write_export(model, windows, card, directory / "export")
    record = export.publication(directory / "export", metrics, params["serving"], params["evaluate"])
    assert record["published"] and record["version"] == 1, record
    return Pipeline(readings, windows, model, params, Path(record["path"]))


def replay_starts(windows: Windows, readings: pd.DataFrame, hours: int) -> np.ndarray:
    """The first `hours` consecutive test samples whose last history hour has readings of its own. (An hour the
    record fills by interpolation has none: issued from the readings so far, its forecast starts an hour earlier.)"""
    starts = windows.starts["test"]
    issue_hours = windows.timestamps[starts + windows.lookback - 1]
    read = readings[schema.DATE_COLUMN].dt.ceil("h").to_numpy("datetime64[s]").astype(np.int64)
    bad = np.concatenate([[0], np.cumsum(~np.isin(issue_hours, read))])
    breaks = np.concatenate([[0, 0], np.cumsum(np.diff(starts) != 1)])
    for first in range(len(starts) - hours + 1):
        last = first + hours
        if bad[last] == bad[first] and breaks[last] == breaks[first + 1]:
            return starts[first:last]
    raise AssertionError(f"no {hours} consecutive test samples with readings at every issue hour")


@dataclass
class Replay:
    """What the replay did: the hours it issued at, the paths `issue` returned, the files afterwards, what issuing
    three hours again returned, and `wetterfrosch-issue` run again on the last hour."""

    pipeline: Pipeline
    starts: np.ndarray
    issue_times: pd.DatetimeIndex
    root: Path
    written: list
    files_after_replay: list
    reissued: list
    cli_reissue: tuple[int, str, str]  # wetterfrosch-issue's exit code, stdout and stderr
    bytes_before: bytes
    bytes_after: bytes


def arrived(readings: pd.DataFrame, moment: pd.Timestamp) -> pd.DataFrame:
    """The readings up to and including `moment` (naive, the readings' clock): what had arrived by then."""
    times = readings[schema.DATE_COLUMN].to_numpy()
    return readings.iloc[: np.searchsorted(times, moment.tz_localize(None).to_datetime64(), side="right")]


def archived_files(root: Path) -> list[str]:
    return sorted(path.relative_to(root).as_posix() for path in root.rglob("*.parquet"))


@pytest.fixture(scope="module")
def replay(tmp_path_factory) -> Replay:
    """The stages' model served by a ModelServer (started first: it loads version 1 once it is published), and a
    forecast issued at every hour of 60 days of the test split, then three of those hours issued again."""
    directory = tmp_path_factory.mktemp("replay")
    models = directory / "models"
    (models / MODEL_NAME).mkdir(parents=True)
    grpc_port, rest_port = free_port(), free_port()
    target = f"127.0.0.1:{grpc_port}"
    with started_server(server_command("embedded", grpc_port, rest_port, MODEL_NAME, models / MODEL_NAME)) as server:
        pipeline = run_stages(directory, small_params(models))
        with grpc.insecure_channel(target) as channel:
            wait_until_available(channel, MODEL_NAME, 1, 120, server)
        windows, readings = pipeline.windows, pipeline.readings
        starts = replay_starts(windows, readings, HOURS)
        issue_times = pd.to_datetime(windows.timestamps[starts + windows.lookback - 1], unit="s", utc=True)
        card = read_model_card(str(pipeline.version_dir))
        root = directory / "archive"
        forecaster = GrpcForecaster(target, MODEL_NAME, timeout=10)
        try:
            written = [
                issue.issue(forecaster, arrived(readings, moment), card, root, card_path=str(pipeline.version_dir))[1]
                for moment in issue_times
            ]
            files_after_replay = archived_files(root)
            first_file = written[0]
            bytes_before = Path(first_file).read_bytes()
            # the scheduler runs again before new readings arrive, and ten minutes into the next hour: that
            # hour's forecast (from its first reading) is archived already
            reissued = [
                issue.issue(forecaster, arrived(readings, moment), card, root)[1]
                for moment in (issue_times[0], issue_times[HOURS // 2], issue_times[0] + 10 * pd.Timedelta(minutes=1))
            ]
        finally:
            forecaster.close()
        csv = directory / "recent.csv"
        so_far = arrived(readings, issue_times[-1])
        synthetic.write_jena_csv(so_far.iloc[-3 * 24 * 6 :], csv)  # the last three days
        printed, complaints = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(complaints):
            code = issue.main(
                [str(csv), "--target", target, "--model-card", str(pipeline.version_dir), "--archive", str(root)]
            )
        cli_reissue = (code, printed.getvalue(), complaints.getvalue())
    return Replay(
        pipeline,
        starts,
        issue_times,
        root,
        written,
        files_after_replay,
        reissued,
        cli_reissue,
        bytes_before,
        Path(first_file).read_bytes(),
    )


@pytest.mark.slow
def test_every_simulated_hour_is_archived_once_and_an_hour_issued_again_changes_nothing(replay):
    assert len(replay.issue_times) == HOURS and (np.diff(replay.issue_times) == np.timedelta64(1, "h")).all()
    assert all(path is not None for path in replay.written) and len(set(replay.written)) == HOURS
    assert len(replay.files_after_replay) == HOURS
    assert replay.reissued == [None, None, None]
    code, out, err = replay.cli_reissue
    assert (code, err) == (0, "")
    assert out == (
        f"already archived: {MODEL_NAME} version 1 issued {replay.issue_times[-1]:%Y-%m-%d %H:%M} UTC "
        f"({replay.written[-1]})\n"
    )
    assert archived_files(replay.root) == replay.files_after_replay
    assert replay.bytes_after == replay.bytes_before

    forecasts = archive.read(replay.root, model_name=MODEL_NAME)
    assert len(forecasts) == HOURS * 24
    keys = forecasts[["issue_time", "model_version"]].drop_duplicates()
    assert len(keys) == HOURS and (keys["model_version"] == 1).all()
    assert (pd.DatetimeIndex(keys["issue_time"]) == replay.issue_times.as_unit("s")).all()
    assert (forecasts["valid_time"] == forecasts["issue_time"] + forecasts["hours_ahead"].astype(int) * HOUR).all()


@pytest.mark.slow
def test_the_verified_day_ahead_mae_is_the_evaluate_stages_on_the_same_hours(replay, tmp_path, capsys):
    pipeline, windows = replay.pipeline, replay.pipeline.windows
    now = replay.issue_times[-1] + 24 * HOUR  # the last forecast's last hour has just been observed
    readings = arrived(pipeline.readings, now + 6 * HOUR)  # the readings so far, a little later
    csv = tmp_path / "readings.csv"
    synthetic.write_jena_csv(readings[readings[schema.DATE_COLUMN] > pd.Timestamp("2010-01-01")], csv)
    code = verify.main(
        ["--archive", str(replay.root), "--readings", str(csv), "--model-name", MODEL_NAME]
        + ["--model-base-path", str(replay.pipeline.version_dir.parents[1]), "--now", now.isoformat()]
        + ["--params", str(REPO_ROOT / "params.yaml"), "--json", str(tmp_path / "verification.json")]
    )
    printed = capsys.readouterr()
    assert code == 0, printed.err
    summary = json.loads((tmp_path / "verification.json").read_text())
    assert summary["drift"]["alarms"] == [] and printed.err == ""
    assert summary["archive"]["forecasts"] == HOURS and summary["matured_forecast_hours"] == HOURS * 24

    # evaluate's figures on the same samples: the windows whose last history hours are the issue hours
    same_hours = Windows(windows.hourly, windows.timestamps, {"test": replay.starts}, windows.normalization)
    levels = export.quantile_levels(pipeline.model)
    result = evaluate.forecasts(
        pipeline.model, same_hours, pipeline.params["evaluate"]["climatology_window_days"], levels
    )
    expected = evaluate.evaluation_metrics(
        result["observed"],
        result["predicted"],
        result["persistence"],
        result["climatology"],
        paths={"observed": result["observed_paths"], "quantiles": result["quantiles"], "levels": levels},
    )
    scored = {(row["window"], row["hours_ahead"]): row for row in summary["scores"] if row["model_version"] == 1}
    day_ahead, overall = scored[("all", "24")], scored[("all", "all")]
    assert day_ahead["hours"] == HOURS and overall["hours"] == HOURS * 24
    assert day_ahead["mae_degC"] == pytest.approx(expected["test_mae_degC"], abs=1e-3)
    assert scored[("all", "1")]["mae_degC"] == pytest.approx(expected["test_mae_1h_degC"], abs=1e-3)
    assert overall["mae_degC"] == pytest.approx(expected["test_mae_all_hours_degC"], abs=1e-3)
    assert overall["pinball_loss_degC"] == pytest.approx(expected["mean_pinball_loss_degC"], abs=1e-3)
    assert overall["coverage"] == pytest.approx(expected["band_coverage"], abs=2 / (HOURS * 24))
    assert summary["blessing"]["1"]["test_mae_degC"] == pytest.approx(
        json.loads((pipeline.version_dir / schema.MODEL_CARD_FILE).read_text())["metrics"]["test_mae_degC"]
    )
