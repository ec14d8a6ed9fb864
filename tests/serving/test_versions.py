"""Version lifecycle on one server: new version, half-written versions, rollback, SIGTERM.

A background client sends Predict requests through every step; none may fail.
"""

import shutil

import pytest
from tensorflow_serving.apis import get_model_status_pb2

from tests.helpers.model_server import (
    ServerProcess,
    SteadyClient,
    install_version,
    served_version,
    statuses,
    with_warmup_requests,
)
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.slow
AVAILABLE = get_model_status_pb2.ModelVersionStatus.AVAILABLE
END = get_model_status_pb2.ModelVersionStatus.END


def test_version_lifecycle_without_failed_requests(model_factory, tmp_path):
    base = tmp_path / "linear"
    base.mkdir()
    install_version(base, 1, model_factory("linear", 1.0))
    (base / "not-a-version").mkdir()
    server = ServerProcess(
        tmp_path,
        "--model_name=linear",
        f"--model_base_path={base}",
        "--file_system_poll_wait_seconds=1",
        "--max_num_load_retries=1",
        "--load_retry_interval_micros=200000",
        rest=False,
    )
    client = SteadyClient(server.predict_stub)
    try:
        assert served_version(server.predict_stub) == (1, 1.0)

        # A new version appears, is warmed up, takes over; the old one is unloaded after it.
        install_version(base, 2, with_warmup_requests(model_factory("linear", 2.0), tmp_path / "v2", 3))
        wait_for(lambda: served_version(server.predict_stub)[0] == 2, message="version 2 served")
        wait_for(lambda: statuses(server).get(1, (None,))[0] == END, message="version 1 unloaded")
        assert statuses(server)[2][0] == AVAILABLE
        assert "Number of warmup records read: 3." in server.log_text()

        # Half-written versions (no saved_model.pb / no variables) are never served.
        half = base / "3"
        shutil.copytree(model_factory("linear", 3.0) / "variables", half / "variables")
        wait_for(lambda: statuses(server).get(3, (None,))[0] == END, message="version 3 given up")
        state, code, message = statuses(server)[3]
        assert code != 0 and "SavedModel file does not exist" in message
        no_variables = base / "4"
        no_variables.mkdir()
        shutil.copy(model_factory("linear", 4.0) / "saved_model.pb", no_variables / "saved_model.pb")
        wait_for(lambda: statuses(server).get(4, (None,))[0] == END, message="version 4 given up")
        assert statuses(server)[4][1] != 0
        assert served_version(server.predict_stub) == (2, 2.0)
        assert statuses(server)[2][0] == AVAILABLE
        shutil.rmtree(half)
        shutil.rmtree(no_variables)

        # Rollback: deleting the newest directory brings the previous version back.
        shutil.rmtree(base / "2")
        wait_for(lambda: served_version(server.predict_stub)[0] == 1, message="rollback to version 1")
        wait_for(lambda: statuses(server)[2][0] == END, message="version 2 unloaded")
    finally:
        client.stop()
        return_code = server.stop()
    assert client.failures == []
    assert client.count > 20 and {1, 2} <= client.versions
    assert 3 not in client.versions and 4 not in client.versions
    assert return_code == 0
    assert "ModelServer stopped." in server.log_text()
