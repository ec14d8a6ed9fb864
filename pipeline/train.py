"""Stage 4, train: fit the recurrent forecaster on the training windows.

In:  data/windows/ (the series, the start indices per split and the
     normalisation statistics) and params `seed`, `epochs`, `model.*`
     (cell, layers, units, dropout, recurrent_dropout, residual, quantiles,
     conv_filters, conv_kernel, conv_stride) and `train.*` (optimizer,
     learning_rate, schedule, warmup_share, batch_size, final_hour_share,
     patience).
Out: models/model.keras, the model with the best validation MAE (the
     normalisation statistics inside), and dvclive/: per-epoch loss and MAE on
     the training and validation splits (`dvclive/plots/metrics/{train,eval}/`)
     and the last and best values (`dvclive/metrics.json`); models/architecture/,
     the model's summary.txt and, where Graphviz is installed, its diagram
     model.png (see pipeline.architecture).

The loss is the pinball (quantile) loss of every hour +1 .. +horizon and every
quantile, averaged; the +horizon hour, the forecast the model is judged on,
gets the share `train.final_hour_share` of it, so that learning the whole day
does not dilute the day-ahead accuracy, and the other hours share the rest:
with `train.balance_hours` in proportion to 1 / sqrt of each hour's typical
error (persistence's MAE at that hour on the training split), so that the
near hours' small errors still count, else equally. The metric `mae` (and
early stopping on `val_mae`) is the MAE of the median at +horizon hours in degC.

After fitting, the band is calibrated on the validation split
(`pipeline.model.calibration_factors`): each hour's spreads are widened or
narrowed until the validation split holds every quantile's level, and the
factors are saved inside the model.

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
from keras import ops

from pipeline import schema
from pipeline.architecture import write_architecture
from pipeline.atomic import atomic_path
from pipeline.config import DVCLIVE_DIR, MODEL_PATH, WINDOWS_DIR, load_params, stage_command_line
from pipeline.dataset import Windows, load_windows, make_dataset
from pipeline.model import PACKAGE, TEMPERATURE_INDEX, build_model, calibration_factors, median_position


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and TensorFlow, and make TensorFlow's ops deterministic."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def hour_weights(horizon: int, final_hour_share: float, hour_errors=None) -> list[float]:
    """Loss weight of each hour +1 .. +horizon: the last gets `final_hour_share`, the others share the rest,
    equally or, given `hour_errors` (each hour's typical error), in proportion to 1 / sqrt(error): a near
    hour's small errors would otherwise hardly move the loss beside the far hours' large ones."""
    if not 0 <= final_hour_share <= 1:
        raise ValueError(f"train.final_hour_share must lie in [0, 1], got {final_hour_share}")
    if horizon == 1:
        return [1.0]
    balance = np.ones(horizon - 1) if hour_errors is None else 1 / np.sqrt(np.asarray(hour_errors[:-1], float))
    return [float(weight) for weight in (1 - final_hour_share) * balance / balance.sum()] + [float(final_hour_share)]


def persistence_errors(windows: Windows, starts: np.ndarray) -> np.ndarray:
    """Each hour's typical error [horizon]: persistence's MAE at +1 .. +horizon h on the given samples."""
    last = windows.hourly[np.asarray(starts) + windows.lookback - 1, TEMPERATURE_INDEX].astype(np.float64)
    return np.mean(np.abs(windows.paths(starts) - last[:, None]), axis=0)


@keras.saving.register_keras_serializable(package=PACKAGE)
class PinballLoss(keras.losses.Loss):
    """Pinball loss of quantile forecasts [batch, horizon, quantiles] against targets [batch, horizon].

    For level q and error e = observed - forecast: q * e if e >= 0, else (q - 1) * e.
    Averaged over the quantiles, then over the hours with `hour_weights`.
    """

    def __init__(self, quantiles, weights, name="pinball", **kwargs):
        super().__init__(name=name, **kwargs)
        self.quantiles = [float(level) for level in quantiles]
        self.weights = [float(weight) for weight in weights]

    def call(self, y_true, y_pred):
        levels = ops.convert_to_tensor(self.quantiles, dtype=y_pred.dtype)
        error = ops.cast(y_true, y_pred.dtype)[..., None] - y_pred
        per_hour = ops.mean(ops.maximum(levels * error, (levels - 1) * error), axis=-1)
        return ops.sum(per_hour * ops.convert_to_tensor(self.weights, dtype=y_pred.dtype), axis=-1)

    def get_config(self):
        return {**super().get_config(), "quantiles": self.quantiles, "weights": self.weights}


@keras.saving.register_keras_serializable(package=PACKAGE)
class FinalHourMedianMAE(keras.metrics.Mean):
    """MAE (degC) of the median at the last hour, +horizon: the day-ahead forecast's error."""

    def __init__(self, median, name="mae", **kwargs):
        super().__init__(name=name, **kwargs)
        self.median = int(median)

    def update_state(self, y_true, y_pred, sample_weight=None):
        error = ops.abs(ops.cast(y_true[:, -1], y_pred.dtype) - y_pred[:, -1, self.median])
        return super().update_state(error, sample_weight=sample_weight)

    def get_config(self):
        return {**super().get_config(), "median": self.median}


SCHEDULES = ("constant", "cosine")


def learning_rate(train_params: dict, epochs: int, steps_per_epoch: int):
    """The optimizer's learning rate: `train.learning_rate` throughout (schedule `constant`), or
    (`cosine`) a linear warm-up from a tenth of it to it over the first `train.warmup_share` of the
    `epochs` x `steps_per_epoch` steps, then a cosine decay to zero at the last step: large steps
    early, fine ones late, in a set budget."""
    schedule, peak = train_params.get("schedule", "constant"), train_params["learning_rate"]
    if schedule not in SCHEDULES:
        raise ValueError(f"train.schedule must be one of {list(SCHEDULES)}, got {schedule!r}")
    if schedule == "constant":
        return peak
    warmup_share = train_params.get("warmup_share", 0)
    if not 0 <= warmup_share < 1:
        raise ValueError(f"train.warmup_share must lie in [0, 1), got {warmup_share}")
    steps = epochs * steps_per_epoch
    warmup_steps = min(round(warmup_share * steps), steps - 1)
    return keras.optimizers.schedules.CosineDecay(
        peak / 10 if warmup_steps else peak,
        decay_steps=steps - warmup_steps,
        warmup_target=peak if warmup_steps else None,
        warmup_steps=warmup_steps,
    )


def compile_model(
    model: keras.Model,
    quantiles,
    horizon: int,
    train_params: dict,
    epochs: int = 1,
    steps_per_epoch: int = 1,
    hour_errors=None,
) -> keras.Model:
    """Attach the optimizer (`train.optimizer`, with `learning_rate`'s rate or schedule over `epochs`
    of `steps_per_epoch` batches), the pinball loss (weighted by `train.final_hour_share` and, given,
    each hour's typical error: see `hour_weights`) and the +horizon median MAE metric."""
    optimizer = keras.optimizers.get(
        {
            "class_name": train_params["optimizer"],
            "config": {"learning_rate": learning_rate(train_params, epochs, steps_per_epoch)},
        }
    )
    loss = PinballLoss(quantiles, hour_weights(horizon, train_params["final_hour_share"], hour_errors))
    model.compile(optimizer=optimizer, loss=loss, metrics=[FinalHourMedianMAE(median_position(quantiles))])
    return model


def train(windows: Windows, params: dict, callbacks=(), verbose: int | str = "auto"):
    """Build, compile and fit a model; returns it (best weights restored) and its `History`.

    `params` is params.yaml: `seed`, `epochs`, `model` and `train`.
    """
    seed_everything(params["seed"])
    train_params = params["train"]
    steps_per_epoch = -(-len(windows.starts["train"]) // train_params["batch_size"])
    balanced = train_params.get("balance_hours", False)
    model = compile_model(
        build_model(windows.normalization, params["model"]),
        params["model"]["quantiles"],
        windows.horizon,
        train_params,
        params["epochs"],
        steps_per_epoch,
        persistence_errors(windows, windows.starts["train"]) if balanced else None,
    )
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
    calibrate(model, windows, train_params["batch_size"])
    return model, history


def calibrate(model: keras.Model, windows: Windows, batch_size: int) -> np.ndarray:
    """Set the band's calibration factors [hours, levels] from the validation split; returns them."""
    head = model.get_layer(schema.QUANTILES_OUTPUT)
    head.calibration.assign(np.ones(head.calibration.shape, dtype=np.float32))
    starts = windows.starts["validation"]
    quantiles = model.predict(make_dataset(windows, starts, batch_size), verbose=0)
    factors = calibration_factors(windows.paths(starts), quantiles, head.quantiles)
    head.calibration.assign(factors)
    return factors


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
    print(
        f"train: samples {counts}, {params['model']['cell']} x {params['model']['layers']} "
        f"of {params['model']['units']} units, up to {params['epochs']} epochs"
    )

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
    head = model.get_layer(schema.QUANTILES_OUTPUT)
    final_hour = keras.ops.convert_to_numpy(head.calibration)[-1]
    spreads = ", ".join(
        f"{level:g}: x{factor:.2f}" for level, factor in zip(head.quantiles, final_hour) if level != 0.5
    )
    print(
        f"train: best validation MAE of the +{windows.horizon} h median {val_mae:.3f} degC "
        f"at epoch {epoch} of {len(history.epoch)} "
        f"({seconds / len(history.epoch):.1f} s per epoch); band calibrated on the validation split "
        f"(+{windows.horizon} h spreads {spreads}); saved {MODEL_PATH}"
    )
    print(f"train: {write_architecture(model)}")


if __name__ == "__main__":
    stage_command_line(__doc__, __spec__.name)
    main()
