"""The loopback stores the object-storage tests stand on: reachable through fsspec, and an outage keeps the objects."""

import socket

import fsspec
import pytest

from tests.helpers.object_storage import forget_clients


def test_store_round_trip_and_restart(object_store):
    bucket = object_store.create_bucket("models")
    fs, _ = fsspec.core.url_to_fs(bucket)
    fs.pipe(f"{bucket}/jena/1/saved_model.pb", b"graph")
    assert fs.ls(f"{bucket}/jena", detail=False)[0].endswith("jena/1")

    object_store.stop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", object_store.port), timeout=5).close()

    object_store.start()
    forget_clients()
    fs, _ = fsspec.core.url_to_fs(bucket)
    assert fs.cat(f"{bucket}/jena/1/saved_model.pb") == b"graph"
