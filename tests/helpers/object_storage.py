"""S3 and GCS on loopback: moto's server mode and gcp-storage-emulator, run by the tests.

Each store is a real HTTP server of that protocol on 127.0.0.1, inside the test
process. `environment` holds what any client needs to reach it (ours, DVC's, a
subprocess): the standard variables, as in production, never params. A store can
be stopped and started again on the same port with its objects kept, which is how
the fault tests make an outage. One server of each kind serves a whole test
session (conftest.py); `reset` after each test starts it again if the test
stopped it and forgets every bucket, so that no test sees another's objects.
"""

import logging
import os
import tempfile

from gcp_storage_emulator.server import create_server
from moto.server import ThreadedMotoServer

from pipeline.serving_check import free_port

LOOPBACK = "127.0.0.1"


# What each kind of client reads from the environment when it is made.
CLIENT_VARIABLES = {"s3": ("AWS_",), "gs": ("STORAGE_EMULATOR_HOST", "GOOGLE_")}


def client_environment(scheme: str) -> dict[str, str]:
    return {name: value for name, value in os.environ.items() if name.startswith(CLIENT_VARIABLES[scheme])}


def client_classes(scheme: str | None) -> list:
    """The fsspec client class of `scheme`, or of both kinds."""
    import gcsfs
    import s3fs

    classes = {"s3": s3fs.S3FileSystem, "gs": gcsfs.GCSFileSystem}
    return list(classes.values()) if scheme is None else [classes[scheme]]


def forget_clients(scheme: str | None = None) -> None:
    """fsspec caches file systems per arguments: after a restart, or in another environment, new clients."""
    for client_class in client_classes(scheme):
        client_class.clear_instance_cache()


def forget_listings(scheme: str) -> None:
    """The clients stay (making an S3 client costs a second of CPU), what they cached of the objects goes."""
    for client_class in client_classes(scheme):
        for file_system in client_class._cache.values():
            file_system.invalidate_cache()


class LoopbackStore:
    """A store's server on a free loopback port: started, stopped (an outage), reset to running and empty."""

    def __init__(self):
        self.port = free_port()
        self._server = None

    @property
    def endpoint_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def reset(self) -> bool:
        """Running again (a fault test may have stopped it), with no bucket; whether it had to start again."""
        stopped = self._server is None
        if stopped:
            self.start()
        self._empty()
        return stopped


class S3Server(LoopbackStore):
    """moto's S3 on loopback. Its objects live in moto's process-wide state, so they survive a restart."""

    scheme = "s3"

    @property
    def environment(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def start(self) -> "S3Server":
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # not a line per request in a failure's report
        self._server = ThreadedMotoServer(ip_address=LOOPBACK, port=self.port, verbose=False)
        self._server.start()
        return self

    def _empty(self) -> None:
        """moto's state is process-wide and would leak into the next test."""
        import requests

        requests.post(f"{self.endpoint_url}/moto-api/reset", timeout=10).raise_for_status()

    def close(self) -> None:
        """Stopped, with no bucket left in this process's moto state."""
        self.reset()
        self.stop()

    def create_bucket(self, name: str) -> str:
        """Make a bucket; returns its URL prefix, e.g. `s3://name`."""
        import boto3

        boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        ).create_bucket(Bucket=name)
        return f"s3://{name}"


class GcsServer(LoopbackStore):
    """gcp-storage-emulator on loopback, keeping its objects in a directory so they survive a restart."""

    scheme = "gs"

    def __init__(self):
        super().__init__()
        self._data = tempfile.TemporaryDirectory(prefix="gcs-emulator-")

    @property
    def environment(self) -> dict[str, str]:
        return {"STORAGE_EMULATOR_HOST": self.endpoint_url, "GOOGLE_CLOUD_PROJECT": "wetterfrosch-test"}

    def start(self) -> "GcsServer":
        self._server = create_server(LOOPBACK, self.port, in_memory=False, data_dir=self._data.name)
        self._server.start()
        return self

    def _empty(self) -> None:
        self._server.wipe()

    def close(self) -> None:
        self.stop()
        self._data.cleanup()

    def create_bucket(self, name: str) -> str:
        """Make a bucket; returns its URL prefix, e.g. `gs://name`."""
        import requests

        answer = requests.post(
            f"{self.endpoint_url}/storage/v1/b",
            params={"project": "wetterfrosch-test"},
            json={"name": name},
            timeout=10,
        )
        answer.raise_for_status()
        return f"gs://{name}"


def apply_environment(monkeypatch, server) -> None:
    """Point this process's clients at `server`, as the standard variables do in production.

    Clients of the server's kind made in this environment before (by an earlier test) are kept.
    """
    for name, value in server.environment.items():
        monkeypatch.setenv(name, value)
    if clients_outdated(server.scheme):
        forget_clients(server.scheme)
        _clients_made_in[server.scheme] = client_environment(server.scheme)


def after_test(server) -> None:
    """Empty `server` for the next test; keep this process's clients of its kind unless the test restarted
    the server or changed the environment they were made in."""
    restarted = server.reset()
    if restarted or clients_outdated(server.scheme):
        forget_clients(server.scheme)
        _clients_made_in.pop(server.scheme, None)
    else:
        forget_listings(server.scheme)


def clients_outdated(scheme: str) -> bool:
    """Whether this process's cached clients of `scheme` were made in another environment than the current."""
    return client_environment(scheme) != _clients_made_in.get(scheme)


_clients_made_in: dict[str, dict[str, str]] = {}  # scheme -> the environment its cached clients were made in


def os_environment_with(server) -> dict[str, str]:
    """The current environment plus `server`'s, for subprocesses."""
    return {**os.environ, **server.environment}


def version_files(saved_model_dir) -> list:
    """A SavedModel's files in the order publishers upload them: saved_model.pb last."""
    from pathlib import Path

    files = [path for path in sorted(Path(saved_model_dir).rglob("*")) if path.is_file()]
    return sorted(files, key=lambda path: path.name == "saved_model.pb")


def upload_version(base_url: str, version, saved_model_dir, without_saved_model: bool = False) -> None:
    """Uploads a SavedModel under `base_url/<version>/` with plain fsspec, saved_model.pb last.

    Stands in for a publisher (TFX's Pusher, serving.store): `without_saved_model` stops
    before the last file, as an upload killed at the end would.
    """
    import fsspec

    store, _ = fsspec.core.url_to_fs(base_url)
    for path in version_files(saved_model_dir):
        if without_saved_model and path.name == "saved_model.pb":
            return
        relative = path.relative_to(saved_model_dir).as_posix()
        store.put_file(str(path), f"{base_url}/{version}/{relative}")


def delete_version(base_url: str, version) -> None:
    import fsspec

    store, _ = fsspec.core.url_to_fs(base_url)
    store.rm(f"{base_url}/{version}", recursive=True)
