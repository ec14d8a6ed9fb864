"""The manager performing the policy's actions, in-process, with stand-in servables instead of SavedModels."""

import shutil

import pytest
from tensorflow_serving.apis import model_pb2
from tensorflow_serving.config import model_server_config_pb2

from serving.errors import ServingError, internal
from serving.manager import ManagerOptions, ModelManager


class StandInServable:
    """What the manager needs of a servable; records whether it was closed."""

    def __init__(self, version: int):
        self.version, self.closed, self.in_flight = version, False, 0

    def begin_request(self):
        self.in_flight += 1

    def end_request(self):
        self.in_flight -= 1

    def close(self):
        self.closed = True


@pytest.fixture
def manager(tmp_path, monkeypatch):
    """A manager of model "m" under tmp_path/m whose loads run ``manager.on_load(version, path)`` first."""
    manager = ModelManager(ManagerOptions(file_system_poll_wait_seconds=0, max_num_load_retries=0))
    manager.on_load, manager.loaded = (lambda version, path: None), {}

    def load(name, version, path):
        manager.on_load(version, path)
        manager.loaded[version] = StandInServable(version)
        return manager.loaded[version]

    monkeypatch.setattr(manager, "_load_servable", load)
    yield manager
    manager.stop()


def install(base, version: int):
    (base / str(version)).mkdir(parents=True)
    (base / str(version) / "saved_model.pb").write_bytes(b"stand-in")


def config_for(base) -> model_server_config_pb2.ModelServerConfig:
    config = model_server_config_pb2.ModelServerConfig()
    config.model_config_list.config.add(name="m", base_path=str(base), model_platform="tensorflow")
    return config


def served_version(manager) -> int:
    with manager.serving(model_pb2.ModelSpec(name="m")) as servable:
        return servable.version


def states(manager) -> dict:
    return {
        status.version: (status.state, status.error.message if status.error else "")
        for status in manager.model_status(model_pb2.ModelSpec(name="m"))
    }


def test_a_version_deleted_while_it_loads_never_serves(manager, tmp_path):
    base = tmp_path / "m"
    install(base, 1)
    manager.apply_config(config_for(base))
    assert served_version(manager) == 1
    install(base, 2)
    manager.on_load = lambda version, path: shutil.rmtree(path)  # deleted once its files were read
    manager.apply_config(config_for(base))  # polls once more and waits for the load
    state, message = states(manager)[2]
    assert state == "END" and "Version 2 of model m was deleted while it loaded" in message
    assert manager.loaded[2].closed
    assert served_version(manager) == 1 and states(manager)[1] == ("AVAILABLE", "")


def test_startup_reports_a_version_deleted_while_it_loaded(manager, tmp_path):
    base = tmp_path / "m"
    install(base, 1)
    manager.on_load = lambda version, path: shutil.rmtree(path)
    with pytest.raises(ServingError, match=r"1 servable\(s\) did not become available.*deleted while it loaded"):
        manager.apply_config(config_for(base))


def test_newer_version_takes_over_and_rollback_reloads_the_previous(manager, tmp_path):
    base = tmp_path / "m"
    install(base, 1)
    manager.apply_config(config_for(base))
    install(base, 2)
    manager.apply_config(config_for(base))
    assert served_version(manager) == 2 and states(manager)[1][0] in ("UNLOADING", "END")
    served_while_loading = []
    manager.on_load = lambda version, path: served_while_loading.append(served_version(manager))
    shutil.rmtree(base / "2")
    manager.apply_config(config_for(base))  # version 1 loads again; only then version 2 goes
    assert served_while_loading == [2]
    assert served_version(manager) == 1 and not manager.loaded[1].closed
    assert states(manager)[2][0] in ("UNLOADING", "END")


def test_a_failed_version_is_not_retried_while_aspired(manager, tmp_path):
    base = tmp_path / "m"
    install(base, 1)
    manager.apply_config(config_for(base))
    install(base, 2)
    attempts = []

    def fail(version, path):
        attempts.append(version)
        raise internal("broken")

    manager.on_load = fail
    manager.apply_config(config_for(base))
    manager.apply_config(config_for(base))  # polled again: still aspired, so not tried again
    assert attempts == [2]
    assert states(manager)[2] == ("END", "broken") and served_version(manager) == 1
