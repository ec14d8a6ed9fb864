"""Verify the forecasts of record against what happened, and raise an alarm on drift.

    python -m forecast.verify --archive ROOT --readings recent.csv
        [--model-base-path models/serving] [--model-name jena_temperature]
        [--now 2017-03-01T12:00] [--params params.yaml]
        [--json verification.json] [--csv-dir verification/]
        [--prometheus wetterfrosch.prom] [--html report.html]
        [--serve PORT [--host 127.0.0.1] [--refresh-seconds 300]]
    (console script: wetterfrosch-verify)

In:  the forecast archive (forecast.archive: a path, s3:// or gs://), a
     Jena-format CSV of the readings so far (10-minute or hourly rows, prepared
     to hours as the pipeline does), the published versions (their model
     cards: blessing figures and the training split's input statistics, read
     through serving.store from a path, s3:// or gs://) and params.yaml
     (`verify.*`, `evaluate.coverage_goal`, `prepare.max_fill_hours`, `seed`).
Out: on stdout one line per version (verified and blessed figures); and, each
     written atomically and only once everything is computed:
     --json      the summary: scores per version, window (7d, 30d, all) and
                 hour ahead (forecast.scores), daily +24 h figures, each
                 version's blessing figures, the drift statistics and alarms,
                 the latest forecast with the readings around it;
     --csv-dir   by_hours_ahead.csv and by_day.csv, a column per version and
                 figure, for `dvc plots show`;
     --prometheus  the Prometheus text for node-exporter's textfile collector
                 (forecast.prometheus names the metrics);
     --html      a self-contained page (forecast.report);
     --serve     an HTTP endpoint on --host (127.0.0.1) serving /metrics (the
                 Prometheus text) and / (the page) until interrupted,
                 verifying again on a scrape when the last run is older than
                 --refresh-seconds.
Exit status: 0, no alarm; 3, an alarm (one line per alarm on stderr, naming
what drifted and since when: forecast.drift); 1, bad input (an archive of
another model, readings with other columns, a published version without a
model card, an unreachable store), in one line, with nothing written.

Forecasts count once their valid hour has been observed (up to --now,
default the newest reading). The served version is the one that issued the
newest forecast; drift is judged for it.
"""

import argparse
import http.server
import json
import math
import signal
import sys
import threading
import time
from pathlib import Path

import pandas as pd

from forecast import archive, drift, prometheus, report, scores
from pipeline import schema
from pipeline.atomic import write_text
from pipeline.config import load_params
from pipeline.prepare import InvalidData, prepare, read_raw_csv
from pipeline.published import model_directory
from serving.store import MODEL_CARD_FILE, StoreError, version_file

EXIT_OK, EXIT_BAD_INPUT, EXIT_ALARM = 0, 1, 3
# What the blessing said about a version, from its model card's metrics.
BLESSING_FIGURES = (
    "test_mae_degC",
    "persistence_mae_degC",
    "skill_vs_persistence",
    "test_mae_1h_degC",
    "band_coverage",
    "band_coverage_final_hour",
)
READINGS_BEFORE_FORECAST = pd.Timedelta(hours=72)  # shown on the page before the latest forecast


class VerifyError(ValueError):
    """Input verification cannot use; the message names it."""


def model_card(directory, version: int) -> dict | None:
    """A published version's model card; None when the version is no longer published (retired)."""
    try:
        data = version_file(directory, version, MODEL_CARD_FILE)
    except FileNotFoundError:
        raise VerifyError(f"{directory}: version {version} has no model card ({MODEL_CARD_FILE})") from None
    if data is None:
        return None
    try:
        card = json.loads(data)
        float(card["metrics"]["test_mae_degC"]) + float(card["metrics"]["persistence_mae_degC"])
    except (ValueError, KeyError, TypeError) as error:
        raise VerifyError(f"{directory}: version {version}'s {MODEL_CARD_FILE} is not a model card ({error})") from None
    return card


def blessing_figures(card: dict | None) -> dict:
    """The figures a version was blessed with (null ones for a version no longer published)."""
    if card is None:
        return {"published": False, **dict.fromkeys(BLESSING_FIGURES)}
    return {"published": True, **{key: card["metrics"].get(key) for key in BLESSING_FIGURES}}


def hourly_readings(readings: pd.DataFrame, max_fill_hours: int) -> pd.DataFrame:
    """The readings prepared to hours by the pipeline's own code, indexed by UTC hour."""
    hourly, _ = prepare(readings, max_fill_hours)
    return hourly.tz_localize("UTC")


def newest_forecast(forecasts: pd.DataFrame) -> pd.DataFrame:
    """The rows of the newest forecast: the latest issue time's, of the highest version issued then."""
    newest = forecasts[forecasts["issue_time"] == forecasts["issue_time"].max()]
    return newest[newest["model_version"] == newest["model_version"].max()]


def latest_forecast(newest: pd.DataFrame, hourly: pd.DataFrame, now: pd.Timestamp) -> dict:
    """The newest forecast (`newest_forecast`'s rows) hour by hour, and the readings before it up to `now`."""
    quantiles, levels = scores.quantile_columns(newest)
    issue_time = newest["issue_time"].iloc[0]
    temperature = hourly[schema.TEMPERATURE]
    observed = temperature[temperature.index <= now]
    shown = observed[(observed.index > issue_time - READINGS_BEFORE_FORECAST)].dropna()
    return {
        "issue_time": issue_time.isoformat(),
        "model_version": int(newest["model_version"].iloc[0]),
        "quantile_levels": [float(level) for level in levels],
        "hours": [
            {
                "hours_ahead": int(row.hours_ahead),
                "valid_time": row.valid_time.isoformat(),
                "median_degC": float(row.median),
                "quantiles_degC": [float(getattr(row, name)) for name in quantiles],
            }
            for row in newest.itertuples()
        ],
        "readings": [{"time": moment.isoformat(), "degC": float(value)} for moment, value in shown.items()],
    }


def drift_summary(matured: pd.DataFrame, hourly: pd.DataFrame, served: int, card: dict | None, now, params) -> dict:
    """forecast.drift's statistics and alarms for the served version."""
    settings, seed = params["verify"], params["seed"]
    result = {"served_version": served, "mae": None, "coverage": None, "inputs": None, "alarms": [], "notes": []}
    if card is None:
        result["notes"].append(f"version {served} is no longer published: its drift is not judged")
        return result
    rows = matured[matured["model_version"] == served]
    alarms = []
    if len(rows):
        result["mae"], alarm = drift.error_alarm(
            scores.final_hour_rows(rows), served, card["metrics"], now, settings, seed
        )
        alarms.append(alarm)
        quantiles, _ = scores.quantile_columns(rows)
        result["coverage"], alarm = drift.coverage_alarm(
            rows, served, (quantiles[0], quantiles[-1]), params["evaluate"]["coverage_goal"], now, settings, seed
        )
        alarms.append(alarm)
    if "input_statistics" in card:
        result["inputs"], input_alarms = drift.input_alarms(hourly, card["input_statistics"], now, settings)
        alarms += input_alarms
    else:
        result["notes"].append(f"version {served}'s model card has no input_statistics: input drift is not judged")
    result["alarms"] = [alarm.as_dict() for alarm in alarms if alarm is not None]
    return result


def verification(forecasts: pd.DataFrame, hourly: pd.DataFrame, cards: dict, now, params: dict) -> dict:
    """The whole summary (see the module docstring) from the archived rows, the hourly readings (UTC index),
    each archived version's model card (None if retired) and `now`."""
    observed = scores.observed_temperatures(hourly, schema.TEMPERATURE)
    matured = scores.matured(forecasts, observed, now)
    table = scores.score_table(matured, now, params["verify"]["windows_days"])
    newest = newest_forecast(forecasts)
    served = int(newest["model_version"].iloc[0])
    return {
        "model_name": str(forecasts["model_name"].iloc[0]),
        "now": now.isoformat(),
        "newest_observation": observed[observed.index <= now].index.max().isoformat(),
        "archive": {
            "forecasts": int(forecasts.groupby(["issue_time", "model_version"]).ngroups),
            "first_issue": forecasts["issue_time"].min().isoformat(),
            "last_issue": forecasts["issue_time"].max().isoformat(),
            "versions": sorted(int(version) for version in forecasts["model_version"].unique()),
        },
        "matured_forecast_hours": len(matured),
        "coverage_goal": list(params["evaluate"]["coverage_goal"]),
        "served_version": served,
        "blessing": {int(version): blessing_figures(card) for version, card in cards.items()},
        "scores": table.to_dict("records"),
        "daily": scores.daily_scores(matured).to_dict("records") if len(matured) else [],
        "drift": drift_summary(matured, hourly, served, cards[served], now, params),
        "latest_forecast": latest_forecast(newest, hourly, now),
    }


def plain(value):
    """JSON has no NaN: NaN and infinities become null, numpy scalars plain numbers, recursively."""
    if isinstance(value, dict):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def wide(records: list[dict], index: str, figures: list[str]) -> pd.DataFrame:
    """One row per `index` value, a column `<figure>_v<version>` per figure and version (for `dvc plots`)."""
    table = pd.DataFrame(records, columns=[index, "model_version", *figures])
    spread = table.pivot(index=index, columns="model_version", values=figures)
    spread.columns = [f"{figure}_v{version}" for figure, version in spread.columns]
    return spread.reset_index()


def plot_tables(summary: dict) -> dict[str, pd.DataFrame]:
    """by_hours_ahead.csv (all forecasts, per hour ahead) and by_day.csv (per day, at the last hour ahead)."""
    figures = ["mae_degC", "bias_degC", "pinball_loss_degC", "coverage", "hours"]
    by_hour = [row for row in summary["scores"] if row["window"] == scores.ALL and row["hours_ahead"] != scores.ALL]
    by_hour = [{**row, "hours_ahead": int(row["hours_ahead"])} for row in by_hour]
    return {
        "by_hours_ahead.csv": wide(by_hour, "hours_ahead", figures).sort_values("hours_ahead"),
        "by_day.csv": wide(summary["daily"], "day", figures),
    }


def outputs(summary: dict, args) -> dict[Path, str]:
    """The text of every output asked for, by path."""
    texts = {}
    if args.json:
        texts[Path(args.json)] = json.dumps(plain(summary), indent=2) + "\n"
    if args.csv_dir:
        for name, table in plot_tables(summary).items():
            texts[Path(args.csv_dir) / name] = table.to_csv(index=False, float_format="%.4f")
    if args.prometheus:
        texts[Path(args.prometheus)] = prometheus.exposition(summary)
    if args.html:
        texts[Path(args.html)] = report.page(summary)
    return texts


def write_all(texts: dict[Path, str]) -> None:
    for path, text in texts.items():
        write_text(path, text)


def run(args) -> dict:
    """Read everything, verify: the summary, or VerifyError (and the errors of the readers) for bad input."""
    params = args.params_loaded
    forecasts = archive.read(args.archive, model_name=args.model_name)
    if forecasts.empty:
        raise VerifyError(f"{args.archive}: no forecasts of {args.model_name} archived yet")
    directory = model_directory({"base_path": args.model_base_path, "model_name": args.model_name})
    cards = {int(version): model_card(directory, int(version)) for version in forecasts["model_version"].unique()}
    served = int(newest_forecast(forecasts)["model_version"].iloc[0])
    # observations prepared as the served version's training data was (its card), else as params.yaml says
    made_with = (cards[served] or {}).get("params", {}).get("prepare", {})
    max_fill_hours = made_with.get("max_fill_hours", params["prepare"]["max_fill_hours"])
    try:
        hourly = hourly_readings(read_raw_csv(args.readings), max_fill_hours)
    except FileNotFoundError:
        raise VerifyError(f"{args.readings}: no such file") from None
    now = hourly.index.max() if args.now is None else archive.utc(args.now)
    if hourly.index.min() > now:
        raise VerifyError(f"{args.readings}: no reading at or before --now {now:%Y-%m-%d %H:%M}")
    issued = forecasts[forecasts["issue_time"] <= now]
    if issued.empty:
        raise VerifyError(f"{args.archive}: no forecast issued by {now:%Y-%m-%d %H:%M} UTC")
    return verification(
        issued, hourly, {int(version): cards[int(version)] for version in issued["model_version"].unique()}, now, params
    )


def version_lines(summary: dict) -> list[str]:
    """Per version: its +24 h MAE and coverage over 30 days and overall, beside its blessing figures."""
    lines = []
    for version, blessed in summary["blessing"].items():
        rows = {
            row["window"]: row
            for row in summary["scores"]
            if row["model_version"] == version and row["hours_ahead"] == scores.ALL
        }
        overall = rows.get(scores.ALL)
        verified = (
            f"MAE all hours {overall['mae_degC']:.3f} C, bias {overall['bias_degC']:+.3f} C, "
            f"coverage {overall['coverage']:.1%} over {overall['hours']} forecast hours"
            if overall and overall["hours"]
            else "no matured forecast yet"
        )
        if blessed["published"]:
            test = f"test MAE (+last hour) {blessed['test_mae_degC']:.3f} C"
            if blessed.get("band_coverage") is not None:
                test += f", coverage {blessed['band_coverage']:.1%}"
        else:
            test = "no longer published"
        lines.append(f"verify: {summary['model_name']} version {version}: {verified}; blessed with {test}")
    return lines


def serve(args, summary: dict) -> None:
    """Serve /metrics and / on --host:--port until SIGINT or SIGTERM, verifying again when a scrape finds the
    last run older than --refresh-seconds."""
    state = {"summary": summary, "at": time.monotonic()}
    lock = threading.Lock()

    def current() -> dict:
        with lock:
            if time.monotonic() - state["at"] > args.refresh_seconds:
                try:
                    state["summary"] = run(args)
                except (VerifyError, archive.ArchiveError, InvalidData, StoreError) as error:
                    print(f"verify: {error} (serving the previous run)", file=sys.stderr)
                state["at"] = time.monotonic()
            return state["summary"]

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            path = self.path.split("?")[0]
            if path == "/metrics":
                body, kind = prometheus.exposition(current()).encode(), prometheus.CONTENT_TYPE
            elif path == "/":
                body, kind = report.page(current()).encode(), "text/html; charset=utf-8"
            else:
                self.send_error(404, "not found: /metrics (Prometheus) and / (the page)")
                return
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format, *arguments):
            pass

    server = http.server.ThreadingHTTPServer((args.host, args.serve), Handler)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(f"verify: serving /metrics and / on http://{args.host}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


NEEDED_PARAMS = {
    "seed": None,
    "prepare": ["max_fill_hours"],
    "evaluate": ["coverage_goal"],
    "serving": ["model_name", "base_path"],
    "verify": [
        "windows_days",
        "drift_window_days",
        "min_days",
        "mae_tolerance",
        "coverage_tolerance",
        "confidence",
        "block_days",
        "bootstrap_replicates",
        "psi_window_days",
        "psi_min_days",
        "psi_threshold",
        "stuck_hours",
    ],
}


def checked_params(params: dict, path) -> dict:
    """`params` if it has every setting verify reads; VerifyError naming the first missing one."""
    for section, keys in NEEDED_PARAMS.items():
        if section not in params:
            raise VerifyError(f"{path}: no `{section}`")
        for key in keys or []:
            if key not in (params[section] or {}):
                raise VerifyError(f"{path}: no `{section}.{key}` (see docs/params.md)")
    return params


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m forecast.verify",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--archive", required=True, help="the forecast archive's root: a path, s3://... or gs://...")
    parser.add_argument("--readings", required=True, help="a Jena-format CSV of the readings so far")
    parser.add_argument("--model-base-path", help="where versions are published (default: params serving.base_path)")
    parser.add_argument("--model-name", help="the model (default: params serving.model_name)")
    parser.add_argument("--now", help="verify as of this UTC time (default: the newest reading)")
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument("--json", help="write the summary here")
    parser.add_argument("--csv-dir", help="write by_hours_ahead.csv and by_day.csv here")
    parser.add_argument("--prometheus", help="write the Prometheus text here (e.g. <textfile dir>/wetterfrosch.prom)")
    parser.add_argument("--html", help="write the page here")
    parser.add_argument("--serve", type=int, metavar="PORT", help="serve /metrics and / on this port until stopped")
    parser.add_argument("--host", default="127.0.0.1", help="address --serve binds (default: 127.0.0.1)")
    parser.add_argument("--refresh-seconds", type=float, default=300.0, help="--serve verifies again after this")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        args.params_loaded = checked_params(load_params(Path(args.params)), args.params)
        serving = args.params_loaded["serving"]
        args.model_name = args.model_name or serving["model_name"]
        args.model_base_path = args.model_base_path or serving["base_path"]
        summary = run(args)
        texts = outputs(summary, args)
    except FileNotFoundError as error:
        print(f"verify: {error.filename or error}: no such file", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (VerifyError, archive.ArchiveError, InvalidData, StoreError) as error:
        print(f"verify: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except SystemExit as error:  # load_params names a missing or broken params file
        print(f"verify: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    write_all(texts)
    for line in version_lines(summary):
        print(line)
    for note in summary["drift"]["notes"]:
        print(f"verify: note: {note}", file=sys.stderr)
    alarms = [drift.Alarm(**alarm) for alarm in summary["drift"]["alarms"]]
    for alarm in alarms:
        print(alarm.line(), file=sys.stderr)
    if args.serve is not None:
        serve(args, summary)
    return EXIT_ALARM if alarms else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
