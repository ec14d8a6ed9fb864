"""A Keras model's architecture for people: its summary as text and its diagram as an image.

In:  a built Keras model (trained, or loaded with `keras.saving.load_model`).
Out: `summary_text`, the table `model.summary()` prints (layers, output
     shapes, parameter counts); `draw`, the diagram `keras.utils.plot_model`
     draws with every layer's output shape, PNG or SVG by the file's
     extension; `write_architecture`, both into one directory (the train
     stage's models/architecture/: summary.txt and model.png).

Drawing needs Graphviz's `dot` program, which is not a Python package: where
it is missing, `draw` raises `GraphvizMissing`, whose message says how to
install it, and `write_architecture` writes the summary alone. The train
stage declares the directory, not the image, as its output, so that DVC
accepts a run without the diagram.
"""

import os
import shutil
from pathlib import Path

import keras

from pipeline.atomic import atomic_directory, atomic_path
from pipeline.config import ARCHITECTURE_DIR

SUMMARY_NAME = "summary.txt"
DIAGRAM_NAME = "model.png"
DIAGRAM_FORMATS = (".png", ".svg")
SUMMARY_WIDTH = 120  # wide enough for the layer names, which a narrower table cuts short
GRAPHVIZ_PROGRAM = "dot"
INSTALL_GRAPHVIZ = (
    "Graphviz's `dot` program is not installed: install Graphviz (Debian/Ubuntu: `apt-get install "
    "graphviz`, macOS: `brew install graphviz`, others: https://graphviz.org/download/)"
)


class GraphvizMissing(RuntimeError):
    """The diagram cannot be drawn: Graphviz's `dot` is not on PATH."""


def summary_text(model: keras.Model) -> str:
    """The summary `model.summary()` prints, as text ending in a newline, SUMMARY_WIDTH characters wide.

    Keras fits the table to the terminal (COLUMNS, else the tty's width, else
    80 columns) and cuts off what does not fit; COLUMNS is fixed while it
    renders, so the text is the same in a terminal, a pipe or under DVC.
    """
    parts = []
    columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(SUMMARY_WIDTH)
    try:
        model.summary(line_length=SUMMARY_WIDTH, print_fn=lambda text, line_break=True: parts.append(text))
    finally:
        if columns is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = columns
    return "\n".join(parts).rstrip("\n") + "\n"


def draw(model: keras.Model, destination: Path) -> None:
    """Draw the architecture with every layer's output shape into `destination` (.png or .svg), atomically.

    The drawing is the article's: `plot_model(..., show_shapes=True, show_layer_names=False)`.
    """
    destination = Path(destination)
    extension = destination.suffix.lower()
    if extension not in DIAGRAM_FORMATS:
        raise ValueError(
            f"{destination}: a diagram is drawn as {' or '.join(DIAGRAM_FORMATS)}, chosen by the file's extension"
        )
    if shutil.which(GRAPHVIZ_PROGRAM) is None:
        raise GraphvizMissing(INSTALL_GRAPHVIZ)
    with atomic_path(destination, suffix=extension) as temporary:
        keras.utils.plot_model(model, to_file=str(temporary), show_shapes=True, show_layer_names=False)


def write_architecture(model: keras.Model, directory: Path = ARCHITECTURE_DIR) -> str:
    """Replace `directory` with the model's summary.txt and, where Graphviz is installed, its model.png.

    The directory is written whole, so a diagram of an earlier model never
    stays beside a new summary. Returns one line saying what was written.
    """
    directory = Path(directory)
    with atomic_directory(directory) as temporary:
        (temporary / SUMMARY_NAME).write_text(summary_text(model), encoding="utf-8")
        try:
            draw(model, temporary / DIAGRAM_NAME)
            diagram = f"and {DIAGRAM_NAME}"
        except GraphvizMissing as missing:
            diagram = f"but not {DIAGRAM_NAME}: {missing}"
    return f"wrote {directory / SUMMARY_NAME} {diagram}"
