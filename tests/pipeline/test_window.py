"""window: split boundaries, gaps, leakage, normalisation, target alignment."""

import numpy as np
import pandas as pd
import pytest

from pipeline import schema
from pipeline.dataset import load_windows, save_windows
from pipeline.features import derive_features
from pipeline.window import make_windows, split_bounds, window_starts

PARAMS = dict(
    lookback_hours=12, horizon_hours=6, train_fraction=0.5, val_fraction=0.25, time_features=True, wind_vector=True
)


def hourly_table(hours=400, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    table = pd.DataFrame({schema.DATE_COLUMN: pd.date_range("2015-03-01 01:00", periods=hours, freq="h")})
    for name in schema.MEASUREMENTS:
        table[name] = rng.normal(5, 2, hours)
    table[schema.TEMPERATURE] = np.arange(hours, dtype=float)  # T equals the row number: alignment is visible
    table[schema.WIND_DIRECTION] = rng.uniform(0, 360, hours)
    return table


def test_split_bounds_are_chronological_and_cover_everything():
    assert split_bounds(1000, 0.5, 0.25) == {"train": (0, 500), "validation": (500, 750), "test": (750, 1000)}
    with pytest.raises(ValueError, match="train_fraction"):
        split_bounds(1000, 0.8, 0.3)


def test_no_window_crosses_a_split_boundary():
    windows = make_windows(hourly_table(), PARAMS)
    bounds = windows["normalization"]["split_bounds"]
    span = PARAMS["lookback_hours"] - 1 + PARAMS["horizon_hours"]
    for name, starts in windows["starts"].items():
        first, end = bounds[name]
        assert starts.min() == first and starts.max() + span == end - 1  # the last target hour is the split's last row
        assert np.all(np.diff(starts) == 1)  # no gaps here, so every start is used


def test_no_window_has_a_history_row_or_any_target_hour_in_an_unfilled_gap():
    complete = np.ones(200, dtype=bool)
    complete[100] = False
    starts = window_starts(complete, 0, 200, lookback=12, horizon=6)
    history_rows = starts[:, None] + np.arange(12)
    target_rows = starts[:, None] + 12 + np.arange(6)  # +1 .. +6 h after the last history row
    assert not np.isin(history_rows, 100).any() and not np.isin(target_rows, 100).any()
    # The gap as the +1 h, a middle and the +6 h target hour drops the sample, as in its history;
    # samples whose last target hour lies just before the gap, or whose history starts just after, remain.
    for dropped in (100 - 12, 100 - 14, 100 - 17, 100 - 11, 100):
        assert dropped not in starts
    assert 100 - 18 in starts and 101 in starts
    assert len(starts) == 200 - 17 - 18


def test_normalisation_uses_the_training_split_only():
    table = hourly_table()
    windows = make_windows(table, PARAMS)
    later = table.copy()
    later.loc[250:, schema.MEASUREMENTS] *= 100  # change validation and test only
    assert make_windows(later, PARAMS)["normalization"]["mean"] == windows["normalization"]["mean"]
    train = table.iloc[:200]
    features = derive_features(
        train[schema.MEASUREMENTS].to_numpy(np.float32),
        train[schema.DATE_COLUMN].to_numpy("datetime64[s]").astype(np.int64),
        np,
        time_features=True,
        wind_vector=True,
    )
    np.testing.assert_allclose(windows["normalization"]["mean"], features.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(windows["normalization"]["std"], features.std(axis=0), rtol=1e-5)


def test_targets_are_the_temperatures_of_every_hour_after_the_last_history_row(tmp_path):
    table = hourly_table()
    save_windows(make_windows(table, PARAMS), tmp_path / "windows")
    windows = load_windows(tmp_path / "windows")
    starts = windows.starts["test"][[0, 5, -1]]
    history, stamps = windows.history(starts)
    by_time = table.set_index(schema.DATE_COLUMN)[schema.TEMPERATURE]
    paths = windows.paths(starts)
    assert paths.shape == (3, PARAMS["horizon_hours"])
    for last_stamp, path, target in zip(stamps[:, -1], paths, windows.targets(starts)):
        valid_times = pd.Timestamp(last_stamp, unit="s") + pd.to_timedelta(np.arange(1, 7), unit="h")
        np.testing.assert_array_equal(path, by_time[valid_times].to_numpy(np.float32))
        assert target == path[-1] == by_time[valid_times[-1]]
    np.testing.assert_array_equal(
        history[0], table[schema.MEASUREMENTS].to_numpy(np.float32)[starts[0] : starts[0] + 12]
    )
    np.testing.assert_array_equal(
        windows.timestamps[windows.target_rows(starts)[:, -1]], stamps[:, -1] + PARAMS["horizon_hours"] * 3600
    )


def test_too_short_a_range_is_a_clear_error():
    with pytest.raises(ValueError, match="the validation split .* has no complete window"):
        make_windows(hourly_table(hours=60), PARAMS)
