"""`python -m forecast.verify`: outputs, exit codes, bad input, the Prometheus text, the scrape endpoint."""

import json
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from forecast import archive, scores, verify
from pipeline import schema, synthetic
from tests.helpers.drift_scenario import (
    fit_regression,
    forecaster_metrics,
    hourly,
    regression_forecasts,
    station_record,
    training_statistics,
)
from tests.helpers.repository import REPO_ROOT

PARAMS = str(REPO_ROOT / "params.yaml")
READINGS_FROM = "2010-12-01"
ISSUES_FROM = pd.Timestamp("2011-01-06", tz="UTC")


@pytest.fixture(scope="module")
def station(tmp_path_factory):
    """Readings of Dec 2010 - 20 Jan 2011 as a Jena CSV, the archive of a forecast every 6 hours of the last
    two weeks, and version 1 published with a model card (2009 the training year, 2010 the test year)."""
    root = tmp_path_factory.mktemp("station")
    readings = station_record("2009-01-01", "2011-01-20", 42)
    table = hourly(readings)
    train, test = table.loc[:"2009-12-31 23:00"], table.loc["2010-01-01":"2010-12-31 23:00"]
    fitted = fit_regression(train[schema.TEMPERATURE], 24)
    metrics = {key: round(value, 4) for key, value in forecaster_metrics(table, fitted, test.index).items()}
    card = {
        "model_name": "jena_temperature",
        "params": {"prepare": {"max_fill_hours": 3}},
        "metrics": {**metrics, "skill_vs_persistence": 0.0123, "band_coverage": 0.7911},
        "input_statistics": training_statistics(train),
    }
    csv = root / "recent.csv"
    recent = readings[readings[schema.DATE_COLUMN] > pd.Timestamp(READINGS_FROM)]
    synthetic.write_jena_csv(recent, csv)
    forecasts = regression_forecasts(
        table[schema.TEMPERATURE], pd.date_range(ISSUES_FROM, table.index.max(), freq="6h"), fitted
    )
    store = root / "archive"
    for _, rows in forecasts.groupby("issue_time"):
        archive.append(store, rows.reset_index(drop=True))
    base = root / "models"
    (base / "jena_temperature").mkdir(parents=True)
    return {"root": root, "csv": csv, "archive": store, "base": base, "card": card, "readings": recent}


@pytest.fixture
def published(station, publish_card, tmp_path):
    base = tmp_path / "models"
    publish_card(base, 1, station["card"])
    return base


def arguments(station, base, out: Path, *extra) -> list[str]:
    return [
        "--archive",
        str(station["archive"]),
        "--readings",
        str(station["csv"]),
        "--model-base-path",
        str(base),
        "--params",
        PARAMS,
        "--json",
        str(out / "verification.json"),
        "--csv-dir",
        str(out / "plots"),
        "--prometheus",
        str(out / "wetterfrosch.prom"),
        "--html",
        str(out / "report.html"),
        *extra,
    ]


OUTPUTS = ["verification.json", "plots/by_hours_ahead.csv", "plots/by_day.csv", "wetterfrosch.prom", "report.html"]


def test_a_clean_record_verifies_every_matured_forecast_and_exits_0(station, published, tmp_path, capsys):
    assert verify.main(arguments(station, published, tmp_path / "out")) == 0
    out = tmp_path / "out"
    summary = json.loads((out / "verification.json").read_text())
    assert summary["served_version"] == 1 and summary["drift"]["alarms"] == []
    assert summary["archive"]["forecasts"] == 4 * 14 + 1  # every 6 hours from 6 January to the 20th, 00:00
    assert summary["newest_observation"] == "2011-01-20T00:00:00+00:00"
    # the figures are forecast.scores' on the archive's matured rows
    forecasts = archive.read(station["archive"])
    observed = scores.observed_temperatures(verify.hourly_readings(station["readings"], 3), schema.TEMPERATURE)
    matured = scores.matured(forecasts, observed)
    overall = scores.figures(matured, ["q10", "q50", "q90"], np.array([0.1, 0.5, 0.9]))
    reported = next(row for row in summary["scores"] if row["window"] == "all" and row["hours_ahead"] == "all")
    assert reported["hours"] == len(matured) == summary["matured_forecast_hours"]
    assert reported["mae_degC"] == pytest.approx(overall["mae_degC"])
    assert summary["blessing"]["1"]["test_mae_degC"] == station["card"]["metrics"]["test_mae_degC"]
    printed = capsys.readouterr().out
    assert f"MAE all hours {overall['mae_degC']:.3f} C" in printed and "test MAE (+last hour)" in printed

    by_hour = pd.read_csv(out / "plots/by_hours_ahead.csv")
    assert by_hour["hours_ahead"].tolist() == list(range(1, 25))
    assert by_hour.loc[23, "mae_degC_v1"] == pytest.approx(
        scores.figures(scores.final_hour_rows(matured), ["q10", "q50", "q90"], np.array([0.1, 0.5, 0.9]))["mae_degC"],
        abs=1e-4,
    )
    by_day = pd.read_csv(out / "plots/by_day.csv")
    assert by_day["day"].iloc[0] == "2011-01-07" and set(by_day.columns) >= {"day", "mae_degC_v1", "coverage_v1"}

    page = (out / "report.html").read_text()
    assert f"{overall['mae_degC']:.3f}" in page and f"{station['card']['metrics']['test_mae_degC']:.3f}" in page
    assert (
        "No drift alarm." in page
        and "<script" not in page
        and "http" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    )


def test_now_verifies_as_of_an_earlier_moment(station, published, tmp_path):
    out = tmp_path / "out"
    assert verify.main(arguments(station, published, out, "--now", "2011-01-10 00:00")) == 0
    summary = json.loads((out / "verification.json").read_text())
    assert summary["newest_observation"] == "2011-01-10T00:00:00+00:00"
    assert summary["latest_forecast"]["issue_time"] == "2011-01-10T00:00:00+00:00"
    forecasts = archive.read(station["archive"])
    observed = scores.observed_temperatures(verify.hourly_readings(station["readings"], 3), schema.TEMPERATURE)
    assert summary["matured_forecast_hours"] == len(
        scores.matured(forecasts, observed, pd.Timestamp("2011-01-10", tz="UTC"))
    )


def test_a_stuck_barometer_exits_3_naming_it_and_since_when(station, published, tmp_path, capsys):
    readings = station["readings"].copy()
    frozen = readings[schema.DATE_COLUMN] > pd.Timestamp("2011-01-19 08:00")
    readings.loc[frozen, schema.PRESSURE] = readings.loc[frozen, schema.PRESSURE].iloc[0]
    synthetic.write_jena_csv(readings, tmp_path / "stuck.csv")
    args = arguments(station, published, tmp_path / "out")
    args[args.index("--readings") + 1] = str(tmp_path / "stuck.csv")
    assert verify.main(args) == verify.EXIT_ALARM
    alarms = [line for line in capsys.readouterr().err.splitlines() if "ALARM" in line]
    assert len(alarms) == 1
    assert alarms[0].startswith("verify: ALARM stuck: p (mbar): unchanged at ")
    assert alarms[0].endswith("since 2011-01-19 09:00")  # the first hour whose readings are all frozen
    summary = json.loads((tmp_path / "out/verification.json").read_text())
    assert summary["drift"]["alarms"][0]["since"] == "2011-01-19 09:00"
    assert 'kind="stuck",subject="p (mbar)"' in (tmp_path / "out/wetterfrosch.prom").read_text()


def bad_input_exit(args, out: Path, capsys) -> str:
    assert verify.main(args) == verify.EXIT_BAD_INPUT
    assert not out.exists() or not any(out.rglob("*")), "nothing may be written on bad input"
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    return error


def test_another_models_archive_is_refused(station, published, tmp_path, capsys):
    out = tmp_path / "out"
    error = bad_input_exit(arguments(station, published, out, "--model-name", "munich_temperature"), out, capsys)
    assert error.startswith("verify: ") and "jena_temperature" in error and "munich_temperature" in error


def test_readings_with_other_columns_are_refused(station, published, tmp_path, capsys):
    text = station["csv"].read_text().splitlines()
    (tmp_path / "other.csv").write_text(
        "\n".join([text[0] + ',"rain (mm)"'] + [line + ",0.00" for line in text[1:]]) + "\n"
    )
    args = arguments(station, published, tmp_path / "out")
    args[args.index("--readings") + 1] = str(tmp_path / "other.csv")
    error = bad_input_exit(args, tmp_path / "out", capsys)
    assert "other.csv" in error and "unexpected columns ['rain (mm)']" in error


def test_a_version_without_a_model_card_is_refused(station, publish_card, tmp_path, capsys):
    base = tmp_path / "models"
    publish_card(base, 1, station["card"])
    publish_card(base, 2, None)
    store = tmp_path / "archive"
    for path in Path(station["archive"]).rglob("*.parquet"):
        target = store / path.relative_to(station["archive"])
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
    newest = archive.read(store)
    newest = newest[newest["issue_time"] == newest["issue_time"].max()].assign(model_version=np.int64(2))
    archive.append(store, newest.reset_index(drop=True))
    args = arguments(station, base, tmp_path / "out")
    args[args.index("--archive") + 1] = str(store)
    error = bad_input_exit(args, tmp_path / "out", capsys)
    assert error == f"verify: {base / 'jena_temperature'}: version 2 has no model card (assets.extra/model_card.json)"


SAMPLE = re.compile(
    r'(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?P<labels>[a-zA-Z_][a-zA-Z0-9_]*="(\\.|[^"\\])*"'
    r'(,[a-zA-Z_][a-zA-Z0-9_]*="(\\.|[^"\\])*")*)\})? (?P<value>NaN|[+-]Inf|[-+]?[0-9.]+(e[-+]?[0-9]+)?)'
)


def parse_exposition(text: str) -> dict[str, list[tuple[str, float]]]:
    """A strict reading of the text format: HELP then TYPE once per metric, its samples right after them,
    no series twice, every value a number."""
    assert text.endswith("\n")
    metrics: dict[str, list[tuple[str, float]]] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name = line.split()[2]
            assert name not in metrics, f"{name} described twice"
            metrics[name], current = [], name
        elif line.startswith("# TYPE "):
            assert line == f"# TYPE {current} gauge"
        else:
            match = SAMPLE.fullmatch(line)
            assert match, f"not a sample line: {line!r}"
            assert match["name"] == current, f"{match['name']} outside its family"
            series = match["labels"] or ""
            assert series not in [labels for labels, _ in metrics[current]], f"{line} twice"
            metrics[current].append((series, float(match["value"].replace("Inf", "inf"))))
    return metrics


def test_the_prometheus_text_is_well_formed_and_named_as_tf_serving_names_metrics(station, published, tmp_path):
    assert verify.main(arguments(station, published, tmp_path / "out")) == 0
    metrics = parse_exposition((tmp_path / "out/wetterfrosch.prom").read_text())
    assert all(name.startswith((":wetterfrosch:verification:", ":wetterfrosch:drift:")) for name in metrics)
    summary = json.loads((tmp_path / "out/verification.json").read_text())
    overall = next(row for row in summary["scores"] if row["window"] == "30d" and row["hours_ahead"] == "24")
    mae = dict(metrics[":wetterfrosch:verification:mae_degc"])
    series = 'model_name="jena_temperature",version="1",window="30d",hours_ahead="24"'
    assert mae[series] == pytest.approx(overall["mae_degC"])
    assert len(mae) == 3 * 25  # three windows, 24 hours ahead and all of them
    assert dict(metrics[":wetterfrosch:drift:alarms"]) == {'model_name="jena_temperature"': 0}
    assert dict(metrics[":wetterfrosch:verification:blessed_test_mae_degc"]) == {
        'model_name="jena_temperature",version="1"': station["card"]["metrics"]["test_mae_degC"]
    }
    assert len(metrics[":wetterfrosch:drift:psi"]) == 14


def test_label_values_are_escaped():
    from forecast.prometheus import sample

    assert sample("x", {"measurement": 'a "b"\\c\nd'}, 1.5) == 'x{measurement="a \\"b\\"\\\\c\\nd"} 1.5'
    assert sample("x", {}, float("nan")) == "x NaN"
    with pytest.raises(ValueError, match="label name"):
        sample("x", {"bad-name": "v"}, 1)


@pytest.mark.slow
def test_serve_answers_a_scrape_on_loopback_until_interrupted(station, published, tmp_path):
    command = [
        sys.executable,
        "-m",
        "forecast.verify",
        *arguments(station, published, tmp_path / "out"),
        "--serve",
        "0",
    ]
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        line = ""
        while time.monotonic() < deadline and "serving" not in line:
            line = process.stdout.readline()
            assert line or process.poll() is None, process.stderr.read()
        address = re.search(r"http://127\.0\.0\.1:(\d+)", line)
        assert address, line
        base = f"http://127.0.0.1:{address[1]}"
        with urllib.request.urlopen(f"{base}/metrics", timeout=10) as response:
            assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
            scraped = response.read().decode()
        assert scraped == (tmp_path / "out/wetterfrosch.prom").read_text()
        with urllib.request.urlopen(f"{base}/", timeout=10) as response:
            assert "<svg" in response.read().decode()
        with pytest.raises(urllib.error.HTTPError, match="404"):
            urllib.request.urlopen(f"{base}/other", timeout=10)
    finally:
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=30)
    assert code == 0  # no alarm
