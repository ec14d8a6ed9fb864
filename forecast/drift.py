"""Drift: alarms when the served version is no longer as good as it was blessed, or its readings no longer
what it was trained on.

In:  the served version's matured forecast rows (forecast.scores.matured),
     its model card (`metrics.test_mae_degC`, `input_statistics`), the
     prepared hourly readings (UTC index), `now`, params `verify.*` (see
     docs/params.md), `evaluate.coverage_goal` and `seed`.
Out: `Alarm`s, each naming what drifted and since when, and the statistics
     behind them (for the JSON summary, Prometheus and the page).

Each statistic is judged at `now` and then a day earlier, and earlier, for as
long as it stays over its limit: the earliest of those days is the alarm's
`since` (the first day of the current crossing).

- MAE: the +horizon (+24 h) MAE of the forecasts valid in the last
  `drift_window_days` days, against what the version's test skill expects in
  that weather. A month's MAE swings with its weather far more than a
  small drift (on the real record a 30-day MAE lies up to 1 C either side of
  the year's), so the expectation is the test MAE scaled by persistence's
  MAE on the same hours (`error_alarm`). One month of weather is a small
  sample (errors persist for days), so the excess is judged with a
  moving-block bootstrap over days (pipeline.scores, as the blessing is):
  alarm when its whole interval lies above `mae_tolerance`.
- Coverage: the band's coverage (all hours ahead) over the same window, with
  its interval: alarm when the whole interval lies outside
  `evaluate.coverage_goal` widened by `coverage_tolerance` on each side (a
  month's coverage swings with its weather too).
- Input PSI: per measurement, the population stability index of the last
  `psi_window_days` days of readings against the training split's deciles of
  the same calendar month, sum over bins of (p - q) ln(p / q), judged with
  readings on at least `psi_min_days` days. Weather persists, so even a clean
  month's PSI is far above the textbook 0.25: `psi_threshold` is set above
  what clean months reach (docs/verification.md).
- Stuck: a measurement unchanged for longer than both `stuck_hours` and the
  longest unchanged run in the training split.
MAE and coverage windows with forecasts on fewer than `min_days` days are not
judged.
"""

from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipeline.input_statistics import BINS, constant_runs, decile_bins
from pipeline.scores import percentile_interval, resampled_totals, sample_days

DAY = pd.Timedelta(days=1)
HOUR = pd.Timedelta(hours=1)
PSI_FLOOR = 1e-4  # an empty bin counts as this share, so that the logarithm stays finite


@dataclass(frozen=True)
class Alarm:
    kind: str  # "mae", "coverage", "psi" or "stuck"
    subject: str  # "version 3" or a measurement
    since: str  # the first day (or hour) of the current crossing, UTC
    message: str

    def line(self) -> str:
        return f"verify: ALARM {self.kind}: {self.subject}: {self.message}, since {self.since}"

    def as_dict(self) -> dict:
        return {"kind": self.kind, "subject": self.subject, "since": self.since, "message": self.message}


def judgement_points(now: pd.Timestamp, first: pd.Timestamp) -> list[pd.Timestamp]:
    """`now`, a day earlier, and so on, not before `first`: the moments a statistic is judged at, newest first."""
    count = max(int((now - first) // DAY) + 1, 1)
    return [now - step * DAY for step in range(count)]


def crossing_since(points: list[pd.Timestamp], crossed) -> pd.Timestamp | None:
    """The earliest of the newest-first `points` from which `crossed(point)` held without a break; None if
    it does not hold at the newest."""
    since = None
    for point in points:
        if not crossed(point):
            break
        since = point
    return since


def windowed(frame: pd.DataFrame, column: str, end: pd.Timestamp, days: int) -> pd.DataFrame:
    """The rows whose `column` lies in the `days` days up to and including `end`."""
    times = frame[column]
    return frame[(times > end - pd.Timedelta(days=days)) & (times <= end)]


def bootstrap_interval(times: pd.Series, values: np.ndarray, settings: dict, seed: int) -> tuple[float, list[float]]:
    """The mean of `values` and its moving-block bootstrap interval, resampling days of `times`."""
    days = sample_days(pd.DatetimeIndex(times).as_unit("s").asi8)
    totals = resampled_totals(days, values, settings["block_days"], settings["bootstrap_replicates"], seed)
    return float(np.mean(values)), percentile_interval(totals[:, 1] / totals[:, 0], settings["confidence"])


def days_with_data(times: pd.Series) -> int:
    return int(times.dt.floor("D").nunique())


def windowed_interval(rows, values_of, end, settings, seed) -> dict | None:
    """The bootstrap interval of the mean of `values_of(rows)` over the drift window ending at `end`;
    None with data on fewer than `min_days` days."""
    window = windowed(rows, "valid_time", end, settings["drift_window_days"])
    if days_with_data(window["valid_time"]) < settings["min_days"]:
        return None
    estimate, interval = bootstrap_interval(window["valid_time"], values_of(window), settings, seed)
    return {"estimate": estimate, "interval": interval, "hours": len(window)}


def day_of(moment: pd.Timestamp) -> str:
    return moment.strftime("%Y-%m-%d")


def judged_window(rows: pd.DataFrame, values_of, outside, now, settings: dict, seed: int):
    """The drift window's statistic at `now` (`windowed_interval`) and the first day of the current run of
    days on which `outside(interval)` held (None if it does not hold now)."""

    statistic = windowed_interval(rows, values_of, now, settings, seed)

    def crossed(end):
        result = statistic if end == now else windowed_interval(rows, values_of, end, settings, seed)
        return result is not None and outside(result["interval"])

    points = judgement_points(now, rows["valid_time"].min()) if len(rows) else [now]
    return statistic, crossing_since(points, crossed)


def absolute_errors(rows: pd.DataFrame) -> np.ndarray:
    return np.abs(rows["median"] - rows["observed"]).to_numpy()


def error_alarm(final_rows: pd.DataFrame, version: int, metrics: dict, now, settings: dict, seed: int):
    """The +horizon MAE over the drift window against what the version's test skill expects in that weather:
    (statistic, Alarm or None).

    A month's MAE swings with its weather far more than a small drift (on the
    real record a clean 30-day MAE strays up to 1.1 C either side of the
    year's), so the test MAE is scaled by how hard the window was:
    persistence's MAE on the same hours. Per forecast,
    |error| - (test MAE / test persistence MAE) |persistence's error| has mean 0
    for a version as good as at its blessing; alarm when the whole interval of
    that mean lies above `mae_tolerance`.
    """
    ratio = metrics["test_mae_degC"] / metrics["persistence_mae_degC"]
    rows = final_rows[~final_rows["persistence"].isna()]

    def excess(window):
        persistence_errors = np.abs(window["persistence"] - window["observed"]).to_numpy()
        return absolute_errors(window) - ratio * persistence_errors

    statistic, since = judged_window(
        rows, excess, lambda interval: interval[0] > settings["mae_tolerance"], now, settings, seed
    )
    if statistic is not None:
        window = windowed(rows, "valid_time", now, settings["drift_window_days"])
        statistic["mae_degC"] = float(absolute_errors(window).mean())
        statistic["expected_mae_degC"] = statistic["mae_degC"] - statistic["estimate"]
    if since is None:
        return statistic, None
    low, high = statistic["interval"]
    message = (
        f"+{int(rows['hours_ahead'].iloc[0])} h MAE over {settings['drift_window_days']} days "
        f"{statistic['mae_degC']:.3f} C against {statistic['expected_mae_degC']:.3f} C expected from its test MAE "
        f"{metrics['test_mae_degC']:.3f} C in this weather: {statistic['estimate']:+.3f} C (interval {low:+.3f} to "
        f"{high:+.3f} C) clearly above the tolerance {settings['mae_tolerance']:.3f} C"
    )
    return statistic, Alarm("mae", f"version {version}", day_of(since), message)


def coverage_alarm(rows: pd.DataFrame, version: int, band: tuple[str, str], goal, now, settings: dict, seed: int):
    """The coverage of the band between the quantile columns `band` over the drift window against the goal
    [low, high]: (statistic, Alarm or None)."""

    def inside(window):
        observed = window["observed"].to_numpy()
        return ((window[band[0]] <= observed) & (observed <= window[band[1]])).to_numpy(np.float64)

    low_limit, high_limit = goal[0] - settings["coverage_tolerance"], goal[1] + settings["coverage_tolerance"]
    statistic, since = judged_window(
        rows, inside, lambda interval: interval[1] < low_limit or interval[0] > high_limit, now, settings, seed
    )
    if since is None:
        return statistic, None
    low, high = statistic["interval"]
    message = (
        f"coverage of the band {band[0]}-{band[1]} over {settings['drift_window_days']} days "
        f"{statistic['estimate']:.1%} (interval {low:.1%} to {high:.1%}) is clearly outside the goal "
        f"{goal[0]:.0%}-{goal[1]:.0%} widened by the tolerance to {low_limit:.0%}-{high_limit:.0%}"
    )
    return statistic, Alarm("coverage", f"version {version}", day_of(since), message)


def psi(observed_shares: np.ndarray, expected_shares: np.ndarray) -> float:
    """Population stability index: sum over bins of (p - q) ln(p / q), empty bins counted as PSI_FLOOR."""
    p = np.maximum(observed_shares, PSI_FLOOR)
    q = np.maximum(expected_shares, PSI_FLOOR)
    return float(np.sum((p - q) * np.log(p / q)))


def reading_bins(values: pd.Series, statistics: dict) -> tuple[np.ndarray, np.ndarray]:
    """Each reading's decile bin in the training distribution of its calendar month (overall, for a month the
    training split does not hold), as one-hot rows [n, 10], and the training shares [n, 10] it is held against."""
    months = values.index.month.to_numpy() - 1
    observed = np.zeros((len(values), BINS))
    expected = np.zeros((len(values), BINS))
    for month in np.unique(months):
        reference = statistics["monthly"][month] or statistics
        chosen = months == month
        observed[np.flatnonzero(chosen), decile_bins(values.to_numpy()[chosen], reference["decile_edges"])] = 1
        expected[chosen] = reference["proportions"]
    return observed, expected


def psi_judge(values: pd.Series, statistics: dict, settings: dict):
    """A function giving the PSI of the readings in the `psi_window_days` days up to a moment (None with
    readings on fewer than `psi_min_days` days: a short window's PSI is mostly its weather); the readings
    are binned once, each window is a difference of cumulative counts."""
    values = values.dropna()
    observed, expected = reading_bins(values, statistics)
    running = [np.vstack([np.zeros((1, BINS)), np.cumsum(table, axis=0)]) for table in (observed, expected)]
    day_number = np.cumsum(np.r_[True, np.diff(values.index.floor("D").asi8) != 0])  # of each reading, from 1
    times = values.index

    def at(point):
        first = times.searchsorted(point - pd.Timedelta(days=settings["psi_window_days"]), side="right")
        end = times.searchsorted(point, side="right")
        if end == first or day_number[end - 1] - day_number[first] + 1 < settings["psi_min_days"]:
            return None
        return psi(*((table[end] - table[first]) / (end - first) for table in running))

    return at


def input_alarms(hourly: pd.DataFrame, input_statistics: dict, now, settings: dict):
    """Per measurement, the PSI at `now` and the unchanged run ending at `now`: ({measurement: statistic},
    [Alarm])."""
    readings = hourly[hourly.index <= now]
    if readings.empty:
        return {}, []
    points = judgement_points(now, readings.index.min())
    statistics, alarms = {}, []
    for name, reference in input_statistics["measurements"].items():
        psi_at = psi_judge(readings[name], reference, settings)
        runs = constant_runs(readings[name].to_numpy())
        limit = max(settings["stuck_hours"], reference["longest_constant_hours"])
        value = psi_at(now)
        statistics[name] = {"psi": value, "unchanged_hours": int(runs[-1]), "stuck_limit_hours": limit}
        since = crossing_since(points, lambda point, psi_at=psi_at: (psi_at(point) or 0.0) > settings["psi_threshold"])
        if since is not None:
            message = (
                f"PSI of the last {settings['psi_window_days']} days' readings against the training split's "
                f"deciles of the same months {value:.2f} > {settings['psi_threshold']}"
            )
            alarms.append(Alarm("psi", name, day_of(since), message))
        if runs[-1] > limit:
            since = readings.index[-1] - (int(runs[-1]) - 1) * HOUR
            value = readings[name].iloc[-1]
            message = (
                f"unchanged at {value:g} for {int(runs[-1])} hours, longer than {limit} h (the training split's "
                f"longest unchanged run, or verify.stuck_hours if longer)"
            )
            alarms.append(Alarm("stuck", name, since.strftime("%Y-%m-%d %H:%M"), message))
    return statistics, alarms
