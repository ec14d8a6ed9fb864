"""The verification page in a real browser: headless Chromium renders it, with no script error, to a picture."""

import shutil
import struct
import subprocess
import zlib

import pytest

from forecast import report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
WINDOW = (900, 1400)


def summary() -> dict:
    """A small verification summary with two versions, a latest forecast and one alarm."""
    days = [f"2011-01-{day:02d}" for day in range(7, 20)]
    daily = [
        {
            "day": day,
            "model_version": version,
            "hours_ahead": 24,
            "mae_degC": mae + 0.05 * index,
            "bias_degC": -0.1,
            "pinball_loss_degC": 0.8,
            "coverage": 0.75 + 0.01 * index,
            "hours": 24,
        }
        for version, mae in ((1, 2.1), (2, 1.7))
        for index, day in enumerate(days)
    ]
    hours = [
        {
            "hours_ahead": hour,
            "valid_time": f"2011-01-20T{hour - 1:02d}:00:00+00:00",
            "median_degC": 1.0 + 0.1 * hour,
            "quantiles_degC": [-1.0 + 0.05 * hour, 1.0 + 0.1 * hour, 3.0 + 0.15 * hour],
        }
        for hour in range(1, 25)
    ]
    readings = [{"time": f"2011-01-19T{hour:02d}:00:00+00:00", "degC": -2.0 + 0.2 * hour} for hour in range(24)]
    scores = [
        {
            "model_version": version,
            "window": window,
            "hours_ahead": "all",
            "mae_degC": mae,
            "bias_degC": -0.123,
            "pinball_loss_degC": 0.765,
            "coverage": 0.789,
            "hours": 1234,
        }
        for version, mae in ((1, 2.345), (2, 1.876))
        for window in ("7d", "30d", "all")
    ]
    return {
        "model_name": "jena_temperature",
        "now": "2011-01-20T00:00:00+00:00",
        "archive": {
            "forecasts": 57,
            "first_issue": "2011-01-06T00:00:00+00:00",
            "last_issue": "2011-01-20T00:00:00+00:00",
        },
        "matured_forecast_hours": 1234,
        "served_version": 2,
        "coverage_goal": [0.78, 0.82],
        "blessing": {
            1: {"published": True, "test_mae_degC": 2.222, "band_coverage": 0.8, "skill_vs_persistence": 0.1},
            2: {"published": True, "test_mae_degC": 1.654, "band_coverage": 0.79, "skill_vs_persistence": 0.12},
        },
        "scores": scores,
        "daily": daily,
        "drift": {
            "alarms": [
                {
                    "kind": "stuck",
                    "subject": "p (mbar)",
                    "since": "2011-01-19 09:00",
                    "message": "unchanged at 990.1 for 16 hours",
                }
            ],
            "notes": [],
        },
        "latest_forecast": {
            "issue_time": "2011-01-19T23:00:00+00:00",
            "model_version": 2,
            "quantile_levels": [0.1, 0.5, 0.9],
            "hours": hours,
            "readings": readings,
        },
    }


def test_the_page_shows_the_figures_alarms_and_charts():
    page = report.page(summary())
    for figure in ("2.345", "1.876", "2.222", "1.654", "-0.123", "78.9%", "12.0%"):
        assert figure in page, figure
    assert "stuck: p (mbar)</b> since 2011-01-19 09:00" in page
    assert page.count("<svg") == 3 and page.count("<polyline") == 2 + 2 + 2  # forecast+readings, MAE, coverage
    assert "<script" not in page and "src=" not in page and "<link" not in page


def png_size_and_colours(data: bytes) -> tuple[int, int, int]:
    """Width, height and how many distinct byte values the decompressed image rows hold (a blank page: few)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    position, compressed = 8, b""
    while position < len(data):
        length, kind = struct.unpack(">I4s", data[position : position + 8])
        if kind == b"IDAT":
            compressed += data[position + 8 : position + 8 + length]
        position += 12 + length
    return width, height, len(set(zlib.decompress(compressed)))


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)")
def test_headless_chromium_renders_the_page_without_script_errors(tmp_path):
    page = tmp_path / "report.html"
    page.write_text(report.page(summary()), encoding="utf-8")
    screenshot = tmp_path / "report.png"
    result = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",  # as root, in CI
            "--disable-gpu",
            "--hide-scrollbars",
            f"--screenshot={screenshot}",
            f"--window-size={WINDOW[0]},{WINDOW[1]}",
            "--enable-logging=stderr",
            "--v=0",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    console = [line for line in result.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert console == []
    width, height, colours = png_size_and_colours(screenshot.read_bytes())
    assert (width, height) == WINDOW
    assert colours > 50, "the screenshot is blank"
