"""`python -m pipeline.inspect` and the train stage's models/architecture/ (summary and diagram).

One tiny model is trained for an epoch and kept in the four forms inspect
reads: a `.keras` file, a legacy `.h5` file, the export stage's SavedModel and
a published version. The diagram needs Graphviz's `dot` (CI installs it, see
.ci/run); the tests that draw are skipped, and say why, where it is missing.
Graphviz missing is tested by hiding `dot` from PATH.
"""

import os
import shutil
import struct
import subprocess
import sys
import tomllib
import xml.etree.ElementTree as ElementTree
import zipfile
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest
import yaml

from pipeline import architecture, export
from pipeline import inspect as inspect_command
from pipeline import train as train_stage
from pipeline.model import build_model
from pipeline.published import MODEL_CARD
from serving.store import fingerprint, publish
from tests.helpers.commands import run_main
from tests.helpers.exports import BLESSED_METRICS
from tests.helpers.repository import REPO_ROOT
from tests.helpers.training import TINY_MODEL, small_windows, tiny_params

LOOKBACK, HORIZON = 24, 6
LAYER_CLASSES = ("JenaFeatures", "GRU", "Dense", "QuantileHead")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

needs_graphviz = pytest.mark.skipif(
    shutil.which("dot") is None, reason="Graphviz's `dot` is not installed (apt-get install graphviz)"
)


@pytest.fixture(scope="module")
def windows():
    return small_windows(days=60, lookback=LOOKBACK, horizon=HORIZON)


@pytest.fixture(scope="module")
def model(windows):
    return train_stage.train(windows, tiny_params(), verbose=0)[0]


@pytest.fixture(scope="module")
def forms(tmp_path_factory, model, windows) -> dict[str, Path]:
    """The trained model as `.keras`, `.h5`, exported SavedModel, published version and model directory."""
    root = tmp_path_factory.mktemp("forms")
    train_stage.save_model(model, root / "model.keras")
    model.save(root / "model.h5")  # Keras 3 writes the legacy HDF5 format for this extension
    raw_csv = root / "raw.csv"
    raw_csv.write_text("Date Time\n")
    params = {**yaml.safe_load((REPO_ROOT / "params.yaml").read_text()), **tiny_params()}
    params["window"] = {**params["window"], "lookback_hours": LOOKBACK, "horizon_hours": HORIZON}
    export.write_export(model, windows, export.model_card(params, BLESSED_METRICS, raw_csv, LOOKBACK), root / "export")
    published = publish(root / "export", root / "serving" / "jena_temperature", keep_versions=2)
    return {
        "keras": root / "model.keras",
        "h5": root / "model.h5",
        "saved_model": root / "export",
        "version": Path(published.path),
        "model_directory": root / "serving" / "jena_temperature",
    }


def run(capsys, *argv) -> tuple[int, str, str]:
    return run_main(inspect_command.main, capsys, *argv)


def without_dot(monkeypatch, tmp_path) -> None:
    """PATH without Graphviz: only an empty directory (the tests run in-process, nothing else is looked up)."""
    empty = tmp_path / "no-graphviz"
    empty.mkdir(exist_ok=True)
    monkeypatch.setenv("PATH", str(empty))
    assert shutil.which("dot") is None


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk, after checking the signature."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def svg_nodes(path: Path) -> int:
    root = ElementTree.parse(path).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    return sum(1 for element in root.iter() if element.get("class") == "node")


@pytest.mark.parametrize("form", ["keras", "h5"])
def test_a_keras_file_prints_layers_output_shapes_and_parameter_counts(forms, model, capsys, form):
    status, out, err = run(capsys, forms[form])
    assert status == 0, err
    assert out.startswith(f"{forms[form]}: Keras model\n")
    for layer_class in LAYER_CLASSES:
        assert f"({layer_class})" in out
    assert f"(None, {HORIZON}, 3)" in out  # the quantiles' output shape
    assert f"Total params: {model.count_params():,}" in out


@pytest.mark.parametrize("columns", ["40", "300", None])
def test_the_summary_is_whole_and_the_same_whatever_the_terminals_width(model, monkeypatch, columns):
    monkeypatch.delenv("COLUMNS", raising=False)
    expected = architecture.summary_text(model)
    if columns is not None:
        monkeypatch.setenv("COLUMNS", columns)
    assert architecture.summary_text(model) == expected
    assert os.environ.get("COLUMNS") == columns  # restored
    lines = expected.splitlines()
    assert max(len(line) for line in lines) == architecture.SUMMARY_WIDTH
    header = next(line for line in lines if "Layer (type)" in line)
    assert "Param #" in header and "Connected to" in header
    assert any("temperature_quantiles_degC" in line for line in lines)  # the longest name, not cut short


def test_the_legacy_h5_file_rebuilds_the_registered_layers_with_the_same_weights(forms, model, windows):
    loaded = inspect_command.load_keras_model(forms["h5"])
    assert [type(layer).__name__ for layer in loaded.layers[2:]] == ["JenaFeatures", "GRU", "Dense", "QuantileHead"]
    history, timestamps = windows.history(windows.starts["test"][:8])
    inputs = {"history": history, "timestamps": timestamps}
    np.testing.assert_allclose(loaded.predict(inputs, verbose=0), model.predict(inputs, verbose=0), atol=1e-6)


@pytest.mark.parametrize("form", ["saved_model", "version", "model_directory"])
def test_a_saved_model_prints_its_served_signature_and_model_card(forms, capsys, form):
    status, out, err = run(capsys, forms[form])
    assert status == 0, err
    shown = forms["saved_model"] if form == "saved_model" else forms["version"]  # a model directory: its newest
    assert out.startswith(f"{shown}: SavedModel\n")
    lines = [" ".join(line.split()) for line in out.splitlines()]
    assert "signature serving_default (tensorflow/serving/predict)" in lines
    assert f"history float32 [None, {LOOKBACK}, 14]" in lines
    assert f"timestamps int64 [None, {LOOKBACK}]" in lines
    assert f"temperature_quantiles_degC float32 [None, {HORIZON}, 3]" in lines
    assert "temperature_degC float32 [None]" in lines
    assert f"model card ({MODEL_CARD})" in lines
    assert f"fingerprint {fingerprint(shown)}" in lines
    assert f"forecast every hour +1 .. +{HORIZON} h" in lines
    assert "quantile levels [0.1, 0.5, 0.9]" in lines
    assert "network gru x 1 of 4 units" in lines
    assert "test MAE 1.900 degC" in lines and "blessed True (beats persistence)" in lines


def test_a_saved_model_without_a_model_card_still_shows_its_signature(forms, tmp_path, capsys):
    bare = tmp_path / "bare"
    shutil.copytree(forms["saved_model"], bare)
    (bare / MODEL_CARD).unlink()
    status, out, _ = run(capsys, bare)
    assert status == 0
    assert "signature serving_default (tensorflow/serving/predict)" in out
    assert f"model card: none ({MODEL_CARD} is missing or unreadable)" in out


def broken_inputs(root: Path, forms: dict) -> dict[str, tuple[Path, str]]:
    """Name -> (path, what the error says about it)."""
    (root / "text.keras").write_text("not a model\n")
    with zipfile.ZipFile(root / "foreign.keras", "w") as archive:
        archive.writestr("notes.txt", "a zip, but no Keras archive")
    truncated = forms["keras"].read_bytes()
    (root / "truncated.keras").write_bytes(truncated[: len(truncated) // 2])
    (root / "text.h5").write_text("not HDF5\n")
    with h5py.File(root / "data.h5", "w") as handle:
        handle["readings"] = [1.0, 2.0]
    (root / "readings.csv").write_text("a,b\n1,2\n")
    (root / "empty").mkdir()
    shutil.copytree(forms["saved_model"], root / "corrupt")
    (root / "corrupt" / "saved_model.pb").write_bytes(b"\xff" * 64)
    return {
        "missing": (root / "missing.keras", "not found"),
        "text .keras": (root / "text.keras", "not a .keras archive"),
        "foreign zip": (root / "foreign.keras", "not a Keras model this project can load"),
        "truncated .keras": (root / "truncated.keras", "not a .keras archive"),
        "text .h5": (root / "text.h5", "not a Keras model this project can load"),
        "HDF5 without a model": (root / "data.h5", "not a Keras model this project can load"),
        "other file": (root / "readings.csv", "not a Keras model file"),
        "empty directory": (root / "empty", "a directory without saved_model.pb"),
        "corrupt saved_model.pb": (root / "corrupt", "not a SavedModel"),
    }


def test_a_broken_or_foreign_path_is_one_line_naming_the_file(forms, tmp_path, capsys):
    for name, (path, reason) in broken_inputs(tmp_path, forms).items():
        status, out, err = run(capsys, path)
        assert status == 2 and out == "", name
        assert err.count("\n") == 1 and err.startswith(f"inspect: {path}"), (name, err)
        assert reason in err, (name, err)


@needs_graphviz
def test_plot_draws_a_png_or_an_svg_by_the_extension(forms, tmp_path, capsys):
    status, out, err = run(capsys, forms["keras"], "--plot", tmp_path / "model.png")
    assert status == 0, err
    assert out.endswith(f"diagram: {tmp_path / 'model.png'}\n")
    assert min(png_size(tmp_path / "model.png")) > 500  # six boxes at 200 dpi
    assert run(capsys, forms["h5"], "--plot", tmp_path / "model.svg")[0] == 0
    assert svg_nodes(tmp_path / "model.svg") == 6  # two inputs, the four layers
    assert sorted(entry.name for entry in tmp_path.iterdir()) == ["model.png", "model.svg"]  # no temporaries


@needs_graphviz
def test_the_diagram_grows_with_the_models_layers(windows, tmp_path):
    sizes, nodes = {}, {}
    for layers in (1, 3):
        keras.utils.set_random_seed(0)
        model = build_model(windows.normalization, {**TINY_MODEL, "layers": layers})
        architecture.draw(model, tmp_path / f"{layers}.png")
        architecture.draw(model, tmp_path / f"{layers}.svg")
        sizes[layers], nodes[layers] = png_size(tmp_path / f"{layers}.png"), svg_nodes(tmp_path / f"{layers}.svg")
    assert nodes[3] == nodes[1] + 2
    assert sizes[3][1] > sizes[1][1] + 300  # taller by two layer boxes (200 px each at 200 dpi)
    assert (tmp_path / "1.png").stat().st_size < (tmp_path / "3.png").stat().st_size


def test_a_diagram_of_another_format_or_of_a_saved_model_is_refused(forms, tmp_path, capsys):
    status, _, err = run(capsys, forms["keras"], "--plot", tmp_path / "model.jpg")
    assert (
        status == 2
        and err
        == f"inspect: {tmp_path / 'model.jpg'}: a diagram is drawn as .png or .svg, chosen by the file's extension\n"
    )
    status, _, err = run(capsys, forms["version"], "--plot", tmp_path / "model.png")
    assert status == 2 and err.startswith(f"inspect: {forms['version']}: a SavedModel holds graphs, not Keras layers")
    assert list(tmp_path.iterdir()) == []


def test_without_graphviz_plot_says_how_to_install_it_in_one_line(forms, tmp_path, monkeypatch, capsys):
    without_dot(monkeypatch, tmp_path)
    status, out, err = run(capsys, forms["keras"], "--plot", tmp_path / "model.png")
    assert status == 2 and out == ""
    assert err == f"inspect: {tmp_path / 'model.png'}: not drawn: {architecture.INSTALL_GRAPHVIZ}\n"
    assert "apt-get install graphviz" in err
    assert not (tmp_path / "model.png").exists()


@needs_graphviz
def test_the_architecture_directory_is_replaced_by_the_summary_and_the_diagram(model, tmp_path):
    """What the train stage writes into models/architecture/."""
    directory = tmp_path / "architecture"
    directory.mkdir()
    (directory / "stale.txt").write_text("from an earlier run")
    said = architecture.write_architecture(model, directory)
    assert said == f"wrote {directory / 'summary.txt'} and model.png"
    assert sorted(entry.name for entry in directory.iterdir()) == ["model.png", "summary.txt"]
    png_size(directory / "model.png")
    summary = (directory / "summary.txt").read_text()
    trainable = sum(int(np.prod(weight.shape)) for weight in model.trainable_weights)
    calibration = sum(int(np.prod(weight.shape)) for weight in model.non_trainable_weights)
    assert summary.startswith('Model: "wetterfrosch"') and f"Trainable params: {trainable:,}" in summary
    assert f"Non-trainable params: {calibration:,}" in summary  # the band's calibration factors
    assert all(f"({layer_class})" in summary for layer_class in LAYER_CLASSES)


def test_without_graphviz_the_architecture_is_the_summary_and_a_one_line_note(model, tmp_path, monkeypatch):
    without_dot(monkeypatch, tmp_path)
    directory = tmp_path / "architecture"
    said = architecture.write_architecture(model, directory)
    assert said == f"wrote {directory / 'summary.txt'} but not model.png: {architecture.INSTALL_GRAPHVIZ}"
    assert [entry.name for entry in directory.iterdir()] == ["summary.txt"]


def test_the_console_script_and_the_module_run_the_command(forms, tmp_path):
    scripts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, function = scripts["wetterfrosch-inspect"].split(":")
    assert (module, function) == ("pipeline.inspect", "main") and callable(inspect_command.main)
    # In a new process, from the repository root as the README runs it: `pipeline.inspect` does not
    # shadow the standard library's `inspect`, which TensorFlow and Keras import.
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.inspect", str(forms["version"])],
        cwd=REPO_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "signature serving_default" in result.stdout
