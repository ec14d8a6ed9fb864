"""Model features derived from the raw hourly measurements.

One implementation serves both sides: the window stage calls it with numpy to
compute normalisation statistics, and the model calls it with `keras.ops`
inside the graph, so the served model takes raw measurements and the two can
never drift apart.

In:  history [..., hours, 14] in the CSV's units and column order, and
     timestamps [..., hours] as int64 unix seconds.
Out: features [..., hours, len(feature_names(...))], float32.
"""

import math

import numpy as np

from pipeline import schema

SECONDS_PER_DAY = 86_400
SECONDS_PER_YEAR = 31_556_952  # 365.2425 days

WIND_COLUMNS = [schema.WIND_SPEED, schema.MAX_WIND_SPEED, schema.WIND_DIRECTION]
PLAIN_COLUMNS = [name for name in schema.MEASUREMENTS if name not in WIND_COLUMNS]


def feature_names(time_features: bool, wind_vector: bool) -> list[str]:
    """The names of derive_features' output columns, in order."""
    names = list(PLAIN_COLUMNS)
    if wind_vector:
        names += ["wv_x (m/s)", "wv_y (m/s)", "max_wv_x (m/s)", "max_wv_y (m/s)"]
    else:
        names += WIND_COLUMNS
    if time_features:
        names += ["day_sin", "day_cos", "year_sin", "year_cos"]
    return names


def _column(history, name, ops):
    return ops.take(history, schema.column_index(name), axis=-1)


def _cycle(timestamps, period_seconds, ops):
    """sin and cos of the phase within a period; the modulo runs on int64 to keep precision."""
    to_float = getattr(ops, "cast", np.asarray)  # keras.ops.cast / numpy.asarray
    phase = to_float(ops.mod(timestamps, period_seconds), "float32") * (2 * math.pi / period_seconds)
    return [ops.sin(phase), ops.cos(phase)]


def derive_features(history, timestamps, ops=np, *, time_features: bool, wind_vector: bool):
    """Raw measurements (+ timestamps) -> the model's feature columns; `ops` is numpy or keras.ops."""
    columns = [_column(history, name, ops) for name in PLAIN_COLUMNS]
    if wind_vector:
        direction = ops.deg2rad(_column(history, schema.WIND_DIRECTION, ops))
        for speed_name in (schema.WIND_SPEED, schema.MAX_WIND_SPEED):
            speed = _column(history, speed_name, ops)
            columns += [speed * ops.cos(direction), speed * ops.sin(direction)]
    else:
        columns += [_column(history, name, ops) for name in WIND_COLUMNS]
    if time_features:
        columns += _cycle(timestamps, SECONDS_PER_DAY, ops)
        columns += _cycle(timestamps, SECONDS_PER_YEAR, ops)
    return ops.stack(columns, axis=-1)
