"""Stage 4, train: fit the recurrent forecaster on the training windows.

In:  data/windows/ (the series, the start indices per split and the
     normalisation statistics) and params `seed`, `epochs`, `model.*`
     (cell, layers, units, dropout, recurrent_dropout, residual) and `train.*`
     (optimizer, learning_rate, batch_size, loss_function, patience).
Out: models/model.keras, the model with the best validation MAE (the
     normalisation statistics inside), and dvclive/: per-epoch loss and MAE on
     the training and validation splits (`dvclive/plots/metrics/{train,eval}/`)
     and the last and best values (`dvclive/metrics.json`).

Samples are gathered batch by batch inside tf.data from the in-memory series,
so no window is ever copied in Python. With the same `seed` two runs give the
same weights: Python, numpy and TensorFlow are seeded and TensorFlow's ops run
deterministically.
"""

import sys
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from dvclive import Live
from dvclive.keras import DVCLiveCallback

from pipeline import schema
from pipeline.atomic import atomic_path
from pipeline.config import DVCLIVE_DIR, MODEL_PATH, WINDOWS_DIR, load_params
from pipeline.model import TEMPERATURE_INDEX, build_model
from pipeline.window import Windows, load_windows



def seed_everything(seed: int) -> None:
    """Seed Python, numpy and TensorFlow, and make TensorFlow's ops deterministic."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def make_dataset(windows: Windows, starts: np.ndarray, batch_size: int, shuffle_seed: int | None = None) -> tf.data.Dataset:
    """Batches of ({"history", "timestamps"}, target temperature) for the given window starts.

    The series lives once in memory as a tensor; each batch gathers its rows
    with one vectorised `tf.gather`. With `shuffle_seed` the starts are
    reshuffled every epoch, in a seeded order.
    """
    hourly = tf.constant(np.asarray(windows.hourly, dtype=np.float32))
    timestamps = tf.constant(np.asarray(windows.timestamps, dtype=np.int64))
    offsets = tf.range(windows.lookback, dtype=tf.int64)
    target_offset = windows.lookback - 1 + windows.horizon

    def gather(batch_starts):
        rows = batch_starts[:, None] + offsets
        inputs = {schema.HISTORY_INPUT: tf.gather(hourly, rows), schema.TIMESTAMPS_INPUT: tf.gather(timestamps, rows)}
        target = tf.gather(hourly[:, TEMPERATURE_INDEX], batch_starts + target_offset)
        return inputs, target

    dataset = tf.data.Dataset.from_tensor_slices(np.asarray(starts, dtype=np.int64))
    if shuffle_seed is not None:
        dataset = dataset.shuffle(len(starts), seed=shuffle_seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size).map(gather, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def compile_model(model: keras.Model, train_params: dict) -> keras.Model:
    """Attach the optimizer (`train.optimizer`, `train.learning_rate`), the loss and the MAE metric."""
    optimizer = keras.optimizers.get(
        {"class_name": train_params["optimizer"], "config": {"learning_rate": train_params["learning_rate"]}}
    )
    model.compile(optimizer=optimizer, loss=train_params["loss_function"], metrics=["mae"])
    return model


def train(windows: Windows, params: dict, callbacks=(), verbose: int | str = "auto"):
    """Build, compile and fit a model; returns it (best weights restored) and its `History`.

    `params` is params.yaml: `seed`, `epochs`, `model` and `train`.
    """
    seed_everything(params["seed"])
    train_params = params["train"]
    model = compile_model(build_model(windows.normalization, params["model"]), train_params)
    training = make_dataset(windows, windows.starts["train"], train_params["batch_size"], shuffle_seed=params["seed"])
    validation = make_dataset(windows, windows.starts["validation"], train_params["batch_size"])
    early_stopping = keras.callbacks.EarlyStopping(
        monitor="val_mae", mode="min", patience=train_params["patience"], restore_best_weights=True
    )
    history = model.fit(
        training,
        validation_data=validation,
        epochs=params["epochs"],
        callbacks=[early_stopping, *callbacks],
        shuffle=False,  # the training dataset shuffles itself, with the seed
        verbose=verbose,
    )
    return model, history


def best_epoch(history: keras.callbacks.History) -> tuple[int, float]:
    """The 1-based epoch with the lowest validation MAE, and that MAE (the restored weights')."""
    val_mae = history.history["val_mae"]
    best = int(np.argmin(val_mae))
    return best + 1, float(val_mae[best])


def save_model(model: keras.Model, path: Path = MODEL_PATH) -> None:
    """Write the `.keras` file atomically: readers see the old file or the complete new one."""
    with atomic_path(path, suffix=".keras") as temporary:
        model.save(temporary)


def main() -> None:
    params = load_params()
    try:
        windows = load_windows(WINDOWS_DIR)
    except FileNotFoundError as error:
        raise SystemExit(f"train: {error.filename} not found; run `dvc repro window` first") from None
    counts = {name: len(starts) for name, starts in windows.starts.items()}
    print(f"train: samples {counts}, {params['model']['cell']} x {params['model']['layers']} "
          f"of {params['model']['units']} units, up to {params['epochs']} epochs")

    started = time.perf_counter()
    # The stage's dvc.yaml declares the metrics and plots, so DVCLive writes no dvc.yaml of its own.
    with Live(dir=str(DVCLIVE_DIR), dvcyaml=None, save_dvc_exp=False) as live:
        model, history = train(
            windows, params, callbacks=[DVCLiveCallback(live=live)], verbose=1 if sys.stdout.isatty() else 2
        )
        epoch, val_mae = best_epoch(history)
        live.log_metric("best/epoch", epoch, plot=False)
        live.log_metric("best/val_mae", val_mae, plot=False)
    save_model(model)
    seconds = time.perf_counter() - started
    print(f"train: best validation MAE {val_mae:.3f} degC at epoch {epoch} of {len(history.epoch)} "
          f"({seconds / len(history.epoch):.1f} s per epoch); saved {MODEL_PATH}")


if __name__ == "__main__":
    main()
