"""Fixtures for the forecast tests: a ModelServer serving the small model of
`tests/helpers/served_forecaster.py` for the session; published model cards and params.yaml
for the verification tests."""

import json
from pathlib import Path

import grpc
import pytest
import yaml

from pipeline.published import MODEL_CARD
from pipeline.serving_check import served_by, wait_until_available
from tests.helpers.repository import REPO_ROOT
from tests.helpers.served_forecaster import MODEL_NAME, Served, write_hourly_model


@pytest.fixture(scope="session")
def served_model(tmp_path_factory):
    """Our ModelServer serving the small model as version 1 of MODEL_NAME, on 127.0.0.1, for the whole session."""
    base_path = tmp_path_factory.mktemp("models") / MODEL_NAME
    version_dir = write_hourly_model(base_path / "1")
    with served_by("embedded", MODEL_NAME, base_path) as (grpc_target, rest_target, server):
        with grpc.insecure_channel(grpc_target) as channel:
            wait_until_available(channel, MODEL_NAME, 1, 120, server)
        yield Served(grpc_target, rest_target, version_dir)


@pytest.fixture
def publish_card():
    """publish(base_path, version, card): a complete published version (saved_model.pb present) carrying `card`
    as its model card (no card if None)."""

    def publish(base_path: Path, version: int, card: dict | None, model_name: str = MODEL_NAME) -> Path:
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
