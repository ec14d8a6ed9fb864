"""Look at a trained or published model without writing code: `python -m pipeline.inspect PATH [--plot FILE]`.

In:  PATH, one of
     - a Keras model file: `.keras` (models/model.keras) or a legacy `.h5`
       file of a compatible model (this project's layers are registered by
       importing pipeline.model);
     - a SavedModel directory (models/export/), a published version
       (models/serving/jena_temperature/3/) or a model directory of numbered
       versions, which means its newest version;
     and with `--plot FILE` where to draw the architecture (.png or .svg).
Out: on stdout, for a Keras model its summary (layers, output shapes,
     parameter counts); for a SavedModel its signatures (every input and
     output with dtype and shape, None for any size) and its model card's key
     facts (what made it, what it forecasts, how it scored). FILE: the
     architecture with every layer's output shape, for a Keras model (a
     SavedModel holds graphs, not layers). A missing, broken or foreign PATH,
     or a diagram that cannot be drawn, is one line on stderr naming the file,
     and exit status 2. Installed as the command `wetterfrosch-inspect` too.

Not a DVC stage: a command for people, reading what the stages wrote.
"""

import argparse
import sys
import zipfile
from pathlib import Path

import keras
import tensorflow as tf
from google.protobuf.message import DecodeError
from tensorflow.core.protobuf import saved_model_pb2

import pipeline.model  # noqa: F401  registers the custom layers that load_model rebuilds
from pipeline.architecture import GraphvizMissing, draw, summary_text
from pipeline.published import MODEL_CARD, read_model_card
from serving.store import SAVED_MODEL_FILE, local_versions

KERAS_EXTENSIONS = (".keras", ".h5", ".hdf5")


class InspectError(Exception):
    """PATH cannot be inspected; the message names the file and says why."""


def first_line(error: Exception) -> str:
    return " ".join(str(error).split("\n")[0].split()) or type(error).__name__


def saved_model_of(path: Path) -> Path | None:
    """The SavedModel directory PATH stands for (itself, or a model directory's newest version); None for a file."""
    if not path.is_dir():
        return None
    if (path / SAVED_MODEL_FILE).is_file():
        return path
    versions = local_versions(path)
    newest = path / versions[max(versions)] if versions else None
    if newest is not None and (newest / SAVED_MODEL_FILE).is_file():
        return newest
    raise InspectError(
        f"{path}: a directory without {SAVED_MODEL_FILE}: not a SavedModel, a published version "
        f"or a model directory of numbered versions"
    )


def load_keras_model(path: Path) -> keras.Model:
    """A `.keras` or `.h5` model, uncompiled (the loss and optimizer are not needed to look at it)."""
    if path.suffix.lower() not in KERAS_EXTENSIONS:
        raise InspectError(f"{path}: not a Keras model file ({', '.join(KERAS_EXTENSIONS)}) nor a SavedModel directory")
    if path.suffix.lower() == ".keras" and not zipfile.is_zipfile(path):
        raise InspectError(f"{path}: not a .keras archive (not a zip file)")
    try:
        return keras.saving.load_model(path, compile=False)
    except (ValueError, KeyError, TypeError, OSError) as error:
        raise InspectError(f"{path}: not a Keras model this project can load ({first_line(error)})") from None


def read_signatures(saved_model: Path) -> dict[str, dict]:
    """`{signature name: {"method", "inputs", "outputs"}}` from saved_model.pb, each tensor `name: (dtype, shape)`."""
    path = saved_model / SAVED_MODEL_FILE
    try:
        proto = saved_model_pb2.SavedModel.FromString(path.read_bytes())
    except DecodeError as error:
        raise InspectError(f"{path}: not a SavedModel ({first_line(error)})") from None
    serve = [graph for graph in proto.meta_graphs if "serve" in graph.meta_info_def.tags]
    if not serve:
        raise InspectError(f"{path}: no MetaGraph tagged 'serve'")

    def tensors(infos) -> dict[str, tuple[str, list | None]]:
        return {
            name: (
                tf.dtypes.as_dtype(info.dtype).name,
                None
                if info.tensor_shape.unknown_rank
                else [None if dim.size < 0 else dim.size for dim in info.tensor_shape.dim],
            )
            for name, info in sorted(infos.items())
        }

    return {
        name: {
            "method": signature.method_name,
            "inputs": tensors(signature.inputs),
            "outputs": tensors(signature.outputs),
        }
        for name, signature in sorted(serve[0].signature_def.items())
        if not name.startswith("__")
    }


def signature_lines(signatures: dict[str, dict]) -> list[str]:
    lines = []
    for name, signature in signatures.items():
        lines.append(f"signature {name} ({signature['method']})")
        for part in ("inputs", "outputs"):
            lines.append(f"  {part}")
            width = max((len(tensor) for tensor in signature[part]), default=0)
            lines += [
                f"    {tensor:<{width}}  {dtype:<8} {'unknown rank' if shape is None else shape}"
                for tensor, (dtype, shape) in signature[part].items()
            ]
    return lines


def card_lines(card: dict) -> list[str]:
    """The model card's key facts, those it has, one per line."""
    params, metrics, forecast = card.get("params", {}), card.get("metrics", {}), card.get("forecast", {})
    model, window = params.get("model", {}), params.get("window", {})
    facts = [
        ("model name", card.get("model_name")),
        ("fingerprint", card.get("fingerprint")),
        ("created", card.get("created")),
        ("git commit", card.get("git", {}).get("commit")),
        ("data", card.get("data", {}).get("origin")),
        ("history", f"{window['lookback_hours']} h" if "lookback_hours" in window else None),
        ("forecast", f"every hour +1 .. +{forecast['hour_offsets'][-1]} h" if forecast.get("hour_offsets") else None),
        ("quantile levels", forecast.get("quantile_levels")),
        (
            "network",
            f"{model['cell']} x {model['layers']} of {model['units']} units"
            if {"cell", "layers", "units"} <= set(model)
            else None,
        ),
        ("epochs", params.get("epochs")),
        *(
            (label, f"{metrics[key]:.3f} degC" if key in metrics else None)
            for label, key in (("test MAE", "test_mae_degC"), ("persistence MAE", "persistence_mae_degC"))
        ),
        ("band coverage", f"{metrics['band_coverage']:.1%}" if "band_coverage" in metrics else None),
        ("blessed", f"{metrics['blessed']} ({metrics.get('blessing_reason')})" if "blessed" in metrics else None),
    ]
    return [f"  {name:<16} {value}" for name, value in facts if value is not None]


def describe_saved_model(saved_model: Path) -> str:
    lines = [f"{saved_model}: SavedModel", *signature_lines(read_signatures(saved_model))]
    try:
        card = read_model_card(saved_model)
    except ValueError:
        return "\n".join([*lines, f"model card: none ({MODEL_CARD} is missing or unreadable)"])
    return "\n".join([*lines, f"model card ({MODEL_CARD})", *card_lines(card)])


def describe(path: Path, plot: Path | None = None) -> str:
    """What to print about the model at `path`; with `plot`, its diagram drawn there."""
    if not path.exists():
        raise InspectError(f"{path}: not found")
    saved_model = saved_model_of(path)
    if saved_model is not None:
        if plot is not None:
            raise InspectError(
                f"{path}: a SavedModel holds graphs, not Keras layers: draw the .keras model "
                f"(models/model.keras) instead"
            )
        return describe_saved_model(saved_model)
    model = load_keras_model(path)
    text = f"{path}: Keras model\n{summary_text(model)}"
    if plot is not None:
        try:
            draw(model, plot)
        except GraphvizMissing as missing:
            raise InspectError(f"{plot}: not drawn: {missing}") from None
        except ValueError as error:
            raise InspectError(str(error)) from None
        text += f"diagram: {plot}\n"
    return text


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipeline.inspect", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "path",
        type=Path,
        help="a .keras or .h5 model file, a SavedModel directory, a published version or a model directory of versions",
    )
    parser.add_argument(
        "--plot",
        type=Path,
        metavar="FILE",
        help="draw the architecture with output shapes into FILE (.png or .svg; needs Graphviz)",
    )
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        text = describe(args.path, args.plot)
    except InspectError as error:
        print(f"inspect: {error}", file=sys.stderr)
        return 2
    print(text, end="" if text.endswith("\n") else "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
