"""The window stage's output as the stages after it read it, and the batches they feed a model.

In:  data/windows/ (see pipeline.window: the hourly series once, start indices
     per split, normalisation statistics).
Out: `Windows`, whose samples are sliced on demand from the memory-mapped
     series, and `make_dataset`, tf.data batches of ({"history", "timestamps"},
     target temperatures [batch, horizon]) gathered from it.

The window stage writes it (`save_windows`); train, evaluate, export and smoke
read it (`load_windows`). No window is ever copied: a sample is one start
index into the series.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from pipeline import schema
from pipeline.atomic import atomic_directory, write_json
from pipeline.config import WINDOWS_DIR

SPLITS = ("train", "validation", "test")
TARGET_INDEX = schema.column_index(schema.TEMPERATURE)


@dataclass
class Windows:
    """The window stage's output, loaded; samples are sliced on demand."""

    hourly: np.ndarray
    timestamps: np.ndarray
    starts: dict[str, np.ndarray]
    normalization: dict

    @property
    def lookback(self) -> int:
        return self.normalization["lookback_hours"]

    @property
    def horizon(self) -> int:
        return self.normalization["horizon_hours"]

    def history(self, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw history [n, lookback, 14] and timestamps [n, lookback] of the given samples."""
        rows = np.asarray(starts)[:, None] + np.arange(self.lookback)
        return self.hourly[rows], self.timestamps[rows]

    def target_rows(self, starts: np.ndarray) -> np.ndarray:
        """Rows [n, horizon] of the hours +1 .. +horizon after each sample's last history row."""
        return np.asarray(starts)[:, None] + self.lookback + np.arange(self.horizon)

    @property
    def target_paths(self) -> np.ndarray:
        """A view [starts, horizon] of the temperature column: row s is sample s's targets.

        Shares the series' memory; indexing it with start indices gathers a batch."""
        temperature = self.hourly[:, TARGET_INDEX]
        return np.lib.stride_tricks.sliding_window_view(temperature, self.horizon)[self.lookback :]

    def paths(self, starts: np.ndarray) -> np.ndarray:
        """Observed temperatures (degC) [n, horizon] at +1 .. +horizon h after each sample's last row."""
        return self.target_paths[np.asarray(starts)]

    def targets(self, starts: np.ndarray) -> np.ndarray:
        """Observed temperature (degC) `horizon` hours after each sample's last row."""
        return self.hourly[np.asarray(starts) + self.lookback - 1 + self.horizon, TARGET_INDEX]


def save_windows(windows: dict, directory: Path) -> None:
    """Write the window outputs into `directory`, atomically as a whole."""
    with atomic_directory(directory) as temporary:
        np.save(temporary / "hourly.npy", windows["hourly"])
        np.save(temporary / "timestamps.npy", windows["timestamps"])
        for name, split_starts in windows["starts"].items():
            np.save(temporary / f"{name}_starts.npy", split_starts)
        write_json(temporary / "normalization.json", windows["normalization"])


def load_windows(directory: Path = WINDOWS_DIR) -> Windows:
    """Load the window stage's output; the arrays are memory-mapped, not copied."""
    directory = Path(directory)
    return Windows(
        hourly=np.load(directory / "hourly.npy", mmap_mode="r"),
        timestamps=np.load(directory / "timestamps.npy", mmap_mode="r"),
        starts={name: np.load(directory / f"{name}_starts.npy") for name in SPLITS},
        normalization=json.loads((directory / "normalization.json").read_text(encoding="utf-8")),
    )


def make_dataset(
    windows: Windows, starts: np.ndarray, batch_size: int, shuffle_seed: int | None = None
) -> tf.data.Dataset:
    """Batches of ({"history", "timestamps"}, target temperatures [batch, horizon]) for the given starts.

    The series lives once in memory as a tensor; each batch gathers its rows
    with one vectorised `tf.gather`. With `shuffle_seed` the starts are
    reshuffled every epoch, in a seeded order.
    """
    hourly = tf.constant(np.asarray(windows.hourly, dtype=np.float32))
    timestamps = tf.constant(np.asarray(windows.timestamps, dtype=np.int64))
    offsets = tf.range(windows.lookback, dtype=tf.int64)
    temperature = hourly[:, TARGET_INDEX]
    target_offsets = windows.lookback + tf.range(windows.horizon, dtype=tf.int64)  # +1 .. +horizon h

    def gather(batch_starts):
        rows = batch_starts[:, None] + offsets
        inputs = {schema.HISTORY_INPUT: tf.gather(hourly, rows), schema.TIMESTAMPS_INPUT: tf.gather(timestamps, rows)}
        return inputs, tf.gather(temperature, batch_starts[:, None] + target_offsets)

    dataset = tf.data.Dataset.from_tensor_slices(np.asarray(starts, dtype=np.int64))
    if shuffle_seed is not None:
        dataset = dataset.shuffle(len(starts), seed=shuffle_seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size).map(gather, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
