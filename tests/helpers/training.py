"""What the tests of training and what follows it start from: small windows and a tiny model's params.

`hourly_table` builds a plausible hourly Jena table (yearly and daily
temperature cycles plus a slowly decaying weather anomaly, the other columns
loosely tied to it); `small_windows` runs the real window stage on it and
returns a `Windows`, exactly what `load_windows` gives the stages;
`write_windows` stores one where the stages read it. `TINY_MODEL` and
`TINY_TRAIN` are params sections for a model that trains in seconds;
`tiny_params` is a params.yaml of them; `EVALUATE_PARAMS` the evaluate section.
"""

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import schema
from pipeline.dataset import Windows, save_windows
from pipeline.window import make_windows

# model.* and train.* of a forecaster small enough to train in seconds on `small_windows`
TINY_MODEL = {
    "cell": "gru",
    "layers": 1,
    "units": 4,
    "dropout": 0.0,
    "recurrent_dropout": 0.0,
    "residual": True,
    "quantiles": [0.1, 0.5, 0.9],
}
# a strided convolution before the recurrent layer: on 24 h of history the 2 oldest hours are dropped, 7 steps remain
CONVOLUTION = {"conv_filters": 5, "conv_kernel": 4, "conv_stride": 3}
TINY_TRAIN = {"optimizer": "adam", "learning_rate": 0.01, "batch_size": 64, "final_hour_share": 0.5, "patience": 2}

# evaluate.* as in params.yaml, with fewer bootstrap replicates and a week of plots: quicker, the same rules
EVALUATE_PARAMS = {
    "margin": 0.05,
    "tolerance": 0.05,
    "coverage_goal": [0.78, 0.82],
    "confidence": 0.95,
    "block_days": 7,
    "bootstrap_replicates": 500,
    "climatology_window_days": 15,
    "plot_days": 7,
}


def tiny_params(epochs: int = 1, seed: int = 3, **model) -> dict:
    """params.yaml's seed, epochs, model (TINY_MODEL with `model` changed) and train sections."""
    return {"seed": seed, "epochs": epochs, "model": {**TINY_MODEL, **model}, "train": dict(TINY_TRAIN)}


def hourly_table(days: int, seed: int = 0, start: str = "2009-01-01") -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    hours = days * 24
    time = pd.date_range(start, periods=hours, freq="h")
    day_of_year = time.day_of_year.to_numpy()
    hour = time.hour.to_numpy()
    anomaly = np.zeros(hours)
    shocks = rng.normal(0, 0.5, hours)
    for i in range(1, hours):  # AR(1) weather anomaly, e-folding time about 3 days
        anomaly[i] = 0.986 * anomaly[i - 1] + shocks[i]
    temperature = (
        9.5 - 9 * np.cos(2 * np.pi * (day_of_year - 15) / 365) - 3 * np.cos(2 * np.pi * (hour - 3) / 24) + anomaly
    )
    pressure = 989 - 0.8 * anomaly + rng.normal(0, 1, hours)
    humidity = np.clip(76 - 1.5 * anomaly + 8 * np.cos(2 * np.pi * (hour - 3) / 24), 20, 100)
    saturation = 6.1078 * np.exp(17.27 * temperature / (temperature + 237.3))
    vapour = saturation * humidity / 100
    speed = np.abs(rng.normal(2, 1, hours))
    values = {
        "p (mbar)": pressure,
        "T (degC)": temperature,
        "Tpot (K)": temperature + 273.15 + 0.8,
        "Tdew (degC)": temperature - (100 - humidity) / 5,
        "rh (%)": humidity,
        "VPmax (mbar)": saturation,
        "VPact (mbar)": vapour,
        "VPdef (mbar)": saturation - vapour,
        "sh (g/kg)": 622 * vapour / pressure,
        "H2OC (mmol/mol)": 1000 * vapour / pressure,
        "rho (g/m**3)": 100 * pressure / (287.05 * (temperature + 273.15)) * 1000,
        "wv (m/s)": speed,
        "max. wv (m/s)": speed * 1.8,
        "wd (deg)": rng.uniform(0, 360, hours),
    }
    table = pd.DataFrame({schema.DATE_COLUMN: time, **values})
    return table[schema.COLUMNS]


def small_windows(
    days: int = 120,
    lookback: int = 24,
    horizon: int = 6,
    seed: int = 0,
    time_features: bool = True,
    wind_vector: bool = True,
) -> Windows:
    window_params = {
        "lookback_hours": lookback,
        "horizon_hours": horizon,
        "train_fraction": 0.5,
        "val_fraction": 0.25,
        "time_features": time_features,
        "wind_vector": wind_vector,
    }
    windows = make_windows(hourly_table(days, seed), window_params)
    return Windows(windows["hourly"], windows["timestamps"], windows["starts"], windows["normalization"])


def write_windows(windows: Windows, directory: Path) -> None:
    """`windows` stored as the window stage stores them (data/windows/ in a stage's directory)."""
    save_windows(
        {
            "hourly": windows.hourly,
            "timestamps": windows.timestamps,
            "starts": windows.starts,
            "normalization": windows.normalization,
        },
        directory,
    )
