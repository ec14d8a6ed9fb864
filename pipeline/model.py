"""The forecaster: raw hourly measurements in, the temperature a day later out.

In:  `history`    float32 [batch, lookback_hours, 14], the raw hourly
                  measurements in physical units, in the CSV's column order;
     `timestamps` int64 [batch, lookback_hours], unix seconds of each row.
Out: float32 [batch, horizon_hours, quantiles], for every hour +1 .. +horizon_hours
     after the last row the temperature quantiles (levels `model.quantiles`,
     ascending, 0.5 among them) in degC.

Everything between raw units and degrees Celsius happens inside the model, so
the saved `.keras` file (and the SavedModel the export stage wraps around it)
needs nothing else:

1. `JenaFeatures` derives the model features (wind vector, time of day and of
   year) with the very function the window stage used, on `keras.ops`, and
   standardises them with the training split's mean and std (except the
   sin/cos time features, already in [-1, 1]: a training split shorter than
   a year would otherwise put the other seasons many "stds" away). The
   statistics are constants in the layer's config, so they travel inside the
   file.
2. Optionally a strided Conv1D (`model.conv_*`) summarises every few hours,
   so that a stack of GRU or LSTM layers reads a shorter sequence, ending at
   the last observed hour.
3. A Dense layer (horizon x quantiles units) and `QuantileHead` give degrees
   Celsius: per hour a median, with `residual` the last observed temperature
   plus the predicted change (scaled by the temperature's std), otherwise the
   temperature's mean plus the scaled output; the other quantiles are the
   median minus or plus cumulative softplus spreads, so they never cross.
   Each hour's spreads are then multiplied by calibration factors, ones
   until the train stage sets them from the validation split
   (`calibration_factors`): a band learnt under dropout on training data
   is seldom as wide as its levels promise on unseen data.

The custom layers are registered as serialisable: importing this module is
all `keras.saving.load_model` needs to rebuild the model.
"""

import keras
import numpy as np
from keras import ops

from pipeline import schema
from pipeline.features import derive_features

PACKAGE = "wetterfrosch"
TEMPERATURE_INDEX = schema.column_index(schema.TEMPERATURE)
RECURRENT_CELLS = {"gru": keras.layers.GRU, "lstm": keras.layers.LSTM}
CYCLIC_FEATURES = {"day_sin", "day_cos", "year_sin", "year_cos"}


@keras.saving.register_keras_serializable(package=PACKAGE)
class JenaFeatures(keras.layers.Layer):
    """[history, timestamps] -> standardised features [batch, hours, features]."""

    def __init__(self, mean, std, time_features, wind_vector, **kwargs):
        super().__init__(**kwargs)
        if len(mean) != len(std):
            raise ValueError(f"JenaFeatures: {len(mean)} means but {len(std)} stds")
        self.mean = [float(value) for value in mean]
        self.std = [float(value) for value in std]
        self.time_features = bool(time_features)
        self.wind_vector = bool(wind_vector)

    def call(self, inputs):
        history, timestamps = inputs
        features = derive_features(
            history, timestamps, ops, time_features=self.time_features, wind_vector=self.wind_vector
        )
        mean = ops.convert_to_tensor(self.mean, dtype=features.dtype)
        std = ops.convert_to_tensor(self.std, dtype=features.dtype)
        return (features - mean) / std

    def compute_output_shape(self, input_shape):
        history_shape, _ = input_shape
        return (*history_shape[:-1], len(self.mean))

    def get_config(self):
        return {
            **super().get_config(),
            "mean": self.mean,
            "std": self.std,
            "time_features": self.time_features,
            "wind_vector": self.wind_vector,
        }


@keras.saving.register_keras_serializable(package=PACKAGE)
class QuantileHead(keras.layers.Layer):
    """[head output [batch, horizon * quantiles], history] -> quantiles in degC [batch, horizon, quantiles].

    Per hour, the first output is the median (scaled by the temperature's std,
    added to the last observed temperature with `residual`, else to the
    training mean); the others are spreads, made positive by softplus and
    summed outwards from the median, so the quantiles ascend and never cross.
    Each quantile's distance from the median is multiplied by its entry of
    the non-trainable `calibration` weight [horizon, quantiles] (ones until
    calibrated; saved with the model, so the served quantiles are the
    calibrated ones); sorting keeps the quantiles ascending whatever the factors.
    """

    def __init__(self, mean, std, residual, horizon, quantiles, **kwargs):
        super().__init__(**kwargs)
        self.mean = float(mean)
        self.std = float(std)
        self.residual = bool(residual)
        self.horizon = int(horizon)
        self.quantiles = [float(level) for level in quantiles]
        self.median = median_position(self.quantiles)

    def build(self, input_shape):
        self.calibration = self.add_weight(
            name="calibration", shape=(self.horizon, len(self.quantiles)), initializer="ones", trainable=False
        )

    def call(self, inputs):
        output, history = inputs
        output = ops.reshape(output, (-1, self.horizon, len(self.quantiles)))
        median = output[..., 0]
        spreads = ops.softplus(output[..., 1:])  # the first `self.median` reach down, the rest up
        downward = -ops.flip(ops.cumsum(spreads[..., : self.median], axis=-1), axis=-1)
        upward = ops.cumsum(spreads[..., self.median :], axis=-1)
        offsets = ops.concatenate([downward, ops.zeros_like(median)[..., None], upward], axis=-1)
        standardised = median[..., None] + offsets * ops.cast(self.calibration, offsets.dtype)
        base = history[:, -1, TEMPERATURE_INDEX][:, None, None] if self.residual else self.mean
        return ops.sort(base + standardised * self.std, axis=-1)

    def compute_output_shape(self, input_shape):
        output_shape, _ = input_shape
        return (output_shape[0], self.horizon, len(self.quantiles))

    def get_config(self):
        return {
            **super().get_config(),
            "mean": self.mean,
            "std": self.std,
            "residual": self.residual,
            "horizon": self.horizon,
            "quantiles": self.quantiles,
        }


def calibration_factors(observed, quantiles, levels, smallest: float = 0.05):
    """Factors [hours, levels] for `QuantileHead.calibration` that make each quantile hold its level.

    `observed` [samples, hours] and the model's `quantiles` [samples, hours, levels] on data it was
    not fitted to (the validation split). Per hour and level, the distance of the quantile from the
    median is scaled so that the share of observations below it is the level: for a lower quantile
    the observation falls below it when (median - observed) / distance exceeds the factor, so the
    factor is the (1 - level)-quantile of that ratio; an upper one mirrors it. Scaling keeps each
    forecast's own spread (wider in unsettled weather) and changes no median. This is conformalised
    quantile regression with a multiplicative score; the factors are at least `smallest`, so a
    quantile never collapses onto the median.
    """
    levels = np.asarray(levels, dtype=np.float64)
    median = median_position(levels)
    centre = quantiles[..., median : median + 1]
    distance = np.maximum(np.abs(quantiles - centre), 1e-6)
    outward = np.where(levels < 0.5, -1.0, 1.0)  # the direction each quantile lies from the median
    ratio = outward * (np.asarray(observed)[..., None] - centre) / distance
    share = np.maximum(levels, 1 - levels)
    factors = np.stack([np.quantile(ratio[..., j], share[j], axis=0) for j in range(len(levels))], axis=-1)
    factors[:, median] = 1.0
    return np.maximum(factors, smallest).astype(np.float32)


def median_position(quantiles) -> int:
    """Index of 0.5 in strictly ascending levels in (0, 1); a clear error otherwise."""
    levels = [float(level) for level in quantiles]
    if (
        not levels
        or any(not 0 < level < 1 for level in levels)
        or any(low >= high for low, high in zip(levels, levels[1:]))
        or 0.5 not in levels
    ):
        raise ValueError(f"model.quantiles must be strictly ascending levels in (0, 1) including 0.5, got {quantiles}")
    return levels.index(0.5)


def standardisation(normalization: dict) -> tuple[list[float], list[float]]:
    """Mean and std per feature from normalization.json; the cyclic time features keep 0 and 1."""
    cyclic = [name in CYCLIC_FEATURES for name in normalization["feature_names"]]
    mean = [0.0 if keep else value for keep, value in zip(cyclic, normalization["mean"])]
    std = [1.0 if keep else value for keep, value in zip(cyclic, normalization["std"])]
    return mean, std


def strided_convolution(x, lookback: int, model_params: dict):
    """With `conv_filters` > 0, a Conv1D (`conv_kernel` hours wide, every `conv_stride` hours) over the
    features, so the recurrent layers read lookback / stride steps instead of lookback. The first
    (lookback - kernel) % stride hours are dropped so that the last step ends at the last observed hour."""
    filters = model_params.get("conv_filters", 0)
    if filters == 0:
        return x
    kernel, stride = model_params.get("conv_kernel", 1), model_params.get("conv_stride", 1)
    if filters < 0 or kernel < 1 or stride < 1:
        raise ValueError(
            f"model.conv_filters must be >= 0 and model.conv_kernel, model.conv_stride >= 1, "
            f"got {filters}, {kernel}, {stride}"
        )
    if kernel > lookback:
        raise ValueError(f"model.conv_kernel {kernel} is longer than the lookback of {lookback} hours")
    skipped = (lookback - kernel) % stride
    if skipped:
        x = keras.layers.Cropping1D((skipped, 0), name="conv_alignment")(x)
    return keras.layers.Conv1D(filters, kernel, strides=stride, name="conv")(x)


def build_model(normalization: dict, model_params: dict) -> keras.Model:
    """A fresh, uncompiled forecaster for the window stage's `normalization.json`.

    `model_params`: `cell` (gru or lstm), `layers`, `units`, `dropout`,
    `recurrent_dropout`, `residual` and `quantiles`; optionally `conv_filters`,
    `conv_kernel`, `conv_stride` (see `strided_convolution`; 0 filters: none). Weights are drawn from
    Keras' global seed (see `keras.utils.set_random_seed`).
    """
    cell = model_params["cell"]
    if cell not in RECURRENT_CELLS:
        raise ValueError(f"model.cell must be one of {sorted(RECURRENT_CELLS)}, got {cell!r}")
    if model_params["layers"] < 1:
        raise ValueError(f"model.layers must be at least 1, got {model_params['layers']}")
    lookback, horizon = normalization["lookback_hours"], normalization["horizon_hours"]
    quantiles = model_params["quantiles"]
    median_position(quantiles)  # a clear error before any layer is built
    history, timestamps = (
        keras.Input(shape=shape[1:], dtype=dtype, name=name)
        for name, (dtype, shape) in schema.served_signature(lookback)["inputs"].items()
    )

    mean, std = standardisation(normalization)
    x = JenaFeatures(
        mean,
        std,
        normalization["time_features"],
        normalization["wind_vector"],
        name="features",
    )([history, timestamps])
    x = strided_convolution(x, lookback, model_params)
    for layer in range(model_params["layers"]):
        x = RECURRENT_CELLS[cell](
            model_params["units"],
            dropout=model_params["dropout"],
            recurrent_dropout=model_params["recurrent_dropout"],
            return_sequences=layer < model_params["layers"] - 1,
            name=f"{cell}_{layer + 1}",
        )(x)
    output = keras.layers.Dense(horizon * len(quantiles), name="head")(x)

    target = normalization["feature_names"].index(schema.TEMPERATURE)
    quantiles_degC = QuantileHead(
        normalization["mean"][target],
        normalization["std"][target],
        model_params["residual"],
        horizon,
        quantiles,
        name=schema.QUANTILES_OUTPUT,
    )([output, history])
    inputs = {schema.HISTORY_INPUT: history, schema.TIMESTAMPS_INPUT: timestamps}
    return keras.Model(inputs, quantiles_degC, name="wetterfrosch")
