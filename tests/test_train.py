"""The model, its loss and the train stage, on small in-memory windows (24 h of history, 6 h ahead)."""

import json

import keras
import numpy as np
import pytest
import yaml
from windows_helper import small_windows

from pipeline import train as train_stage
from pipeline.dataset import make_dataset, save_windows
from pipeline.features import derive_features
from pipeline.model import (
    TEMPERATURE_INDEX,
    JenaFeatures,
    QuantileHead,
    build_model,
    calibration_factors,
    standardisation,
)
from pipeline.scores import pinball_loss
from pipeline.train import (
    FinalHourMedianMAE,
    PinballLoss,
    best_epoch,
    compile_model,
    hour_weights,
    learning_rate,
    save_model,
    train,
)

MODEL_PARAMS = {
    "cell": "gru",
    "layers": 1,
    "units": 8,
    "dropout": 0.0,
    "recurrent_dropout": 0.0,
    "residual": True,
    "quantiles": [0.1, 0.5, 0.9],
}
TRAIN_PARAMS = {"optimizer": "adam", "learning_rate": 0.01, "batch_size": 64, "final_hour_share": 0.5, "patience": 2}


def make_params(epochs=3, seed=7, **model_overrides) -> dict:
    return {"seed": seed, "epochs": epochs, "model": {**MODEL_PARAMS, **model_overrides}, "train": dict(TRAIN_PARAMS)}


@pytest.fixture(scope="module")
def windows():
    return small_windows(days=90)


def test_dataset_gathers_each_window_and_its_targets_for_every_hour(windows):
    starts = windows.starts["validation"][:10]
    inputs, target = next(iter(make_dataset(windows, starts, batch_size=10)))
    history, timestamps = windows.history(starts)
    np.testing.assert_array_equal(inputs["history"].numpy(), history)
    np.testing.assert_array_equal(inputs["timestamps"].numpy(), timestamps)
    assert target.shape == (10, windows.horizon)
    np.testing.assert_array_equal(target.numpy(), windows.paths(starts))
    np.testing.assert_array_equal(target.numpy()[:, -1], windows.targets(starts))


def test_shuffled_dataset_covers_every_start_once_in_a_seeded_order(windows):
    starts = windows.starts["train"]

    def first_epoch(seed):
        dataset = make_dataset(windows, starts, batch_size=100, shuffle_seed=seed)
        return np.concatenate([inputs["timestamps"].numpy()[:, 0] for inputs, _ in dataset])

    order = first_epoch(3)
    assert sorted(order) == sorted(windows.timestamps[starts])
    np.testing.assert_array_equal(order, first_epoch(3))


def test_feature_layer_standardises_all_but_the_cyclic_time_features(windows):
    stats = windows.normalization
    mean, std = standardisation(stats)
    history, timestamps = windows.history(windows.starts["train"][:4])
    features = derive_features(history, timestamps, np, time_features=True, wind_vector=True)
    layer = JenaFeatures(mean, std, stats["time_features"], stats["wind_vector"])
    standardised = keras.ops.convert_to_numpy(layer([history, timestamps]))
    cyclic = [stats["feature_names"].index(name) for name in ("day_sin", "day_cos", "year_sin", "year_cos")]
    others = [index for index in range(len(mean)) if index not in cyclic]
    np.testing.assert_allclose(standardised[..., cyclic], features[..., cyclic], atol=1e-5)
    expected = (features[..., others] - np.array(stats["mean"])[others]) / np.array(stats["std"])[others]
    np.testing.assert_allclose(standardised[..., others], expected, atol=1e-4)


@pytest.mark.parametrize("residual", [True, False])
def test_untrained_head_predicts_last_temperature_or_training_mean(windows, residual):
    """With a zero head, the residual model's median is persistence for every hour, the other's the mean
    temperature; the outer quantiles lie softplus(0) temperature stds below and above."""
    model = build_model(windows.normalization, {**MODEL_PARAMS, "residual": residual})
    head = model.get_layer("head")
    head.set_weights([np.zeros_like(weight) for weight in head.get_weights()])
    history, timestamps = windows.history(windows.starts["test"][:5])
    predicted = model.predict({"history": history, "timestamps": timestamps}, verbose=0)
    assert predicted.shape == (5, windows.horizon, 3) and predicted.dtype == np.float32
    target = windows.normalization["feature_names"].index("T (degC)")
    expected = history[:, -1, TEMPERATURE_INDEX] if residual else np.full(5, windows.normalization["mean"][target])
    np.testing.assert_allclose(predicted[..., 1], np.repeat(expected[:, None], windows.horizon, axis=1), atol=1e-4)
    spread = np.log(2) * windows.normalization["std"][target]
    np.testing.assert_allclose(predicted[..., 2] - predicted[..., 1], spread, rtol=1e-4)
    np.testing.assert_allclose(predicted[..., 1] - predicted[..., 0], spread, rtol=1e-4)


def test_quantiles_never_cross_whatever_the_head_outputs():
    levels = [0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95]
    head = QuantileHead(mean=9.0, std=8.0, residual=True, horizon=6, quantiles=levels)
    rng = np.random.default_rng(0)
    raw = rng.normal(0, 20, (500, 6 * len(levels))).astype(np.float32)  # far beyond a trained head's range
    history = rng.normal(0, 10, (500, 4, 14)).astype(np.float32)
    quantiles = keras.ops.convert_to_numpy(head([raw, history]))
    assert quantiles.shape == (500, 6, len(levels))
    assert (np.diff(quantiles, axis=-1) >= 0).all()
    median = history[:, -1, TEMPERATURE_INDEX][:, None] + 8.0 * raw.reshape(500, 6, len(levels))[..., 0]
    np.testing.assert_allclose(quantiles[..., levels.index(0.5)], median, rtol=1e-5, atol=1e-4)


def test_a_model_with_random_weights_gives_ordered_quantiles_on_random_inputs(windows):
    keras.utils.set_random_seed(1)
    model = build_model(windows.normalization, {**MODEL_PARAMS, "quantiles": [0.1, 0.3, 0.5, 0.7, 0.9]})
    head = model.get_layer("head")
    rng = np.random.default_rng(1)
    head.set_weights([rng.normal(0, 3, weight.shape) for weight in head.get_weights()])
    history, timestamps = windows.history(windows.starts["test"][:200])
    noisy = history + rng.normal(0, 5, history.shape).astype(np.float32)
    quantiles = model.predict({"history": noisy, "timestamps": timestamps}, verbose=0)
    assert quantiles.shape == (200, windows.horizon, 5) and (np.diff(quantiles, axis=-1) >= 0).all()


@pytest.mark.parametrize("levels", [[0.1, 0.9], [0.5, 0.1], [0.0, 0.5], [0.5, 0.5, 0.9], []])
def test_quantile_levels_must_ascend_in_the_open_interval_and_hold_the_median(windows, levels):
    with pytest.raises(ValueError, match="model.quantiles"):
        build_model(windows.normalization, {**MODEL_PARAMS, "quantiles": levels})


# y_true [1 sample, 2 hours], forecasts of levels 0.1, 0.5, 0.9. By hand, for e = observed - forecast:
# hour 1: e = 2 - [1, 2, 3] = [1, 0, -1]   -> 0.1*1, 0, (0.9-1)*(-1) = 0.1   -> mean 0.2/3
# hour 2: e = 4 - [5, 5, 6] = [-1, -1, -2] -> 0.9, 0.5, 0.2                  -> mean 1.6/3
OBSERVED = np.array([[2.0, 4.0]], np.float32)
FORECAST = np.array([[[1.0, 2.0, 3.0], [5.0, 5.0, 6.0]]], np.float32)


@pytest.mark.parametrize(
    "share,expected", [(0.5, (0.2 / 3 + 1.6 / 3) / 2), (0.75, 0.25 * 0.2 / 3 + 0.75 * 1.6 / 3), (1.0, 1.6 / 3)]
)
def test_pinball_loss_on_a_hand_computed_example(share, expected):
    loss = PinballLoss([0.1, 0.5, 0.9], hour_weights(2, share))
    assert float(loss(OBSERVED, FORECAST)) == pytest.approx(expected, rel=1e-6)


def test_evaluation_pinball_loss_is_the_plain_mean_over_hours_and_quantiles():
    assert pinball_loss(OBSERVED, FORECAST, [0.1, 0.5, 0.9]) == pytest.approx((0.2 + 1.6) / 6)


def test_median_pinball_loss_is_half_the_absolute_error():
    loss = PinballLoss([0.5], hour_weights(2, 1.0))
    assert float(loss(OBSERVED, FORECAST[..., 1:2])) == pytest.approx(0.5 * abs(4.0 - 5.0))


def test_hour_weights_give_the_last_hour_its_share_and_the_others_the_rest():
    assert hour_weights(4, 0.5) == pytest.approx([1 / 6, 1 / 6, 1 / 6, 0.5])
    # balanced: the others in proportion to 1 / sqrt(error); the last hour's error does not matter
    balanced = hour_weights(4, 0.5, hour_errors=[1.0, 4.0, 16.0, 99.0])
    assert balanced == pytest.approx([0.5 * 4 / 7, 0.5 * 2 / 7, 0.5 * 1 / 7, 0.5])
    assert hour_weights(1, 0.3) == [1.0]
    with pytest.raises(ValueError, match="final_hour_share"):
        hour_weights(4, 1.5)


def test_the_mae_metric_is_the_last_hours_median_error():
    metric = FinalHourMedianMAE(median=1)
    observed = np.array([[0.0, 1.0], [0.0, -2.0]])
    forecast = np.array([[[9, 9, 9], [0, 2, 3]], [[9, 9, 9], [-9, 0, 9]]])  # last hour's medians 2 and 0
    metric.update_state(observed, forecast)
    assert metric.name == "mae" and float(metric.result()) == pytest.approx((1 + 2) / 2)


def test_unknown_cell_is_an_error(windows):
    with pytest.raises(ValueError, match="model.cell"):
        build_model(windows.normalization, {**MODEL_PARAMS, "cell": "transformer"})


CONV = {"conv_filters": 5, "conv_kernel": 4, "conv_stride": 3}  # 24 h of history: 2 h dropped, 7 steps


def sequence_model(model: keras.Model, layer: str) -> keras.Model:
    return keras.Model(model.inputs, model.get_layer(layer).output)


def test_the_strided_convolution_shortens_the_sequence_and_ends_at_the_last_hour(windows):
    """(24 - 4) % 3 = 2 oldest hours dropped, then 7 steps of 4 hours every 3: the last reads hours 21-24."""
    keras.utils.set_random_seed(2)
    model = build_model(windows.normalization, {**MODEL_PARAMS, **CONV})
    convolved = sequence_model(model, "conv")
    history, timestamps = windows.history(windows.starts["test"][:4])
    before = convolved.predict({"history": history, "timestamps": timestamps}, verbose=0)
    assert before.shape == (4, 7, 5)

    def changed_steps(hour):
        touched = history.copy()
        touched[:, hour, 0] += 10.0  # pressure, hour `hour` of the history
        after = convolved.predict({"history": touched, "timestamps": timestamps}, verbose=0)
        return [step for step in range(7) if not np.allclose(after[:, step], before[:, step])]

    assert changed_steps(23) == [6]
    assert changed_steps(20) == [5, 6]
    assert changed_steps(2) == [0]
    assert changed_steps(1) == []  # dropped so that the last step ends at the last hour


@pytest.mark.parametrize(
    "overrides,named",
    [
        ({"conv_filters": -1}, "model.conv_filters"),
        ({**CONV, "conv_stride": 0}, "model.conv_stride"),
        ({**CONV, "conv_kernel": 25}, "model.conv_kernel"),
    ],
)
def test_bad_convolution_params_are_errors_that_name_the_param(windows, overrides, named):
    with pytest.raises(ValueError, match=named):
        build_model(windows.normalization, {**MODEL_PARAMS, **overrides})


def test_cosine_schedule_warms_up_then_decays_to_zero_at_the_last_step():
    schedule = learning_rate(
        {"learning_rate": 0.01, "schedule": "cosine", "warmup_share": 0.25}, epochs=4, steps_per_epoch=10
    )
    rates = [float(schedule(step)) for step in (0, 5, 10, 25, 40)]
    assert rates == pytest.approx([0.001, 0.0055, 0.01, 0.005, 0.0], abs=1e-6)
    assert learning_rate({"learning_rate": 0.01}, epochs=4, steps_per_epoch=10) == 0.01  # constant


@pytest.mark.parametrize(
    "overrides,named",
    [
        ({"schedule": "linear"}, "train.schedule"),
        ({"schedule": "cosine", "warmup_share": 1}, "train.warmup_share"),
    ],
)
def test_bad_schedule_is_an_error_that_names_the_param(windows, overrides, named):
    model = build_model(windows.normalization, MODEL_PARAMS)
    with pytest.raises(ValueError, match=named):
        compile_model(model, MODEL_PARAMS["quantiles"], windows.horizon, {**TRAIN_PARAMS, **overrides}, epochs=4)


def strided_cosine_params(epochs: int, **model_overrides) -> dict:
    """The shape of the default configuration: the convolution and the cosine schedule."""
    params = make_params(epochs=epochs, **CONV, **model_overrides)
    params["train"].update(schedule="cosine", warmup_share=0.2)
    return params


@pytest.mark.parametrize("cell,layers,strided", [("gru", 1, False), ("lstm", 2, False), ("gru", 1, True)])
def test_model_trains_and_its_loss_falls(windows, cell, layers, strided):
    params = (strided_cosine_params if strided else make_params)(epochs=4, cell=cell, layers=layers)
    model, history = train(windows, params, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < losses[0] * 0.9, losses
    assert set(history.history) >= {"loss", "mae", "val_loss", "val_mae"}


def test_validation_mae_is_the_restored_models_final_hour_median_error_in_degc(windows):
    model, history = train(windows, make_params(epochs=2), verbose=0)
    starts = windows.starts["validation"]
    quantiles = model.predict(make_dataset(windows, starts, 256), verbose=0)
    expected = np.mean(np.abs(quantiles[:, -1, 1] - windows.targets(starts)))
    assert best_epoch(history)[1] == pytest.approx(expected, rel=1e-4)


def test_the_single_output_configuration_is_a_median_at_the_last_hour(windows):
    """quantiles [0.5] and final_hour_share 1: the forecaster as before it forecast every hour."""
    params = make_params(epochs=1, quantiles=[0.5])
    params["train"]["final_hour_share"] = 1.0
    model, history = train(windows, params, verbose=0)
    history_, timestamps = windows.history(windows.starts["test"][:3])
    assert model.predict({"history": history_, "timestamps": timestamps}, verbose=0).shape == (3, windows.horizon, 1)
    assert np.isfinite(history.history["val_mae"]).all()


def test_same_seed_gives_the_same_weights(windows):
    params = strided_cosine_params(epochs=2, dropout=0.1, recurrent_dropout=0.1)
    first, second = (train(windows, params, verbose=0)[0] for _ in range(2))
    for mine, theirs in zip(first.get_weights(), second.get_weights(), strict=True):
        np.testing.assert_array_equal(mine, theirs)


@pytest.mark.parametrize("strided", [False, True])
def test_saved_model_loads_and_predicts_identically(windows, tmp_path, strided):
    """Also with the convolution and the cosine schedule (its optimizer config travels in the file)."""
    model, _ = train(windows, (strided_cosine_params if strided else make_params)(epochs=1), verbose=0)
    path = tmp_path / "models" / "model.keras"
    save_model(model, path)
    assert [entry.name for entry in path.parent.iterdir()] == ["model.keras"]  # no temporary left behind
    loaded = keras.saving.load_model(path)
    history, timestamps = windows.history(windows.starts["test"][:32])
    inputs = {"history": history, "timestamps": timestamps}
    np.testing.assert_array_equal(loaded.predict(inputs, verbose=0), model.predict(inputs, verbose=0))
    features = loaded.get_layer("features").get_config()
    mean, std = standardisation(windows.normalization)
    assert features["mean"] == pytest.approx(mean) and features["std"] == pytest.approx(std)


def test_main_writes_the_model_and_the_dvclive_logs(windows, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    save_windows(
        {
            "hourly": windows.hourly,
            "timestamps": windows.timestamps,
            "starts": windows.starts,
            "normalization": windows.normalization,
        },
        tmp_path / "data" / "windows",
    )
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(make_params(epochs=2)))
    train_stage.main()
    assert (tmp_path / "models" / "model.keras").is_file()
    summary = json.loads((tmp_path / "dvclive" / "metrics.json").read_text())
    assert set(summary) >= {"train", "eval", "best"}
    assert set(summary["eval"]) == {"loss", "mae"} and summary["best"]["epoch"] in (1, 2)
    for split in ("train", "eval"):
        curve = (tmp_path / "dvclive" / "plots" / "metrics" / split / "mae.tsv").read_text().splitlines()
        assert curve[0].split("\t") == ["step", "mae"] and len(curve) == 3
    assert not (tmp_path / "dvc.yaml").exists()  # the project's dvc.yaml declares DVCLive's files


def test_calibration_factors_make_each_quantile_hold_its_level():
    """A band twice too narrow below and half too wide above: the factors undo both, hour by hour,
    and leave the median alone."""
    rng = np.random.default_rng(1)
    levels = [0.1, 0.5, 0.9]
    median = rng.normal(10, 5, (20_000, 2))
    scale = rng.uniform(0.5, 2.0, (20_000, 2))  # each forecast's own uncertainty
    observed = median + scale * rng.normal(0, 1, (20_000, 2))
    z = 1.2816  # the standard normal's 90 % quantile
    quantiles = np.stack([median - z * scale / 2, median, median + z * scale * 1.5], axis=-1)
    factors = calibration_factors(observed, quantiles, levels)
    assert factors.shape == (2, 3) and factors.dtype == np.float32
    np.testing.assert_allclose(factors[:, 1], 1.0)
    np.testing.assert_allclose(factors[:, 0], 2.0, rtol=0.05)
    np.testing.assert_allclose(factors[:, 2], 1 / 1.5, rtol=0.05)
    calibrated = median[..., None] + (quantiles - median[..., None]) * factors
    below = (observed[..., None] < calibrated).mean(axis=0)
    np.testing.assert_allclose(below, [[0.1, 0.5, 0.9]] * 2, atol=0.005)


def test_calibration_factors_never_collapse_a_quantile_onto_the_median():
    median = np.zeros((100, 1))
    observed = np.full((100, 1), 5.0)  # every observation above the median: no lower spread fits
    quantiles = np.stack([median - 1, median, median + 1], axis=-1)
    assert calibration_factors(observed, quantiles, [0.1, 0.5, 0.9])[0, 0] == pytest.approx(0.05)


def test_head_scales_each_hours_spreads_by_its_factors_and_keeps_them_ordered():
    levels = [0.1, 0.25, 0.5, 0.9]
    head = QuantileHead(mean=0.0, std=1.0, residual=False, horizon=2, quantiles=levels)
    raw = np.zeros((3, 2 * len(levels)), np.float32)
    history = np.zeros((3, 4, 14), np.float32)
    plain = keras.ops.convert_to_numpy(head([raw, history]))
    factors = np.array([[2.0, 1.0, 1.0, 0.5], [1.0, 3.0, 1.0, 1.0]], np.float32)  # hour 2: 0.25 beyond 0.1
    head.calibration.assign(factors)
    scaled = keras.ops.convert_to_numpy(head([raw, history]))
    np.testing.assert_allclose(scaled[:, 0], plain[:, 0] * factors[0], rtol=1e-6)
    assert (np.diff(scaled, axis=-1) >= 0).all()  # sorted where factors would cross quantiles
    np.testing.assert_allclose(scaled[:, 1], np.sort(plain[:, 1] * factors[1], axis=-1), rtol=1e-6)


def test_training_calibrates_the_band_on_the_validation_split_and_saves_it(windows, tmp_path):
    model, _ = train(windows, make_params(epochs=2), verbose=0)
    head = model.get_layer("temperature_quantiles_degC")
    factors = keras.ops.convert_to_numpy(head.calibration)
    assert factors.shape == (windows.horizon, 3) and not np.allclose(factors, 1.0)
    starts = windows.starts["validation"]
    history, timestamps = windows.history(starts)
    quantiles = model.predict({"history": history, "timestamps": timestamps}, verbose=0)
    below = (windows.paths(starts)[..., None] < quantiles).mean(axis=0)  # [hours, levels]
    np.testing.assert_allclose(below[:, [0, 2]], [[0.1, 0.9]] * windows.horizon, atol=1.5 / len(starts) + 1e-9)
    path = tmp_path / "model.keras"
    save_model(model, path)
    reloaded = keras.saving.load_model(path).get_layer("temperature_quantiles_degC")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(reloaded.calibration), factors)


def test_persistence_errors_are_each_hours_mean_absolute_change(windows):
    starts = windows.starts["train"][:50]
    last = windows.hourly[starts + windows.lookback - 1, TEMPERATURE_INDEX]
    expected = [np.mean(np.abs(windows.paths(starts)[:, hour] - last)) for hour in range(windows.horizon)]
    errors = train_stage.persistence_errors(windows, starts)
    np.testing.assert_allclose(errors, expected, rtol=1e-6)
    assert errors[0] < errors[-1]  # the weather drifts away from the last reading


def test_balanced_training_weighs_the_loss_by_the_training_splits_hour_errors(windows):
    model, _ = train(windows, make_params(epochs=1), verbose=0)  # no balance_hours: equal weights
    assert model.loss.weights == pytest.approx(hour_weights(windows.horizon, 0.5))
    params = make_params(epochs=1)
    params["train"]["balance_hours"] = True
    model, _ = train(windows, params, verbose=0)
    errors = train_stage.persistence_errors(windows, windows.starts["train"])
    assert model.loss.weights == pytest.approx(hour_weights(windows.horizon, 0.5, errors))
    assert model.loss.weights[0] > model.loss.weights[-2]
