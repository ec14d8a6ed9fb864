"""The train stage: its loss, metric and schedule, training itself, the saved file and main(), on small windows
(24 h of history, 6 h ahead) with a tiny model."""

import json

import keras
import numpy as np
import pytest
import yaml

from pipeline import train as train_stage
from pipeline.dataset import make_dataset
from pipeline.model import TEMPERATURE_INDEX, build_model, standardisation
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
from tests.helpers.training import CONVOLUTION, TINY_MODEL, TINY_TRAIN, small_windows, tiny_params, write_windows


@pytest.fixture(scope="module")
def windows():
    return small_windows(days=90)


def default_shape_params(epochs: int) -> dict:
    """The tiny model in the default configuration's shape: a strided convolution, dropout, the cosine schedule."""
    params = tiny_params(epochs=epochs, **CONVOLUTION, dropout=0.1, recurrent_dropout=0.1)
    params["train"].update(schedule="cosine", warmup_share=0.2)
    return params


@pytest.fixture(scope="module")
def trained(windows):
    """(model, history) of the tiny model in the default shape, trained for 4 epochs; tests only read them."""
    return train(windows, default_shape_params(epochs=4), verbose=0)


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
    model = build_model(windows.normalization, TINY_MODEL)
    with pytest.raises(ValueError, match=named):
        compile_model(model, TINY_MODEL["quantiles"], windows.horizon, {**TINY_TRAIN, **overrides}, epochs=4)


def assert_the_loss_falls(history) -> None:
    losses = history.history["loss"]
    assert losses[-1] < losses[0] * 0.9, losses
    assert set(history.history) >= {"loss", "mae", "val_loss", "val_mae"}


def test_the_model_trains_and_its_loss_falls(trained):
    assert_the_loss_falls(trained[1])


def test_a_two_layer_lstm_with_balanced_hours_trains_and_weighs_each_hour_by_its_error(windows, trained):
    assert trained[0].loss.weights == pytest.approx(hour_weights(windows.horizon, 0.5))  # not balanced: equal
    params = tiny_params(epochs=4, cell="lstm", layers=2)
    params["train"]["balance_hours"] = True
    model, history = train(windows, params, verbose=0)
    assert_the_loss_falls(history)
    errors = train_stage.persistence_errors(windows, windows.starts["train"])
    assert model.loss.weights == pytest.approx(hour_weights(windows.horizon, 0.5, errors))
    assert model.loss.weights[0] > model.loss.weights[-2]


def test_validation_mae_is_the_restored_models_final_hour_median_error_in_degc(windows, trained):
    model, history = trained
    starts = windows.starts["validation"]
    quantiles = model.predict(make_dataset(windows, starts, 256), verbose=0)
    expected = np.mean(np.abs(quantiles[:, -1, 1] - windows.targets(starts)))
    assert best_epoch(history)[1] == pytest.approx(expected, rel=1e-4)


def test_the_single_output_configuration_is_a_median_at_the_last_hour(windows):
    """quantiles [0.5] and final_hour_share 1: one median forecast per hour, the loss on the last hour only."""
    params = tiny_params(epochs=1, quantiles=[0.5])
    params["train"]["final_hour_share"] = 1.0
    model, history = train(windows, params, verbose=0)
    history_, timestamps = windows.history(windows.starts["test"][:3])
    assert model.predict({"history": history_, "timestamps": timestamps}, verbose=0).shape == (3, windows.horizon, 1)
    assert np.isfinite(history.history["val_mae"]).all()


def test_same_seed_gives_the_same_weights(windows, trained):
    """Dropout, the shuffled order and the initial weights all follow the seed."""
    again, _ = train(windows, default_shape_params(epochs=4), verbose=0)
    for mine, theirs in zip(trained[0].get_weights(), again.get_weights(), strict=True):
        np.testing.assert_array_equal(mine, theirs)


def test_saved_model_loads_and_predicts_identically(windows, trained, tmp_path):
    """The convolution and the cosine schedule's optimizer config travel in the file."""
    model = trained[0]
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


def test_main_writes_the_model_its_architecture_and_the_dvclive_logs(windows, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_windows(windows, tmp_path / "data" / "windows")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params(epochs=2)))
    train_stage.main()
    assert (tmp_path / "models" / "model.keras").is_file()
    said = capsys.readouterr().out.splitlines()
    assert said[-1].startswith("train: wrote models/architecture/summary.txt "), said  # with model.png where dot is
    assert (tmp_path / "models" / "architecture" / "summary.txt").is_file()
    summary = json.loads((tmp_path / "dvclive" / "metrics.json").read_text())
    assert set(summary) >= {"train", "eval", "best"}
    assert set(summary["eval"]) == {"loss", "mae"} and summary["best"]["epoch"] in (1, 2)
    for split in ("train", "eval"):
        curve = (tmp_path / "dvclive" / "plots" / "metrics" / split / "mae.tsv").read_text().splitlines()
        assert curve[0].split("\t") == ["step", "mae"] and len(curve) == 3
    assert not (tmp_path / "dvc.yaml").exists()  # the project's dvc.yaml declares DVCLive's files


def test_training_calibrates_the_band_on_the_validation_split_and_saves_it(windows, trained, tmp_path):
    model, _ = trained
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
