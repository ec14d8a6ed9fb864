"""The synthetic Jena data: the real file's format, coherent physics, its quirks, and its statistics.

Most tests use two summer months (a fraction of a second to generate); one test
generates the full 2009-2016 range and checks the calibration against the real
data, including that a 24-hours-ahead forecast is possible but not trivial.
"""

import csv
import datetime
import re

import numpy as np
import pandas as pd
import pytest

from pipeline import schema, synthetic

START, END, SEED = "2015-06-01", "2015-08-01", 7
EXPECTED_ROWS = 61 * 144  # June and July, one reading per 10 minutes
REAL_HEADER = (
    '"Date Time","p (mbar)","T (degC)","Tpot (K)","Tdew (degC)","rh (%)","VPmax (mbar)","VPact (mbar)",'
    '"VPdef (mbar)","sh (g/kg)","H2OC (mmol/mol)","rho (g/m**3)","wv (m/s)","max. wv (m/s)","wd (deg)"\n'
)
NUMBER = re.compile(r"-?\d+\.\d\d")


@pytest.fixture(scope="module")
def two_months() -> pd.DataFrame:
    return synthetic.generate_readings(START, END, seed=SEED)


@pytest.fixture(scope="module")
def csv_path(two_months, tmp_path_factory):
    path = tmp_path_factory.mktemp("synthetic") / schema.CSV_NAME
    synthetic.write_jena_csv(two_months, path)
    return path


@pytest.fixture(scope="module")
def two_years() -> pd.DataFrame:
    return synthetic.generate_readings("2011-01-01", "2013-01-01", seed=SEED)


def valid_wind(readings: pd.DataFrame) -> pd.DataFrame:
    return readings[(readings[schema.SENTINEL_COLUMNS] != schema.SENTINEL).all(axis=1)]


def hourly(readings: pd.DataFrame) -> pd.DataFrame:
    """Hourly means of T, p and rh, duplicates dropped and gaps interpolated."""
    unique = readings.drop_duplicates(schema.DATE_COLUMN).set_index(schema.DATE_COLUMN)
    table = unique[[schema.TEMPERATURE, schema.PRESSURE, "rh (%)"]].resample("1h").mean()
    return table.interpolate(limit_direction="both").set_axis(["T", "p", "rh"], axis=1)


# --- the API and the time axis ---------------------------------------------------------------


def test_columns_and_dtypes(two_months):
    assert list(two_months.columns) == schema.COLUMNS
    assert pd.api.types.is_datetime64_any_dtype(two_months[schema.DATE_COLUMN])
    assert all(two_months[name].dtype == np.float64 for name in schema.MEASUREMENTS)
    assert two_months[schema.MEASUREMENTS].notna().all().all()


def test_readings_run_from_after_start_to_end_on_the_10_minute_grid(two_months):
    times = two_months[schema.DATE_COLUMN]
    assert times.iloc[0] == pd.Timestamp("2015-06-01 00:10:00")
    assert times.iloc[-1] == pd.Timestamp("2015-08-01 00:00:00")
    assert times.is_monotonic_increasing
    assert (times.dt.minute % 10 == 0).all() and (times.dt.second == 0).all()
    assert times.nunique() < EXPECTED_ROWS  # some readings are missing ...
    assert times.nunique() >= EXPECTED_ROWS - 3 * 6  # ... but only one short gap, of 3 h at most


def test_empty_range_is_an_error():
    with pytest.raises(ValueError, match="end must be after start"):
        synthetic.generate_readings("2015-06-01", "2015-06-01", seed=SEED)


# --- the CSV format ----------------------------------------------------------------------------


def test_header_is_the_real_files_header(csv_path):
    with open(csv_path, "rb") as handle:
        assert handle.readline() == REAL_HEADER.encode("ascii")


def test_rows_have_the_real_files_format(csv_path, two_months):
    raw = csv_path.read_bytes()
    assert b"\r" not in raw and raw.endswith(b"\n")
    body = raw.decode("ascii").split("\n", 1)[1]
    assert '"' not in body  # only the header is quoted
    rows = list(csv.reader(body.splitlines()))
    assert len(rows) == len(two_months)
    for row in rows:
        assert len(row) == len(schema.COLUMNS)
        stamp = datetime.datetime.strptime(row[0], schema.DATE_FORMAT)
        assert stamp.strftime(schema.DATE_FORMAT) == row[0]  # zero-padded, as in 01.01.2009 00:10:00
        assert all(NUMBER.fullmatch(value) for value in row[1:]), row
    assert rows[0][0] == "01.06.2015 00:10:00"


def test_csv_reads_back_to_the_readings(csv_path, two_months):
    back = pd.read_csv(csv_path)
    back[schema.DATE_COLUMN] = pd.to_datetime(back[schema.DATE_COLUMN], format=schema.DATE_FORMAT)
    assert list(back.columns) == schema.COLUMNS
    assert (back[schema.DATE_COLUMN].to_numpy() == two_months[schema.DATE_COLUMN].to_numpy()).all()
    np.testing.assert_allclose(back[schema.MEASUREMENTS], two_months[schema.MEASUREMENTS], rtol=0, atol=1e-9)


def test_writer_formats_any_value_like_printf(tmp_path):
    values = [0.0, -0.0, 0.004, -0.004, 0.005, -0.016, 9.999, -9999.0, 1307.75, 12345.678, -23.4, 99999.99]
    frame = pd.DataFrame({schema.DATE_COLUMN: pd.to_datetime(["2016-12-31 23:50:00"] * len(values))})
    for index, name in enumerate(schema.MEASUREMENTS):
        frame[name] = np.roll(values, index)
    synthetic.write_jena_csv(frame, tmp_path / "tricky.csv")
    lines = (tmp_path / "tricky.csv").read_text().splitlines()[1:]
    for line, (_, row) in zip(lines, frame.iterrows()):
        # Rounded to hundredths as numpy rounds (0.005 is a tie, to even), printed as '%.2f',
        # but without the minus of '-0.00', which a logger never writes.
        printed = ["%.2f" % np.round(value, 2) for value in row.iloc[1:]]
        expected = ["31.12.2016 23:50:00"] + [text.replace("-0.00", "0.00") for text in printed]
        assert line.split(",") == expected


def test_writer_refuses_values_it_cannot_write(tmp_path):
    frame = synthetic.generate_readings(START, "2015-06-02", seed=SEED).head(3).copy()
    frame.loc[1, schema.TEMPERATURE] = np.nan
    with pytest.raises(ValueError, match="not finite"):
        synthetic.write_jena_csv(frame, tmp_path / "bad.csv")


# --- determinism -------------------------------------------------------------------------------


def test_same_seed_gives_the_same_bytes_and_another_seed_other_bytes(tmp_path, csv_path):
    synthetic.write_jena_csv(synthetic.generate_readings(START, END, seed=SEED), tmp_path / "again.csv")
    synthetic.write_jena_csv(synthetic.generate_readings(START, END, seed=SEED + 1), tmp_path / "other.csv")
    assert (tmp_path / "again.csv").read_bytes() == csv_path.read_bytes()
    assert (tmp_path / "other.csv").read_bytes() != csv_path.read_bytes()


# --- physics -----------------------------------------------------------------------------------


def test_derived_columns_follow_from_t_p_rh(two_years):
    r = {name: two_years[name].to_numpy() for name in schema.MEASUREMENTS}
    t, p, rh, vp_max, vp_act = r["T (degC)"], r["p (mbar)"], r["rh (%)"], r["VPmax (mbar)"], r["VPact (mbar)"]
    magnus = 6.1078 * np.exp(17.27 * t / (t + 237.3))
    # Each column is rounded to 0.01, so each identity holds to a few hundredths.
    np.testing.assert_allclose(vp_max, magnus, atol=0.011)
    np.testing.assert_allclose(vp_act, rh / 100 * vp_max, atol=0.011)
    np.testing.assert_allclose(r["VPdef (mbar)"], vp_max - vp_act, atol=0.011)
    tdew = r["Tdew (degC)"]
    # Compared as vapour pressures: rounding Tdew by 0.005 degC moves its Magnus value by up to 0.05 %.
    np.testing.assert_allclose(6.1078 * np.exp(17.27 * tdew / (tdew + 237.3)), vp_act, rtol=5e-4, atol=0.0055)
    np.testing.assert_allclose(r["sh (g/kg)"], 622 * vp_act / (p - 0.378 * vp_act), atol=0.011)
    np.testing.assert_allclose(r["H2OC (mmol/mol)"], 1000 * vp_act / p, atol=0.011)
    np.testing.assert_allclose(r["Tpot (K)"], (t + 273.15) * (1000 / p) ** 0.286, atol=0.011)
    np.testing.assert_allclose(r["rho (g/m**3)"], p * 1e5 / (287.05 * (t + 273.15)), atol=0.011)
    assert (rh <= 100).all() and (rh > 0).all()
    assert (tdew <= t + 0.01).all()
    assert 1100 < r["rho (g/m**3)"].mean() < 1350  # g/m**3, as in the real file


def test_wind_is_physical(two_years):
    wind = valid_wind(two_years)
    speed, gust, direction = (wind[name] for name in (schema.WIND_SPEED, schema.MAX_WIND_SPEED, schema.WIND_DIRECTION))
    assert (speed >= 0).all() and (gust >= speed).all()
    assert 1.5 < speed.mean() < 2.6 and 2.8 < gust.mean() < 4.2
    assert ((direction >= 0) & (direction < 360)).all()
    # Prevailing south-westerlies to westerlies, and a direction that persists between readings.
    assert ((direction >= 180) & (direction < 300)).mean() > 0.5
    change = direction.diff().abs().dropna()
    assert np.minimum(change, 360 - change).median() < 10


def test_summer_days_swing_more_than_winter_days(two_years):
    table = hourly(two_years)
    daily = table["T"].resample("1D").agg(["min", "max"])
    swing = (daily["max"] - daily["min"]).groupby(daily.index.month).mean()
    assert swing[[6, 7, 8]].mean() > 1.4 * swing[[12, 1, 2]].mean()
    monthly = table["T"].groupby(table.index.month).mean()
    assert monthly[7] - monthly[1] > 12  # and summers are warmer, of course
    by_hour = table["T"].groupby(table.index.hour).mean()
    assert 3 <= by_hour.idxmin() <= 7 and 12 <= by_hour.idxmax() <= 17


def test_pressure_tendency_announces_tomorrows_temperature(two_years):
    table = hourly(two_years)
    t, p = table["T"].to_numpy(), table["p"].to_numpy()
    now = np.arange(24, len(t) - 24)
    pressure_tendency = p[now] - p[now - 24]
    coming = np.corrcoef(pressure_tendency, t[now + 24] - t[now])[0, 1]
    past = np.corrcoef(pressure_tendency, t[now] - t[now - 24])[0, 1]
    assert coming < -0.3  # falling pressure: warmer tomorrow, as ahead of a warm front
    assert abs(past) < 0.15  # and it is a lead, not a coincidence


# --- quirks ------------------------------------------------------------------------------------


def short_gaps_and_long_gaps(readings: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    steps = readings[schema.DATE_COLUMN].drop_duplicates().diff().dropna()
    missing_hours = (steps - synthetic.STEP) / pd.Timedelta(hours=1)
    return missing_hours[(missing_hours > 0) & (missing_hours <= 3)], missing_hours[missing_hours >= 24]


@pytest.mark.parametrize("end", ["2015-06-22", END])
def test_short_ranges_have_every_quirk(end):
    readings = synthetic.generate_readings(START, end, seed=SEED)
    assert valid_wind(readings).shape[0] < len(readings), "no failed wind sensor"
    duplicated = readings[schema.DATE_COLUMN].duplicated()
    assert duplicated.sum() >= 1
    assert readings.duplicated().sum() == duplicated.sum()  # duplicated rows, not conflicting ones
    short, long = short_gaps_and_long_gaps(readings)
    assert len(short) >= 1 and len(long) == 0
    # Whole clock hours go missing, so that hourly averages (00:10 ... 01:00 -> 01:00) see the gap.
    assert (short == short.round()).all()
    hours = readings[schema.DATE_COLUMN].dt.ceil("h").drop_duplicates()
    assert len(pd.date_range(hours.iloc[0], hours.iloc[-1], freq="h")) - len(hours) == short.sum()


def test_sentinels_are_only_in_the_wind_columns(two_months):
    is_sentinel = two_months[schema.MEASUREMENTS] == schema.SENTINEL
    assert is_sentinel.any().loc[schema.SENTINEL_COLUMNS].all()
    assert not is_sentinel.drop(columns=schema.SENTINEL_COLUMNS).any().any()


# --- calibration at full size ------------------------------------------------------------------


def forecast_errors(table: pd.DataFrame) -> dict[str, float]:
    """Test MAE of persistence, climatology and a linear model, 24 h ahead from 120 h of history.

    Chronological split as in params.yaml: train on the first half of the hours,
    test on the last quarter (by target hour).
    """
    t, p, rh = (table[name].to_numpy() for name in ("T", "p", "rh"))
    last = np.arange(119, len(t) - 24)  # the last hour of each 120-hour history
    target = last + 24
    train, test = target < 0.5 * len(t), target >= 0.75 * len(t)
    angle_hour = 2 * np.pi * table.index.hour.to_numpy()[target] / 24
    angle_year = 2 * np.pi * table.index.day_of_year.to_numpy()[target] / 365.25
    cumulative = np.concatenate([[0.0], np.cumsum(t)])
    features = np.column_stack(
        [
            np.ones(len(last)),
            t[last],
            t[last - 24],
            (cumulative[last + 1] - cumulative[last - 23]) / 24,
            p[last] - p[last - 24],
            rh[last],
            np.sin(angle_hour),
            np.cos(angle_hour),
            np.sin(angle_year),
            np.cos(angle_year),
        ]
    )
    coefficients, *_ = np.linalg.lstsq(features[train], t[target][train], rcond=None)
    # Climatology: the training years' mean for that day of year and hour.
    keys = pd.MultiIndex.from_arrays([table.index.day_of_year, table.index.hour])
    climate = pd.Series(t[: int(0.5 * len(t))]).groupby(keys[: int(0.5 * len(t))]).mean()
    climatology = climate.reindex(keys[target[test]]).to_numpy()
    known = ~np.isnan(climatology)  # a 29 February may be missing
    return {
        "persistence": np.abs(t[last][test] - t[target][test]).mean(),
        "linear": np.abs(features[test] @ coefficients - t[target][test]).mean(),
        "climatology": np.abs(climatology[known] - t[target][test][known]).mean(),
    }


def test_full_range_is_calibrated_to_the_real_data():
    readings = synthetic.generate_readings("2009-01-01", "2017-01-01", seed=42)
    wind = valid_wind(readings)
    t, p, rh = readings[schema.TEMPERATURE], readings[schema.PRESSURE], readings["rh (%)"]
    # The real file: T 9.45 +- 8.42 degC from -23.0 to 37.3, p 989.2 +- 8.36 mbar, rh 76.0 +- 16.5 %.
    assert abs(t.mean() - 9.45) < 0.6 and abs(t.std() - 8.42) < 0.6
    assert -30 < t.min() < -17 and 30 < t.max() < 40
    assert abs(p.mean() - 989.2) < 2 and abs(p.std() - 8.36) < 1
    assert abs(rh.mean() - 76.0) < 2.5 and abs(rh.std() - 16.5) < 2
    assert abs(wind[schema.WIND_SPEED].mean() - 2.1) < 0.4 and abs(wind[schema.MAX_WIND_SPEED].mean() - 3.5) < 0.5

    # Its quirks, at their real rates.
    assert 10 <= len(readings) - len(wind) <= 40
    assert 0.0001 < readings[schema.DATE_COLUMN].duplicated().mean() < 0.0006
    short, long = short_gaps_and_long_gaps(readings)
    assert len(short) >= 5 and 1 <= len(long) <= 2

    errors = forecast_errors(hourly(readings))
    assert 2.0 < errors["persistence"] < 3.5  # the real data: 2.62
    assert errors["linear"] < 0.92 * errors["persistence"]  # room for a model ...
    assert errors["linear"] > 0.7 * errors["persistence"]  # ... but not a trivial one
    assert errors["linear"] < errors["climatology"]
