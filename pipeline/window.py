"""Stage 3, window: split the hourly table chronologically and index its samples.

In:  data/prepared/hourly.parquet and params `window.*` (lookback and horizon in
     hours, split fractions, which derived features to use).
Out: data/windows/, the series once and the samples as start indices:
     - hourly.npy      float32 [hours, 14], raw measurements (NaN in gaps)
     - timestamps.npy  int64 [hours], unix seconds of each row
     - {train,validation,test}_starts.npy  int64 window start indices
     - normalization.json  feature names and training-split mean and std

Sample `s` is history `hourly[s : s + lookback]` (with its timestamps) and
targets `T (degC)` at every hour after it, rows `s + lookback` to
`s + lookback - 1 + horizon` (+1 h .. +horizon h). No sample crosses a split
boundary, and none has a history row or a target hour in a gap that prepare
left unfilled. Windows are never copied: a sample is one index, and readers
look its rows up in the series, so memory stays near the size of the hourly
table.
"""

import numpy as np
import pandas as pd

from pipeline import schema
from pipeline.config import HOURLY_TABLE, WINDOWS_DIR, load_params, stage_command_line
from pipeline.dataset import save_windows
from pipeline.features import derive_features, feature_names


def split_bounds(hours: int, train_fraction: float, val_fraction: float) -> dict[str, tuple[int, int]]:
    """Chronological [first, end) row ranges of the three splits."""
    if not (0 < train_fraction and 0 < val_fraction and train_fraction + val_fraction < 1):
        raise ValueError(
            f"window: need 0 < train_fraction, 0 < val_fraction and a sum below 1, "
            f"got {train_fraction} and {val_fraction}"
        )
    train_end = int(hours * train_fraction)
    val_end = int(hours * (train_fraction + val_fraction))
    return {"train": (0, train_end), "validation": (train_end, val_end), "test": (val_end, hours)}


def window_starts(complete_rows: np.ndarray, first: int, end: int, lookback: int, horizon: int) -> np.ndarray:
    """Starts s in [first, end) whose rows s .. s+lookback-1+horizon (history and every target
    hour) stay in the range and are all complete."""
    span = lookback + horizon  # rows from the first history row to the last target hour
    candidates = np.arange(first, end - span + 1, dtype=np.int64)
    if len(candidates) == 0:
        return candidates
    incomplete_before = np.concatenate([[0], np.cumsum(~complete_rows)])  # incomplete rows in [0, i)
    return candidates[incomplete_before[candidates + span] == incomplete_before[candidates]]


def normalization_stats(hourly: np.ndarray, timestamps: np.ndarray, train_rows: slice, **feature_switches) -> dict:
    """Mean and std of each derived feature over the training split's complete rows."""
    train_values = hourly[train_rows]
    complete = ~np.isnan(train_values).any(axis=1)
    features = derive_features(train_values[complete], timestamps[train_rows][complete], np, **feature_switches)
    std = features.std(axis=0, dtype=np.float64)
    return {
        "feature_names": feature_names(**feature_switches),
        "mean": features.mean(axis=0, dtype=np.float64).tolist(),
        "std": np.where(std > 0, std, 1.0).tolist(),  # a constant feature must not divide by zero
        **feature_switches,
    }


def make_windows(hourly_table: pd.DataFrame, window_params: dict) -> dict:
    """Hourly table -> series, timestamps, start indices per split and normalisation stats."""
    lookback, horizon = window_params["lookback_hours"], window_params["horizon_hours"]
    hourly = hourly_table[schema.MEASUREMENTS].to_numpy(dtype=np.float32)
    timestamps = hourly_table[schema.DATE_COLUMN].to_numpy(dtype="datetime64[s]").astype(np.int64)
    complete_rows = ~np.isnan(hourly).any(axis=1)
    bounds = split_bounds(len(hourly), window_params["train_fraction"], window_params["val_fraction"])
    starts = {
        name: window_starts(complete_rows, first, end, lookback, horizon) for name, (first, end) in bounds.items()
    }
    for name, split_starts in starts.items():
        if len(split_starts) == 0:
            raise ValueError(
                f"window: the {name} split {bounds[name]} has no complete window of "
                f"{lookback} + {horizon} hours; use a longer data range"
            )
    switches = {"time_features": window_params["time_features"], "wind_vector": window_params["wind_vector"]}
    normalization = normalization_stats(hourly, timestamps, slice(*bounds["train"]), **switches)
    normalization.update(lookback_hours=lookback, horizon_hours=horizon, target=schema.TEMPERATURE, split_bounds=bounds)
    return {"hourly": hourly, "timestamps": timestamps, "starts": starts, "normalization": normalization}


def main() -> None:
    params = load_params()
    try:
        hourly_table = pd.read_parquet(HOURLY_TABLE)
    except FileNotFoundError:
        raise SystemExit(f"window: {HOURLY_TABLE} not found; run `dvc repro prepare` first") from None
    try:
        windows = make_windows(hourly_table, params["window"])
    except ValueError as error:
        raise SystemExit(str(error)) from None
    save_windows(windows, WINDOWS_DIR)
    counts = {name: len(split_starts) for name, split_starts in windows["starts"].items()}
    print(f"window: {len(windows['hourly']):,} hours -> samples {counts} in {WINDOWS_DIR}/")


if __name__ == "__main__":
    stage_command_line(__doc__, __spec__.name)
    main()
