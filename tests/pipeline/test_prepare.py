"""prepare: validation errors, sentinels, duplicates, vector averaging, gaps."""

import json

import numpy as np
import pandas as pd
import pytest

from pipeline import schema
from pipeline.prepare import (
    InvalidData,
    drop_duplicate_timestamps,
    fill_short_gaps,
    mean_direction_degrees,
    prepare,
    read_raw_csv,
    replace_sentinels,
    run_lengths,
    to_hourly,
)
from tests.helpers.readings import to_csv_text
from tests.helpers.repository import run_stage


def write(tmp_path, text, name="raw.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_reads_the_jena_format(tmp_path, readings):
    parsed = read_raw_csv(write(tmp_path, to_csv_text(readings)))
    assert list(parsed.columns) == schema.COLUMNS
    assert parsed[schema.DATE_COLUMN].iloc[0] == pd.Timestamp("2020-01-01 00:10")
    np.testing.assert_allclose(parsed[schema.TEMPERATURE], readings[schema.TEMPERATURE])


def test_missing_column_is_named(tmp_path, readings):
    without_pressure = [line.split(",") for line in to_csv_text(readings).splitlines()]
    text = "\n".join(",".join(fields[:1] + fields[2:]) for fields in without_pressure)
    with pytest.raises(InvalidData, match=r"raw\.csv.*missing columns \['p \(mbar\)'\]"):
        read_raw_csv(write(tmp_path, text))


def test_unexpected_column_is_named(tmp_path, readings):
    lines = to_csv_text(readings).splitlines()
    text = "\n".join([lines[0] + ',"extra"'] + [line + ",1.0" for line in lines[1:]])
    with pytest.raises(InvalidData, match=r"unexpected columns \['extra'\]"):
        read_raw_csv(write(tmp_path, text))


def test_unparseable_number_names_column_and_line(tmp_path, readings):
    lines = to_csv_text(readings).splitlines()
    fields = lines[7].split(",")
    fields[2] = "warm"  # T (degC) of the 7th reading, on line 8 of the file
    lines[7] = ",".join(fields)
    with pytest.raises(InvalidData, match=r"raw\.csv: column 'T \(degC\)', line 8: cannot parse 'warm'"):
        read_raw_csv(write(tmp_path, "\n".join(lines)))


def test_unparseable_timestamp_names_line(tmp_path, readings):
    lines = to_csv_text(readings).splitlines()
    lines[3] = "2020-01-01T00:30" + lines[3][19:]
    with pytest.raises(InvalidData, match=r"column 'Date Time', line 4"):
        read_raw_csv(write(tmp_path, "\n".join(lines)))


def test_sentinels_become_missing_and_do_not_pollute_means(readings):
    readings.loc[2, schema.WIND_SPEED] = schema.SENTINEL
    cleaned, replaced = replace_sentinels(readings)
    assert replaced == 1 and np.isnan(cleaned.loc[2, schema.WIND_SPEED])
    hourly = to_hourly(cleaned)
    first_hour = readings.loc[[0, 1, 3, 4, 5], schema.WIND_SPEED].mean()
    assert hourly[schema.WIND_SPEED].iloc[0] == pytest.approx(first_hour)


def test_duplicates_keep_the_first_reading(readings):
    duplicate = readings.iloc[[4]].copy()
    duplicate[schema.TEMPERATURE] = 99.0
    doubled = pd.concat([readings.iloc[:5], duplicate, readings.iloc[5:]], ignore_index=True)
    deduplicated, dropped = drop_duplicate_timestamps(doubled)
    assert dropped == 1
    pd.testing.assert_frame_equal(deduplicated, readings)


def test_wind_direction_is_averaged_as_a_vector():
    stamps = pd.Series(pd.to_datetime(["2020-01-01 01:00"] * 2 + ["2020-01-01 02:00"] * 2))
    mean = mean_direction_degrees(pd.Series([350.0, 10.0, 80.0, 100.0]), stamps)
    assert mean.iloc[0] == pytest.approx(0.0, abs=1e-9) or mean.iloc[0] == pytest.approx(360.0)
    assert mean.iloc[1] == pytest.approx(90.0)


def test_hours_are_labelled_by_their_end(readings):
    hourly = to_hourly(readings)
    assert hourly.index[0] == pd.Timestamp("2020-01-01 01:00")
    expected = readings[schema.TEMPERATURE].iloc[:6].mean()  # 00:10 .. 01:00
    assert hourly[schema.TEMPERATURE].iloc[0] == pytest.approx(expected)
    assert len(hourly) == len(readings) // 6


def test_run_lengths():
    missing = np.array([0, 1, 1, 0, 1, 0, 1, 1, 1], dtype=bool)
    np.testing.assert_array_equal(run_lengths(missing), [0, 2, 2, 0, 1, 0, 3, 3, 3])


def test_short_gaps_are_filled_and_long_gaps_stay():
    grid = pd.date_range("2020-01-01 01:00", periods=20, freq="h")
    hourly = pd.DataFrame({name: np.arange(20, dtype=float) for name in schema.MEASUREMENTS}, index=grid)
    hourly[schema.WIND_DIRECTION] = 350.0
    hourly.iloc[3:5] = np.nan  # 2 empty hours: filled
    hourly.iloc[9:14] = np.nan  # 5 empty hours: left
    hourly.loc[grid[3], schema.WIND_DIRECTION] = np.nan
    filled, report = fill_short_gaps(hourly, max_fill_hours=3)
    np.testing.assert_allclose(filled[schema.TEMPERATURE].iloc[3:5], [3.0, 4.0])
    assert filled[schema.WIND_DIRECTION].iloc[3] == pytest.approx(350.0)
    assert filled.iloc[9:14].isna().all().all()
    assert report == {"empty_hours": 7, "gaps_filled": 1, "gaps_left": 1, "hours_left_missing": 5}


def test_prepare_reports_what_it_cleaned(readings):
    readings.loc[3, schema.MAX_WIND_SPEED] = schema.SENTINEL
    gapped = readings.drop(index=range(60, 90))  # 5 hours without readings
    doubled = pd.concat([gapped, gapped.iloc[[10, 11]]], ignore_index=True)
    hourly, report = prepare(doubled, max_fill_hours=3)
    assert report["rows_in"] == len(doubled)
    assert report["duplicates_dropped"] == 2
    assert report["sentinels_replaced"] == 1
    assert report["hours_out"] == 48
    assert report["gaps_left"] == 1 and report["hours_left_missing"] == 5
    assert hourly.index.freq == "h" or (hourly.index[1:] - hourly.index[:-1] == pd.Timedelta("1h")).all()


def test_stage_writes_table_and_report(tmp_path, readings):
    (tmp_path / "params.yaml").write_text("prepare:\n  max_fill_hours: 3\n")
    (tmp_path / "data/raw").mkdir(parents=True)
    write(tmp_path / "data/raw", to_csv_text(readings), schema.CSV_NAME)
    result = run_stage("prepare", tmp_path)
    assert result.returncode == 0, result.stderr
    table = pd.read_parquet(tmp_path / "data/prepared/hourly.parquet")
    assert list(table.columns) == schema.COLUMNS and len(table) == 48
    report = json.loads((tmp_path / "metrics/prepare.json").read_text())
    assert report["rows_in"] == len(readings)


def test_stage_fails_cleanly_on_bad_data(tmp_path, readings):
    (tmp_path / "params.yaml").write_text("prepare:\n  max_fill_hours: 3\n")
    (tmp_path / "data/raw").mkdir(parents=True)
    lines = to_csv_text(readings).splitlines()
    lines[1] = lines[1].replace(",", ",nine-ninety", 1)
    write(tmp_path / "data/raw", "\n".join(lines), schema.CSV_NAME)
    result = run_stage("prepare", tmp_path)
    assert result.returncode != 0
    assert "column 'p (mbar)', line 2" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "data/prepared").exists() and not (tmp_path / "metrics").exists()
