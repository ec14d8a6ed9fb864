"""Stage 5, evaluate: score the model on the test split against two baselines, and bless it.

In:  models/model.keras, data/windows/, params `seed`, `evaluate.*` (`margin`,
     `tolerance`, `coverage_goal`, `confidence`, `block_days`,
     `bootstrap_replicates`, `climatology_window_days`, `plot_days`) and
     `serving.base_path` / `serving.model_name`: the directory TensorFlow
     Serving watches (local, s3:// or gs://), whose newest version is the
     published model (from a store, its newest complete version is copied
     into a temporary directory to be scored).
Out: metrics/evaluate.json: test MAE and RMSE in degC of the model's median
     at +horizon (24 h), of persistence (the temperature 24 h later equals the
     last observed one) and of climatology (the training years' mean
     temperature for that day of the year and hour), the model's skill over
     persistence, the median's MAE at +1 h and over all hours, the mean
     pinball loss, the coverage and mean width of the band between the outer
     quantiles (10-90 % by default), the published version and its MAE
     measured on these same test samples, the test data's fingerprint, and
     the blessing with its reason and the intervals it weighed
     (`skill_interval`, `band_coverage_interval`,
     `published_comparison.mae_difference_interval`); and the data of five plots in
     plots/evaluate/: predictions.csv (predicted median and band and the
     observed temperature at +24 h over the first `plot_days` of the test
     period), by_horizon.csv (for every hour +1 .. +24: MAE of the median, of
     persistence and of climatology, coverage and width of the band),
     reliability.csv (for each quantile level, the share of observed hours
     below that quantile), mae_by_month.csv (MAE of model, persistence and the
     published version by month of the year) and residuals.csv (histogram of
     predicted - observed at +24 h).

Blessing is the gate the export stage obeys, and it knows that one test split
is one draw of the weather: neighbouring hours are strongly correlated, so
the test split holds about as many independent pieces of evidence as it has
weeks, not hours. Each criterion therefore comes with an interval from a
moving-block bootstrap over the test days (`block_days` consecutive days per
block, `bootstrap_replicates` resamples, `confidence` two-sided, seeded by
`seed`), and refuses the model only when the whole interval lies on the
wrong side: its skill over persistence (1 - MAE / persistence's MAE at
+24 h) clearly short of `margin`, its band's coverage clearly outside
`coverage_goal`, or, when a model is published, its +24 h MAE clearly worse
than the published one's by more than `tolerance` degC on the same test
samples (a paired difference, far less noisy than either MAE). A good model
is not refused by chance; a clearly worse one still is.

As TFX's Evaluator does, the published version is scored here, on this run's
test windows: its per-sample errors are what the paired interval needs. A
published model with another horizon answers another question and is not
comparable: no blessing.
"""

import hashlib
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from pipeline import schema
from pipeline.atomic import atomic_path, write_json
from pipeline.blessing import bless
from pipeline.config import (
    EVALUATE_METRICS,
    EVALUATE_PLOTS_DIR,
    MODEL_PATH,
    WINDOWS_DIR,
    load_params,
    stage_command_line,
)
from pipeline.dataset import Windows, load_windows, make_dataset
from pipeline.model import TEMPERATURE_INDEX, median_position  # importing it registers the layers for load_model
from pipeline.published import model_directory, read_model_card
from pipeline.scores import (
    band_coverage,
    mae,
    percentile_interval,
    pinball_loss,
    resampled_totals,
    rmse,
    sample_days,
)
from serving.store import StoreError, newest_published

PREDICT_BATCH_SIZE = 1024
RESIDUAL_BIN_DEGC = 0.5

# Day of the year in a 365-day calendar: 29 February shares 28 February's day.
_DAYS_IN_MONTH = np.array([31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])
_FIRST_DAY_OF_MONTH = np.concatenate([[0], np.cumsum(_DAYS_IN_MONTH)[:-1]])
DAYS_PER_YEAR = 365
HOURS_PER_DAY = 24


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
    """Tomorrow equals now: the temperature of each sample's last history row (for every hour ahead)."""
    return temperature[np.asarray(starts) + lookback - 1]


def reliability(observed: np.ndarray, quantile_forecasts: np.ndarray, levels) -> pd.DataFrame:
    """For each quantile level, the share of observations below that quantile: over all hours ahead and
    at the last one. A reliable forecast puts the level itself there."""
    below = np.asarray(observed)[..., None] < quantile_forecasts  # [samples, hours, quantiles]
    return pd.DataFrame(
        {
            "quantile": np.asarray(levels, dtype=np.float64),
            "observed_below": below.mean(axis=(0, 1)),
            "observed_below_final_hour": below[:, -1].mean(axis=0),
        }
    )


def errors_by_horizon(observed, median, lower, upper, persistence, climatology) -> pd.DataFrame:
    """Per hour ahead (columns of the [samples, hours] arrays): MAE of the median, of persistence
    (the last observation, for every hour) and of climatology, and coverage and mean width of the band."""

    def column_mae(forecast):
        return np.mean(np.abs(forecast - observed), axis=0)

    return pd.DataFrame(
        {
            "hour": np.arange(1, observed.shape[1] + 1),
            "model_mae_degC": column_mae(median),
            "persistence_mae_degC": column_mae(np.broadcast_to(np.asarray(persistence)[:, None], observed.shape)),
            "climatology_mae_degC": column_mae(climatology),
            "coverage": band_coverage(observed, lower, upper, axis=0),
            "band_width_degC": np.mean(upper - lower, axis=0),
        }
    )


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


def sampling_intervals(
    days: np.ndarray,
    model_errors: np.ndarray,
    persistence_errors: np.ndarray,
    in_band: np.ndarray | None,
    evaluate_params: dict,
    seed: int,
) -> dict:
    """Bootstrap intervals of the skill over persistence (from the +24 h absolute errors) and, with
    `in_band` [samples, hours] (whether each hour's observation lies in the band), of the band's
    coverage over all hours and at the last one."""
    columns = [model_errors, persistence_errors]
    if in_band is not None:
        columns += [in_band.mean(axis=1), in_band[:, -1]]
    totals = resampled_totals(
        days, np.column_stack(columns), evaluate_params["block_days"], evaluate_params["bootstrap_replicates"], seed
    )
    count = totals[:, 0]
    intervals = {"skill_interval": percentile_interval(1 - totals[:, 1] / totals[:, 2], evaluate_params["confidence"])}
    if in_band is not None:
        intervals["band_coverage_interval"] = percentile_interval(totals[:, 3] / count, evaluate_params["confidence"])
        intervals["band_coverage_final_hour_interval"] = percentile_interval(
            totals[:, 4] / count, evaluate_params["confidence"]
        )
    return intervals


def mae_difference_interval(
    days: np.ndarray, ours: np.ndarray, theirs: np.ndarray, evaluate_params: dict, seed: int
) -> list[float]:
    """Bootstrap interval of MAE(ours) - MAE(theirs) on the same samples, resampled together."""
    totals = resampled_totals(
        days,
        np.column_stack([ours, theirs]),
        evaluate_params["block_days"],
        evaluate_params["bootstrap_replicates"],
        seed,
    )
    return percentile_interval((totals[:, 1] - totals[:, 2]) / totals[:, 0], evaluate_params["confidence"])


def test_data_fingerprint(windows: Windows) -> str:
    """SHA-256 of what a test MAE is measured on: the series, its times, the test samples, lookback and horizon.
    Equal fingerprints mean two models' test MAEs are comparable as they stand."""
    digest = hashlib.sha256()
    for array in (
        windows.hourly,
        windows.timestamps,
        windows.starts["test"],
        np.array([windows.lookback, windows.horizon]),
    ):
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def complete_history(windows: Windows, starts: np.ndarray, lookback: int) -> np.ndarray:
    """Which of the histories starting at `starts` (lookback rows) lie in the series and have no missing value."""
    incomplete_before = np.concatenate([[0], np.cumsum(np.isnan(windows.hourly).any(axis=1))])
    inside = (starts >= 0) & (starts + lookback <= len(windows.hourly))
    clipped = np.clip(starts, 0, len(windows.hourly) - lookback)
    return inside & (incomplete_before[clipped + lookback] == incomplete_before[clipped])


def saved_model_forecasts(saved_model: Path, history: np.ndarray, timestamps: np.ndarray) -> np.ndarray:
    """`temperature_degC` of a served SavedModel's `serving_default`, in batches."""
    serve = tf.saved_model.load(str(saved_model)).signatures[schema.SIGNATURE_NAME]
    return np.concatenate(
        [
            serve(
                **{
                    schema.HISTORY_INPUT: tf.constant(history[i : i + PREDICT_BATCH_SIZE]),
                    schema.TIMESTAMPS_INPUT: tf.constant(timestamps[i : i + PREDICT_BATCH_SIZE]),
                }
            )[schema.TEMPERATURE_OUTPUT].numpy()
            for i in range(0, len(history), PREDICT_BATCH_SIZE)
        ]
    ).astype(np.float64)


def compare_with_published(
    directory: Path, windows: Windows, predicted: np.ndarray, observed: np.ndarray
) -> dict | None:
    """The newest published version and this model, scored on the same test samples; None if none is published."""
    with newest_published(directory) as (version, saved_model):
        if version is None:
            return None
        return compare_with_version(version, saved_model, windows, predicted, observed)


def compare_with_version(
    version: int, saved_model: Path, windows: Windows, predicted: np.ndarray, observed: np.ndarray
) -> dict:
    """A version at hand in `saved_model`, run on these test windows with its own history length, on the
    test samples both models can read: both MAEs and both models' absolute errors on those samples."""
    card = read_model_card(saved_model)
    horizon = card.get("params", {}).get("window", {}).get("horizon_hours")
    if horizon != windows.horizon:
        return {
            "version": version,
            "mae_degC": None,
            "model_mae_degC": None,
            "samples": 0,
            "measured": "not comparable",
            "not_comparable": f"forecasts {horizon} h ahead, this model {windows.horizon} h: not comparable",
        }
    starts = windows.starts["test"]
    signature = tf.saved_model.load(str(saved_model)).signatures[schema.SIGNATURE_NAME]
    lookback = signature.structured_input_signature[1][schema.HISTORY_INPUT].shape[1]
    their_starts = windows.target_rows(starts)[:, -1] - horizon - lookback + 1
    both = complete_history(windows, their_starts, lookback)
    rows = their_starts[both][:, None] + np.arange(lookback)
    theirs = saved_model_forecasts(saved_model, windows.hourly[rows], windows.timestamps[rows])
    return {
        "version": version,
        "mae_degC": mae(theirs, observed[both]),
        "model_mae_degC": mae(predicted[both], observed[both]),
        "samples": int(both.sum()),
        "measured": "evaluated now on these test windows",
        "errors_degC": np.abs(theirs - observed[both]),
        "model_errors_degC": np.abs(predicted[both] - observed[both]),
        "sample_mask": both,
    }


def evaluation_metrics(observed, predicted, persistence, climatology, paths: dict | None = None) -> dict:
    """The point figures of metrics/evaluate.json: the +horizon test targets against the three forecasts
    (degC) and, for the quantile forecast, `paths`: `observed` [samples, hours], `quantiles`
    [samples, hours, levels] and `levels`."""
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
    if paths is not None:
        metrics.update(path_metrics(paths["observed"], paths["quantiles"], paths["levels"]))
    return metrics


def judged_metrics(result: dict, levels, published: dict | None, evaluate_params: dict, seed: int) -> dict:
    """metrics/evaluate.json from `forecasts`' result: the point figures, their sampling intervals, the
    comparison with the published version (with its paired interval) and the blessing."""
    observed, predicted = result["observed"], result["predicted"]
    quantiles, paths = result["quantiles"], result["observed_paths"]
    metrics = evaluation_metrics(
        observed,
        predicted,
        result["persistence"],
        result["climatology"],
        paths={"observed": paths, "quantiles": quantiles, "levels": levels},
    )
    days = sample_days(result["target_timestamps"])
    in_band = (quantiles[..., 0] <= paths) & (paths <= quantiles[..., -1])
    metrics.update(
        sampling_intervals(
            days, np.abs(predicted - observed), np.abs(result["persistence"] - observed), in_band, evaluate_params, seed
        )
    )
    if published is not None and "errors_degC" in published:
        mask = published["sample_mask"]
        published = {
            **published,
            "mae_difference_interval": mae_difference_interval(
                days[mask], published["model_errors_degC"], published["errors_degC"], evaluate_params, seed
            ),
        }
    metrics["published_version"] = published and published["version"]
    metrics["published_mae_degC"] = published and published["mae_degC"]
    metrics["published_comparison"] = published and {
        key: published.get(key) for key in ("samples", "model_mae_degC", "measured", "mae_difference_interval")
    }
    metrics["sampling"] = {key: evaluate_params[key] for key in ("confidence", "block_days", "bootstrap_replicates")}
    metrics["sampling"]["test_days"] = int(days.max()) + 1
    metrics["blessed"], metrics["blessing_reason"] = bless(metrics, published, evaluate_params)
    return metrics


def path_metrics(observed: np.ndarray, quantiles: np.ndarray, levels) -> dict:
    """The forecast of every hour: median MAE at +1 h and over all hours, mean pinball loss, and the
    coverage (overall and at +horizon) and mean width of the band between the outer quantiles."""
    median = quantiles[..., median_position(levels)]
    lower, upper = quantiles[..., 0], quantiles[..., -1]
    return {
        "quantile_levels": [float(level) for level in levels],
        "test_mae_1h_degC": mae(median[:, 0], observed[:, 0]),
        "test_mae_all_hours_degC": mae(median, observed),
        "mean_pinball_loss_degC": pinball_loss(observed, quantiles, levels),
        "band": [float(levels[0]), float(levels[-1])],
        "band_coverage": float(band_coverage(observed, lower, upper)),
        "band_coverage_final_hour": float(band_coverage(observed[:, -1], lower[:, -1], upper[:, -1])),
        "band_width_degC": float(np.mean(upper - lower)),
    }


def prediction_stretch(
    target_timestamps, observed, predicted, persistence, days: int, band: tuple[np.ndarray, np.ndarray] | None = None
) -> pd.DataFrame:
    """The samples whose target falls within the first `days` days of the test period, in time order;
    with `band` (lower, upper), its edges too."""
    order = np.argsort(target_timestamps)
    first = target_timestamps[order[0]]
    order = order[target_timestamps[order] < first + days * 86_400]
    table = pd.DataFrame(
        {
            "hours": (target_timestamps[order] - first) // 3600,
            "time": pd.to_datetime(target_timestamps[order], unit="s").strftime("%Y-%m-%d %H:%M"),
            "observed_degC": observed[order],
            "predicted_degC": predicted[order],
            "persistence_degC": persistence[order],
        }
    )
    if band is not None:
        table["band_low_degC"], table["band_high_degC"] = band[0][order], band[1][order]
    return table


def mae_by_month(target_timestamps, observed, predicted, persistence, published: dict | None = None) -> pd.DataFrame:
    """Model and persistence MAE for each month of the year present in the test split, and the
    published version's where it was evaluated now on these samples."""
    errors = pd.DataFrame(
        {
            "month": calendar(target_timestamps)["month"],
            "model_mae_degC": np.abs(predicted - observed),
            "persistence_mae_degC": np.abs(persistence - observed),
        }
    )
    if published is not None and "errors_degC" in published:
        errors["published_mae_degC"] = np.nan
        errors.loc[published["sample_mask"], "published_mae_degC"] = published["errors_degC"]
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


def forecasts(model: keras.Model, windows: Windows, window_days: int, levels) -> dict[str, np.ndarray]:
    """Test targets and the model's, persistence's and climatology's forecasts, in degC: for every
    hour ahead (`paths`, [samples, hours]; the model's `quantiles` [samples, hours, levels]) and at
    +horizon (`observed`, `predicted` (the median), `climatology`; persistence is the same for all hours)."""
    starts = windows.starts["test"]
    temperature = np.asarray(windows.hourly[:, TEMPERATURE_INDEX], dtype=np.float64)
    timestamps = np.asarray(windows.timestamps)
    first, end = windows.normalization["split_bounds"]["train"]
    table = climatology_table(temperature[first:end], timestamps[first:end], window_days)
    target_rows = windows.target_rows(starts)
    quantiles = model.predict(make_dataset(windows, starts, PREDICT_BATCH_SIZE), verbose=0).astype(np.float64)
    climatology = climatology_forecast(table, timestamps[target_rows].ravel()).reshape(target_rows.shape)
    observed = temperature[target_rows]
    return {
        "target_timestamps": timestamps[target_rows[:, -1]],
        "observed": observed[:, -1],
        "predicted": quantiles[:, -1, median_position(levels)],
        "persistence": persistence_forecast(temperature, starts, windows.lookback),
        "climatology": climatology[:, -1],
        "observed_paths": observed,
        "quantiles": quantiles,
        "climatology_paths": climatology,
    }


def write_csv(path: Path, table: pd.DataFrame) -> None:
    with atomic_path(path, suffix=".csv") as temporary:
        table.to_csv(temporary, index=False, float_format="%.4f")


def main() -> None:
    params = load_params()
    settings = params["evaluate"]
    if not MODEL_PATH.exists():
        raise SystemExit(f"evaluate: {MODEL_PATH} not found; run `dvc repro train` first")
    model = keras.saving.load_model(MODEL_PATH, compile=False)
    levels = model.get_layer(schema.QUANTILES_OUTPUT).quantiles
    try:
        windows = load_windows(WINDOWS_DIR)
    except FileNotFoundError as error:
        raise SystemExit(f"evaluate: {error.filename} not found; run `dvc repro window` first") from None

    result = forecasts(model, windows, settings["climatology_window_days"], levels)
    when, observed = result["target_timestamps"], result["observed"]
    try:
        published = compare_with_published(model_directory(params["serving"]), windows, result["predicted"], observed)
        metrics = judged_metrics(result, levels, published, settings, params["seed"])
    except (ValueError, StoreError) as error:
        raise SystemExit(f"evaluate: {error}") from None
    metrics["test_data_fingerprint"] = test_data_fingerprint(windows)
    quantiles = result["quantiles"]
    write_csv(
        EVALUATE_PLOTS_DIR / "predictions.csv",
        prediction_stretch(
            when,
            observed,
            result["predicted"],
            result["persistence"],
            settings["plot_days"],
            band=(quantiles[:, -1, 0], quantiles[:, -1, -1]),
        ),
    )
    write_csv(
        EVALUATE_PLOTS_DIR / "by_horizon.csv",
        errors_by_horizon(
            result["observed_paths"],
            quantiles[..., median_position(levels)],
            quantiles[..., 0],
            quantiles[..., -1],
            result["persistence"],
            result["climatology_paths"],
        ),
    )
    write_csv(EVALUATE_PLOTS_DIR / "reliability.csv", reliability(result["observed_paths"], quantiles, levels))
    write_csv(
        EVALUATE_PLOTS_DIR / "mae_by_month.csv",
        mae_by_month(when, observed, result["predicted"], result["persistence"], published),
    )
    write_csv(EVALUATE_PLOTS_DIR / "residuals.csv", residual_histogram(result["predicted"] - observed))
    write_json(EVALUATE_METRICS, metrics)
    print(
        f"evaluate: test MAE at +{windows.horizon} h {metrics['test_mae_degC']:.3f} C (+1 h "
        f"{metrics['test_mae_1h_degC']:.3f} C), persistence {metrics['persistence_mae_degC']:.3f} C, "
        f"climatology {metrics['climatology_mae_degC']:.3f} C; band coverage {metrics['band_coverage']:.1%} "
        f"(+{windows.horizon} h {metrics['band_coverage_final_hour']:.1%}), width {metrics['band_width_degC']:.2f} C; "
        f"{'blessed' if metrics['blessed'] else 'NOT blessed'}: {metrics['blessing_reason']}"
    )


if __name__ == "__main__":
    stage_command_line(__doc__, __spec__.name)
    main()
