"""What the measurements a model was trained on looked like, so that new readings can be held against it.

In:  hourly measurements [rows, 14] in `schema.MEASUREMENTS` order (NaN in
     gaps) and their unix seconds: the training split's rows.
Out: `measurement_statistics`, a JSON-ready dict the export stage puts into
     the model card as `input_statistics`: the rows used and, per measurement,
     - `mean`, `std` of the complete rows;
     - `decile_edges` (the 10 %, ..., 90 % quantiles) and `proportions`, the
       share of training rows in each of the 10 bins they make (`decile_bins`;
       a tenth each, unless values repeat, as rh at 100 % does);
     - `monthly`: the same edges and proportions for each calendar month
       (January first; null for a month the training split does not hold),
       since weather is seasonal: a cold January week is no drift;
     - `longest_constant_hours`: the longest run of hours whose value did not
       change, so that a stuck sensor can be told from a calm spell.
forecast.drift compares recent readings with these.
"""

import numpy as np

from pipeline import schema

DECILES = np.linspace(0.1, 0.9, 9)
BINS = len(DECILES) + 1
MONTHS = 12
DIGITS = 6  # rounding of the card's figures: far below the logger's 0.01 resolution


def decile_bins(values, edges) -> np.ndarray:
    """The bin (0 .. 9) of each value among the 9 decile edges: bin i holds edges[i-1] <= value < edges[i]."""
    return np.searchsorted(np.asarray(edges, dtype=np.float64), np.asarray(values, dtype=np.float64), side="right")


def bin_shares(bins: np.ndarray) -> np.ndarray:
    """The share of `bins` (0 .. 9) in each bin."""
    return np.bincount(np.asarray(bins, dtype=np.int64), minlength=BINS) / max(len(bins), 1)


def constant_runs(values) -> np.ndarray:
    """For each row, how many hours up to and including it the value has stayed unchanged (1: it just changed;
    0 at a missing value, which ends a run)."""
    values = np.asarray(values, dtype=np.float64)
    present = ~np.isnan(values)
    same = np.concatenate([[False], (values[1:] == values[:-1]) & present[1:] & present[:-1]])
    # a run restarts where the value changes: count rows since the last restart
    restarts = np.flatnonzero(~same)
    since_restart = np.arange(len(values)) - restarts[np.searchsorted(restarts, np.arange(len(values)), "right") - 1]
    return np.where(present, since_restart + 1, 0)


def distribution(values: np.ndarray) -> dict:
    """Decile edges of `values` and the share of them in each bin."""
    edges = np.quantile(values, DECILES)
    return {
        "decile_edges": [round(float(edge), DIGITS) for edge in edges],
        "proportions": [round(float(share), DIGITS) for share in bin_shares(decile_bins(values, edges))],
    }


def measurement_statistics(hourly: np.ndarray, timestamps: np.ndarray) -> dict:
    """The statistics above, of the rows with every measurement present."""
    hourly = np.asarray(hourly, dtype=np.float64)
    timestamps = np.asarray(timestamps, dtype=np.int64)
    complete = ~np.isnan(hourly).any(axis=1)
    if not complete.any():
        raise ValueError("no complete hourly row to take the measurements' statistics from")
    rows = hourly[complete]
    months = timestamps[complete].astype("datetime64[s]").astype("datetime64[M]").astype(np.int64) % MONTHS
    measurements = {}
    for column, name in enumerate(schema.MEASUREMENTS):
        values = rows[:, column]
        measurements[name] = {
            "mean": round(float(values.mean()), DIGITS),
            "std": round(float(values.std()), DIGITS),
            **distribution(values),
            "monthly": [
                distribution(values[months == month]) if (months == month).any() else None for month in range(MONTHS)
            ],
            "longest_constant_hours": int(constant_runs(hourly[:, column]).max()),
        }
    first, last = (str(np.datetime64(int(timestamps[complete][i]), "s")) for i in (0, -1))
    return {"rows": int(complete.sum()), "first_hour": first, "last_hour": last, "measurements": measurements}
