"""Stage 2, prepare: validate the raw 10-minute CSV and downsample it to hours.

In:  data/raw/jena_climate_2009_2016.csv and param `prepare.max_fill_hours`.
Out: data/prepared/hourly.parquet, a regular hourly table (`Date Time` plus the
     14 measurements; hours that could not be filled are NaN), and
     metrics/prepare.json, what was cleaned.

Cleaning, in order:
1. validation: the header must be the Jena header; every timestamp and number
   must parse, else the error names the file, column and line;
2. the logger's -9999 wind sentinels become missing values;
3. duplicated timestamps are dropped (the first reading stays: the download
   stage writes the later source's rows of a timestamp first, so across sources
   the later one wins); `conflicting_duplicates` counts the dropped readings that
   disagreed with the kept one in any measurement (equal readings are harmless);
4. readings are averaged into hours, labelled by the hour's end (00:10 ... 01:00
   -> 01:00); wind direction is averaged as a unit vector, never arithmetically;
5. gaps of at most `max_fill_hours` are interpolated; longer gaps stay NaN so the
   window stage can keep every sample clear of them.
"""

import numpy as np
import pandas as pd

from pipeline import schema
from pipeline.atomic import atomic_path, write_json
from pipeline.config import HOURLY_TABLE, PREPARE_REPORT, RAW_CSV, load_params, stage_command_line


class InvalidData(ValueError):
    """The raw CSV breaks the Jena format; the message names file, column and line."""


def read_raw_csv(path) -> pd.DataFrame:
    """Parse and validate the raw CSV; 'Date Time' becomes datetime64, the rest float64."""
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, engine="c")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise InvalidData(f"{path}: not a readable CSV ({error})") from error
    missing = [name for name in schema.COLUMNS if name not in raw.columns]
    unexpected = [name for name in raw.columns if name not in schema.COLUMNS]
    if missing or unexpected:
        raise InvalidData(f"{path}: header has missing columns {missing} and unexpected columns {unexpected}")
    if raw.empty:
        raise InvalidData(f"{path}: no readings below the header")

    readings = pd.DataFrame(index=raw.index)
    readings[schema.DATE_COLUMN] = pd.to_datetime(raw[schema.DATE_COLUMN], format=schema.DATE_FORMAT, errors="coerce")
    for name in schema.MEASUREMENTS:
        readings[name] = pd.to_numeric(raw[name], errors="coerce")
    for name in schema.COLUMNS:
        bad = readings[name].isna().to_numpy()
        if bad.any():
            row = int(np.argmax(bad))
            raise InvalidData(
                f"{path}: column {name!r}, line {row + 2}: cannot parse {raw[name].iloc[row]!r} "
                f"({int(bad.sum())} bad value(s) in this column)"
            )
    return readings


def replace_sentinels(readings: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Turn the logger's -9999 into NaN; returns the table and how many values were replaced."""
    readings = readings.copy()
    sentinels = readings[schema.SENTINEL_COLUMNS] == schema.SENTINEL
    readings[schema.SENTINEL_COLUMNS] = readings[schema.SENTINEL_COLUMNS].mask(sentinels)
    return readings, int(sentinels.to_numpy().sum())


def drop_duplicate_timestamps(readings: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Keep the first reading of each timestamp, in time order."""
    duplicated = readings[schema.DATE_COLUMN].duplicated(keep="first")
    readings = readings[~duplicated].sort_values(schema.DATE_COLUMN, kind="stable")
    return readings.reset_index(drop=True), int(duplicated.sum())


def count_conflicting_duplicates(readings: pd.DataFrame) -> int:
    """How many readings with an earlier reading of the same timestamp differ from that one in a
    measurement; missing values agree with missing values."""
    duplicated = readings[schema.DATE_COLUMN].duplicated(keep="first").to_numpy()
    if not duplicated.any():
        return 0
    kept = readings[~duplicated].set_index(schema.DATE_COLUMN)[schema.MEASUREMENTS]
    dropped = readings[duplicated]
    kept_values = kept.loc[dropped[schema.DATE_COLUMN]].to_numpy()
    dropped_values = dropped[schema.MEASUREMENTS].to_numpy()
    agree = (kept_values == dropped_values) | (np.isnan(kept_values) & np.isnan(dropped_values))
    return int((~agree).any(axis=1).sum())


def mean_direction_degrees(direction_degrees: pd.Series, by) -> pd.Series:
    """Average angles as unit vectors: 350 and 10 degrees give 0, not 180."""
    radians = np.deg2rad(direction_degrees.to_numpy())
    components = pd.DataFrame({"x": np.cos(radians), "y": np.sin(radians)}, index=direction_degrees.index)
    mean = components.groupby(by).mean()
    return pd.Series(np.rad2deg(np.arctan2(mean["y"], mean["x"])) % 360.0, index=mean.index)


def to_hourly(readings: pd.DataFrame) -> pd.DataFrame:
    """Average readings into a regular grid of hours labelled by their end; empty hours are NaN."""
    hour = readings[schema.DATE_COLUMN].dt.ceil("h")
    scalars = [name for name in schema.MEASUREMENTS if name != schema.WIND_DIRECTION]
    hourly = readings[scalars].groupby(hour).mean()
    hourly[schema.WIND_DIRECTION] = mean_direction_degrees(readings[schema.WIND_DIRECTION], hour)
    grid = pd.date_range(hourly.index[0], hourly.index[-1], freq="h", name=schema.DATE_COLUMN)
    return hourly.reindex(grid)[schema.MEASUREMENTS]


def run_lengths(missing: np.ndarray) -> np.ndarray:
    """For each True in `missing`, the length of the run of Trues it belongs to (0 elsewhere)."""
    padded = np.concatenate([[False], missing, [False]])
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    starts, ends = edges[::2], edges[1::2]
    lengths = np.zeros(len(missing), dtype=np.int64)
    lengths[missing] = np.repeat(ends - starts, ends - starts)
    return lengths


def fill_short_gaps(hourly: pd.DataFrame, max_fill_hours: int) -> tuple[pd.DataFrame, dict]:
    """Interpolate runs of at most `max_fill_hours` missing hours, per column; longer runs stay NaN."""
    filled = hourly.copy()
    for name in schema.MEASUREMENTS:
        missing = hourly[name].isna().to_numpy()
        short = (run_lengths(missing) <= max_fill_hours) & missing
        if not short.any():  # most columns of most hours: the hourly forecast prepares a few days every hour
            continue
        if name == schema.WIND_DIRECTION:
            # interpolated on its vector components so that 350 -> 10 passes through 0
            direction = np.deg2rad(hourly[name])
            vector = pd.DataFrame({"x": np.cos(direction), "y": np.sin(direction)}).interpolate(limit_area="inside")
            interpolated = np.rad2deg(np.arctan2(vector["y"], vector["x"])).to_numpy() % 360.0
        else:
            interpolated = hourly[name].interpolate(limit_area="inside").to_numpy()
        filled.loc[short, name] = interpolated[short]
    empty_before = hourly.isna().all(axis=1).to_numpy()
    empty_after = filled.isna().any(axis=1).to_numpy()
    gaps_before = run_lengths(empty_before)
    report = {
        "empty_hours": int(empty_before.sum()),
        "gaps_filled": int(((gaps_before > 0) & (gaps_before <= max_fill_hours) & _run_starts(empty_before)).sum()),
        "gaps_left": int(((gaps_before > max_fill_hours) & _run_starts(empty_before)).sum()),
        "hours_left_missing": int(empty_after.sum()),
    }
    return filled, report


def _run_starts(mask: np.ndarray) -> np.ndarray:
    return mask & ~np.concatenate([[False], mask[:-1]])


def prepare(readings: pd.DataFrame, max_fill_hours: int) -> tuple[pd.DataFrame, dict]:
    """Validated 10-minute readings -> hourly table and a report of what was cleaned."""
    rows_in = len(readings)
    readings, sentinels = replace_sentinels(readings)
    conflicting = count_conflicting_duplicates(readings)
    readings, duplicates = drop_duplicate_timestamps(readings)
    hourly, gap_report = fill_short_gaps(to_hourly(readings), max_fill_hours)
    report = {
        "rows_in": rows_in,
        "hours_out": len(hourly),
        "duplicates_dropped": duplicates,
        "conflicting_duplicates": conflicting,
        "sentinels_replaced": sentinels,
        "first_hour": str(hourly.index[0]),
        "last_hour": str(hourly.index[-1]),
        **gap_report,
    }
    return hourly, report


def main() -> None:
    params = load_params()
    try:
        readings = read_raw_csv(RAW_CSV)
    except FileNotFoundError:
        raise SystemExit(f"prepare: {RAW_CSV} not found; run `dvc repro download` first") from None
    except InvalidData as error:
        raise SystemExit(f"prepare: {error}") from None
    hourly, report = prepare(readings, params["prepare"]["max_fill_hours"])
    with atomic_path(HOURLY_TABLE, suffix=".parquet") as temporary:
        hourly.reset_index().to_parquet(temporary, index=False)
    write_json(PREPARE_REPORT, report)
    print(f"prepare: {report['rows_in']:,} readings -> {report['hours_out']:,} hours; {report}")


if __name__ == "__main__":
    stage_command_line(__doc__, __spec__.name)
    main()
