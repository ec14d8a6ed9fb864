"""The ModelServer with s3:// and gs:// base paths, seen only through the official gRPC stubs.

Versions are uploaded with plain fsspec, saved_model.pb last, as a publisher does;
the stores are moto's S3 and gcp-storage-emulator on loopback.
"""

import shutil
import subprocess
import sys
import time

import pytest
import tensorflow as tf
from tensorflow_serving.apis import get_model_status_pb2, predict_pb2

from tests.helpers.model_server import ServerProcess, SteadyClient, served_version, statuses
from tests.helpers.object_storage import delete_version, forget_clients, upload_version
from tests.helpers.repository import REPO_ROOT
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.slow
AVAILABLE = get_model_status_pb2.ModelVersionStatus.AVAILABLE
END = get_model_status_pb2.ModelVersionStatus.END
POLL = "--file_system_poll_wait_seconds=1"


def test_remote_base_path_serves_complete_versions_only(object_store, model_factory, tmp_path):
    base = object_store.create_bucket("models") + "/linear"
    upload_version(base, 1, model_factory("linear", 1.0))
    upload_version(base, 2, model_factory("linear", 2.0), without_saved_model=True)  # killed before its last file
    server = ServerProcess(tmp_path, "--model_name=linear", f"--model_base_path={base}", POLL, rest=False)
    client = SteadyClient(server.predict_stub)
    try:
        assert served_version(server.predict_stub) == (1, 1.0)
        time.sleep(3)  # three polls see version 2 without saved_model.pb
        assert set(statuses(server)) == {1}, "a version without saved_model.pb is never loaded, nor tried"

        upload_version(base, 2, model_factory("linear", 2.0))  # the upload completes: saved_model.pb arrives
        wait_for(lambda: served_version(server.predict_stub)[0] == 2, message="version 2 served")
        wait_for(lambda: statuses(server)[1][0] == END, message="version 1 unloaded")

        delete_version(base, 2)  # rollback at the source
        wait_for(lambda: served_version(server.predict_stub) == (1, 1.0), message="rollback to version 1")
        wait_for(lambda: statuses(server)[2][0] == END, message="version 2 unloaded")
    finally:
        client.stop()
        server.stop()
    assert client.failures == []
    assert {1, 2} <= client.versions
    assert "Mirrored version 1 of" in server.log_text()


def test_model_config_file_mixes_remote_and_local_base_paths(s3_server, model_factory, tmp_path):
    bucket = s3_server.create_bucket("models")
    upload_version(f"{bucket}/linear", 7, model_factory("linear", 7.0))
    local = tmp_path / "local"
    shutil.copytree(model_factory("linear", 3.0), local / "3")
    config = tmp_path / "models.config"
    config.write_text(f"""model_config_list {{
  config {{ name: "linear" base_path: "{bucket}/linear" model_platform: "tensorflow" }}
  config {{ name: "local" base_path: "{local}" model_platform: "tensorflow" }}
}}""")
    server = ServerProcess(tmp_path, f"--model_config_file={config}", POLL, rest=False)
    try:
        assert served_version(server.predict_stub) == (7, 7.0)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "local"
        request.inputs["x"].CopyFrom(tf.make_tensor_proto([[1.0]], dtype=tf.float32))
        assert server.predict_stub.Predict(request, timeout=10).model_spec.version.value == 3
    finally:
        server.stop()


@pytest.mark.parametrize(
    "base_path, message",
    [
        ("ftp://models/linear", "ftp://models/linear: unknown scheme 'ftp'; use s3://, gs:// or a local path"),
        ("s3://no-such-bucket/linear", "s3://no-such-bucket/linear: bucket 'no-such-bucket' does not exist"),
        ("s3://models/linear/1/saved_model.pb", "is a file, not a directory of numbered versions"),
    ],
)
def test_bad_remote_base_paths_stop_the_server_with_a_clear_error(s3_server, model_factory, base_path, message):
    s3_server.create_bucket("models")
    upload_version("s3://models/linear", 1, model_factory("linear", 1.0))
    done = subprocess.run(
        [sys.executable, "-m", "serving.model_server", "--port=0", f"--model_base_path={base_path}"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert "Failed to start server. Error: " in done.stderr and message in done.stderr, done.stderr


def test_store_outage_and_a_killed_upload(s3_server, model_factory, tmp_path):
    """The store goes away for several polls and comes back; an upload is killed midway: serving never stops."""
    base = s3_server.create_bucket("models") + "/linear"
    upload_version(base, 1, model_factory("linear", 1.0))
    server = ServerProcess(tmp_path, "--model_name=linear", f"--model_base_path={base}", POLL, rest=False)
    client = SteadyClient(server.predict_stub)
    try:
        assert served_version(server.predict_stub) == (1, 1.0)
        s3_server.stop()
        time.sleep(5)  # about five failing polls
        served_during_outage = client.count
        time.sleep(1)
        assert client.count > served_during_outage and client.failures == []
        s3_server.start()
        forget_clients()

        # An upload killed midway: a publisher process dies after some of version 2's files.
        uploader = subprocess.Popen(
            [sys.executable, "-c", KILLED_UPLOADER, base, str(model_factory("linear", 2.0))],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert uploader.stdout.readline().startswith("uploaded"), "the uploader started"
        uploader.kill()
        uploader.wait()
        time.sleep(3)  # three polls see the partial version 2
        assert set(statuses(server)) == {1}

        upload_version(base, 3, model_factory("linear", 3.0))  # new versions still arrive after the outage
        wait_for(lambda: served_version(server.predict_stub)[0] == 3, message="version 3 served after the outage")
    finally:
        client.stop()
        server.stop()
    log = server.log_text()
    assert client.failures == []
    assert 2 not in client.versions
    assert log.count(f"Could not find base path {base}") == 1, "one line per failure streak, not per poll"
    assert log.count(f"Base path {base} of servable linear can be read again") == 1


# Uploads a SavedModel's files one by one, saved_model.pb last, slowly: killed before it finishes.
KILLED_UPLOADER = """
import sys, time
from tests.helpers.object_storage import version_files
import fsspec
base, model = sys.argv[1], sys.argv[2]
store, _ = fsspec.core.url_to_fs(base)
for path in version_files(model):
    store.put_file(str(path), base + "/2/" + path.relative_to(model).as_posix())
    print("uploaded", path.name, flush=True)
    time.sleep(60)
"""
