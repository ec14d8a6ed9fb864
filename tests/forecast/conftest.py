"""Fixtures for the forecast verification tests: published model cards and verify's params."""

import json
from pathlib import Path

import pytest
import yaml

from pipeline.published import MODEL_CARD

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def publish_card():
    """publish(base_path, version, card): a complete published version (saved_model.pb present) carrying `card`
    as its model card (no card if None)."""

    def publish(base_path: Path, version: int, card: dict | None, model_name: str = "jena_temperature") -> Path:
        directory = base_path / model_name / str(version)
        (directory / "assets.extra").mkdir(parents=True)
        (directory / "saved_model.pb").write_bytes(b"graph")
        if card is not None:
            (directory / MODEL_CARD).write_text(json.dumps(card), encoding="utf-8")
        return directory

    return publish


@pytest.fixture
def params() -> dict:
    """params.yaml as shipped: the tests check the defaults users get."""
    return yaml.safe_load((REPO_ROOT / "params.yaml").read_text(encoding="utf-8"))
