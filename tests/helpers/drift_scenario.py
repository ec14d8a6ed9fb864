"""A synthetic station record with a sensor fault from a given day, and forecasts of record made on it.

`station_record` runs pipeline.synthetic's own steps (weather, measurements,
quirks) in generate_readings' order, changing the weather state from `fault_from`
on, so that every column the logger derives (Tpot, rho, sh, ...) follows the faulty
sensor as at the real station; without a fault it is generate_readings' record.
`regression_forecasts` issues, every hour, the forecast of a simple deterministic
forecaster fitted on a training stretch: each hour ahead a linear blend of the last
reading and the reading a day before the valid hour, with a band from the training
residuals' quantiles. Its rows are in forecast.archive's schema.
"""

import numpy as np
import pandas as pd

from forecast import drift, scores
from forecast.verify import hourly_readings
from pipeline import schema, synthetic
from pipeline.input_statistics import measurement_statistics

LEVELS = (0.1, 0.5, 0.9)
QUANTILE_NAMES = [f"q{round(level * 100)}" for level in LEVELS]


def station_record(start: str, end: str, seed: int, fault_from=None, fault: str | None = None) -> pd.DataFrame:
    """10-minute readings; from `fault_from` on, `fault` "pressure frozen" (the barometer keeps its last value)
    or "temperature +2" (the thermometer reads 2 C too warm)."""
    times = pd.date_range(pd.Timestamp(start) + synthetic.STEP, pd.Timestamp(end), freq=synthetic.STEP)
    rng = np.random.default_rng(seed)
    state = synthetic.weather(rng, times)
    if fault is not None:
        broken = times >= pd.Timestamp(fault_from)
        if fault == "pressure frozen":
            state["p"][broken] = state["p"][np.argmax(broken)]
        elif fault == "temperature +2":
            state["T"][broken] += 2.0
        else:
            raise ValueError(f"unknown fault {fault!r}")
    readings = pd.DataFrame({schema.DATE_COLUMN: times, **synthetic.measurements(state, rng)})
    return synthetic.add_quirks(readings[schema.COLUMNS], rng)


def hourly(readings: pd.DataFrame, max_fill_hours: int = 3) -> pd.DataFrame:
    """The record prepared to hours as verification prepares it, indexed by UTC hour."""
    return hourly_readings(readings, max_fill_hours)


def predictors(temperature: np.ndarray, issue_rows: np.ndarray, hour: int) -> np.ndarray:
    """[n, 3]: 1, the reading at the issue hour and the reading 24 h before the valid hour."""
    return np.column_stack([np.ones(len(issue_rows)), temperature[issue_rows], temperature[issue_rows + hour - 24]])


def fit_regression(temperature: pd.Series, horizon: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per hour ahead, least-squares coefficients [3] and the 10/50/90 % quantiles of the residuals [3]."""
    values = temperature.to_numpy(np.float64)
    fitted = []
    for hour in range(1, horizon + 1):
        rows = np.arange(24, len(values) - hour)
        features, target = predictors(values, rows, hour), values[rows + hour]
        usable = ~np.isnan(features).any(axis=1) & ~np.isnan(target)
        coefficients, *_ = np.linalg.lstsq(features[usable], target[usable], rcond=None)
        fitted.append((coefficients, np.quantile(target[usable] - features[usable] @ coefficients, LEVELS)))
    return fitted


def regression_forecasts(
    temperature: pd.Series,
    issue_times: pd.DatetimeIndex,
    fitted: list[tuple[np.ndarray, np.ndarray]],
    version: int = 1,
    model_name: str = "jena_temperature",
) -> pd.DataFrame:
    """Forecast rows (forecast.archive's schema) issued at each of `issue_times` (UTC hours of `temperature`'s
    index) whose predictors were observed: the fitted blend, its quantiles the blend plus the residual
    quantiles (the 50 % one recentred on the median)."""
    horizon = len(fitted)
    values = temperature.to_numpy(np.float64)
    rows = temperature.index.get_indexer(issue_times)
    rows = rows[rows >= 24]  # a day of predictors before each (a missing time is -1)
    medians = np.column_stack([predictors(values, rows, hour) @ c for hour, (c, _) in enumerate(fitted, start=1)])
    spread = np.array([quantiles - quantiles[1] for _, quantiles in fitted])  # [horizon, 3]
    keep = ~np.isnan(medians).any(axis=1)
    rows, medians = rows[keep], medians[keep]
    issued = np.repeat(temperature.index[rows].as_unit("s"), horizon)
    hours = np.tile(np.arange(1, horizon + 1), len(rows))
    frame = pd.DataFrame(
        {
            "model_name": pd.array([model_name] * len(hours), dtype="string"),
            "model_version": np.int64(version),
            "issue_time": issued,
            "requested_at": issued,
            "hours_ahead": hours.astype(np.int16),
            "valid_time": issued + pd.to_timedelta(hours, "h"),
            "median": medians.ravel().astype(np.float32),
        }
    )
    quantiles = medians[..., None] + spread[None]
    for index, name in enumerate(QUANTILE_NAMES):
        frame[name] = quantiles[..., index].ravel().astype(np.float32)
    return frame


def training_statistics(table: pd.DataFrame) -> dict:
    """The model card's `input_statistics` of a UTC-indexed hourly table (as export takes them)."""
    return measurement_statistics(table.to_numpy(), table.index.tz_localize(None).as_unit("s").asi8)


def forecaster_metrics(readings: pd.DataFrame, fitted, test_index: pd.DatetimeIndex) -> dict:
    """The forecaster's model-card figures on a test stretch: its +horizon MAE and persistence's."""
    observed = scores.observed_temperatures(readings, schema.TEMPERATURE)
    forecasts = regression_forecasts(readings[schema.TEMPERATURE], test_index, fitted)
    final = scores.final_hour_rows(scores.matured(forecasts, observed))
    final = final[final["persistence"].notna()]
    return {
        "test_mae_degC": float(np.abs(final["median"] - final["observed"]).mean()),
        "persistence_mae_degC": float(np.abs(final["persistence"] - final["observed"]).mean()),
    }


def alarms_at(now, readings, matured, metrics, statistics, settings, goal=(0.78, 0.82)) -> list:
    """Every drift alarm verification would raise at `now` for version 1 (forecast.drift)."""
    rows = matured[matured["issue_time"] <= now]
    _, error = drift.error_alarm(scores.final_hour_rows(rows), 1, metrics, now, settings, seed=42)
    _, coverage = drift.coverage_alarm(rows, 1, ("q10", "q90"), list(goal), now, settings, seed=42)
    _, inputs = drift.input_alarms(readings, statistics, now, settings)
    return [alarm for alarm in (error, coverage, *inputs) if alarm is not None]
