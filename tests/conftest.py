"""Fixtures every test folder may use: hand-made readings, a throwaway DVC copy, S3 and GCS on loopback.

The helpers behind them live in `tests/helpers/`; test modules import those
(`from tests.helpers.repository import set_params`), never a conftest.
"""

import os

import pytest

from tests.helpers.file_order import FileOrder
from tests.helpers.readings import make_readings
from tests.helpers.repository import PipelineRepo, copy_repository

# Keep TensorFlow quiet and on the CPU in every test and every stage it starts.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")


def pytest_configure(config):
    config.pluginmanager.register(FileOrder(config), "wetterfrosch-file-order")


@pytest.fixture
def readings():
    return make_readings()


@pytest.fixture
def pipeline_repo(tmp_path) -> PipelineRepo:
    """This repository's tracked and new files, committed in a fresh git repo, on small synthetic data."""
    return copy_repository(tmp_path / "repo")


@pytest.fixture(scope="session")
def s3_session_server():
    """moto's S3 on 127.0.0.1 for the whole session; tests use `s3_server`."""
    from tests.helpers.object_storage import S3Server

    server = S3Server().start()
    yield server
    server.close()


@pytest.fixture(scope="session")
def gcs_session_server():
    """gcp-storage-emulator on 127.0.0.1 for the whole session; tests use `gcs_server`."""
    from tests.helpers.object_storage import GcsServer

    server = GcsServer().start()
    yield server
    server.close()


def _store_for_one_test(server, monkeypatch):
    from tests.helpers.object_storage import after_test, apply_environment

    apply_environment(monkeypatch, server)
    yield server
    after_test(server)


@pytest.fixture
def s3_server(s3_session_server, monkeypatch):
    """moto's S3, empty, this process's clients pointed at it; `.create_bucket(name)` -> `s3://name`."""
    yield from _store_for_one_test(s3_session_server, monkeypatch)


@pytest.fixture
def gcs_server(gcs_session_server, monkeypatch):
    """gcp-storage-emulator, empty, this process's clients pointed at it; `.create_bucket(name)` -> `gs://name`."""
    yield from _store_for_one_test(gcs_session_server, monkeypatch)


@pytest.fixture(params=["s3", "gs"])
def object_store(request):
    """Each store in turn: the test runs once on S3 and once on GCS."""
    return request.getfixturevalue({"s3": "s3_server", "gs": "gcs_server"}[request.param])
