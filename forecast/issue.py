"""Issue a forecast of record: ask the served model for the hours ahead and archive its answer.

    python -m forecast.issue recent.csv --archive ROOT --model-name jena_temperature
        [--target localhost:8500] [--rest] [--version N | --label stable]
        [--model-card VERSION_DIR] [--max-fill-hours H]
        [--tls] [--tls-ca ca.pem] [--tls-cert client.pem --tls-key client.key]
        [--timeout SECONDS] [--attempts N]

In:  the newest readings (a Jena-format CSV, read as forecast.client reads
     it), a served model (TensorFlow Serving or our ModelServer, gRPC or REST),
     an archive root: a local directory, s3://bucket/prefix or gs://bucket/prefix.
Out: the forecast from the readings' last complete hour appended to the
     archive (forecast.archive: issue time, model, version, every hour's valid
     time, median and quantiles), and one line on stdout saying what was
     archived, or that it already was.

Meant to run every hour (cron, or the CronJob in deploy/k8s/forecast-issue).
The issue time is the hour of the last history row, not the wall clock, so a
run on readings that have not moved on archives nothing new. The version is
the one the server's metadata names for --version/--label (its newest, without
either), and the forecast is asked of exactly that version. Each server call
gets --timeout seconds and --attempts tries while the server is unreachable.
Failures are one line on stderr and leave the archive as it was (the next
hour's run issues the next forecast): exit 1 when the server or the store did
not answer, 2 for bad input (readings, a model card that does not match the
served model, an archive of another model, options).

`issue(forecaster, readings, card, root)` is what main runs once the CSV is
read: `ask` (the server's round trip), `rows_of` and forecast.archive.append.
A process that issues many forecasts (a replay, a benchmark) calls it with one
open forecaster and a readings table.
"""

import argparse
import sys
import time
from collections.abc import Callable

import grpc
import pandas as pd
import requests

from forecast import archive
from forecast.client import (
    Forecast,
    ForecastError,
    ModelCard,
    add_request_options,
    check_request_options,
    forecaster_of,
    latest_window,
    model_card_of,
)
from pipeline.prepare import InvalidData, read_raw_csv
from serving.store.layout import BadBasePath, StoreError

TIMEOUT_SECONDS = 10.0
ATTEMPTS = 3
RETRY_PAUSE_SECONDS = 2.0  # before the second try; twice that before the third
TRANSIENT_CODES = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}


def transient(error: Exception) -> bool:
    """Whether a failed server call may succeed when tried again soon: unreachable, timed out, overloaded."""
    if isinstance(error, grpc.RpcError):
        return error.code() in TRANSIENT_CODES
    return isinstance(error, (requests.ConnectionError, requests.Timeout))


def with_retries(call: Callable, attempts: int, pause_seconds: float | None = None):
    """`call()`, tried up to `attempts` times while it fails transiently, pausing `pause_seconds` (default
    RETRY_PAUSE_SECONDS) times the attempt's number in between; the last failure is raised."""
    pause_seconds = RETRY_PAUSE_SECONDS if pause_seconds is None else pause_seconds
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except (grpc.RpcError, requests.RequestException) as error:
            if attempt == attempts or not transient(error):
                raise
            time.sleep(pause_seconds * attempt)


def check_card(card: ModelCard, card_path: str, forecast: Forecast) -> None:
    """ForecastError if the served version does not forecast what its model card promises."""
    if card.quantile_levels is not None and forecast.levels is not None:
        served = [round(float(level), 4) for level in forecast.levels[0]]
        if archive.levels_differ(served, card.quantile_levels):
            raise ForecastError(
                f"{card_path}: the card's quantile levels are {card.quantile_levels}, "
                f"version {forecast.version} serves {served}"
            )
    if card.hour_offsets is not None and forecast.paths is not None:
        hours = len(forecast.paths[0])
        if card.hour_offsets != list(range(1, hours + 1)):
            raise ForecastError(
                f"{card_path}: the card's forecast covers hours {card.hour_offsets[0]} .. {card.hour_offsets[-1]}, "
                f"version {forecast.version} serves 1 .. {hours}"
            )


def ask(forecaster, readings: pd.DataFrame, card: ModelCard, version=None, label=None, attempts: int = ATTEMPTS):
    """The served model's forecast from the readings' last complete hour: (client Forecast, issue time, when the
    server was asked). The version is the one the server's metadata names for `version`/`label` (its newest
    without either), and the forecast is asked of exactly that version; each call is tried `attempts` times while
    the server is unreachable."""
    served = with_retries(lambda: forecaster.served_model(version, label), attempts)
    if served.version is None:
        raise ForecastError(f"{forecaster.target}: the server's metadata of {forecaster.model_name} names no version")
    history, timestamps = latest_window(readings, served.lookback_hours, card.max_fill_hours, card.measurements)
    requested_at = pd.Timestamp.now(tz="UTC")
    forecast = with_retries(
        lambda: forecaster.predict(history[None], timestamps[None], version=served.version), attempts
    )
    return forecast, pd.Timestamp(int(timestamps[-1]), unit="s", tz="UTC"), requested_at


def rows_of(
    forecast: Forecast, issue_time, requested_at, card: ModelCard, card_path: str | None = None
) -> pd.DataFrame:
    """The archive's rows of an answer, its quantile columns named by the card's levels (else the served ones);
    with `card_path` (where the card came from), ForecastError unless the answer is what the card promises."""
    if card_path:
        check_card(card, card_path, forecast)
    levels = card.quantile_levels or ([] if forecast.levels is None else list(forecast.levels[0]))
    return archive.forecast_rows(forecast, issue_time, requested_at, levels)


def issue(
    forecaster,
    readings: pd.DataFrame,
    card: ModelCard,
    root,
    version=None,
    label=None,
    attempts: int = ATTEMPTS,
    card_path: str | None = None,
) -> tuple[pd.DataFrame, str | None]:
    """Ask the server (`ask`) and archive the answer at `root`: the rows, and the path written (None when that
    forecast was archived already). The readings are a Jena-format table (`read_raw_csv`'s) up to the newest."""
    rows = rows_of(*ask(forecaster, readings, card, version, label, attempts), card, card_path)
    return rows, archive.append(root, rows)


def described(rows: pd.DataFrame) -> str:
    """ "<model> version <N> issued <YYYY-mm-dd HH:MM> UTC" of a forecast's rows."""
    first = rows.iloc[0]
    return f"{first['model_name']} version {first['model_version']} issued {first['issue_time']:%Y-%m-%d %H:%M} UTC"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m forecast.issue", description=__doc__.split("\n\n")[0])
    add_request_options(parser)
    parser.add_argument(
        "--archive",
        required=True,
        metavar="ROOT",
        help="the forecast archive: a local directory, s3://bucket/prefix or gs://bucket/prefix",
    )
    parser.add_argument(
        "--timeout", type=float, default=TIMEOUT_SECONDS, help="seconds for each call to the server (default: 10)"
    )
    parser.add_argument(
        "--attempts",
        type=int,
        default=ATTEMPTS,
        help="tries of each call while the server is unreachable or times out (default: 3)",
    )
    args = check_request_options(parser, parser.parse_args(argv))
    if args.attempts < 1 or args.timeout <= 0:
        parser.error("--attempts must be at least 1 and --timeout positive")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        card = model_card_of(args)
        if args.model_name and args.model_card and card.model_name != args.model_name:
            raise ForecastError(f"{args.model_card}: a card of model {card.model_name}, not of {args.model_name}")
        readings = read_raw_csv(args.csv)
        forecaster = forecaster_of(args, args.model_name or card.model_name, args.timeout)
        try:
            rows, written = issue(
                forecaster, readings, card, args.archive, args.version, args.label, args.attempts, args.model_card
            )
        finally:
            forecaster.close()
    except FileNotFoundError as error:
        print(f"issue: {error.filename or args.csv}: no such file", file=sys.stderr)
        return 2
    except (InvalidData, ForecastError, archive.ArchiveError, BadBasePath) as error:
        print(f"issue: {error}", file=sys.stderr)
        return 2
    except StoreError as error:
        print(f"issue: {error}", file=sys.stderr)
        return 1
    except grpc.RpcError as error:
        print(f"issue: {args.target}: {error.code().name}: {error.details()}", file=sys.stderr)
        return 1
    except requests.RequestException as error:  # an OSError too
        print(f"issue: {args.target}: {error}", file=sys.stderr)
        return 1
    except OSError as error:  # a TLS file or the local archive
        print(f"issue: {error.filename}: {error.strerror}", file=sys.stderr)
        return 2
    if written is None:
        existing = archive.location(
            args.archive, rows["model_name"].iloc[0], rows["model_version"].iloc[0], rows["issue_time"].iloc[0]
        )
        print(f"already archived: {described(rows)} ({existing})")
    else:
        hours = f"{len(rows)} hours to {rows['valid_time'].iloc[-1]:%Y-%m-%d %H:%M}"
        print(f"archived: {described(rows)}, {hours}: {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
