"""The Jena climate CSV: its columns, units and quirks, in one place.

The Max Planck Institute's weather station in Jena logs 14 measurements every
10 minutes. Every stage, the synthetic generator and the forecast client read
the column names from here.
"""

DATE_COLUMN = "Date Time"
DATE_FORMAT = "%d.%m.%Y %H:%M:%S"  # e.g. 01.01.2009 00:10:00

# The 14 measurements, in the CSV's column order.
MEASUREMENTS = [
    "p (mbar)",
    "T (degC)",
    "Tpot (K)",
    "Tdew (degC)",
    "rh (%)",
    "VPmax (mbar)",
    "VPact (mbar)",
    "VPdef (mbar)",
    "sh (g/kg)",
    "H2OC (mmol/mol)",
    "rho (g/m**3)",
    "wv (m/s)",
    "max. wv (m/s)",
    "wd (deg)",
]
COLUMNS = [DATE_COLUMN, *MEASUREMENTS]
# The Jena CSV's first line: every name in double quotes.
CSV_HEADER = ",".join(f'"{name}"' for name in COLUMNS)

# The station's own half-year archives (mpi_roof_2017a.zip, ...) carry the same 14
# measurements in the same order, then these 7; their header is latin-1 encoded.
# The model reads none of them: the download stage drops them.
ARCHIVE_EXTRA_MEASUREMENTS = [
    "rain (mm)",
    "raining (s)",
    "SWDR (W/m²)",
    "PAR (µmol/m²/s)",
    "max. PAR (µmol/m²/s)",
    "Tlog (degC)",
    "CO2 (ppm)",
]

TEMPERATURE = "T (degC)"
PRESSURE = "p (mbar)"
WIND_SPEED = "wv (m/s)"
MAX_WIND_SPEED = "max. wv (m/s)"
WIND_DIRECTION = "wd (deg)"

# The logger writes this where a wind sensor failed.
SENTINEL = -9999.0
SENTINEL_COLUMNS = [WIND_SPEED, MAX_WIND_SPEED]

READING_INTERVAL_MINUTES = 10
CSV_NAME = "jena_climate_2009_2016.csv"

# Each exported version carries its model card here (TF Serving ignores assets.extra/
# but for warm-up): where the model came from and what it reads, in JSON.
MODEL_CARD_FILE = "assets.extra/model_card.json"

# The served model's `serving_default` signature: the names the model, the
# export, the smoke stage and the forecast client share.
SIGNATURE_NAME = "serving_default"
HISTORY_INPUT = "history"
TIMESTAMPS_INPUT = "timestamps"
TEMPERATURE_OUTPUT = "temperature_degC"
PATH_OUTPUT = "temperature_path_degC"
QUANTILES_OUTPUT = "temperature_quantiles_degC"
QUANTILE_LEVELS_OUTPUT = "quantile_levels"
VALID_TIME_OUTPUT = "valid_time"


def served_signature(
    lookback_hours: int, horizon_hours: int | None = None, quantiles: int | None = None
) -> dict[str, dict[str, tuple[str, list]]]:
    """`serving_default`'s tensors, `{"inputs"|"outputs": {name: (dtype, shape)}}`; None is the batch.

    The one description of the served interface: the model's inputs, the
    export's signature and model card, the smoke stage's check and the client
    are all built from it (the inputs need only the lookback).
    - history           float32 [batch, lookback, 14]: raw hourly MEASUREMENTS
    - timestamps        int64   [batch, lookback]: unix seconds of each row
    - temperature_degC  float32 [batch]: the median temperature `horizon` hours after the last row
    - temperature_path_degC       float32 [batch, horizon]: the median of every hour +1 .. +horizon
    - temperature_quantiles_degC  float32 [batch, horizon, quantiles]: those hours' quantiles, ascending
    - quantile_levels   float32 [batch, quantiles]: the levels of those quantiles (e.g. 0.1, 0.5, 0.9),
                        repeated per sample, so that a client needs no model card to read the band
    - valid_time        int64   [batch]: unix seconds of the last hour (last row + horizon), so
                        that any client learns the horizon from the model itself; hour h of the
                        path is valid at valid_time - (horizon - h) * 3600
    """
    return {
        "inputs": {
            HISTORY_INPUT: ("float32", [None, lookback_hours, len(MEASUREMENTS)]),
            TIMESTAMPS_INPUT: ("int64", [None, lookback_hours]),
        },
        "outputs": {
            TEMPERATURE_OUTPUT: ("float32", [None]),
            PATH_OUTPUT: ("float32", [None, horizon_hours]),
            QUANTILES_OUTPUT: ("float32", [None, horizon_hours, quantiles]),
            QUANTILE_LEVELS_OUTPUT: ("float32", [None, quantiles]),
            VALID_TIME_OUTPUT: ("int64", [None]),
        },
    }


def column_index(name: str) -> int:
    """Position of a measurement in the model's `history` input."""
    return MEASUREMENTS.index(name)
