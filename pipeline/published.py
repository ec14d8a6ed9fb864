"""Where the pipeline's versions are published, and what a version says about itself.

In:  the `serving` params (`base_path`, `model_name`); a SavedModel directory
     (an export, or a published version).
Out: the model directory the version store publishes into, and a version's
     model card (`assets.extra/model_card.json`) as a dict.
"""

import json
from pathlib import Path

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
