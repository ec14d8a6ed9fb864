"""How noisy verification's drift statistics are on clean weather, and how fast injected faults are caught.

    python benchmarks/drift_benchmark.py [--csv jena.csv] [--seasons 4] [--quick]

In:  a record: the full-size synthetic one (default) or a Jena CSV (e.g. the
     real hourly record); params.yaml's `verify` settings.
Out: printed figures.
  1. Clean weather (the record's last quarter, the first half as the training
     split): for every day's 30-day window, the MAE excess's interval (the
     limit is `mae_tolerance`), the coverage interval (the goal widened by
     `coverage_tolerance`), each measurement's PSI (`psi_threshold`) and the
     longest unchanged runs; with the alarms the settings would have raised.
  2. Injection (synthetic only): 60-day live periods starting in each season
     of 2011, a fault from day 30 (the barometer freezes; the thermometer
     reads 2 C warm, every derived column following it as at the station; the
     forecasts turn 1.5 C or 3 C too warm): alarms in the clean 30 days, and the
     first alarm after the fault (hourly for 2 days, then every 12 hours up to
     30 days).
The forecasts come from the tests' deterministic regression forecaster
(tests/helpers/drift_scenario.py), issued every hour.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from forecast import drift, scores  # noqa: E402
from pipeline import schema, synthetic  # noqa: E402
from pipeline.input_statistics import constant_runs  # noqa: E402
from pipeline.prepare import read_raw_csv  # noqa: E402
from tests.helpers.drift_scenario import (  # noqa: E402
    alarms_at,
    fit_regression,
    forecaster_metrics,
    hourly,
    regression_forecasts,
    station_record,
    training_statistics,
)

FAULTS = {"pressure frozen": 0.0, "temperature +2": 0.0, "forecasts +1.5 C": 1.5, "forecasts +3 C": 3.0}
HOUR, DAY = pd.Timedelta(hours=1), pd.Timedelta(days=1)


def clean_weather(readings: pd.DataFrame, settings: dict, goal) -> None:
    """Part 1: the statistics over every day of the record's last quarter."""
    rows = len(readings)
    train, test = readings.iloc[: rows // 2], readings.iloc[int(rows * 0.75) :]
    fitted = fit_regression(train[schema.TEMPERATURE], 24)
    metrics = forecaster_metrics(readings, fitted, test.index)
    statistics = training_statistics(train)
    observed = scores.observed_temperatures(readings, schema.TEMPERATURE)
    matured = scores.matured(regression_forecasts(readings[schema.TEMPERATURE], test.index, fitted), observed)
    final = scores.final_hour_rows(matured)
    points = drift.judgement_points(final["valid_time"].max(), final["valid_time"].min() + 30 * DAY)
    print(
        f"clean weather: {test.index[0]:%Y-%m-%d} to {test.index[-1]:%Y-%m-%d}, {len(points)} daily 30-day windows; "
        f"forecaster test MAE {metrics['test_mae_degC']:.3f} C, persistence {metrics['persistence_mae_degC']:.3f} C"
    )
    excess, coverage, plain = [], [], []
    for point in points:
        statistic, _ = drift.error_alarm(final, 1, metrics, point, settings, seed=42)
        excess.append(statistic["interval"])
        plain.append(statistic["mae_degC"] - metrics["test_mae_degC"])
        statistic, _ = drift.coverage_alarm(matured, 1, ("q10", "q90"), goal, point, settings, seed=42)
        coverage.append(statistic["interval"])
    excess, coverage = np.array(excess), np.array(coverage)
    print(
        f"  30-day +24 h MAE minus the test MAE: {min(plain):+.3f} to {max(plain):+.3f} C; minus what the test "
        f"skill expects in that weather: highest interval low {excess[:, 0].max():+.3f} C "
        f"(mae_tolerance {settings['mae_tolerance']})"
    )
    print(
        f"  30-day band coverage intervals: highest low {coverage[:, 0].max():.1%}, lowest high "
        f"{coverage[:, 1].min():.1%} (goal {goal[0]:.0%}-{goal[1]:.0%} +- coverage_tolerance "
        f"{settings['coverage_tolerance']})"
    )
    print(f"  {'measurement':16s} {'PSI median':>10s} {'PSI max':>8s} {'unchanged h: train':>19s} {'test':>5s}")
    for name, reference in statistics["measurements"].items():
        psi_at = drift.psi_judge(test[name], reference, settings)
        values = np.array([value for value in map(psi_at, points) if value is not None])
        longest = int(constant_runs(test[name].to_numpy()).max())
        print(
            f"  {name:16s} {np.median(values):10.2f} {values.max():8.2f} "
            f"{reference['longest_constant_hours']:19d} {longest:5d}"
        )
    false_alarms = sum(bool(alarms_at(point, test, matured, metrics, statistics, settings, goal)) for point in points)
    print(f"  windows with an alarm under params.yaml's settings: {false_alarms} of {len(points)}")


def injection(season_start: pd.Timestamp, fault: str, settings: dict, goal, quick: bool) -> dict:
    """Part 2 for one live period and fault: clean days with an alarm, and the first alarm after the fault."""
    fault_from = season_start + 30 * DAY
    end = season_start + 61 * DAY
    sensor_fault = None if FAULTS[fault] else fault
    readings = hourly(station_record("2009-01-01", f"{end:%Y-%m-%d}", 42, fault_from.tz_localize(None), sensor_fault))
    train, test = readings.loc[:"2009-12-31 23:00"], readings.loc["2010-01-01":"2010-12-31 23:00"]
    fitted = fit_regression(train[schema.TEMPERATURE], 24)
    metrics = forecaster_metrics(readings, fitted, test.index)
    forecasts = regression_forecasts(readings[schema.TEMPERATURE], readings.loc[season_start:].index, fitted)
    if FAULTS[fault]:
        late = forecasts["issue_time"] >= fault_from
        forecasts.loc[late, ["median", "q10", "q50", "q90"]] += np.float32(FAULTS[fault])
    matured = scores.matured(forecasts, scores.observed_temperatures(readings, schema.TEMPERATURE))
    statistics = training_statistics(train)
    clean_days = range(7, 31, 3 if quick else 1)
    clean = [
        day
        for day in clean_days
        if alarms_at(season_start + day * DAY, readings, matured, metrics, statistics, settings, goal)
    ]
    steps = [fault_from + hours * HOUR for hours in range(1, 49)]
    steps += [fault_from + 48 * HOUR + step * 12 * HOUR for step in range(1, 57)]
    for now in steps:
        alarms = alarms_at(now, readings, matured, metrics, statistics, settings, goal)
        if alarms:
            return {"clean_days_alarmed": clean, "after": now - fault_from, "alarms": alarms}
    return {"clean_days_alarmed": clean, "after": None, "alarms": []}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--csv", help="a Jena-format CSV for part 1 (default: the full-size synthetic record)")
    parser.add_argument("--seasons", type=int, default=4, help="live periods in part 2 (January, April, ...)")
    parser.add_argument("--quick", action="store_true", help="check every third clean day only")
    args = parser.parse_args()
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    settings, goal = params["verify"], params["evaluate"]["coverage_goal"]
    started = time.perf_counter()
    if args.csv:
        record = hourly(read_raw_csv(args.csv))
        print(f"record: {args.csv}")
    else:
        record = hourly(synthetic.generate_readings("2009-01-01", "2017-01-01", 42))
        print("record: synthetic 2009-2016, seed 42")
    clean_weather(record, settings, goal)
    if args.csv:
        print(f"took {time.perf_counter() - started:.0f} s")
        return
    print("injection: fault from day 30 of a 60-day live period; first alarm after it")
    for month in range(1, 13, 12 // args.seasons):
        season_start = pd.Timestamp(f"2011-{month:02d}-01", tz="UTC")
        for fault in FAULTS:
            result = injection(season_start, fault, settings, goal, args.quick)
            alarms = "; ".join(f"{alarm.kind} {alarm.subject} since {alarm.since}" for alarm in result["alarms"])
            after = "none within 30 days" if result["after"] is None else f"after {result['after']}"
            print(
                f"  live from {season_start:%Y-%m-%d}, {fault:17s}: clean days with an alarm "
                f"{result['clean_days_alarmed'] or 'none'}; {after}{': ' + alarms if alarms else ''}"
            )
    print(f"took {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
