"""Stage 5, evaluate: score the model on the test split against two baselines, and bless it.

In:  models/model.keras, data/windows/, params `evaluate.*` (`margin`,
     `tolerance`, `climatology_window_days`, `plot_days`) and
     `serving.base_path` / `serving.model_name`: the directory TensorFlow
     Serving watches, whose newest version's model card holds the published
     model's test MAE (see `pipeline.publish.published_mae`).
Out: metrics/evaluate.json: test MAE and RMSE in degC of the model, of
     persistence (the temperature 24 h later equals the last observed one) and
     of climatology (the training years' mean temperature for that day of the
     year and hour), the model's skill over persistence, and the blessing with
     its reason; and the data of three plots in plots/evaluate/:
     predictions.csv (predicted and observed temperature over the first
     `plot_days` of the test period), mae_by_month.csv (MAE of model and
     persistence by month of the year) and residuals.csv (histogram of
     predicted - observed).

Blessing is the gate the export stage obeys: the model is blessed when its
test MAE beats persistence's by at least the fraction `margin` and, if a model
is already published, exceeds the published one's test MAE by at most
`tolerance` degC.
"""

from pathlib import Path

import keras
import numpy as np
import pandas as pd

from pipeline.atomic import atomic_path, write_json
from pipeline.config import EVALUATE_METRICS, EVALUATE_PLOTS_DIR, MODEL_PATH, WINDOWS_DIR, load_params
from pipeline.model import TEMPERATURE_INDEX  # importing pipeline.model registers its layers for load_model
from pipeline.publish import model_directory, published_mae
from pipeline.train import make_dataset
from pipeline.window import Windows, load_windows


PREDICT_BATCH_SIZE = 1024
RESIDUAL_BIN_DEGC = 0.5

# Day of the year in a 365-day calendar: 29 February shares 28 February's day.
_DAYS_IN_MONTH = np.array([31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])
_FIRST_DAY_OF_MONTH = np.concatenate([[0], np.cumsum(_DAYS_IN_MONTH)[:-1]])
DAYS_PER_YEAR = 365
HOURS_PER_DAY = 24


def mae(predicted, observed) -> float:
    return float(np.mean(np.abs(np.asarray(predicted, np.float64) - observed)))


def rmse(predicted, observed) -> float:
    return float(np.sqrt(np.mean(np.square(np.asarray(predicted, np.float64) - observed))))


def calendar(timestamps) -> dict[str, np.ndarray]:
    """Month (1-12), day of a 365-day year (0-364, 29 Feb -> 28 Feb) and hour (0-23) of unix seconds."""
    moments = np.asarray(timestamps, dtype=np.int64).astype("datetime64[s]")
    days = moments.astype("datetime64[D]")
    month = (days.astype("datetime64[M]") - days.astype("datetime64[Y]")).astype(np.int64)
    day_of_month = (days - days.astype("datetime64[M]")).astype(np.int64)
    day = _FIRST_DAY_OF_MONTH[month] + np.minimum(day_of_month, _DAYS_IN_MONTH[month] - 1)
    hour = (moments - days).astype("timedelta64[h]").astype(np.int64)
    return {"month": month + 1, "day": day, "hour": hour}


def persistence_forecast(temperature: np.ndarray, starts: np.ndarray, lookback: int) -> np.ndarray:
    """Tomorrow equals now: the temperature of each sample's last history row."""
    return temperature[np.asarray(starts) + lookback - 1]


def climatology_table(temperature: np.ndarray, timestamps: np.ndarray, window_days: int) -> np.ndarray:
    """Mean temperature [365, 24] by day of the year and hour, from the given (training) rows.

    Each cell averages the hours within `window_days` days centred on its day
    (circular over the year end; 1 = that day alone), so a few training years
    give a smooth mean rather than a handful of noisy samples. NaN rows are
    ignored; a cell without any data takes the mean of its hour, or failing
    that the overall mean.
    """
    if window_days < 1 or window_days % 2 == 0:
        raise ValueError(f"climatology_window_days must be a positive odd number, got {window_days}")
    valid = ~np.isnan(temperature)
    when = calendar(timestamps[valid])
    sums = np.zeros((DAYS_PER_YEAR, HOURS_PER_DAY))
    counts = np.zeros((DAYS_PER_YEAR, HOURS_PER_DAY))
    np.add.at(sums, (when["day"], when["hour"]), temperature[valid])
    np.add.at(counts, (when["day"], when["hour"]), 1)
    half = window_days // 2
    window_sums = sum(np.roll(sums, shift, axis=0) for shift in range(-half, half + 1))
    window_counts = sum(np.roll(counts, shift, axis=0) for shift in range(-half, half + 1))
    overall = sums.sum() / counts.sum() if counts.sum() else np.nan
    with np.errstate(invalid="ignore", divide="ignore"):
        hour_means = np.where(counts.sum(axis=0) > 0, sums.sum(axis=0) / counts.sum(axis=0), overall)
        return np.where(window_counts > 0, window_sums / window_counts, hour_means[None, :])


def climatology_forecast(table: np.ndarray, target_timestamps: np.ndarray) -> np.ndarray:
    """Look up each target time's day of the year and hour in a climatology table."""
    when = calendar(target_timestamps)
    return table[when["day"], when["hour"]]


def bless(test_mae: float, persistence_mae: float, published: float | None,
          margin: float, tolerance: float) -> tuple[bool, str]:
    """The export gate: (blessed, reason)."""
    required = persistence_mae * (1 - margin)
    if test_mae > required:
        return False, (f"test MAE {test_mae:.3f} C does not beat persistence {persistence_mae:.3f} C "
                       f"by the margin of {margin:.0%} (needs <= {required:.3f} C)")
    if published is None:
        return True, (f"test MAE {test_mae:.3f} C beats persistence {persistence_mae:.3f} C by at least "
                      f"{margin:.0%}; no model is published yet")
    if test_mae > published + tolerance:
        return False, (f"test MAE {test_mae:.3f} C is worse than the published model's {published:.3f} C "
                       f"by more than the tolerance of {tolerance:.3f} C")
    return True, (f"test MAE {test_mae:.3f} C beats persistence {persistence_mae:.3f} C by at least "
                  f"{margin:.0%} and is within {tolerance:.3f} C of the published model's {published:.3f} C")


def evaluation_metrics(observed, predicted, persistence, climatology, published: float | None,
                       margin: float, tolerance: float) -> dict:
    """Everything metrics/evaluate.json holds, from the test targets and the three forecasts (degC)."""
    metrics = {
        "test_samples": int(len(observed)),
        "test_mae_degC": mae(predicted, observed),
        "test_rmse_degC": rmse(predicted, observed),
        "persistence_mae_degC": mae(persistence, observed),
        "persistence_rmse_degC": rmse(persistence, observed),
        "climatology_mae_degC": mae(climatology, observed),
        "climatology_rmse_degC": rmse(climatology, observed),
    }
    metrics["skill_vs_persistence"] = 1 - metrics["test_mae_degC"] / metrics["persistence_mae_degC"]
    metrics["skill_vs_climatology"] = 1 - metrics["test_mae_degC"] / metrics["climatology_mae_degC"]
    metrics["published_mae_degC"] = published
    metrics["blessed"], metrics["blessing_reason"] = bless(
        metrics["test_mae_degC"], metrics["persistence_mae_degC"], published, margin, tolerance
    )
    return metrics


def prediction_stretch(target_timestamps, observed, predicted, persistence, days: int) -> pd.DataFrame:
    """The samples whose target falls within the first `days` days of the test period, in time order."""
    order = np.argsort(target_timestamps)
    first = target_timestamps[order[0]]
    order = order[target_timestamps[order] < first + days * 86_400]
    return pd.DataFrame({
        "hours": (target_timestamps[order] - first) // 3600,
        "time": pd.to_datetime(target_timestamps[order], unit="s").strftime("%Y-%m-%d %H:%M"),
        "observed_degC": observed[order],
        "predicted_degC": predicted[order],
        "persistence_degC": persistence[order],
    })


def mae_by_month(target_timestamps, observed, predicted, persistence) -> pd.DataFrame:
    """Model and persistence MAE for each month of the year present in the test split."""
    errors = pd.DataFrame({
        "month": calendar(target_timestamps)["month"],
        "model_mae_degC": np.abs(predicted - observed),
        "persistence_mae_degC": np.abs(persistence - observed),
    })
    grouped = errors.groupby("month")
    table = grouped.mean()
    table["samples"] = grouped.size()
    return table.reset_index()


def residual_histogram(residuals: np.ndarray, bin_width: float = RESIDUAL_BIN_DEGC) -> pd.DataFrame:
    """Counts of predicted - observed in bins of `bin_width` degC, labelled by their centres."""
    bins = np.floor(np.asarray(residuals) / bin_width).astype(np.int64)
    edges = np.arange(bins.min(), bins.max() + 1)
    counts = np.bincount(bins - bins.min(), minlength=len(edges))
    return pd.DataFrame({"residual_degC": (edges + 0.5) * bin_width, "count": counts})


def forecasts(model: keras.Model, windows: Windows, window_days: int) -> dict[str, np.ndarray]:
    """Test targets and the model's, persistence's and climatology's forecasts, in degC."""
    starts = windows.starts["test"]
    temperature = np.asarray(windows.hourly[:, TEMPERATURE_INDEX], dtype=np.float64)
    timestamps = np.asarray(windows.timestamps)
    first, end = windows.normalization["split_bounds"]["train"]
    table = climatology_table(temperature[first:end], timestamps[first:end], window_days)
    target_rows = windows.target_rows(starts)
    return {
        "target_timestamps": timestamps[target_rows],
        "observed": temperature[target_rows],
        "predicted": model.predict(make_dataset(windows, starts, PREDICT_BATCH_SIZE), verbose=0).astype(np.float64),
        "persistence": persistence_forecast(temperature, starts, windows.lookback),
        "climatology": climatology_forecast(table, timestamps[target_rows]),
    }


def write_csv(path: Path, table: pd.DataFrame) -> None:
    with atomic_path(path, suffix=".csv") as temporary:
        table.to_csv(temporary, index=False, float_format="%.4f")


def main() -> None:
    params = load_params()
    settings = params["evaluate"]
    try:
        published = published_mae(model_directory(params["serving"]))
    except ValueError as error:
        raise SystemExit(f"evaluate: {error}") from None
    if not MODEL_PATH.exists():
        raise SystemExit(f"evaluate: {MODEL_PATH} not found; run `dvc repro train` first")
    model = keras.saving.load_model(MODEL_PATH)
    try:
        windows = load_windows(WINDOWS_DIR)
    except FileNotFoundError as error:
        raise SystemExit(f"evaluate: {error.filename} not found; run `dvc repro window` first") from None

    result = forecasts(model, windows, settings["climatology_window_days"])
    metrics = evaluation_metrics(
        result["observed"], result["predicted"], result["persistence"], result["climatology"],
        published, settings["margin"], settings["tolerance"],
    )
    when, observed = result["target_timestamps"], result["observed"]
    write_csv(EVALUATE_PLOTS_DIR / "predictions.csv",
              prediction_stretch(when, observed, result["predicted"], result["persistence"], settings["plot_days"]))
    write_csv(EVALUATE_PLOTS_DIR / "mae_by_month.csv", mae_by_month(when, observed, result["predicted"], result["persistence"]))
    write_csv(EVALUATE_PLOTS_DIR / "residuals.csv", residual_histogram(result["predicted"] - observed))
    write_json(EVALUATE_METRICS, metrics)
    print(f"evaluate: test MAE {metrics['test_mae_degC']:.3f} C, persistence {metrics['persistence_mae_degC']:.3f} C, "
          f"climatology {metrics['climatology_mae_degC']:.3f} C; "
          f"{'blessed' if metrics['blessed'] else 'NOT blessed'}: {metrics['blessing_reason']}")


if __name__ == "__main__":
    main()
