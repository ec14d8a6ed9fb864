"""Scores of temperature forecasts against what was observed, and their sampling intervals.

In:  forecasts and observations as arrays (degC): a point forecast, quantile
     forecasts [..., levels] with their levels, a band's edges; the day of each
     sample (for the bootstrap).
Out: MAE, RMSE, mean pinball loss and band coverage; moving-block bootstrap
     totals and percentile intervals.

One home for what a forecast's score means: the evaluate stage blesses a model
with these definitions, and forecast.verify scores the issued forecasts with
the same ones, so a verified MAE and a test MAE are the same quantity.
"""

import numpy as np


def mae(predicted, observed) -> float:
    return float(np.mean(np.abs(np.asarray(predicted, np.float64) - observed)))


def rmse(predicted, observed) -> float:
    return float(np.sqrt(np.mean(np.square(np.asarray(predicted, np.float64) - observed))))


def pinball_loss(observed: np.ndarray, quantile_forecasts: np.ndarray, levels) -> float:
    """Mean pinball loss (degC) of quantile forecasts [..., quantiles] against observations [...]:
    for level q and error e = observed - forecast, q * e if e >= 0, else (q - 1) * e."""
    levels = np.asarray(levels, dtype=np.float64)
    error = np.asarray(observed, np.float64)[..., None] - quantile_forecasts
    return float(np.mean(np.maximum(levels * error, (levels - 1) * error)))


def band_coverage(observed: np.ndarray, lower: np.ndarray, upper: np.ndarray, axis=None):
    """Share of observations within [lower, upper] (over `axis`; all by default)."""
    return np.mean((lower <= observed) & (observed <= upper), axis=axis)


def sample_days(target_timestamps) -> np.ndarray:
    """Each sample's day, counted from the first test day: the unit the bootstrap resamples."""
    days = np.asarray(target_timestamps, dtype=np.int64) // 86_400
    return days - days.min()


def resampled_totals(days: np.ndarray, values: np.ndarray, block_days: int, replicates: int, seed: int) -> np.ndarray:
    """Moving-block bootstrap over days: totals [replicates, 1 + columns] of a sample count and of
    `values` [samples, columns], each replicate the sum over enough blocks of `block_days`
    consecutive days (wrapping around the period's end) drawn at random to span the period again."""
    if block_days < 1 or replicates < 1:
        raise ValueError(f"block_days and bootstrap_replicates must be at least 1, got {block_days} and {replicates}")
    columns = np.column_stack([np.ones(len(days)), np.asarray(values, dtype=np.float64).reshape(len(days), -1)])
    span = int(days.max()) + 1
    per_day = np.zeros((span, columns.shape[1]))
    np.add.at(per_day, days, columns)
    wrapped = np.concatenate([per_day, np.resize(per_day, (block_days - 1, columns.shape[1]))])
    running = np.concatenate([np.zeros((1, columns.shape[1])), np.cumsum(wrapped, axis=0)])
    blocks = running[block_days : block_days + span] - running[:span]  # block starting on each day
    draws = np.random.default_rng(seed).integers(0, span, (replicates, -(-span // block_days)))
    return blocks[draws].sum(axis=1)


def percentile_interval(replicated: np.ndarray, confidence: float) -> list[float]:
    """The two-sided `confidence` interval of a statistic's bootstrap replicates."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    tail = (1 - confidence) / 2
    return [float(value) for value in np.quantile(replicated, [tail, 1 - tail])]
