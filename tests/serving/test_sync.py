"""python -m serving.sync: a remote base path mirrored into the local directory TF Serving watches.

Runs the real command against moto's S3 / gcp-storage-emulator on loopback and
looks only at DEST, its exit code and its log, as a Kubernetes sidecar would be seen.
"""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import fsspec
import pytest

from tests.helpers.object_storage import delete_version, forget_clients, os_environment_with, upload_version
from tests.helpers.repository import REPO_ROOT
from tests.helpers.waiting import wait_for


def fake_saved_model(directory: Path, files: int = 2, tag: str = "v") -> Path:
    """A directory shaped like a SavedModel; sync copies bytes and never loads them."""
    (directory / "variables").mkdir(parents=True)
    for index in range(files):
        (directory / "variables" / f"part-{index:04d}").write_text(f"{tag}-{index}")
    (directory / "saved_model.pb").write_text(f"graph {tag}")
    return directory


def tree(directory: Path) -> dict[str, str]:
    return {
        path.relative_to(directory).as_posix(): path.read_text()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


def stable_tree(directory: Path) -> dict[str, str] | None:
    """The directory's files, or None if it was renamed away while being read."""
    try:
        before = directory.stat().st_ino
        found = tree(directory)
        return found if directory.stat().st_ino == before else None
    except FileNotFoundError:
        return None


def run_sync(server, *arguments, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "serving.sync", *map(str, arguments)],
        cwd=REPO_ROOT,
        env=os_environment_with(server),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_once_mirrors_complete_versions_and_ignores_the_rest(object_store, tmp_path):
    base = object_store.create_bucket("models") + "/jena"
    model = fake_saved_model(tmp_path / "model")
    upload_version(base, 1, model)
    upload_version(base, "0002", model)
    upload_version(base, 3, model, without_saved_model=True)  # an upload killed before its last file
    upload_version(base, "tmp", model)  # junk names are not versions
    upload_version(base, ".publications", model)
    dest = tmp_path / "dest"

    done = run_sync(object_store, base, dest, "--once")

    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(dest)) == ["0002", "1"]
    assert tree(dest / "1") == tree(model) == tree(dest / "0002")
    assert "Mirrored version 1 of" in done.stderr


def test_once_follows_deletions_and_new_versions(s3_server, tmp_path):
    base = s3_server.create_bucket("models") + "/jena"
    first, second = fake_saved_model(tmp_path / "first", tag="one"), fake_saved_model(tmp_path / "second", tag="two")
    upload_version(base, 1, first)
    upload_version(base, 2, second)
    dest = tmp_path / "dest"
    assert run_sync(s3_server, base, dest, "--once").returncode == 0
    assert sorted(os.listdir(dest)) == ["1", "2"]

    delete_version(base, 2)  # rollback at the source
    upload_version(base, 3, second)
    done = run_sync(s3_server, base, dest, "--once")

    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(dest)) == ["1", "3"]
    assert tree(dest / "3") == tree(second)
    assert "Removed version 2" in done.stderr


def test_exit_codes_name_the_problem(s3_server, tmp_path):
    bucket = s3_server.create_bucket("models")
    upload_version(f"{bucket}/jena", 1, fake_saved_model(tmp_path / "model"))
    dest = tmp_path / "dest"
    (tmp_path / "a-file").write_text("not a directory")
    bad = {
        ("ftp://models/jena", dest): "ftp://models/jena: unknown scheme 'ftp'",
        (str(tmp_path / "model"), dest): "is not a URL",
        ("s3://no-such-bucket/jena", dest): "s3://no-such-bucket/jena: bucket 'no-such-bucket' does not exist",
        (f"{bucket}/jena/1/saved_model.pb", dest): "is a file, not a directory of numbered versions",
        (f"{bucket}/jena", tmp_path / "a-file"): "is not a directory",
    }
    for (source, destination), message in bad.items():
        done = run_sync(s3_server, source, destination, "--once")
        assert (done.returncode, message in done.stderr) == (2, True), (source, done.stderr)
    assert not dest.exists()

    empty = run_sync(s3_server, f"{bucket}/nothing-yet", dest, "--once")
    assert empty.returncode == 4 and "No objects under base path" in empty.stderr

    anonymous = {
        name: value
        for name, value in os_environment_with(s3_server).items()
        if "AWS_" not in name or name == "AWS_ENDPOINT_URL"
    }
    no_credentials = subprocess.run(
        [sys.executable, "-m", "serving.sync", f"{bucket}/jena", str(dest), "--once"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={
            **anonymous,
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": "/dev/null",
            "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
        },
    )
    assert no_credentials.returncode == 3 and "Unable to locate credentials" in no_credentials.stderr, (
        no_credentials.stderr
    )

    s3_server.stop()
    started = time.monotonic()
    down = run_sync(s3_server, f"{bucket}/jena", dest, "--once")
    assert down.returncode == 3 and "Could not connect" in down.stderr, down.stderr
    assert time.monotonic() - started < 15, "a refused connection must fail within the bounded retries"
    assert not dest.exists() or os.listdir(dest) == []


@pytest.mark.slow  # a long-running sync process through a store outage: a server's test
def test_loop_is_atomic_survives_an_outage_and_stops_on_sigterm(s3_server, tmp_path):
    """DEST never shows a version number without all of its files, while a many-file version arrives."""
    base = s3_server.create_bucket("models") + "/jena"
    model = fake_saved_model(tmp_path / "model", files=60)
    expected = tree(model)
    dest = tmp_path / "dest"
    dest.mkdir()
    fsspec.filesystem("s3").pipe(f"{base}/publication.json", b"{}")  # not a version, but the prefix exists
    log_path = tmp_path / "sync.log"
    with open(log_path, "w") as log_file:
        sync = subprocess.Popen(
            [sys.executable, "-m", "serving.sync", base, str(dest), "--poll_seconds", "0.2"],
            cwd=REPO_ROOT,
            env=os_environment_with(s3_server),
            stderr=log_file,
        )
    seen, incomplete, watching = [], [], threading.Event()

    def watch():  # what a TF Serving poll of DEST would see, as often as possible
        while not watching.is_set():
            for name in os.listdir(dest):
                if name.isdigit():
                    found = stable_tree(dest / name)
                    if found is None:
                        continue  # removed (renamed away) during the walk: a deletion, not an arrival
                    seen.append(name)
                    if found != expected:
                        incomplete.append((name, len(found)))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        upload_version(base, 1, model)
        wait_for(lambda: (dest / "1").exists(), timeout=30, message="version 1 in DEST")

        s3_server.stop()  # an outage of a few polls (a failing one retries for a second or more)
        wait_for(lambda: "Poll failed" in log_path.read_text(), timeout=30, interval=0.05, message="a failed poll")
        time.sleep(2)
        s3_server.start()
        forget_clients()
        upload_version(base, 2, model)
        wait_for(lambda: (dest / "2").exists(), timeout=30, message="version 2 in DEST after the outage")
        delete_version(base, 1)
        wait_for(lambda: not (dest / "1").exists(), timeout=30, message="version 1 removed from DEST")
    finally:
        watching.set()
        watcher.join()
        sync.send_signal(signal.SIGTERM)
        code = sync.wait(timeout=30)

    log = log_path.read_text()
    assert code == 0, log
    assert seen and not incomplete, incomplete[:5]
    assert sorted(os.listdir(dest)) == ["2"], "no hidden work directory is left behind"
    assert log.count("Poll failed, DEST left unchanged") == 1 and "Could not connect" in log, log
    assert log.count("succeed again after") == 1, log
    assert "Stopped syncing" in log


def test_a_copy_stopped_midway_leaves_nothing_half_written(s3_server, tmp_path):
    base = s3_server.create_bucket("models") + "/jena"
    upload_version(base, 1, fake_saved_model(tmp_path / "model", files=150))
    dest = tmp_path / "dest"
    sync = subprocess.Popen(
        [sys.executable, "-m", "serving.sync", base, str(dest), "--poll_seconds", "30"],
        cwd=REPO_ROOT,
        env=os_environment_with(s3_server),
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(
        lambda: dest.exists() and any(name.startswith(".partial-") for name in os.listdir(dest)),
        timeout=30,
        interval=0.01,
        message="the copy to start",
    )
    sync.send_signal(signal.SIGTERM)
    assert sync.wait(timeout=30) == 0, sync.stderr.read()
    assert os.listdir(dest) == [], "a stopped copy is neither published nor left behind"
