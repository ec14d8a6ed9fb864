"""Where the pipeline's versions are published, and what a version says about itself.

In:  the `serving` params (`base_path`, `model_name`, `config_file`: the
     server's text-format ModelServerConfig); a SavedModel directory (an
     export, or a published version).
Out: the model directory the version store publishes into, the versions the
     server's labels point at (retention keeps them), and a version's model
     card (`assets.extra/model_card.json`) as a dict.
"""

import json
from pathlib import Path

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from pipeline import schema

MODEL_CARD = Path(schema.MODEL_CARD_FILE)


def model_directory(serving: dict) -> Path | str:
    """The directory TensorFlow Serving watches: `<serving.base_path>/<serving.model_name>`.

    base_path may be absolute, relative, or an object-storage URL (`s3://bucket/prefix`,
    `gs://bucket/prefix`), in which case the answer is a URL string (see serving.store).
    """
    base_path = str(serving["base_path"])
    if "://" in base_path:
        return f"{base_path.rstrip('/')}/{serving['model_name']}"
    return Path(base_path) / serving["model_name"]


def read_model_card(saved_model: Path) -> dict:
    path = Path(saved_model) / MODEL_CARD
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: no readable model card ({error})") from None


def labelled_versions(config_file: Path, model_name: str) -> set[int]:
    """The versions that version labels point at for `model_name` in a text-format ModelServerConfig."""
    config = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(Path(config_file).read_text(encoding="utf-8"), config)
    except text_format.ParseError as error:
        raise ValueError(f"{config_file}: not a valid ModelServerConfig ({error})") from None
    return {
        version
        for model in config.model_config_list.config
        if model.name == model_name
        for version in model.version_labels.values()
    }
