"""Verification: how far off the archived forecasts were, once their hour came.

In:  archived forecasts (forecast.archive's schema: one row per issue and
     hour ahead, `median` and quantile columns `q<level %>` in degC) and the
     observed hourly temperature (a Series of degC indexed by UTC hour).
Out: `matured`, the forecast rows whose valid hour has been observed, with
     `observed` beside them; `score_table`, per version, window and hour
     ahead: MAE and bias (forecast - observed) of the median, mean pinball
     loss over the quantiles, coverage of the band between the outer
     quantiles and how many forecast hours; `daily_scores`, the same per
     version and day at the version's last hour ahead (+24 h).

A window is the forecasts valid in the last 7 or 30 days up to `now` (the
newest observation unless given), or all of them ("all"). The figures use
pipeline.scores' definitions, so a verified MAE is the evaluate stage's MAE
on the same hours.
"""

import numpy as np
import pandas as pd

from forecast.archive import level_of
from pipeline.scores import band_coverage, mae, pinball_loss

ALL = "all"
HOUR = pd.Timedelta(hours=1)


def quantile_columns(rows: pd.DataFrame) -> tuple[list[str], np.ndarray]:
    """The quantile columns (`q10`, `q50`, `q90`, ...) that `rows` fill, ascending, and their levels (0.1, ...).
    An archive read across versions with other levels holds NaN in the columns a version does not have."""
    found = sorted(
        (level_of(str(name)), str(name))
        for name in rows.columns
        if level_of(str(name)) is not None and rows[name].notna().any()
    )
    return [name for _, name in found], np.array([level for level, _ in found])


def observed_temperatures(hourly: pd.DataFrame, column: str) -> pd.Series:
    """The observed temperature (degC) of each hour of a prepared hourly table, indexed by UTC time, gaps dropped."""
    observed = hourly[column].dropna()
    index = observed.index if observed.index.tz is not None else observed.index.tz_localize("UTC")
    return pd.Series(observed.to_numpy(np.float64), index=index.as_unit("s"), name="observed")


def matured(archive: pd.DataFrame, observed: pd.Series, now: pd.Timestamp | None = None) -> pd.DataFrame:
    """The archived rows valid at an observed hour up to `now` (default: the newest observation), with
    `observed` (degC at the valid time) and `persistence` (degC at the issue time: the forecast "nothing
    changes" made from the same last reading; NaN where that hour was not observed)."""
    if observed.empty:
        return archive.iloc[:0].assign(observed=np.float64(), persistence=np.float64())
    now = observed.index.max() if now is None else now
    until_now = observed[observed.index <= now]
    rows = archive[archive["valid_time"] <= now]

    def at(column):
        return until_now.reindex(pd.DatetimeIndex(rows[column]).as_unit("s")).to_numpy()

    observed_at = at("valid_time")
    rows = rows.assign(observed=observed_at, persistence=at("issue_time"))
    return rows[~np.isnan(observed_at)].reset_index(drop=True)


def window_start(now: pd.Timestamp, days: int | None) -> pd.Timestamp | None:
    """The first valid hour of a window of `days` days ending at `now`; None for all of them."""
    return None if days is None else now - pd.Timedelta(days=days) + HOUR


def figures(rows: pd.DataFrame, quantiles: list[str], levels: np.ndarray) -> dict:
    """MAE, bias, pinball loss and band coverage of one version's matured rows (NaN for none) with its
    `quantile_columns`, and how many rows."""
    if rows.empty:
        return {"mae_degC": np.nan, "bias_degC": np.nan, "pinball_loss_degC": np.nan, "coverage": np.nan, "hours": 0}
    observed = rows["observed"].to_numpy(np.float64)
    median = rows["median"].to_numpy(np.float64)
    band = rows[quantiles].to_numpy(np.float64)
    return {
        "mae_degC": mae(median, observed),
        "bias_degC": float(np.mean(median - observed)),
        "pinball_loss_degC": pinball_loss(observed, band, levels),
        "coverage": float(band_coverage(observed, band[:, 0], band[:, -1])),
        "hours": len(rows),
    }


def score_table(matured_rows: pd.DataFrame, now: pd.Timestamp, windows_days=(7, 30)) -> pd.DataFrame:
    """Per model version, window (`7d`, `30d`, `all`) and hours ahead (a number, or `all` over every hour):
    the figures of the rows valid in that window."""
    table = []
    for days in [*windows_days, None]:
        start = window_start(now, days)
        in_window = matured_rows if start is None else matured_rows[matured_rows["valid_time"] >= start]
        window = ALL if days is None else f"{days}d"
        for (name, version), rows in in_window.groupby(["model_name", "model_version"]):
            quantiles, levels = quantile_columns(rows)
            groups = [(ALL, rows), *((str(hour), part) for hour, part in rows.groupby("hours_ahead"))]
            for hours_ahead, part in groups:
                table.append(
                    {
                        "model_name": name,
                        "model_version": int(version),
                        "window": window,
                        "hours_ahead": hours_ahead,
                        **figures(part, quantiles, levels),
                    }
                )
    columns = ["model_name", "model_version", "window", "hours_ahead", "mae_degC", "bias_degC"]
    columns += ["pinball_loss_degC", "coverage", "hours"]
    return pd.DataFrame(table, columns=columns)


def final_hour_rows(matured_rows: pd.DataFrame) -> pd.DataFrame:
    """The rows at each version's last hour ahead (its horizon, +24 h by default)."""
    horizon = matured_rows.groupby("model_version")["hours_ahead"].transform("max")
    return matured_rows[matured_rows["hours_ahead"] == horizon]


def daily_scores(matured_rows: pd.DataFrame) -> pd.DataFrame:
    """Per version and UTC day of the valid time, the figures at the version's last hour ahead."""
    rows = final_hour_rows(matured_rows)
    table = []
    for version, by_version in rows.groupby("model_version"):
        quantiles, levels = quantile_columns(by_version)
        for day, part in by_version.groupby(by_version["valid_time"].dt.floor("D")):
            table.append(
                {
                    "day": day.strftime("%Y-%m-%d"),
                    "model_version": int(version),
                    "hours_ahead": int(part["hours_ahead"].max()),
                }
                | figures(part, quantiles, levels)
            )
    columns = ["day", "model_version", "hours_ahead", "mae_degC", "bias_degC", "pinball_loss_degC", "coverage"]
    return pd.DataFrame(table, columns=[*columns, "hours"])
