"""A small model with the served signature, for the application's tests: no training, known answers.

Its forecast is a known function of the history (`expected_forecast`), so a test
can check every archived number; `write_hourly_model` saves it with its model card
(`model_card`) as a version directory; `Served` says where a server serves it.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline import schema

MODEL_NAME = "jena_temperature"
LOOKBACK_HOURS = 24
HORIZON_HOURS = 6
LEVELS = [0.1, 0.5, 0.9]
# The band around the median: its quantiles are median - 1, median, median + 1.5 degC.
BAND_DEGC = [-1.0, 0.0, 1.5]
STEP_DEGC = 0.5  # the median rises this much per hour ahead


def expected_forecast(last_temperature: float) -> tuple[np.ndarray, np.ndarray]:
    """(medians [horizon], quantiles [horizon, levels]) the small model forecasts from the last hour's temperature."""
    medians = np.float32(last_temperature) + np.float32(STEP_DEGC) * np.arange(1, HORIZON_HOURS + 1, dtype=np.float32)
    return medians, medians[:, None] + np.float32(BAND_DEGC)


def model_card(**changes) -> dict:
    """The small model's card (what forecast.client reads of one), with `changes` to its top-level keys."""
    return {
        "model_name": MODEL_NAME,
        "measurements": schema.MEASUREMENTS,
        "params": {"prepare": {"max_fill_hours": 0}},
        "forecast": {"hour_offsets": list(range(1, HORIZON_HOURS + 1)), "quantile_levels": LEVELS},
        **changes,
    }


def write_hourly_model(directory: Path) -> Path:
    """A SavedModel with `schema.served_signature`'s inputs and outputs and a model card, in `directory`."""
    import tensorflow as tf

    temperature = schema.column_index(schema.TEMPERATURE)
    inputs = schema.served_signature(LOOKBACK_HOURS)["inputs"]
    specs = [tf.TensorSpec(shape, dtype, name=name) for name, (dtype, shape) in inputs.items()]
    module = tf.Module()

    @tf.function(input_signature=specs)
    def serve(history, timestamps):
        ahead = tf.range(1, HORIZON_HOURS + 1, dtype=tf.float32) * STEP_DEGC
        medians = history[:, -1, temperature : temperature + 1] + ahead[None, :]
        quantiles = medians[:, :, None] + tf.constant(BAND_DEGC, tf.float32)[None, None, :]
        batch = tf.shape(history)[:1]
        return {
            schema.TEMPERATURE_OUTPUT: medians[:, -1],
            schema.PATH_OUTPUT: medians,
            schema.QUANTILES_OUTPUT: quantiles,
            schema.QUANTILE_LEVELS_OUTPUT: tf.tile(tf.constant([LEVELS], tf.float32), tf.concat([batch, [1]], 0)),
            schema.VALID_TIME_OUTPUT: timestamps[:, -1] + HORIZON_HOURS * 3600,
        }

    module.serve = serve
    tf.saved_model.save(module, str(directory), signatures={schema.SIGNATURE_NAME: serve})
    (directory / "assets.extra").mkdir(exist_ok=True)
    (directory / schema.MODEL_CARD_FILE).write_text(json.dumps(model_card()))
    return directory


@dataclass
class Served:
    """A ModelServer serving version 1 of the small model: where to reach it and its version directory."""

    grpc_target: str
    rest_target: str
    version_dir: Path
