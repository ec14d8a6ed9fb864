"""Small window-stage outputs for the train and evaluate tests, made in memory.

`hourly_table` builds a plausible hourly Jena table (yearly and daily
temperature cycles plus a slowly decaying weather anomaly, the other columns
loosely tied to it); `small_windows` runs the real window stage on it and
returns a `Windows`, exactly what `load_windows` gives the stages.
"""

import numpy as np
import pandas as pd

from pipeline import schema
from pipeline.dataset import Windows
from pipeline.window import make_windows


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
