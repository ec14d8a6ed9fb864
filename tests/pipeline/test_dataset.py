"""The window stage's output as the later stages read it (pipeline/dataset.py): stored once, sliced on demand,
batched for a model."""

import numpy as np
import pytest

from pipeline import schema
from pipeline.dataset import load_windows, make_dataset
from tests.helpers.training import small_windows, write_windows

HOURS = 20 * 24  # small_windows(days=20): 24 h of history, 6 h ahead


@pytest.fixture(scope="module")
def windows():
    return small_windows(days=90)


def test_dataset_gathers_each_window_and_its_targets_for_every_hour(windows):
    starts = windows.starts["validation"][:10]
    inputs, target = next(iter(make_dataset(windows, starts, batch_size=10)))
    history, timestamps = windows.history(starts)
    np.testing.assert_array_equal(inputs["history"].numpy(), history)
    np.testing.assert_array_equal(inputs["timestamps"].numpy(), timestamps)
    assert target.shape == (10, windows.horizon)
    np.testing.assert_array_equal(target.numpy(), windows.paths(starts))
    np.testing.assert_array_equal(target.numpy()[:, -1], windows.targets(starts))


def test_shuffled_dataset_covers_every_start_once_in_a_seeded_order(windows):
    starts = windows.starts["train"]

    def first_epoch(seed):
        dataset = make_dataset(windows, starts, batch_size=100, shuffle_seed=seed)
        return np.concatenate([inputs["timestamps"].numpy()[:, 0] for inputs, _ in dataset])

    order = first_epoch(3)
    assert sorted(order) == sorted(windows.timestamps[starts])
    np.testing.assert_array_equal(order, first_epoch(3))


def test_the_targets_of_all_samples_are_a_view_of_the_series_not_a_copy(tmp_path):
    write_windows(small_windows(days=20), tmp_path / "windows")
    windows = load_windows(tmp_path / "windows")
    targets = windows.target_paths
    assert np.shares_memory(targets, windows.hourly)
    assert targets.shape == (HOURS - 24 - 6 + 1, 6)
    starts = np.concatenate(list(windows.starts.values()))
    np.testing.assert_array_equal(
        targets[starts], windows.hourly[windows.target_rows(starts), schema.column_index(schema.TEMPERATURE)]
    )


def test_windows_are_stored_once_not_copied(tmp_path):
    write_windows(small_windows(days=20), tmp_path / "windows")
    windows = load_windows(tmp_path / "windows")
    assert windows.hourly.shape == (HOURS, 14) and isinstance(windows.hourly, np.memmap)
    stored = sum(path.stat().st_size for path in (tmp_path / "windows").iterdir())
    assert stored < 2 * windows.hourly.nbytes + HOURS * 8 * 2 + 10_000


def test_saving_replaces_the_old_output_completely(tmp_path):
    old = tmp_path / "windows"
    old.mkdir()
    (old / "stale.npy").write_text("old")
    write_windows(small_windows(days=20), old)
    assert not (old / "stale.npy").exists() and (old / "normalization.json").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["windows"]
