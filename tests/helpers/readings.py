"""Small hand-made Jena readings and their CSV text, for the tests of the stages that read them."""

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import schema, synthetic


def make_readings(start="2020-01-01 00:10", periods=6 * 48, seed=0) -> pd.DataFrame:
    """10-minute readings with plausible values and a smooth daily temperature cycle."""
    rng = np.random.default_rng(seed)
    stamps = pd.date_range(start, periods=periods, freq="10min")
    hours = np.arange(periods) / 6
    readings = pd.DataFrame({schema.DATE_COLUMN: stamps})
    for name in schema.MEASUREMENTS:
        readings[name] = np.round(rng.uniform(1, 2, periods), 2)
    readings[schema.PRESSURE] = np.round(990 + rng.normal(0, 1, periods), 2)
    readings[schema.TEMPERATURE] = np.round(10 + 5 * np.sin(2 * np.pi * hours / 24), 2)
    readings[schema.WIND_DIRECTION] = np.round(rng.uniform(0, 360, periods), 2)
    return readings


def to_csv_text(readings: pd.DataFrame) -> str:
    """The readings in the Jena file's exact text format (the synthetic writer's)."""
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / schema.CSV_NAME
        synthetic.write_jena_csv(readings, path)
        return path.read_text()
