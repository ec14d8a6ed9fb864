"""Baselines, metrics, intervals and the evaluate stage's files, on hand-made series and a tiny model."""

import json
from pathlib import Path

import fsspec
import keras
import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline import evaluate, export
from pipeline.evaluate import (
    calendar,
    climatology_forecast,
    climatology_table,
    errors_by_horizon,
    evaluation_metrics,
    judged_metrics,
    mae_by_month,
    persistence_forecast,
    prediction_stretch,
    reliability,
    residual_histogram,
)
from pipeline.model import build_model
from pipeline.scores import band_coverage, mae, percentile_interval, resampled_totals, rmse, sample_days
from pipeline.train import save_model
from tests.helpers.training import EVALUATE_PARAMS, TINY_MODEL, small_windows, write_windows


def unix(*stamps) -> np.ndarray:
    return pd.to_datetime(list(stamps)).as_unit("s").asi8


def hours(start: str, end: str) -> np.ndarray:
    return pd.date_range(start, end, freq="h", inclusive="left").as_unit("s").asi8


def test_mae_and_rmse():
    assert mae([1, 2, 3], np.array([1, 4, 0])) == pytest.approx(5 / 3)
    assert rmse([1, 2, 3], np.array([1, 4, 0])) == pytest.approx(np.sqrt(13 / 3))


def test_calendar_puts_29_february_on_28_february():
    when = calendar(
        unix(
            "2009-01-01 00:00",
            "2012-02-28 05:00",
            "2012-02-29 12:00",
            "2012-03-01 00:00",
            "2009-03-01 23:00",
            "2012-12-31 23:00",
        )
    )
    assert when["day"].tolist() == [0, 58, 58, 59, 59, 364]
    assert when["hour"].tolist() == [0, 5, 12, 0, 23, 23]
    assert when["month"].tolist() == [1, 2, 2, 3, 3, 12]


def test_persistence_on_a_constant_plus_trend_is_off_by_trend_times_horizon():
    lookback, horizon, trend = 5, 3, 0.25
    temperature = 10 + trend * np.arange(100)
    starts = np.arange(0, 100 - lookback - horizon + 1)
    forecast = persistence_forecast(temperature, starts, lookback)
    observed = temperature[starts + lookback - 1 + horizon]
    np.testing.assert_allclose(observed - forecast, trend * horizon)
    assert mae(forecast, observed) == pytest.approx(trend * horizon)


def seasonal(timestamps) -> np.ndarray:
    """A pure yearly and daily cycle, a function of (day of the year, hour) only."""
    when = calendar(timestamps)
    return 10 - 8 * np.cos(2 * np.pi * when["day"] / 365) + 3 * np.sin(2 * np.pi * when["hour"] / 24)


def test_climatology_of_a_pure_seasonal_series_is_exact():
    training = hours("2009-01-01", "2013-01-01")  # includes the leap day 2012-02-29
    table = climatology_table(seasonal(training), training, window_days=1)
    test = hours("2015-06-01", "2016-06-01")  # and 2016-02-29
    np.testing.assert_allclose(climatology_forecast(table, test), seasonal(test), atol=1e-9)


def test_smoothed_climatology_of_a_smooth_cycle_stays_close():
    training = hours("2009-01-01", "2011-01-01")
    table = climatology_table(seasonal(training), training, window_days=15)
    test = hours("2012-01-01", "2013-01-01")
    assert np.abs(climatology_forecast(table, test) - seasonal(test)).max() < 0.1


def test_climatology_fills_cells_without_training_data_with_the_hour_mean():
    training = hours("2009-01-01", "2009-07-01")  # no autumn in the training years
    temperature = seasonal(training)
    temperature[:48] = np.nan  # and two missing days
    table = climatology_table(temperature, training, window_days=3)
    assert not np.isnan(table).any()
    autumn = unix("2010-10-15 06:00")
    hour_six = calendar(training)["hour"] == 6
    assert climatology_forecast(table, autumn)[0] == pytest.approx(np.nanmean(temperature[hour_six]))


def test_climatology_window_must_be_odd():
    with pytest.raises(ValueError, match="odd"):
        climatology_table(np.zeros(24), hours("2009-01-01", "2009-01-02"), window_days=4)


def test_evaluation_metrics():
    observed = np.array([10.0, 12.0, 14.0, 16.0])
    metrics = evaluation_metrics(observed, predicted=observed + 0.5, persistence=observed - 1, climatology=observed + 2)
    assert metrics["test_mae_degC"] == pytest.approx(0.5)
    assert metrics["persistence_rmse_degC"] == pytest.approx(1.0)
    assert metrics["climatology_mae_degC"] == pytest.approx(2.0)
    assert metrics["skill_vs_persistence"] == pytest.approx(0.5)


def test_samples_fall_on_days_counted_from_the_first_test_day():
    when = unix("2016-01-01 23:00", "2016-01-02 00:00", "2016-01-04 12:00")
    assert sample_days(when).tolist() == [0, 1, 3]


def test_block_totals_add_up_consecutive_days_wrapping_around_the_period():
    """Five days with 1, 2, 3, 4, 5 samples of value 10 each: with blocks of 3 days and one block per
    replicate... of 5 / 3 -> 2 blocks, every replicate is two wrapped blocks of three consecutive days."""
    days = np.repeat(np.arange(5), [1, 2, 3, 4, 5])
    totals = resampled_totals(days, np.full(len(days), 10.0), block_days=3, replicates=400, seed=0)
    block_counts = {1 + 2 + 3, 2 + 3 + 4, 3 + 4 + 5, 4 + 5 + 1, 5 + 1 + 2}
    possible = {a + b for a in block_counts for b in block_counts}
    assert set(totals[:, 0].astype(int)) <= possible and len(set(totals[:, 0])) > 5
    np.testing.assert_allclose(totals[:, 1], 10 * totals[:, 0])
    again = resampled_totals(days, np.full(len(days), 10.0), block_days=3, replicates=400, seed=0)
    np.testing.assert_array_equal(totals, again)  # seeded
    with pytest.raises(ValueError, match="block_days"):
        resampled_totals(days, days, block_days=0, replicates=10, seed=0)


def test_percentile_interval():
    assert percentile_interval(np.arange(1001.0), 0.9) == pytest.approx([50.0, 950.0])
    with pytest.raises(ValueError, match="confidence"):
        percentile_interval(np.arange(10.0), 1.5)


def uniform_paths(samples=1000, hours=4):
    """Observations evenly spread over (0, 1) in every hour: exactly 10 % lie below 0.1, and so on."""
    column = (np.arange(samples) + 0.5) / samples
    return np.repeat(column[:, None], hours, axis=1)


def test_coverage_and_reliability_of_a_calibrated_band_on_constructed_data():
    observed = uniform_paths()
    levels = [0.1, 0.5, 0.9]
    quantiles = np.broadcast_to(np.array(levels), (*observed.shape, 3))  # the true quantiles of U(0, 1)
    assert band_coverage(observed, quantiles[..., 0], quantiles[..., -1]) == pytest.approx(0.8)
    table = reliability(observed, quantiles, levels)
    assert table["quantile"].tolist() == levels
    np.testing.assert_allclose(table["observed_below"], levels)
    np.testing.assert_allclose(table["observed_below_final_hour"], levels)


def test_a_band_too_narrow_late_shows_in_coverage_and_reliability_by_hour():
    observed = uniform_paths(hours=2)
    quantiles = np.empty((*observed.shape, 3))
    quantiles[:, 0] = [0.1, 0.5, 0.9]  # hour 1: calibrated
    quantiles[:, 1] = [0.3, 0.5, 0.7]  # hour 2: too narrow, holds 40 %
    table = errors_by_horizon(
        observed,
        quantiles[..., 1],
        quantiles[..., 0],
        quantiles[..., 2],
        persistence=np.full(len(observed), 0.5),
        climatology=np.full(observed.shape, 0.25),
    )
    assert table["hour"].tolist() == [1, 2]
    np.testing.assert_allclose(table["coverage"], [0.8, 0.4])
    np.testing.assert_allclose(table["band_width_degC"], [0.8, 0.4])
    np.testing.assert_allclose(table["model_mae_degC"], [0.25, 0.25])  # |U - 0.5| averages 1/4
    np.testing.assert_allclose(table["climatology_mae_degC"], [0.3125, 0.3125])  # E|U - 1/4| = 5/16
    below = reliability(observed, quantiles, [0.1, 0.5, 0.9])
    np.testing.assert_allclose(below["observed_below"], [0.2, 0.5, 0.8])
    np.testing.assert_allclose(below["observed_below_final_hour"], [0.3, 0.5, 0.7])


def test_persistence_error_grows_with_the_hour_ahead():
    observed = 10 + 0.5 * np.arange(1, 5)[None, :].repeat(3, axis=0)  # +0.5 C per hour after 10 C
    table = errors_by_horizon(
        observed, observed, observed, observed, persistence=np.full(3, 10.0), climatology=observed
    )
    np.testing.assert_allclose(table["persistence_mae_degC"], [0.5, 1.0, 1.5, 2.0])
    np.testing.assert_allclose(table["coverage"], 1.0)


def test_path_metrics_and_a_band_outside_the_coverage_goal(tmp_path):
    observed = uniform_paths(hours=3)
    levels = [0.1, 0.5, 0.9]
    narrow = np.broadcast_to(np.array([0.45, 0.5, 0.55]), (*observed.shape, 3))
    when = hours("2015-01-01", "2015-03-01")[: len(observed)]
    result = {
        "target_timestamps": when,
        "observed": observed[:, -1],
        "predicted": narrow[:, -1, 1],
        "persistence": observed[:, -1] + 5,
        "climatology": observed[:, -1] + 5,
        "observed_paths": observed,
        "quantiles": narrow,
    }
    metrics = judged_metrics(result, levels, None, EVALUATE_PARAMS, seed=0)
    assert metrics["band_coverage"] == pytest.approx(0.1) and metrics["band_width_degC"] == pytest.approx(0.1)
    assert metrics["band_coverage_interval"][1] < 0.78
    assert metrics["blessed"] is False and "clearly outside the goal" in metrics["blessing_reason"]
    calibrated = np.broadcast_to(np.array(levels), (*observed.shape, 3))
    metrics = judged_metrics(
        {**result, "predicted": calibrated[:, -1, 1], "quantiles": calibrated}, levels, None, EVALUATE_PARAMS, seed=0
    )
    assert metrics["blessed"] is True and metrics["band_coverage"] == pytest.approx(0.8)
    assert metrics["band_coverage_final_hour"] == pytest.approx(0.8)
    assert metrics["test_mae_1h_degC"] == pytest.approx(0.25)
    assert metrics["test_mae_all_hours_degC"] == pytest.approx(0.25)
    assert metrics["sampling"] == {"confidence": 0.95, "block_days": 7, "bootstrap_replicates": 500, "test_days": 42}
    # pinball loss of the true quantiles of U(0, 1): mean over levels of q(1 - q)/2
    assert metrics["mean_pinball_loss_degC"] == pytest.approx(np.mean([0.045, 0.125, 0.045]), rel=1e-3)


def test_plot_tables():
    when = hours("2016-01-31", "2016-02-10")
    observed = np.arange(len(when), dtype=float)
    predicted = observed + np.where(calendar(when)["month"] == 1, 1.0, -2.0)
    stretch = prediction_stretch(when[::-1], observed[::-1], predicted[::-1], observed[::-1], days=2)
    assert stretch["hours"].tolist() == list(range(48)) and stretch["time"][0] == "2016-01-31 00:00"
    months = mae_by_month(when, observed, predicted, observed)
    assert months["month"].tolist() == [1, 2] and months["model_mae_degC"].tolist() == [1.0, 2.0]
    assert months["samples"].tolist() == [24, len(when) - 24]
    histogram = residual_histogram(np.array([-0.2, 0.1, 0.3, 1.2]), bin_width=0.5)
    assert histogram["residual_degC"].tolist() == [-0.25, 0.25, 0.75, 1.25]
    assert histogram["count"].tolist() == [1, 2, 0, 1]


def evaluation_workspace(tmp_path, monkeypatch, margin=-1.0, coverage_goal=(0.0, 1.0)):
    """Windows, a candidate model and params in `tmp_path`; margin -1 takes persistence, and a coverage
    goal of 0-1 the band, out of the blessing."""
    monkeypatch.chdir(tmp_path)
    windows = small_windows(days=90)
    write_windows(windows, tmp_path / "data" / "windows")
    keras.utils.set_random_seed(0)
    candidate = build_model(windows.normalization, TINY_MODEL)
    save_model(candidate, tmp_path / "models" / "model.keras")
    serving = {"base_path": "served", "model_name": "jena"}
    (tmp_path / "params.yaml").write_text(
        yaml.safe_dump(
            {
                "seed": 0,
                "evaluate": {**EVALUATE_PARAMS, "margin": margin, "coverage_goal": list(coverage_goal)},
                "serving": serving,
            }
        )
    )
    return windows, candidate


def publish_version(tmp_path, model, windows, card: dict, version: int = 3) -> Path:
    """`model` as published version `version`, with `card` as its model card."""
    directory = tmp_path / "served" / "jena" / str(version)
    export.save_servable(model, windows.lookback, windows.horizon, directory)
    (directory / "assets.extra").mkdir()
    (directory / "assets.extra" / "model_card.json").write_text(json.dumps(card))
    return directory


def persistence_model(windows):
    """The residual model with a zero head: it forecasts the last observed temperature."""
    model = build_model(windows.normalization, TINY_MODEL)
    head = model.get_layer("head")
    head.set_weights([np.zeros_like(weight) for weight in head.get_weights()])
    return model


def test_main_writes_metrics_and_plots(tmp_path, monkeypatch):
    windows, candidate = evaluation_workspace(tmp_path, monkeypatch, margin=0.05)
    evaluate.main()
    metrics = json.loads((tmp_path / "metrics" / "evaluate.json").read_text())
    assert metrics["published_version"] is None and metrics["published_mae_degC"] is None
    assert set(metrics) >= {
        "test_mae_degC",
        "test_rmse_degC",
        "persistence_mae_degC",
        "persistence_rmse_degC",
        "climatology_mae_degC",
        "climatology_rmse_degC",
        "skill_vs_persistence",
        "blessed",
        "blessing_reason",
        "test_data_fingerprint",
        "test_mae_1h_degC",
        "mean_pinball_loss_degC",
        "band_coverage",
        "band_coverage_final_hour",
        "band_width_degC",
    }
    assert metrics["test_samples"] == len(windows.starts["test"])
    starts = windows.starts["test"]
    history, timestamps = windows.history(starts)
    quantiles = candidate.predict({"history": history, "timestamps": timestamps}, verbose=0).astype(np.float64)
    observed = windows.paths(starts)
    assert metrics["test_mae_degC"] == pytest.approx(mae(quantiles[:, -1, 1], observed[:, -1]), abs=1e-5)
    assert metrics["band_coverage"] == pytest.approx(band_coverage(observed, quantiles[..., 0], quantiles[..., 2]))
    plots = tmp_path / "plots" / "evaluate"
    by_horizon = pd.read_csv(plots / "by_horizon.csv")
    assert by_horizon["hour"].tolist() == list(range(1, windows.horizon + 1))
    assert by_horizon["model_mae_degC"].iloc[-1] == pytest.approx(metrics["test_mae_degC"], abs=1e-3)
    assert by_horizon["persistence_mae_degC"].iloc[-1] == pytest.approx(metrics["persistence_mae_degC"], abs=1e-3)
    assert by_horizon["climatology_mae_degC"].iloc[-1] == pytest.approx(metrics["climatology_mae_degC"], abs=1e-3)
    assert pd.read_csv(plots / "reliability.csv")["quantile"].tolist() == [0.1, 0.5, 0.9]
    stretch = pd.read_csv(plots / "predictions.csv")
    assert len(stretch) == 7 * 24 and (stretch["band_low_degC"] <= stretch["predicted_degC"]).all()
    assert pd.read_csv(plots / "residuals.csv")["count"].sum() == len(windows.starts["test"])
    assert set(pd.read_csv(plots / "mae_by_month.csv").columns) >= {"month", "model_mae_degC"}


def test_the_published_version_is_scored_on_the_same_windows_not_by_its_stale_number(tmp_path, monkeypatch):
    """Published from other data (a stale card MAE of 99 C, which would bless anything): the published
    version, here a persistence forecaster, is run now on these windows, and the worse candidate is refused."""
    windows, candidate = evaluation_workspace(tmp_path, monkeypatch)
    published = persistence_model(windows)
    publish_version(
        tmp_path,
        published,
        windows,
        {
            "metrics": {"test_mae_degC": 99.0, "test_data_fingerprint": "synthetic data"},
            "params": {"window": {"horizon_hours": windows.horizon}},
        },
    )
    evaluate.main()
    metrics = json.loads((tmp_path / "metrics" / "evaluate.json").read_text())
    starts = windows.starts["test"]
    observed = windows.targets(starts)
    history, timestamps = windows.history(starts)
    expected = mae(published.predict({"history": history, "timestamps": timestamps}, verbose=0)[:, -1, 1], observed)
    assert metrics["published_version"] == 3
    assert metrics["published_mae_degC"] == pytest.approx(expected, abs=1e-4)
    assert metrics["published_mae_degC"] == pytest.approx(metrics["persistence_mae_degC"], abs=1e-4)
    comparison = metrics["published_comparison"]
    assert {key: comparison[key] for key in ("samples", "model_mae_degC", "measured")} == {
        "samples": len(starts),
        "model_mae_degC": metrics["test_mae_degC"],
        "measured": "evaluated now on these test windows",
    }
    low, high = comparison["mae_difference_interval"]
    assert EVALUATE_PARAMS["tolerance"] < low <= metrics["test_mae_degC"] - metrics["published_mae_degC"] <= high
    assert metrics["blessed"] is False and "published version 3's" in metrics["blessing_reason"]
    months = pd.read_csv(tmp_path / "plots" / "evaluate" / "mae_by_month.csv")
    assert months["published_mae_degC"].notna().all()


def test_the_same_published_model_on_new_data_is_blessed_on_the_fresh_comparison(tmp_path, monkeypatch):
    """A stale card MAE of 0.01 C would refuse anything; measured now, the same model is exactly as good."""
    windows, candidate = evaluation_workspace(tmp_path, monkeypatch)
    publish_version(
        tmp_path,
        candidate,
        windows,
        {
            "metrics": {"test_mae_degC": 0.01, "test_data_fingerprint": "synthetic data"},
            "params": {"window": {"horizon_hours": windows.horizon}},
        },
    )
    evaluate.main()
    metrics = json.loads((tmp_path / "metrics" / "evaluate.json").read_text())
    assert metrics["published_mae_degC"] == pytest.approx(metrics["test_mae_degC"], abs=1e-4)
    assert metrics["published_comparison"]["mae_difference_interval"] == pytest.approx([0, 0], abs=1e-4)
    assert metrics["blessed"] is True


def with_base_path(params_file: Path, base_path: str) -> None:
    params = yaml.safe_load(params_file.read_text())
    params["serving"]["base_path"] = base_path
    params_file.write_text(yaml.safe_dump(params))


def test_the_published_version_in_object_storage_is_downloaded_and_scored(object_store, tmp_path, monkeypatch):
    """serving.base_path on s3:// or gs://: the newest complete version is copied and run on these windows;
    a newer upload without saved_model.pb (killed or still running) is not the published version."""
    from serving import store

    windows, candidate = evaluation_workspace(tmp_path, monkeypatch)
    built = publish_version(
        tmp_path,
        persistence_model(windows),
        windows,
        {
            "metrics": {"test_mae_degC": 99.0, "test_data_fingerprint": "synthetic data"},
            "params": {"window": {"horizon_hours": windows.horizon}},
        },
    )
    base_path = f"{object_store.create_bucket('models')}/served"
    assert store.publish(built, f"{base_path}/jena", keep_versions=3).version == 1
    fs, root = fsspec.core.url_to_fs(f"{base_path}/jena")
    fs.pipe_file(f"{root}/2/variables/variables.index", b"half an upload")
    with_base_path(tmp_path / "params.yaml", base_path)
    evaluate.main()
    metrics = json.loads((tmp_path / "metrics" / "evaluate.json").read_text())
    assert metrics["published_version"] == 1
    assert metrics["published_comparison"]["measured"] == "evaluated now on these test windows"
    assert metrics["published_mae_degC"] == pytest.approx(metrics["persistence_mae_degC"], abs=1e-4)
    assert metrics["blessed"] is False and "published version 1's" in metrics["blessing_reason"]


def test_an_unusable_store_stops_evaluate_with_one_line(s3_server, tmp_path, monkeypatch):
    evaluation_workspace(tmp_path, monkeypatch)
    with_base_path(tmp_path / "params.yaml", "s3://no-such-bucket/served")
    with pytest.raises(
        SystemExit, match=r"^evaluate: s3://no-such-bucket/served/jena: bucket 'no-such-bucket' does not"
    ):
        evaluate.main()
    assert not (tmp_path / "metrics" / "evaluate.json").exists()


def test_a_band_outside_the_coverage_goal_refuses_the_blessing_in_the_stage(tmp_path, monkeypatch):
    """An untrained model's band is nowhere near calibrated."""
    evaluation_workspace(tmp_path, monkeypatch, coverage_goal=(0.78, 0.82))
    evaluate.main()
    metrics = json.loads((tmp_path / "metrics" / "evaluate.json").read_text())
    assert not 0.78 <= metrics["band_coverage"] <= 0.82
    assert metrics["blessed"] is False and "clearly outside the goal 78%-82%" in metrics["blessing_reason"]
