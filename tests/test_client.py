"""The forecast client's input handling and command line (the served path is in test_smoke)."""

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from conftest import REPO_ROOT, make_readings, to_csv_text
from pipeline import schema
from serving.client import ForecastError, forecast_line, Forecast, latest_window


def test_latest_window_from_ten_minute_rows():
    readings = make_readings(periods=6 * 24 * 6)  # six days
    history, timestamps = latest_window(readings, 120)
    assert history.shape == (120, 14) and history.dtype == np.float32
    assert pd.Timestamp(timestamps[-1], unit="s") == readings[schema.DATE_COLUMN].iloc[-1].ceil("h")
    assert np.all(np.diff(timestamps) == 3600)
    last_hour = readings[schema.TEMPERATURE].iloc[-6:].mean()
    assert history[-1, schema.column_index(schema.TEMPERATURE)] == pytest.approx(last_hour, abs=1e-4)


def test_latest_window_from_hourly_rows_is_the_rows_themselves():
    readings = make_readings(start="2020-01-01 01:00", periods=130)
    readings[schema.DATE_COLUMN] = pd.date_range("2020-01-01 01:00", periods=130, freq="h")
    history, _ = latest_window(readings, 120)
    np.testing.assert_allclose(history, readings[schema.MEASUREMENTS].to_numpy(np.float32)[-120:])


def test_too_little_history_is_a_clear_error():
    with pytest.raises(ForecastError, match="need at least 120 hours of readings, the file covers 48"):
        latest_window(make_readings(periods=6 * 48), 120)


def test_a_long_gap_in_the_window_is_a_clear_error():
    readings = make_readings(periods=6 * 24 * 6)
    gapped = readings.drop(index=range(400, 460))  # 10 hours missing
    with pytest.raises(ForecastError, match="must be complete; readings are missing around 2020-01-03"):
        latest_window(gapped, 120)


def test_forecast_line():
    line = forecast_line(pd.Timestamp("2016-12-31 23:00").value // 10**9, 24,
                         Forecast(np.array([3.4321], np.float32), "jena_temperature", 3))
    assert line == "2016-12-31 23:00 +24 h: 3.4 C (model jena_temperature, version 3)"


def run_client(*args):
    return subprocess.run([sys.executable, "-m", "serving.client", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)


def test_cli_reports_an_unreachable_server_without_a_traceback(tmp_path):
    csv = tmp_path / "recent.csv"
    csv.write_text(to_csv_text(make_readings(periods=6 * 24 * 6)))
    result = run_client(str(csv), "--target", "127.0.0.1:9")
    assert result.returncode == 1
    assert "127.0.0.1:9: UNAVAILABLE" in result.stderr and "Traceback" not in result.stderr


def test_cli_rejects_broken_input_before_calling_the_server(tmp_path):
    assert "no such file" in run_client(str(tmp_path / "absent.csv"), "--target", "127.0.0.1:9").stderr
    broken = tmp_path / "broken.csv"
    broken.write_text(to_csv_text(make_readings(periods=12)).replace("990", "x990", 1))
    result = run_client(str(broken), "--target", "127.0.0.1:9")
    assert result.returncode == 2 and "column 'p (mbar)'" in result.stderr and "Traceback" not in result.stderr
