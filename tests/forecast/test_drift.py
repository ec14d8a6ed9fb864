"""Drift alarms: each statistic on hand-made data, and a sensor fault injected into a synthetic record."""

import numpy as np
import pandas as pd
import pytest

from forecast import drift, scores
from pipeline import schema
from tests.helpers.drift_scenario import (
    alarms_at,
    fit_regression,
    forecaster_metrics,
    hourly,
    regression_forecasts,
    station_record,
    training_statistics,
)

SETTINGS = {
    "drift_window_days": 30,
    "min_days": 7,
    "mae_tolerance": 0.2,
    "coverage_tolerance": 0.15,
    "confidence": 0.95,
    "block_days": 7,
    "bootstrap_replicates": 500,
    "psi_window_days": 30,
    "psi_min_days": 24,
    "psi_threshold": 0.25,  # the textbook threshold suits these tests' independent readings
    "stuck_hours": 6,
}
HOUR = pd.Timedelta(hours=1)


def independent_readings(start: str, hours: int, seed: int) -> pd.DataFrame:
    """Hourly readings without weather: every measurement independent normal noise around its own mean."""
    rng = np.random.default_rng(seed)
    index = pd.date_range(start, periods=hours, freq="h", tz="UTC")
    return pd.DataFrame(
        {name: 10 * column + rng.normal(0, 1 + column, hours) for column, name in enumerate(schema.MEASUREMENTS)},
        index=index,
    )


def test_psi_is_zero_for_the_same_shares_and_grows_with_the_shift():
    even = np.full(10, 0.1)
    assert drift.psi(even, even) == 0
    shifted = np.r_[0.0, even[1:-1], 0.2]
    assert drift.psi(shifted, even) == pytest.approx(0.1 * np.log(0.1 / 1e-4) + 0.1 * np.log(2) - 0.0999 * 0, rel=1e-2)
    assert drift.psi(np.r_[1.0, np.zeros(9)], even) > drift.psi(shifted, even)


def test_psi_and_the_unchanged_run_catch_an_offset_and_a_stuck_sensor():
    training = independent_readings("2019-01-01", 365 * 24, seed=1)
    statistics = training_statistics(training)
    recent = independent_readings("2020-01-01", 40 * 24, seed=2)
    offset_from = recent.index[20 * 24]
    recent.loc[offset_from:, "p (mbar)"] += 2 * training["p (mbar)"].std()  # two standard deviations
    stuck_from = recent.index[-30]
    recent.loc[stuck_from:, "wv (m/s)"] = recent.loc[stuck_from, "wv (m/s)"]
    now = recent.index[-1]

    found, alarms = drift.input_alarms(recent, statistics, now, SETTINGS)
    assert {(alarm.kind, alarm.subject) for alarm in alarms} == {("psi", "p (mbar)"), ("stuck", "wv (m/s)")}
    stuck = next(alarm for alarm in alarms if alarm.kind == "stuck")
    assert stuck.since == f"{stuck_from:%Y-%m-%d %H:%M}" and found["wv (m/s)"]["unchanged_hours"] == 30
    offset = next(alarm for alarm in alarms if alarm.kind == "psi")
    # the 30-day window holds more shifted than clean readings from about 5 days after the fault on
    assert offset_from.normalize() < pd.Timestamp(offset.since, tz="UTC") <= offset_from + pd.Timedelta(days=12)
    assert found["p (mbar)"]["psi"] > 1 and max(found[name]["psi"] for name in schema.MEASUREMENTS[2:11]) < 0.1


def test_a_run_as_long_as_trainings_longest_is_no_alarm():
    training = independent_readings("2019-01-01", 90 * 24, seed=3)
    training.iloc[100:150, schema.column_index("rh (%)")] = 100.0  # 50 foggy hours at saturation
    statistics = training_statistics(training)
    assert statistics["measurements"]["rh (%)"]["longest_constant_hours"] == 50
    recent = independent_readings("2019-04-01", 40 * 24, seed=4)
    recent.iloc[-50:, schema.column_index("rh (%)")] = 100.0
    assert drift.input_alarms(recent, statistics, recent.index[-1], SETTINGS)[1] == []
    recent.iloc[-51:, schema.column_index("rh (%)")] = 100.0
    assert [alarm.kind for alarm in drift.input_alarms(recent, statistics, recent.index[-1], SETTINGS)[1]] == ["stuck"]


def final_rows(days: int, excess_from_day: int | None, excess: float, seed: int = 0) -> pd.DataFrame:
    """+24 h forecast rows, one per hour, whose absolute error is `ratio` times persistence's (the test skill)
    plus `excess` from day `excess_from_day` on."""
    rng = np.random.default_rng(seed)
    valid = pd.date_range("2021-01-02", periods=days * 24, freq="h", tz="UTC")
    observed = rng.normal(5, 3, len(valid))
    persistence_error = np.abs(rng.normal(0, 2.5, len(valid)))
    error = 0.9 * persistence_error
    if excess_from_day is not None:
        error[excess_from_day * 24 :] += excess
    return pd.DataFrame(
        {
            "valid_time": valid,
            "hours_ahead": np.int16(24),
            "observed": observed,
            "median": observed + error,
            "persistence": observed - persistence_error,
        }
    )


METRICS = {"test_mae_degC": 2.25, "persistence_mae_degC": 2.5}  # a test skill of 10 %


def test_a_version_as_good_as_its_test_skill_raises_no_error_alarm():
    rows = final_rows(40, None, 0.0)
    statistic, alarm = drift.error_alarm(rows, 1, METRICS, rows["valid_time"].max(), SETTINGS, seed=0)
    assert alarm is None
    assert statistic["estimate"] == pytest.approx(0.0, abs=1e-9)
    assert statistic["mae_degC"] == pytest.approx(statistic["expected_mae_degC"])


def test_a_version_worse_than_its_test_skill_raises_the_error_alarm_naming_since_when():
    rows = final_rows(40, excess_from_day=20, excess=1.0)
    now = rows["valid_time"].max()
    statistic, alarm = drift.error_alarm(rows, 4, METRICS, now, SETTINGS, seed=0)
    assert statistic["estimate"] == pytest.approx(20 / 30, abs=0.01)  # 20 of the window's 30 days are worse by 1 C
    assert alarm.kind == "mae" and alarm.subject == "version 4" and "+24 h MAE over 30 days" in alarm.message
    since = pd.Timestamp(alarm.since, tz="UTC")
    assert pd.Timestamp("2021-01-22", tz="UTC") < since <= now.normalize()  # after the version got worse
    # the day before `since`, the interval did not clear the tolerance yet
    before, _ = drift.error_alarm(rows, 4, METRICS, since - pd.Timedelta(days=1) + (now - now.normalize()), SETTINGS, 0)
    assert before["interval"][0] <= SETTINGS["mae_tolerance"]


def test_too_few_days_are_not_judged():
    rows = final_rows(6, excess_from_day=0, excess=5.0)
    statistic, alarm = drift.error_alarm(rows, 1, METRICS, rows["valid_time"].max(), SETTINGS, seed=0)
    assert statistic is None and alarm is None


def band_rows(days: int, inside_share: float) -> pd.DataFrame:
    valid = pd.date_range("2021-01-02", periods=days * 24, freq="h", tz="UTC")
    inside = (np.arange(len(valid)) % 100) < inside_share * 100
    return pd.DataFrame({"valid_time": valid, "observed": np.where(inside, 0.0, 5.0), "q10": -1.0, "q90": 1.0})


@pytest.mark.parametrize(("share", "alarmed"), [(0.8, False), (0.7, False), (1.0, True), (0.5, True)])
def test_the_coverage_alarm_allows_for_the_tolerance(share, alarmed):
    rows = band_rows(35, share)
    statistic, alarm = drift.coverage_alarm(
        rows, 2, ("q10", "q90"), [0.78, 0.82], rows["valid_time"].max(), SETTINGS, seed=0
    )
    assert statistic["estimate"] == pytest.approx(share, abs=0.02)  # 30 days of a 100-hour pattern
    assert (alarm is not None) == alarmed


LIVE_START = pd.Timestamp("2011-01-01", tz="UTC")
FAULT_FROM = LIVE_START + pd.Timedelta(days=30)
DETECTION_BOUND = pd.Timedelta(hours=12)  # measured: 7 h (benchmarks/drift_benchmark.py)


@pytest.fixture(scope="module")
def frozen_barometer(request):
    """A synthetic record whose barometer freezes 30 days into a 60-day live period, a training year before it
    (the card's statistics) and a year that gives the forecaster's test figures; forecasts issued every hour
    of the live period."""
    readings = hourly(station_record("2009-01-01", "2011-03-02", 42, FAULT_FROM.tz_localize(None), "pressure frozen"))
    train, test = readings.loc[:"2009-12-31 23:00"], readings.loc["2010-01-01":"2010-12-31 23:00"]
    fitted = fit_regression(train[schema.TEMPERATURE], 24)
    observed = scores.observed_temperatures(readings, schema.TEMPERATURE)
    metrics = forecaster_metrics(readings, fitted, test.index)
    live = readings.loc[LIVE_START:]
    forecasts = regression_forecasts(readings[schema.TEMPERATURE], live.index, fitted)
    return readings, scores.matured(forecasts, observed), metrics, training_statistics(train)


def test_a_frozen_barometer_is_caught_within_the_bound_and_the_clean_month_raises_nothing(frozen_barometer, params):
    """The drift injection: params.yaml's own verify settings, a regression forecaster's forecasts of record."""
    readings, matured, metrics, statistics = frozen_barometer
    settings = params["verify"]
    for day in range(7, 31):  # every day of the clean month, at midnight and at noon
        for now in (LIVE_START + pd.Timedelta(days=day), LIVE_START + pd.Timedelta(days=day, hours=-12)):
            assert alarms_at(now, readings, matured, metrics, statistics, settings) == [], now
    for hours in range(1, 25):
        now = FAULT_FROM + hours * HOUR
        alarms = alarms_at(now, readings, matured, metrics, statistics, settings)
        if alarms:
            break
    assert [(alarm.kind, alarm.subject) for alarm in alarms] == [("stuck", "p (mbar)")]
    assert now - FAULT_FROM <= DETECTION_BOUND
    assert alarms[0].since == f"{FAULT_FROM + HOUR:%Y-%m-%d %H:%M}"  # the first hour averaging frozen readings
