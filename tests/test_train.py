"""The model and the train stage, on small in-memory windows (24 h of history, 6 h ahead)."""

import json

import keras
import numpy as np
import pytest
import yaml

from pipeline import train as train_stage
from pipeline.features import derive_features
from pipeline.model import TEMPERATURE_INDEX, JenaFeatures, build_model, standardisation
from pipeline.train import best_epoch, make_dataset, save_model, train
from pipeline.window import save_windows
from windows_helper import small_windows

MODEL_PARAMS = {"cell": "gru", "layers": 1, "units": 8, "dropout": 0.0, "recurrent_dropout": 0.0, "residual": True}
TRAIN_PARAMS = {"optimizer": "adam", "learning_rate": 0.01, "batch_size": 64, "loss_function": "mae", "patience": 2}


def make_params(epochs=3, seed=7, **model_overrides) -> dict:
    return {"seed": seed, "epochs": epochs, "model": {**MODEL_PARAMS, **model_overrides}, "train": dict(TRAIN_PARAMS)}


@pytest.fixture(scope="module")
def windows():
    return small_windows(days=90)


def test_dataset_gathers_each_window_and_its_target(windows):
    starts = windows.starts["validation"][:10]
    inputs, target = next(iter(make_dataset(windows, starts, batch_size=10)))
    history, timestamps = windows.history(starts)
    np.testing.assert_array_equal(inputs["history"].numpy(), history)
    np.testing.assert_array_equal(inputs["timestamps"].numpy(), timestamps)
    np.testing.assert_array_equal(target.numpy(), windows.targets(starts))


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
    """With a zero head, the residual model forecasts persistence; the other, the mean temperature."""
    model = build_model(windows.normalization, {**MODEL_PARAMS, "residual": residual})
    head = model.get_layer("head")
    head.set_weights([np.zeros_like(weight) for weight in head.get_weights()])
    history, timestamps = windows.history(windows.starts["test"][:5])
    predicted = model.predict({"history": history, "timestamps": timestamps}, verbose=0)
    assert predicted.shape == (5,) and predicted.dtype == np.float32
    target = windows.normalization["feature_names"].index("T (degC)")
    expected = history[:, -1, TEMPERATURE_INDEX] if residual else [windows.normalization["mean"][target]] * 5
    np.testing.assert_allclose(predicted, expected, atol=1e-4)


def test_unknown_cell_is_an_error(windows):
    with pytest.raises(ValueError, match="model.cell"):
        build_model(windows.normalization, {**MODEL_PARAMS, "cell": "transformer"})


@pytest.mark.parametrize("cell,layers", [("gru", 1), ("lstm", 2)])
def test_model_trains_and_its_loss_falls(windows, cell, layers):
    model, history = train(windows, make_params(epochs=4, cell=cell, layers=layers), verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < losses[0] * 0.9, losses
    assert set(history.history) >= {"loss", "mae", "val_loss", "val_mae"}


def test_same_seed_gives_the_same_validation_mae(windows):
    params = make_params(epochs=2, dropout=0.1, recurrent_dropout=0.1)
    first = best_epoch(train(windows, params, verbose=0)[1])[1]
    second = best_epoch(train(windows, params, verbose=0)[1])[1]
    assert round(first, 3) == round(second, 3)


def test_saved_model_loads_and_predicts_identically(windows, tmp_path):
    model, _ = train(windows, make_params(epochs=1), verbose=0)
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
    save_windows({"hourly": windows.hourly, "timestamps": windows.timestamps, "starts": windows.starts,
                  "normalization": windows.normalization}, tmp_path / "data" / "windows")
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
