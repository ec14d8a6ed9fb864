"""Synthetic Jena climate data: the real CSV's shape, units, quirks and statistics, offline.

In:  a date range and a seed. Out: `generate_readings`, a DataFrame with the
     columns of `schema.COLUMNS` (one row per 10-minute reading), and
     `write_jena_csv`, which writes it byte for byte in the real file's format.

The physics: temperature is a yearly cycle, plus a daily cycle whose amplitude
grows in summer and shrinks under clouds, plus weather anomalies that revert to
the mean over days. Part of the anomaly is an air mass that the pressure feels a
day before the thermometer (falling pressure ahead of a warm spell, as with
fronts); cloudiness follows humidity and damps the daily cycle. Humidity,
pressure and wind are coherent with it, and every other column is derived from
T, p and rh by the usual formulas (Magnus, potential temperature, ideal gas).
"""

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import schema

STEP = pd.Timedelta(minutes=schema.READING_INTERVAL_MINUTES)
STEPS_PER_HOUR = 60 // schema.READING_INTERVAL_MINUTES
STEPS_PER_DAY = 24 * STEPS_PER_HOUR
FULL_SIZE_ROWS = 420_768  # 2009-01-01 to 2017-01-01; the quirk rates below are per this size

# Climate of Jena 2009-2016 (T in degC, p in mbar, rh in %).
MEAN_T, YEARLY_T_AMPLITUDE = 9.6, 9.5  # MEAN_T offsets the mean of the cold pools
MEAN_P, P_STD = 989.2, 8.5
MEAN_RH, YEARLY_RH_AMPLITUDE = 76.5, 8.5
AIR_MASS_LEAD_HOURS = 24  # pressure feels an air mass this long before temperature does
PREVAILING_WIND_FROM_DEG, PREVAILING_WIND_SPEED = 240.0, 1.0  # west-south-west, m/s


def red_noise(rng: np.random.Generator, n: int, tau_hours: float, smooth_hours: float = 0.0) -> np.ndarray:
    """Stationary, zero-mean, unit-variance noise with correlation time `tau_hours`.

    White noise filtered by an exponential (AR(1)) kernel, optionally by a short
    second one so the series is smooth at the scale of minutes. The filter runs as
    one FFT convolution; a kernel-length warm-up makes the first value stationary too.
    """
    kernel = np.exp(-np.arange(int(7 * tau_hours * STEPS_PER_HOUR) + 1) / (tau_hours * STEPS_PER_HOUR))
    if smooth_hours > 0:
        smoother = np.exp(-np.arange(int(7 * smooth_hours * STEPS_PER_HOUR) + 1) / (smooth_hours * STEPS_PER_HOUR))
        kernel = np.convolve(kernel, smoother)
    kernel /= np.sqrt(np.sum(kernel**2))
    white = rng.standard_normal(n + len(kernel) - 1)
    size = 1 << int(np.ceil(np.log2(len(white) + len(kernel))))
    filtered = np.fft.irfft(np.fft.rfft(white, size) * np.fft.rfft(kernel, size), size)
    return filtered[len(kernel) - 1 : len(kernel) - 1 + n]


def calendar_angles(times: pd.DatetimeIndex) -> tuple[np.ndarray, np.ndarray]:
    """Angle of the year (0 in mid-January, the coldest time) and hour of the day."""
    day_of_year = times.day_of_year.to_numpy() + times.hour.to_numpy() / 24 + times.minute.to_numpy() / 1440
    year_angle = 2 * np.pi * (day_of_year - 16.0) / 365.2425
    hour = times.hour.to_numpy() + times.minute.to_numpy() / 60
    return year_angle, hour


def daily_shape(hour: np.ndarray) -> np.ndarray:
    """Daily temperature cycle: minimum near sunrise, maximum mid-afternoon, zero mean."""
    angle = 2 * np.pi * (hour - 16) / 24
    return np.cos(angle) - 0.25 * np.sin(2 * angle)  # the harmonic skews it: 9 h warming, 15 h cooling


def weather(rng: np.random.Generator, times: pd.DatetimeIndex) -> dict[str, np.ndarray]:
    """Temperature, pressure, relative humidity and the wind vector (u east, v north)."""
    n = len(times)
    year_angle, hour = calendar_angles(times)
    winter = np.cos(year_angle)  # +1 in January, -1 in July
    lead = AIR_MASS_LEAD_HOURS * STEPS_PER_HOUR

    # Air mass: the thermometer sees it `lead` steps after the barometer.
    air_mass = red_noise(rng, n + lead, tau_hours=72, smooth_hours=6)
    air_mass_now, air_mass_tomorrow = air_mass[:n], air_mass[lead:]
    local_weather = red_noise(rng, n, tau_hours=36, smooth_hours=3)  # unforecastable from pressure
    season_anomaly = red_noise(rng, n, tau_hours=20 * 24, smooth_hours=24)  # warm or cold months
    season_anomaly -= season_anomaly.mean()  # ... but the range as a whole keeps the calibrated climate
    jitter = red_noise(rng, n, tau_hours=1.5, smooth_hours=0.3)  # turbulence, passing showers

    # Pressure: falls ahead of an arriving warm air mass, plus its own synoptic systems.
    own_systems = red_noise(rng, n, tau_hours=96, smooth_hours=12)
    slow_pressure = red_noise(rng, n, tau_hours=14 * 24, smooth_hours=24)
    synoptic = -0.55 * air_mass_tomorrow + 0.65 * own_systems + 0.5 * slow_pressure
    pressure_anomaly = synoptic / np.sqrt(0.55**2 + 0.65**2 + 0.5**2) * (1 + 0.2 * winter)
    tide = 0.4 * np.cos(4 * np.pi * (hour - 10) / 24)  # the semi-diurnal atmospheric tide
    p = MEAN_P + P_STD * pressure_anomaly + tide

    # Moisture: low pressure brings clouds; clouds damp the daily cycle.
    moisture = 0.75 * red_noise(rng, n, tau_hours=30, smooth_hours=3) - 0.55 * pressure_anomaly
    cloud = 1 / (1 + np.exp(-1.6 * moisture))
    daily_amplitude = (2.7 - 1.6 * winter) * (1.55 - cloud)
    daily_cycle = daily_amplitude * daily_shape(hour)
    # Clear skies warm summer days and chill winter ones, whatever the hour.
    clear_sky = (0.5 - cloud) * (-1.5 * winter)
    anomaly_scale = 1 + 0.25 * winter  # winters vary more than summers
    anomaly = anomaly_scale * (2.7 * air_mass_now + 2.4 * local_weather + 2.2 * season_anomaly) + 0.7 * jitter
    # Calm winter highs pool cold air near the ground: cold spells run colder than warm ones run warm.
    cold_pool = 0.025 * np.maximum(winter, 0) * np.minimum(anomaly, 0) ** 2
    t = MEAN_T - YEARLY_T_AMPLITUDE * winter + daily_cycle + clear_sky + anomaly - cold_pool

    # Relative humidity: moist air, humid winters, and the daily cycle mirrored (dry afternoons).
    rh = (
        MEAN_RH
        + YEARLY_RH_AMPLITUDE * winter
        + 13.0 * moisture
        - 3.8 * daily_cycle
        + 2.5 * red_noise(rng, n, tau_hours=2, smooth_hours=0.5)
    )
    rh = np.clip(rh, 12.0, 100.0)

    # Wind: a prevailing west-south-west flow, gusty fluctuations, stronger in lows and by day,
    # and southerly when warm air is coming in.
    from_rad = np.deg2rad(PREVAILING_WIND_FROM_DEG)
    gusty_u, gusty_v = (1.25 * red_noise(rng, n, tau_hours=8, smooth_hours=1) for _ in range(2))
    u = -PREVAILING_WIND_SPEED * np.sin(from_rad) + gusty_u
    v = -PREVAILING_WIND_SPEED * np.cos(from_rad) + gusty_v + 0.5 * air_mass_tomorrow
    strength = np.exp(-0.22 * pressure_anomaly) * (1 + 0.2 * daily_shape(hour))
    return {"T": t, "p": p, "rh": rh, "u": u * strength, "v": v * strength}


def magnus(t: np.ndarray) -> np.ndarray:
    """Saturation vapour pressure (mbar) over water at `t` degC."""
    return 6.1078 * np.exp(17.27 * t / (t + 237.3))


def dew_point(vapour_pressure: np.ndarray) -> np.ndarray:
    """Inverse of `magnus`: the temperature at which `vapour_pressure` saturates."""
    x = np.log(vapour_pressure / 6.1078)
    return 237.3 * x / (17.27 - x)


def measurements(state: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """All 14 columns, derived from T, p, rh and the wind vector, rounded as the logger rounds."""
    t, p, rh = (np.round(state[key], 2) for key in ("T", "p", "rh"))
    vp_max = magnus(t)
    vp_act = rh / 100 * vp_max
    wind_speed = np.round(np.hypot(state["u"], state["v"]), 2)
    # Gusts: the 10-minute peak exceeds the mean by a factor plus a random burst.
    gust = wind_speed * (1.4 + 0.25 * np.abs(rng.standard_normal(len(t)))) + 0.4 * rng.exponential(size=len(t))
    # Direction the wind blows from, meteorological convention; rounding may reach 360.
    direction = np.round(np.degrees(np.arctan2(-state["u"], -state["v"])) % 360, 2) % 360
    columns = {
        "p (mbar)": p,
        "T (degC)": t,
        "Tpot (K)": (t + 273.15) * (1000 / p) ** 0.286,
        "Tdew (degC)": dew_point(vp_act),
        "rh (%)": rh,
        "VPmax (mbar)": vp_max,
        "VPact (mbar)": vp_act,
        "VPdef (mbar)": vp_max - vp_act,
        "sh (g/kg)": 1000 * 0.622 * vp_act / (p - 0.378 * vp_act),
        "H2OC (mmol/mol)": 1000 * vp_act / p,
        "rho (g/m**3)": p * 100 / (287.05 * (t + 273.15)) * 1000,
        "wv (m/s)": wind_speed,
        "max. wv (m/s)": np.maximum(np.round(gust, 2), wind_speed),
        "wd (deg)": direction,
    }
    return {name: np.round(values, 2) for name, values in columns.items()}


def quirk_count(n_rows: int, per_full_size: float) -> int:
    """How many of a quirk a range of `n_rows` gets: proportional, but at least one."""
    return max(1, round(n_rows * per_full_size / FULL_SIZE_ROWS))


def add_quirks(readings: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """The real file's flaws: failed wind sensors, missing intervals, duplicated rows."""
    n = len(readings)
    if n < 2 * STEPS_PER_DAY:
        return readings  # too short to cut gaps out of
    readings = readings.copy()
    broken = rng.choice(n, size=quirk_count(n, 24), replace=False)
    readings.loc[broken, schema.SENTINEL_COLUMNS] = schema.SENTINEL

    # Gaps: short ones of 1-3 h, long ones of 1-3 days, whole clock hours (HH:10 to HH:00) so
    # that hourly averages see them. Each lies in its own slice of the range: they never
    # overlap, and the first and last readings stay.
    short_hours = rng.integers(1, 4, size=quirk_count(n, 10))
    long_hours = rng.integers(24, 73, size=round(n / FULL_SIZE_ROWS * 2))
    lengths = rng.permutation(np.concatenate([short_hours, long_hours])) * STEPS_PER_HOUR
    hour_of = readings[schema.DATE_COLUMN].dt.ceil("h").to_numpy()
    hour_starts = np.flatnonzero(hour_of[1:] != hour_of[:-1]) + 1  # the first reading of each hour
    slice_edges = np.linspace(1, n - 1, len(lengths) + 1).astype(int)
    keep = np.ones(n, dtype=bool)
    for length, lo, hi in zip(lengths, slice_edges[:-1], slice_edges[1:]):
        length = min(length, (hi - lo) // 2 // STEPS_PER_HOUR * STEPS_PER_HOUR)
        first = rng.choice(hour_starts[(hour_starts >= lo) & (hour_starts <= hi - length)])
        keep[first : first + length] = False

    # Duplicates: the logger wrote some readings twice, one after the other.
    copies = keep.astype(int)
    copies[rng.choice(np.flatnonzero(keep), size=quirk_count(n, 200), replace=False)] = 2
    return readings.loc[np.repeat(np.arange(n), copies)].reset_index(drop=True)


def generate_readings(start: str, end: str, seed: int) -> pd.DataFrame:
    """Synthetic 10-minute readings after `start` up to and including `end`, quirks included."""
    times = pd.date_range(pd.Timestamp(start) + STEP, pd.Timestamp(end), freq=STEP)
    if len(times) == 0:
        raise ValueError(f"no 10-minute readings between {start} and {end}: end must be after start")
    rng = np.random.default_rng(seed)
    readings = pd.DataFrame({schema.DATE_COLUMN: times, **measurements(weather(rng, times), rng)})
    return add_quirks(readings[schema.COLUMNS], rng)


PAD = 0  # a byte that never occurs in the CSV; dropped before writing


def byte_column(n: int, byte: int) -> np.ndarray:
    """An (n, 1) column of one repeated byte, to concatenate with other byte columns."""
    return np.full((n, 1), byte, np.uint8)


def digit_bytes(numbers: np.ndarray, width: int) -> np.ndarray:
    """Non-negative integers as zero-padded ASCII digits, one row of `width` bytes each."""
    powers = 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)
    return (numbers[:, None] // powers % 10 + ord("0")).astype(np.uint8)


def fixed_point_bytes(values: np.ndarray, width: int = 9) -> np.ndarray:
    """Values as '%.2f' text (but never '-0.00'), right-aligned in `width` bytes padded with PAD."""
    if not np.all(np.isfinite(values)) or np.abs(values).max(initial=0) >= 10 ** (width - 4) - 0.005:
        raise ValueError(f"cannot write values that are not finite or beyond +-{10 ** (width - 4)}")
    hundredths = np.rint(values * 100).astype(np.int64)
    digits = digit_bytes(np.abs(hundredths), width - 2)
    integer, fraction = digits[:, :-2], digits[:, -2:]
    # Blank the leading zeros of the integer part, keeping its units digit.
    leading = np.cumprod(integer[:, :-1] == ord("0"), axis=1).astype(bool)
    integer[:, :-1][leading] = PAD
    n = len(values)
    text = np.concatenate([byte_column(n, PAD), integer, byte_column(n, ord(".")), fraction], axis=1)
    negative = hundredths < 0
    text[negative, leading.sum(axis=1)[negative]] = ord("-")  # just left of the first digit
    return text


def timestamp_bytes(times: pd.Series) -> np.ndarray:
    """Timestamps in schema.DATE_FORMAT, dd.mm.yyyy HH:MM:SS, 19 bytes each."""
    parts = []
    for field, width, separator in [
        ("day", 2, "."),
        ("month", 2, "."),
        ("year", 4, " "),
        ("hour", 2, ":"),
        ("minute", 2, ":"),
        ("second", 2, ""),
    ]:
        parts.append(digit_bytes(getattr(times.dt, field).to_numpy(np.int64), width))
        if separator:
            parts.append(byte_column(len(times), ord(separator)))
    return np.concatenate(parts, axis=1)


def write_jena_csv(readings: pd.DataFrame, path) -> None:
    """Write `readings` exactly like jena_climate_2009_2016.csv: quoted header, 2-decimal values.

    Every row becomes a fixed-width block of bytes, padded with PAD; dropping the
    padding leaves the text. All of it is array arithmetic, about a second at full size.
    """
    n = len(readings)
    parts = [timestamp_bytes(readings[schema.DATE_COLUMN])]
    for name in schema.MEASUREMENTS:
        parts += [byte_column(n, ord(",")), fixed_point_bytes(readings[name].to_numpy(np.float64))]
    table = np.concatenate([*parts, byte_column(n, ord("\n"))], axis=1)
    with open(Path(path), "wb") as out:
        out.write((schema.CSV_HEADER + "\n").encode("ascii"))
        out.write(table[table != PAD].tobytes())
