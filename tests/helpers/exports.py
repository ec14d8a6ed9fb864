"""Stand-ins for exports, their metrics and server configs, for the tests that publish without TensorFlow."""

import json
import os
from pathlib import Path

from pipeline.published import MODEL_CARD

# What the evaluate stage writes for a candidate it blessed, as export and the model card read it
BLESSED_METRICS = {
    "test_mae_degC": 1.9,
    "persistence_mae_degC": 2.5,
    "skill_vs_persistence": 0.24,
    "skill_interval": [0.2, 0.28],
    "blessed": True,
    "blessing_reason": "beats persistence",
}


def fake_export(
    path: Path,
    weights: str,
    test_mae: float = 1.5,
    variables_bytes: int = 1000,
    assets: int = 0,
    test_data: str = "test data",
) -> Path:
    """A directory laid out like our exports; `weights` decides its content and so its fingerprint.

    `assets` small files in assets/ make a copy take long enough for a watcher to catch it half done.
    """
    (path / "variables").mkdir(parents=True)
    (path / "assets").mkdir()
    (path / "assets.extra").mkdir()
    for number in range(assets):
        (path / f"assets/vocabulary-{number}.txt").write_text(weights)
    (path / "saved_model.pb").write_text(f"graph for {weights}")
    (path / "fingerprint.pb").write_bytes(os.urandom(16))  # like TensorFlow's, which holds a random id
    (path / "variables/variables.index").write_text(weights)
    (path / "variables/variables.data-00000-of-00001").write_bytes(weights.encode() * (variables_bytes // len(weights)))
    (path / "assets.extra/tf_serving_warmup_requests").write_bytes(b"requests")
    (path / MODEL_CARD).write_text(
        json.dumps({"metrics": {"test_mae_degC": test_mae, "test_data_fingerprint": test_data}})
    )
    return path


def labelled_config(path: Path, labels: dict[str, int], model_name="jena_temperature") -> Path:
    label_lines = "\n".join(f'    version_labels {{ key: "{key}" value: {value} }}' for key, value in labels.items())
    path.write_text(
        f'model_config_list {{\n  config {{\n    name: "{model_name}"\n    base_path: "/models/x"\n'
        f'    model_platform: "tensorflow"\n{label_lines}\n  }}\n}}\n'
    )
    return path
