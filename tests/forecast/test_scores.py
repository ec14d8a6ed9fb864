"""Scoring archived forecasts: hand-computed answers, and the evaluate stage's figures on the same hours."""

import numpy as np
import pandas as pd
import pytest

from forecast import scores
from pipeline import evaluate, schema
from tests.helpers.training import small_windows

T0 = pd.Timestamp("2020-03-10 12:00", tz="UTC")
HOUR = pd.Timedelta(hours=1)


def forecast(issue_time, medians, lows, highs, version=1):
    """One archived forecast in forecast.archive's schema, the 50 % quantile equal to the median."""
    hours = len(medians)
    return pd.DataFrame(
        {
            "model_name": pd.array(["jena_temperature"] * hours, dtype="string"),
            "model_version": np.int64(version),
            "issue_time": [issue_time] * hours,
            "requested_at": [issue_time + pd.Timedelta(minutes=5)] * hours,
            "hours_ahead": np.arange(1, hours + 1, dtype=np.int16),
            "valid_time": [issue_time + hour * HOUR for hour in range(1, hours + 1)],
            "median": np.float32(medians),
            "q10": np.float32(lows),
            "q50": np.float32(medians),
            "q90": np.float32(highs),
        }
    )


def hourly(observations: dict) -> pd.DataFrame:
    return pd.DataFrame({schema.TEMPERATURE: list(observations.values())}, index=pd.DatetimeIndex(list(observations)))


@pytest.fixture
def hand_made():
    """Three forecasts of two hours: one 10 days old, two recent; the last hour of the newest not yet observed."""
    old = T0 - 240 * HOUR
    archive = pd.concat(
        [
            forecast(old, [20, 20], [19, 19], [21, 21]),
            forecast(T0, [10, 11], [9, 9], [11, 12]),
            forecast(T0 + HOUR, [12, 12], [11, 10], [13, 14]),
        ],
        ignore_index=True,
    )
    observed = hourly(
        {old: 19.0, old + HOUR: 20.0, old + 2 * HOUR: 22.0, T0: 9.0, T0 + HOUR: 10.5, T0 + 2 * HOUR: 13.0}
    )
    return archive, scores.observed_temperatures(observed, schema.TEMPERATURE)


def row(table, window, hours_ahead):
    found = table[(table["window"] == window) & (table["hours_ahead"] == hours_ahead)]
    assert len(found) == 1
    return found.iloc[0]


def test_only_observed_hours_count_and_persistence_is_the_issue_hours_reading(hand_made):
    archive, observed = hand_made
    matured = scores.matured(archive, observed)
    assert len(matured) == 5  # the newest forecast's +2 h (T0 + 3 h) has no observation yet
    assert matured["observed"].tolist() == [20.0, 22.0, 10.5, 13.0, 13.0]
    assert matured["persistence"].tolist() == [19.0, 19.0, 9.0, 9.0, 10.5]
    earlier = scores.matured(archive, observed, now=T0 + HOUR)
    assert len(earlier) == 3  # as of T0 + 1 h only the old forecast and the +1 h of T0's had matured


def test_mae_bias_pinball_and_coverage_by_hand(hand_made):
    archive, observed = hand_made
    matured = scores.matured(archive, observed)
    table = scores.score_table(matured, now=T0 + 2 * HOUR)
    # recent rows: (median, observed) = (10, 10.5), (11, 13), (12, 13); bands [9, 11], [9, 12], [11, 13]
    recent = row(table, "7d", "all")
    assert recent["mae_degC"] == pytest.approx(3.5 / 3)
    assert recent["bias_degC"] == pytest.approx(-3.5 / 3)
    assert recent["coverage"] == pytest.approx(2 / 3)
    # pinball per row over q10, q50, q90: 0.15 + 0.25 + 0.05, 0.4 + 1.0 + 0.9, 0.2 + 0.5 + 0
    assert recent["pinball_loss_degC"] == pytest.approx(3.45 / 9)
    assert recent["hours"] == 3
    first_hour = row(table, "7d", "1")
    assert (first_hour["mae_degC"], first_hour["coverage"]) == (pytest.approx(0.75), pytest.approx(1.0))
    assert first_hour["pinball_loss_degC"] == pytest.approx(1.15 / 6)
    second_hour = row(table, "7d", "2")
    assert (second_hour["mae_degC"], second_hour["bias_degC"], second_hour["coverage"]) == (2, -2, 0)
    # the 10-day-old forecast (errors 0 and -2, in band then not) counts in `all` only
    overall = row(table, "all", "all")
    assert overall["mae_degC"] == pytest.approx(5.5 / 5) and overall["hours"] == 5
    assert overall["coverage"] == pytest.approx(3 / 5)
    assert row(table, "30d", "all")["hours"] == 5


def test_daily_scores_take_each_versions_last_hour_ahead(hand_made):
    archive, observed = hand_made
    daily = scores.daily_scores(scores.matured(archive, observed))
    assert daily["day"].tolist() == ["2020-02-29", "2020-03-10"]
    assert daily["hours_ahead"].tolist() == [2, 2]
    assert daily["mae_degC"].tolist() == [2.0, 2.0]  # (20 vs 22) and (11 vs 13)


def test_a_version_scores_with_its_own_quantile_levels(hand_made):
    """An archive read across versions holds the union of their quantile columns, NaN where a version has none."""
    archive, observed = hand_made
    other = forecast(T0, [10, 11], [8, 8], [12, 12], version=2).rename(columns={"q10": "q5", "q90": "q95"})
    table = scores.score_table(scores.matured(pd.concat([archive, other], ignore_index=True), observed), T0 + 2 * HOUR)
    assert row(table[table["model_version"] == 2], "all", "all")["coverage"] == pytest.approx(0.5)  # 10.5 in, 13 out
    assert row(table[table["model_version"] == 1], "all", "all")["coverage"] == pytest.approx(3 / 5)


def archived(windows, starts, quantiles, levels) -> pd.DataFrame:
    """The forecasts [samples, hours, levels] made from the histories at `starts`, as archive rows."""
    horizon = quantiles.shape[1]
    issued = pd.to_datetime(windows.timestamps[starts + windows.lookback - 1], unit="s", utc=True).as_unit("s")
    hours = np.tile(np.arange(1, horizon + 1), len(starts))
    frame = pd.DataFrame(
        {
            "model_name": pd.array(["jena_temperature"] * len(hours), dtype="string"),
            "model_version": np.int64(3),
            "issue_time": np.repeat(issued, horizon),
            "requested_at": np.repeat(issued, horizon),
            "hours_ahead": hours.astype(np.int16),
            "valid_time": np.repeat(issued, horizon) + pd.to_timedelta(hours, "h"),
            "median": quantiles[..., 1].ravel(),
        }
    )
    for index, level in enumerate(levels):
        frame[f"q{round(level * 100)}"] = quantiles[..., index].ravel()
    return frame


def test_the_verified_mae_is_the_evaluate_stages_on_the_same_hours():
    """The same forecasts of the test split, scored by evaluate as the blessing does and by verification from
    the archive's rows and the hourly observations: the same figures."""
    windows = small_windows(days=90, lookback=24, horizon=6)
    starts = windows.starts["test"]
    levels = [0.1, 0.5, 0.9]
    temperature = windows.hourly[:, schema.column_index(schema.TEMPERATURE)]
    last = temperature[starts + windows.lookback - 1]
    rng = np.random.default_rng(0)
    drift = np.cumsum(rng.normal(0, 0.4, (len(starts), windows.horizon)), axis=1)
    quantiles = (last[:, None, None] + drift[..., None] + np.array([-1.5, 0.0, 1.5])).astype(np.float32)
    observed_paths = windows.paths(starts).astype(np.float64)

    expected = evaluate.path_metrics(observed_paths, quantiles.astype(np.float64), levels)
    expected_final = evaluate.evaluation_metrics(
        observed_paths[:, -1], quantiles[:, -1, 1].astype(np.float64), last, last
    )["test_mae_degC"]

    observations = pd.DataFrame(
        {schema.TEMPERATURE: temperature},
        index=pd.to_datetime(np.asarray(windows.timestamps), unit="s"),
    )
    matured = scores.matured(
        archived(windows, starts, quantiles, levels), scores.observed_temperatures(observations, schema.TEMPERATURE)
    )
    assert len(matured) == len(starts) * windows.horizon  # the helper's series has no gaps
    table = scores.score_table(matured, now=matured["valid_time"].max())
    overall, final = row(table, "all", "all"), row(table, "all", str(windows.horizon))
    assert final["mae_degC"] == pytest.approx(expected_final, abs=1e-9)
    assert overall["mae_degC"] == pytest.approx(expected["test_mae_all_hours_degC"], abs=1e-9)
    assert overall["pinball_loss_degC"] == pytest.approx(expected["mean_pinball_loss_degC"], abs=1e-9)
    assert overall["coverage"] == pytest.approx(expected["band_coverage"], abs=1e-12)
    assert row(table, "all", "1")["mae_degC"] == pytest.approx(expected["test_mae_1h_degC"], abs=1e-9)
    assert final["coverage"] == pytest.approx(expected["band_coverage_final_hour"], abs=1e-12)
