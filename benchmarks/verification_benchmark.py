"""What forecasts of record cost: issuing, archiving and verifying them, on a full-size replay.

    python benchmarks/verification_benchmark.py [--months 14] [--issue-days 60] [--epochs 1] [--model DIR]
                                                [--s3-hours 240 | --no-s3]

In:  the full-size synthetic record (2009-2016, pipeline.synthetic with params.yaml's seed), prepared and
     windowed with params.yaml; a model: --model (an exported version, e.g. the pipeline's models/export) or
     params.yaml's architecture trained here for --epochs epochs, exported by pipeline.export (its model card
     with input_statistics) and published as version 1 for our ModelServer on 127.0.0.1. Offline.
Out: printed figures (a table at the end):
  1. Issue into a local archive: a forecast at every hour of the test split's first --issue-days days through
     forecast.issue's path (the readings that had arrived by that hour, its window prepared, GetModelMetadata
     and Predict over gRPC, the rows appended with forecast.archive.append): per forecast the median and p95
     of the whole issue, of preparing the window, of the two server calls and of the archive write.
  2. The archive filled to --months months of hourly forecasts (at least 10,000 for 14): the served model's
     answers to batched Predict requests for the other hours, each appended with forecast.archive.append;
     the append's median and p95 over all of them, as the archive grows.
  3. Verify: `wetterfrosch-verify` (forecast.verify.main, JSON summary) on the whole archive as of the day
     after its last forecast, and per 10,000 archived forecasts; forecast.archive.read alone; archive bytes
     per forecast.
  4. S3 (moto's server on 127.0.0.1): --s3-hours hours issued through the same path into an s3:// archive;
     the local archive copied there and verified from it.
About 5.5 minutes on 2 cores with the defaults (almost half of it the S3 part; --no-s3 skips it).
"""

import argparse
import contextlib
import io
import json
import os
import shutil
import sys
import tempfile
import time
import unittest.mock
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

from forecast import archive, issue, verify  # noqa: E402
from forecast.client import Forecast, ForecastError, GrpcForecaster, read_model_card  # noqa: E402
from pipeline import schema, synthetic  # noqa: E402
from pipeline.dataset import Windows  # noqa: E402
from pipeline.prepare import prepare  # noqa: E402
from pipeline.serving_check import served_by, wait_until_available  # noqa: E402
from pipeline.window import make_windows  # noqa: E402
from serving.store import publish  # noqa: E402
from tests.helpers.object_storage import S3Server  # noqa: E402

HOUR = pd.Timedelta(hours=1)
BATCH = 256  # windows per Predict request when filling the archive
BUCKET = "wetterfrosch-benchmark"
MODEL_NAME = "jena_temperature"


class TimedForecaster:
    """A forecaster whose server calls (GetModelMetadata, Predict) add their time to `seconds`."""

    def __init__(self, forecaster):
        self.inner, self.seconds = forecaster, 0.0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def _timed(self, call, *args, **kwargs):
        started = time.perf_counter()
        try:
            return call(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - started

    def served_model(self, *args, **kwargs):
        return self._timed(self.inner.served_model, *args, **kwargs)

    def predict(self, *args, **kwargs):
        return self._timed(self.inner.predict, *args, **kwargs)


def record_and_windows(params: dict) -> tuple[pd.DataFrame, pd.DataFrame, Windows]:
    """The full-size synthetic readings, their hourly table and the window stage's output (params.yaml's)."""
    data = params["data"]
    readings = synthetic.generate_readings(data["synthetic_start"], data["synthetic_end"], seed=params["seed"])
    hourly, _ = prepare(readings, params["prepare"]["max_fill_hours"])
    made = make_windows(hourly.reset_index(), params["window"])
    return readings, hourly, Windows(made["hourly"], made["timestamps"], made["starts"], made["normalization"])


def trained_export(params: dict, windows: Windows, readings: pd.DataFrame, epochs: int, directory: Path) -> Path:
    """params.yaml's model trained for `epochs` epochs, evaluated and exported as the stages do."""
    from pipeline import evaluate, export
    from pipeline.train import train

    params = {**params, "epochs": epochs}
    started = time.perf_counter()
    model, _ = train(windows, params, verbose=0)
    levels = export.quantile_levels(model)
    result = evaluate.forecasts(model, windows, params["evaluate"]["climatology_window_days"], levels)
    metrics = evaluate.judged_metrics(result, levels, None, params["evaluate"], params["seed"])
    raw_csv = directory / "jena_climate_2009_2016.csv"
    synthetic.write_jena_csv(readings, raw_csv)
    card = export.model_card(params, metrics, raw_csv, windows.lookback)
    export.write_export(model, windows, card, directory / "export")
    print(
        f"model: {params['model']['cell']} x {params['model']['units']}, {epochs} epoch(s), trained and exported in "
        f"{time.perf_counter() - started:.0f} s; test MAE {metrics['test_mae_degC']:.3f} C"
    )
    return directory / "export"


def arrived(readings: pd.DataFrame, times: np.ndarray, moment: pd.Timestamp) -> pd.DataFrame:
    """The readings up to and including `moment`: what had arrived by then."""
    return readings.iloc[: np.searchsorted(times, moment.tz_localize(None).to_datetime64(), side="right")]


def issue_hours(forecaster, readings: pd.DataFrame, card, card_path: str, root, moments) -> dict:
    """forecast.issue's path at each of `moments`: per forecast the seconds of the whole issue, of preparing the
    window, of the server calls and of the archive write, and what became of each hour."""
    timed = TimedForecaster(forecaster)
    times = readings[schema.DATE_COLUMN].to_numpy()
    found = {"issue": [], "window": [], "server": [], "write": [], "archived": 0, "already": 0, "refused": 0}
    for moment in moments:
        so_far = arrived(readings, times, moment)
        timed.seconds = 0.0
        started = time.perf_counter()
        try:
            answer = issue.ask(timed, so_far, card)
        except ForecastError:  # a gap in the window: the scheduler's run fails, the next hour's issues
            found["refused"] += 1
            continue
        asked = time.perf_counter()
        written = archive.append(root, issue.rows_of(*answer, card, card_path))
        done = time.perf_counter()
        found["archived" if written else "already"] += 1
        found["issue"].append(done - started)
        found["window"].append(asked - started - timed.seconds)
        found["server"].append(timed.seconds)
        found["write"].append(done - asked)
    return found


def fill_archive(forecaster, hourly: pd.DataFrame, lookback: int, levels, root, moments) -> list[float]:
    """The served model's answers for `moments` (batched Predict requests on the prepared record's windows),
    each appended to the archive; the seconds of each append. Hours without a complete history are skipped."""
    values = hourly[schema.MEASUREMENTS].to_numpy(np.float32)
    stamps = hourly.index.to_numpy("datetime64[s]").astype(np.int64)
    rows = hourly.index.get_indexer(pd.DatetimeIndex(moments).tz_localize(None))
    history_rows = rows[:, None] + np.arange(1 - lookback, 1)
    complete = (rows >= lookback - 1) & ~np.isnan(values[np.clip(history_rows, 0, None)]).any(axis=(1, 2))
    rows, history_rows = rows[complete], history_rows[complete]
    writes = []
    for first in range(0, len(rows), BATCH):
        batch = history_rows[first : first + BATCH]
        answer = forecaster.predict(values[batch], stamps[batch], version=1)
        asked = pd.Timestamp.now(tz="UTC")
        for index in range(len(batch)):
            one = Forecast(
                answer.temperatures_degC[index : index + 1],
                answer.valid_times[index : index + 1],
                answer.model_name,
                answer.version,
                answer.paths[index : index + 1],
                answer.quantiles[index : index + 1],
                answer.levels[index : index + 1],
            )
            issued = pd.Timestamp(int(stamps[batch[index, -1]]), unit="s", tz="UTC")
            started = time.perf_counter()
            archive.append(root, archive.forecast_rows(one, issued, asked, levels))
            writes.append(time.perf_counter() - started)
    return writes


def verified(root, readings_csv: Path, models: Path, now: pd.Timestamp, out: Path) -> dict:
    """forecast.archive.read alone, then wetterfrosch-verify, on the archive at `root`: their seconds, verify's exit
    code and the first line it printed."""
    started = time.perf_counter()
    archive.read(root)
    read_seconds = time.perf_counter() - started
    printed = io.StringIO()
    started = time.perf_counter()
    with contextlib.redirect_stdout(printed):
        code = verify.main(
            ["--archive", str(root), "--readings", str(readings_csv), "--model-base-path", str(models)]
            + ["--model-name", MODEL_NAME, "--now", now.isoformat(), "--params", str(ROOT / "params.yaml")]
            + ["--json", str(out)]
        )
    verify_seconds = time.perf_counter() - started
    return {"read_seconds": read_seconds, "verify_seconds": verify_seconds, "code": code, "line": printed.getvalue()}


@contextlib.contextmanager
def moto_s3():
    """moto's S3 server on 127.0.0.1 with a bucket, this process's clients pointed at it by the standard variables."""
    server = S3Server().start()
    try:
        with unittest.mock.patch.dict(os.environ, server.environment):
            server.create_bucket(BUCKET)
            yield
    finally:
        server.close()


@contextlib.contextmanager
def served(models: Path):
    """Our ModelServer on 127.0.0.1 serving version 1 from `models`, and a gRPC forecaster asking it."""
    with served_by("embedded", MODEL_NAME, models / MODEL_NAME) as (target, _, server):
        with grpc.insecure_channel(target) as channel:
            wait_until_available(channel, MODEL_NAME, 1, 120, server)
        forecaster = GrpcForecaster(target, MODEL_NAME, timeout=30)
        try:
            yield forecaster
        finally:
            forecaster.close()


def readings_csv(readings: pd.DataFrame, start: pd.Timestamp, now: pd.Timestamp, directory: Path) -> Path:
    """The readings from 40 days before `start` (the drift statistics' month) to a little after `now`, as the
    station's CSV."""
    times = readings[schema.DATE_COLUMN]
    begin, end = (moment.tz_localize(None) for moment in (start - pd.Timedelta(days=40), now + 6 * HOUR))
    path = directory / "readings.csv"
    synthetic.write_jena_csv(readings[(times > begin) & (times <= end)], path)
    return path


def copy_to_s3(local: Path, url: str) -> float:
    """Copy the local archive's files to `url` (one PUT each, as the client batches them); the seconds taken."""
    from serving.store.client import file_system

    started = time.perf_counter()
    file_system("s3").put(str(local), url.removeprefix("s3://"), recursive=True)
    return time.perf_counter() - started


def archive_bytes(root: Path) -> tuple[int, int]:
    """(files, bytes) of a local archive."""
    sizes = [path.stat().st_size for path in root.rglob("*.parquet")]
    return len(sizes), sum(sizes)


def milliseconds(seconds: list[float]) -> str:
    """Median / p95 in milliseconds."""
    if not seconds:
        return "-"
    return f"{np.median(seconds) * 1000:.1f} / {np.percentile(seconds, 95) * 1000:.1f} ms"


FIGURES = [
    ("forecasts issued through the path", lambda part: f"{len(part['issue']):,}"),
    ("issue per forecast, median / p95", lambda part: milliseconds(part["issue"])),
    ("  preparing the window", lambda part: milliseconds(part["window"])),
    ("  server: GetModelMetadata + Predict", lambda part: milliseconds(part["server"])),
    ("  archive write (rows + append)", lambda part: milliseconds(part["write"])),
    ("append, all forecasts as the archive grows", lambda part: milliseconds(part.get("appends", []))),
    ("archive.read, whole archive", lambda part: f"{part['read_seconds']:.1f} s"),
    ("wetterfrosch-verify, whole archive", lambda part: f"{part['verify_seconds']:.1f} s"),
    ("  per 10,000 forecasts", lambda part: f"{part['verify_seconds'] * 10_000 / part['forecasts']:.1f} s"),
]


def report(local: dict, s3: dict | None, forecasts: int, total_bytes: int) -> None:
    """The table of figures, a column per store."""
    columns = [("local directory", local)] + ([("S3 (moto, loopback)", s3)] if s3 else [])
    width = max(len(label) for label, _ in FIGURES)
    print(f"{'':{width}}  " + "  ".join(f"{name:>24}" for name, _ in columns))
    for label, figure in FIGURES:
        print(f"{label:{width}}  " + "  ".join(f"{figure(part):>24}" for _, part in columns))
    print(
        f"archive: {forecasts:,} forecasts, {total_bytes / 1e6:.1f} MB, {total_bytes / forecasts:,.0f} B per forecast"
    )


def window_params_of(export: Path) -> dict:
    """The window params an exported version was made with (its model card's)."""
    card = export / schema.MODEL_CARD_FILE
    try:
        return json.loads(card.read_text(encoding="utf-8"))["params"]["window"]
    except (OSError, ValueError, KeyError) as error:
        raise SystemExit(f"--model {export}: no model card with params.window at {card} ({error!r})") from None


def replay(args, params: dict, work: Path) -> None:
    """The four parts (module docstring), printing as they go, then the table."""
    readings, hourly, windows = record_and_windows(params)
    data = params["data"]
    print(f"record: synthetic {data['synthetic_start']} to {data['synthetic_end']}, {len(readings):,} readings")
    export = Path(args.model) if args.model else trained_export(params, windows, readings, args.epochs, work)
    models = work / "models"
    publish(export, models / MODEL_NAME, keep_versions=1)
    version_dir = models / MODEL_NAME / "1"
    card = read_model_card(str(version_dir))
    first = windows.normalization["split_bounds"]["test"][0] + windows.lookback - 1
    start = pd.Timestamp(int(windows.timestamps[first]), unit="s", tz="UTC")
    hours = pd.date_range(start, periods=int(args.months * 365.25 / 12 * 24), freq="h")
    through_path, local_root, s3 = hours[: args.issue_days * 24], work / "archive", None
    with served(models) as forecaster:
        phase = time.perf_counter()
        local = issue_hours(forecaster, readings, card, str(version_dir), local_root, through_path)
        print(
            f"issued {len(through_path):,} hours through forecast.issue's path in {time.perf_counter() - phase:.0f} s: "
            f"{local['archived']:,} archived, {local['already']} already archived, {local['refused']} refused "
            "(a gap in the window)"
        )
        phase = time.perf_counter()
        rest = hours[len(through_path) :]
        filled = fill_archive(forecaster, hourly, windows.lookback, card.quantile_levels, local_root, rest)
        local["appends"] = local["write"] + filled
        print(f"archived {len(filled):,} more forecasts in {time.perf_counter() - phase:.0f} s")
        if not args.no_s3:
            phase = time.perf_counter()
            issued = through_path[: args.s3_hours]
            s3 = issue_hours(forecaster, readings, card, str(version_dir), f"s3://{BUCKET}/issued", issued)
            print(f"issued {len(issued)} hours into S3 in {time.perf_counter() - phase:.0f} s")
    now = hours[-1] + 24 * HOUR
    csv = readings_csv(readings, start, now, work)
    forecasts, total_bytes = archive_bytes(local_root)
    local.update(verified(local_root, csv, models, now, work / "local.json"), forecasts=forecasts)
    print(f"verify, local archive: exit {local['code']}: {local['line'].splitlines()[0]}")
    if s3 is not None:
        print(f"copied the local archive to S3 in {copy_to_s3(local_root, f's3://{BUCKET}/archive'):.0f} s")
        s3.update(verified(f"s3://{BUCKET}/archive", csv, models, now, work / "s3.json"), forecasts=forecasts)
        print(f"verify, S3 archive: exit {s3['code']}: {s3['line'].splitlines()[0]}")
    report(local, s3, forecasts, total_bytes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--months", type=float, default=14, help="hourly forecasts archived (default: 14 months)")
    parser.add_argument("--issue-days", type=int, default=60, help="days issued through forecast.issue's path")
    parser.add_argument("--epochs", type=int, default=1, help="epochs of the model trained here (default: 1)")
    parser.add_argument("--model", help="an exported version to serve instead (e.g. models/export)")
    parser.add_argument("--s3-hours", type=int, default=240, help="hours issued into S3 through the path")
    parser.add_argument("--no-s3", action="store_true", help="skip the S3 part")
    args = parser.parse_args()
    started = time.perf_counter()
    params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    params["data"]["source"] = "synthetic"
    if args.model:
        params["window"] = window_params_of(Path(args.model))
    work = Path(tempfile.mkdtemp(prefix="verification-benchmark-"))
    try:
        with moto_s3() if not args.no_s3 else contextlib.nullcontext():
            replay(args, params, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"took {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
