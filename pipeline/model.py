"""The forecaster: raw hourly measurements in, the temperature a day later out.

In:  `history`    float32 [batch, lookback_hours, 14], the raw hourly
                  measurements in physical units, in the CSV's column order;
     `timestamps` int64 [batch, lookback_hours], unix seconds of each row.
Out: float32 [batch], the temperature `horizon_hours` after the last row, in degC.

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
2. A stack of GRU or LSTM layers reads the standardised sequence.
3. A Dense unit and `TemperatureHead` give degrees Celsius: with `residual`,
   the last observed temperature plus the predicted change (scaled by the
   temperature's std), otherwise the temperature's mean plus the scaled output.

The custom layers are registered as serialisable: importing this module is
all `keras.saving.load_model` needs to rebuild the model.
"""

import keras
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
class TemperatureHead(keras.layers.Layer):
    """[head output [batch, 1], history] -> temperature in degC [batch]."""

    def __init__(self, mean, std, residual, **kwargs):
        super().__init__(**kwargs)
        self.mean = float(mean)
        self.std = float(std)
        self.residual = bool(residual)

    def call(self, inputs):
        output, history = inputs
        change = ops.squeeze(output, axis=-1) * self.std
        if self.residual:
            return history[:, -1, TEMPERATURE_INDEX] + change
        return self.mean + change

    def compute_output_shape(self, input_shape):
        output_shape, _ = input_shape
        return output_shape[:-1]

    def get_config(self):
        return {**super().get_config(), "mean": self.mean, "std": self.std, "residual": self.residual}


def standardisation(normalization: dict) -> tuple[list[float], list[float]]:
    """Mean and std per feature from normalization.json; the cyclic time features keep 0 and 1."""
    cyclic = [name in CYCLIC_FEATURES for name in normalization["feature_names"]]
    mean = [0.0 if keep else value for keep, value in zip(cyclic, normalization["mean"])]
    std = [1.0 if keep else value for keep, value in zip(cyclic, normalization["std"])]
    return mean, std


def build_model(normalization: dict, model_params: dict) -> keras.Model:
    """A fresh, uncompiled forecaster for the window stage's `normalization.json`.

    `model_params`: `cell` (gru or lstm), `layers`, `units`, `dropout`,
    `recurrent_dropout` and `residual`. Weights are drawn from Keras' global
    seed (see `keras.utils.set_random_seed`).
    """
    cell = model_params["cell"]
    if cell not in RECURRENT_CELLS:
        raise ValueError(f"model.cell must be one of {sorted(RECURRENT_CELLS)}, got {cell!r}")
    if model_params["layers"] < 1:
        raise ValueError(f"model.layers must be at least 1, got {model_params['layers']}")
    lookback = normalization["lookback_hours"]
    history, timestamps = (keras.Input(shape=shape[1:], dtype=dtype, name=name)
                           for name, (dtype, shape) in schema.served_signature(lookback)["inputs"].items())

    mean, std = standardisation(normalization)
    x = JenaFeatures(
        mean,
        std,
        normalization["time_features"],
        normalization["wind_vector"],
        name="features",
    )([history, timestamps])
    for layer in range(model_params["layers"]):
        x = RECURRENT_CELLS[cell](
            model_params["units"],
            dropout=model_params["dropout"],
            recurrent_dropout=model_params["recurrent_dropout"],
            return_sequences=layer < model_params["layers"] - 1,
            name=f"{cell}_{layer + 1}",
        )(x)
    output = keras.layers.Dense(1, name="head")(x)

    target = normalization["feature_names"].index(schema.TEMPERATURE)
    temperature = TemperatureHead(
        normalization["mean"][target],
        normalization["std"][target],
        model_params["residual"],
        name=schema.TEMPERATURE_OUTPUT,
    )([output, history])
    inputs = {schema.HISTORY_INPUT: history, schema.TIMESTAMPS_INPUT: timestamps}
    return keras.Model(inputs, temperature, name="wetterfrosch")
