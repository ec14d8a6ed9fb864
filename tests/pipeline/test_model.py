"""The forecaster (pipeline/model.py): its feature layer, quantile head, convolution, calibration factors
and the checks of its params, on small windows (24 h of history, 6 h ahead) with untrained tiny models."""

import keras
import numpy as np
import pytest

from pipeline.features import derive_features
from pipeline.model import (
    TEMPERATURE_INDEX,
    JenaFeatures,
    QuantileHead,
    build_model,
    calibration_factors,
    standardisation,
)
from tests.helpers.training import CONVOLUTION, TINY_MODEL, small_windows


@pytest.fixture(scope="module")
def windows():
    return small_windows(days=90)


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
    model = build_model(windows.normalization, {**TINY_MODEL, "residual": residual})
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
    model = build_model(windows.normalization, {**TINY_MODEL, "quantiles": [0.1, 0.3, 0.5, 0.7, 0.9]})
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
        build_model(windows.normalization, {**TINY_MODEL, "quantiles": levels})


def test_unknown_cell_is_an_error(windows):
    with pytest.raises(ValueError, match="model.cell"):
        build_model(windows.normalization, {**TINY_MODEL, "cell": "transformer"})


def sequence_model(model: keras.Model, layer: str) -> keras.Model:
    return keras.Model(model.inputs, model.get_layer(layer).output)


def test_the_strided_convolution_shortens_the_sequence_and_ends_at_the_last_hour(windows):
    """(24 - 4) % 3 = 2 oldest hours dropped, then 7 steps of 4 hours every 3: the last reads hours 21-24."""
    keras.utils.set_random_seed(2)
    model = build_model(windows.normalization, {**TINY_MODEL, **CONVOLUTION})
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
        ({**CONVOLUTION, "conv_stride": 0}, "model.conv_stride"),
        ({**CONVOLUTION, "conv_kernel": 25}, "model.conv_kernel"),
    ],
)
def test_bad_convolution_params_are_errors_that_name_the_param(windows, overrides, named):
    with pytest.raises(ValueError, match=named):
        build_model(windows.normalization, {**TINY_MODEL, **overrides})


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
