"""The version store in object storage (serving.store) on real S3 and GCS protocol servers on loopback.

Each test that behaves the same on both stores runs on both (`object_store`).
The races run on S3 only: gcp-storage-emulator ignores `ifGenerationMatch=0`
(see test_the_gcs_emulator_ignores_generation_preconditions), so two claims of
one number both succeed there and nothing can be proven about GCS's.
"""

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import fsspec
import pytest

from pipeline import export
from pipeline.published import model_directory
from serving import store
from serving.store import PublicationRefused, client, fingerprint, publish, remote
from tests.helpers.exports import BLESSED_METRICS, fake_export, labelled_config
from tests.helpers.object_storage import os_environment_with
from tests.helpers.repository import REPO_ROOT
from tests.helpers.training import EVALUATE_PARAMS


def files_under(url: str) -> list[str]:
    """Every object below `url`, relative to it (a fresh listing, no client cache)."""
    fs, root = fsspec.core.url_to_fs(url)
    fs.invalidate_cache()
    try:
        return sorted(path[len(root) :].lstrip("/") for path in fs.find(root))
    except FileNotFoundError:
        return []


def outcome(url: str, number: int) -> dict:
    fs, root = fsspec.core.url_to_fs(url)
    return json.loads(fs.cat_file(f"{root}/.publications/{number}.outcome"))


@pytest.fixture
def model_url(object_store):
    return f"{object_store.create_bucket('models')}/team/jena_temperature"


class RecordingFileSystem:
    """A file system that logs the paths it writes, in order."""

    def __init__(self, fs, writes: list):
        self._fs, self._writes = fs, writes

    def __getattr__(self, name):
        return getattr(self._fs, name)

    def put_file(self, local, remote, **kwargs):
        self._writes.append(remote)
        return self._fs.put_file(local, remote, **kwargs)

    def pipe_file(self, path, data, **kwargs):
        self._writes.append(path)
        return self._fs.pipe_file(path, data, **kwargs)


def test_first_publication_uploads_saved_model_pb_after_every_other_file(model_url, tmp_path, monkeypatch):
    writes = []
    file_system = client.file_system
    monkeypatch.setattr(client, "file_system", lambda scheme: RecordingFileSystem(file_system(scheme), writes))
    exported = fake_export(tmp_path / "export", "a", assets=5)

    result = store.publish(exported, model_url, keep_versions=3)

    assert (result.version, result.created, result.retired) == (1, True, [])
    assert result.path == f"{model_url}/1" and result.fingerprint == fingerprint(exported)
    names = [path.rsplit("/team/jena_temperature/", 1)[1] for path in writes]
    version_files = [name for name in names if name.startswith("1/")]
    assert version_files[-1] == "1/saved_model.pb"
    assert sorted(version_files) == sorted(
        f"1/{path.relative_to(exported).as_posix()}" for path in exported.rglob("*") if path.is_file()
    )
    # claim first; the decision before any file of the version; the completion record after the last
    assert names[0] == ".publications/1.claim"
    assert names.index(".publications/1.outcome") < names.index(version_files[0])
    assert names.index("1/saved_model.pb") < names.index(".publications/1.complete")
    assert store.complete_versions(model_url) == [1]
    complete = json.loads(
        fsspec.core.url_to_fs(model_url)[0].cat_file(f"{fsspec.core.url_to_fs(model_url)[1]}/.publications/1.complete")
    )
    assert complete["fingerprint"] == result.fingerprint
    assert set(complete["files"]) == {name.removeprefix("1/") for name in version_files}


def test_a_reader_never_sees_saved_model_pb_before_the_rest(model_url, tmp_path):
    """A watcher lists the store while a 60-file version uploads: once saved_model.pb is listed, all files are."""
    exported = fake_export(tmp_path / "export", "a", assets=60)
    expected = {f"1/{path.relative_to(exported).as_posix()}" for path in exported.rglob("*") if path.is_file()}
    seen, done = [], threading.Event()

    def watch():
        deadline = time.monotonic() + 120
        while not done.is_set() and time.monotonic() < deadline:
            seen.append({name for name in files_under(model_url) if name.startswith("1/")})

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        store.publish(exported, model_url, keep_versions=3)
    finally:
        done.set()
        watcher.join()
    partial = [names for names in seen if names and names != expected]
    assert partial, "the watcher never caught the upload half done; nothing was tested"
    assert [expected - names for names in partial if "1/saved_model.pb" in names] == []
    assert expected <= set(files_under(model_url))


def test_identical_model_is_not_published_again_and_numbers_are_never_reused(model_url, tmp_path):
    first = store.publish(fake_export(tmp_path / "a", "a"), model_url, keep_versions=3)
    again = store.publish(fake_export(tmp_path / "a-again", "a"), model_url, keep_versions=3)
    assert (again.version, again.created) == (1, False)
    assert outcome(model_url, 2)["outcome"] == "identical"
    assert [name for name in files_under(model_url) if name.startswith("2/")] == []

    # roll back version 1 (deleted by hand): the next model still gets a new number
    fs, root = fsspec.core.url_to_fs(model_url)
    fs.rm(f"{root}/1", recursive=True)
    third = store.publish(fake_export(tmp_path / "b", "b"), model_url, keep_versions=3)
    assert (first.version, third.version) == (1, 3)
    assert store.complete_versions(model_url) == [3]


def test_retention_keeps_the_newest_and_the_labelled_versions(model_url, tmp_path):
    results = [
        store.publish(fake_export(tmp_path / str(n), f"w{n}"), model_url, keep_versions=2, protected={1})
        for n in range(4)
    ]
    assert [result.version for result in results] == [1, 2, 3, 4]
    # as locally: the labelled version 1 stays and counts among the newest two while it is one of them
    assert [result.retired for result in results] == [[], [], [], [2]]
    assert store.complete_versions(model_url) == [1, 3, 4]
    assert not [name for name in files_under(model_url) if name.startswith("2/")]


def test_the_export_stage_publishes_and_records_on_a_store(model_url, tmp_path):
    """export.publication with an s3:// or gs:// base path: labels from serving.config_file protect, the
    record names the URL, and a model outrun by a better publication since its evaluation is refused."""
    base_path = model_url.rsplit("/", 1)[0]
    serving = {
        "base_path": base_path,
        "model_name": "jena_temperature",
        "keep_versions": 1,
        "config_file": str(labelled_config(tmp_path / "models.config", {"stable": 1})),
    }
    assert model_directory(serving) == model_url
    metrics = {
        **BLESSED_METRICS,
        "test_mae_degC": 2.0,
        "published_version": None,
        "test_samples": 100,
        "test_data_fingerprint": "test data",
    }

    first = export.publication(fake_export(tmp_path / "v1", "first", test_mae=2.0), metrics, serving, EVALUATE_PARAMS)
    assert (first["published"], first["version"], first["path"]) == (True, 1, f"{model_url}/1")
    better = {**metrics, "test_mae_degC": 1.5, "published_version": 1}
    second = export.publication(fake_export(tmp_path / "v2", "second", test_mae=1.5), better, serving, EVALUATE_PARAMS)
    assert (second["published"], second["version"], second["retired"]) == (True, 2, [])  # 1 is labelled "stable"

    # evaluated against version 1 (blessed: 1.9 <= 2.0 + 0.05), but version 2 (1.5) landed since
    evaluated_against_1 = {**metrics, "test_mae_degC": 1.9, "published_version": 1}
    refused = export.publication(
        fake_export(tmp_path / "v3", "third", test_mae=1.9), evaluated_against_1, serving, EVALUATE_PARAMS
    )
    assert refused["published"] is False and refused["version"] is None
    assert "no longer blessed against the newest published version" in refused["reason"]
    assert "published version 2's 1.500 C" in refused["reason"]
    assert store.complete_versions(model_url) == [1, 2]
    assert outcome(model_url, 3)["outcome"] == "refused"
    assert not [name for name in files_under(model_url) if name.startswith("3/")]


def test_publication_json_from_the_export_stage_names_the_store(model_url, tmp_path, monkeypatch):
    """`python -m pipeline.export`'s record, here through export.main's own steps on a store."""
    serving = {
        "base_path": model_url.rsplit("/", 1)[0],
        "model_name": "jena_temperature",
        "keep_versions": 3,
        "config_file": str(REPO_ROOT / "serving/models.config"),
    }
    record = export.publication(fake_export(tmp_path / "e", "e"), BLESSED_METRICS, serving, EVALUATE_PARAMS)
    assert record == {
        **record,
        "published": True,
        "created": True,
        "version": 1,
        "path": f"{model_url}/1",
        "reason": "published as version 1",
    }
    assert json.loads(json.dumps(record)) == record  # what write_json puts into models/publication.json


# --- races (S3: the emulator of GCS does not honour preconditions) --------------------------------


def test_the_gcs_emulator_ignores_generation_preconditions(gcs_server):
    """Why the races below run on S3 only. If this fails, the emulator learnt preconditions: run them on GCS too."""
    bucket = gcs_server.create_bucket("models")
    fs, _ = fsspec.core.url_to_fs(bucket)
    fs.pipe_file(f"{bucket}/x", b"first", mode="create")
    fs.pipe_file(f"{bucket}/x", b"second", mode="create")  # real GCS answers 412 here
    assert fs.cat_file(f"{bucket}/x") == b"second"


def test_s3_refuses_a_second_claim_of_a_number(s3_server):
    bucket = s3_server.create_bucket("models")
    fs, _ = fsspec.core.url_to_fs(bucket)
    fs.pipe_file(f"{bucket}/x", b"first", mode="create")
    with pytest.raises(FileExistsError):
        fs.pipe_file(f"{bucket}/x", b"second", mode="create")
    assert fs.cat_file(f"{bucket}/x") == b"first"


def test_concurrent_publishers_in_threads_get_distinct_numbers(s3_server, tmp_path):
    url = f"{s3_server.create_bucket('models')}/jena"
    exports = [fake_export(tmp_path / str(n), f"model {n}", assets=3) for n in range(4)]
    results, errors = [], []
    start = threading.Barrier(len(exports))

    def publish(exported):
        start.wait()
        try:
            results.append(store.publish(exported, url, keep_versions=10))
        except Exception as error:  # noqa: BLE001  reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=publish, args=(exported,)) for exported in exports]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    assert sorted(result.version for result in results) == [1, 2, 3, 4]
    assert store.complete_versions(url) == [1, 2, 3, 4]
    by_version = {result.version: result.fingerprint for result in results}
    assert sorted(by_version.values()) == sorted(fingerprint(exported) for exported in exports)


PUBLISH_IN_A_PROCESS = """
import sys
from pathlib import Path
from serving import store
result = store.publish(Path(sys.argv[1]), sys.argv[2], keep_versions=10)
print(result.version)
"""


def publisher(exported: Path, url: str, server) -> subprocess.Popen:
    environment = {**os_environment_with(server), "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", PUBLISH_IN_A_PROCESS, str(exported), url],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_two_processes_publishing_at_once_get_distinct_numbers(s3_server, tmp_path):
    url = f"{s3_server.create_bucket('models')}/jena"
    processes = [publisher(fake_export(tmp_path / str(n), f"model {n}", assets=10), url, s3_server) for n in range(2)]
    answers = [process.communicate(timeout=120) for process in processes]
    assert [process.returncode for process in processes] == [0, 0], answers
    assert sorted(int(out.split()[-1]) for out, _ in answers) == [1, 2]
    assert store.complete_versions(url) == [1, 2]


# --- a killed upload ----------------------------------------------------------------------------


def test_a_killed_upload_is_never_loadable_and_is_cleaned_up_by_the_next_publication(object_store, model_url, tmp_path):
    process = publisher(fake_export(tmp_path / "slow", "slow", assets=400), model_url, object_store)
    deadline = time.monotonic() + 60
    while len([name for name in files_under(model_url) if name.startswith("1/")]) < 10:
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)

    left = files_under(model_url)
    assert "1/saved_model.pb" not in left and any(name.startswith("1/") for name in left)
    assert ".publications/1.complete" not in left
    assert store.complete_versions(model_url) == []

    result = store.publish(fake_export(tmp_path / "next", "next"), model_url, keep_versions=3)
    assert result.version == 2
    assert not [name for name in files_under(model_url) if name.startswith("1/")]
    assert outcome(model_url, 1)["outcome"] == "abandoned"
    assert store.complete_versions(model_url) == [2]


def claim_by_hand(url: str, number: int, pid: int, started: float, files=("variables/variables.index",)) -> None:
    """What a publisher in the middle of its upload leaves: a claim and some files, no saved_model.pb."""
    fs, root = fsspec.core.url_to_fs(url)
    fs.pipe_file(
        f"{root}/.publications/{number}.claim",
        json.dumps({"host": "another-machine", "pid": pid, "token": "t", "started": started}).encode(),
    )
    for name in files:
        fs.pipe_file(f"{root}/{number}/{name}", b"half")


def test_a_live_slow_upload_elsewhere_is_waited_for_not_removed(model_url, tmp_path):
    claim_by_hand(model_url, 1, pid=1, started=time.time())
    with pytest.raises(store.StoreError, match=r"publications \[1\] still running after 1 s"):
        store.publish(fake_export(tmp_path / "e", "e"), model_url, keep_versions=3, wait_seconds=1)
    assert "1/variables/variables.index" in files_under(model_url)
    assert outcome(model_url, 2)["outcome"] == "abandoned"  # the waiter gave up; its number is settled
    assert not [name for name in files_under(model_url) if name.startswith("2/")]


def test_an_upload_silent_for_longer_than_the_staleness_limit_is_removed(model_url, tmp_path):
    claim_by_hand(model_url, 1, pid=1, started=time.time() - 120)
    result = store.publish(fake_export(tmp_path / "e", "e"), model_url, keep_versions=3, stale_seconds=60)
    assert result.version == 2
    assert not [name for name in files_under(model_url) if name.startswith("1/")]
    assert outcome(model_url, 1)["outcome"] == "abandoned"


def test_a_publisher_taken_for_dead_stops_and_leaves_nothing(s3_server, tmp_path, monkeypatch):
    """A publisher paused past the staleness limit finds its number settled as abandoned when it wakes."""
    model_url = f"{s3_server.create_bucket('models')}/jena"
    wait_for_lower = remote.wait_for_lower

    def settled_by_someone_else(s, number, *args, **kwargs):
        listing = wait_for_lower(s, number, *args, **kwargs)
        s.write_json(s.record(number, "outcome"), {"outcome": "abandoned"}, exclusive=True)
        return listing

    monkeypatch.setattr(remote, "wait_for_lower", settled_by_someone_else)
    with pytest.raises(store.StoreError, match="settled as abandoned by another publisher"):
        store.publish(fake_export(tmp_path / "e", "e"), model_url, keep_versions=3)
    assert [name for name in files_under(model_url) if not name.startswith(".publications/")] == []


# --- the blessing re-check ------------------------------------------------------------------------


def test_the_recheck_sees_the_newest_complete_version_as_a_local_directory(model_url, tmp_path):
    store.publish(fake_export(tmp_path / "v1", "first", test_mae=1.0), model_url, keep_versions=3)
    asked = []

    def still_blessed(newest):
        asked.append((newest.name, json.loads((newest / "assets.extra/model_card.json").read_text())))
        return False, "worse than version 1"

    with pytest.raises(PublicationRefused, match="worse than version 1"):
        store.publish(fake_export(tmp_path / "v2", "second"), model_url, keep_versions=3, still_blessed=still_blessed)
    assert asked == [("1", {"metrics": {"test_mae_degC": 1.0, "test_data_fingerprint": "test data"}})]
    assert store.complete_versions(model_url) == [1]
    assert outcome(model_url, 2)["outcome"] == "refused"


# --- bad input ------------------------------------------------------------------------------------


def test_junk_names_in_the_model_directory_are_ignored(model_url, tmp_path):
    fs, root = fsspec.core.url_to_fs(model_url)
    for junk in (
        "latest/saved_model.pb",
        "v7/x",
        "0x10/x",
        "README",
        ".publications/notes.txt",
        ".publications/x.claim",
        "12a/saved_model.pb",
    ):
        fs.pipe_file(f"{root}/{junk}", b"junk")
    result = store.publish(fake_export(tmp_path / "e", "e"), model_url, keep_versions=1)
    assert (result.version, result.retired) == (1, [])
    assert store.complete_versions(model_url) == [1]
    assert "latest/saved_model.pb" in files_under(model_url)  # not ours: left alone


def unchanged_after(call, bucket_url: str):
    before = files_under(bucket_url)
    with pytest.raises(store.StoreError) as error:
        call()
    assert files_under(bucket_url) == before
    message = str(error.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    "base_path, expected",
    [
        ("ftp://models/team", "unknown scheme 'ftp'; use s3://, gs:// or a local path"),
        ("{scheme}://no-such-bucket/team", "bucket 'no-such-bucket' does not exist"),
        ("{bucket}/team/a-file", "/team/a-file is a file, not a directory"),
    ],
)
def test_bad_base_paths_are_one_line_errors_that_change_nothing(object_store, tmp_path, base_path, expected):
    bucket = object_store.create_bucket("models")
    fs, _ = fsspec.core.url_to_fs(bucket)
    fs.pipe_file(f"{bucket}/team/a-file", b"not a directory")
    url = base_path.format(scheme=object_store.scheme, bucket=bucket) + "/jena_temperature"
    message = unchanged_after(lambda: store.publish(fake_export(tmp_path / "e", "e"), url, keep_versions=3), bucket)
    assert message.startswith(url) and expected in message


def test_missing_s3_credentials_are_named(s3_server, tmp_path, monkeypatch):
    bucket = s3_server.create_bucket("models")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    from tests.helpers.object_storage import forget_clients

    forget_clients()
    with pytest.raises(store.StoreError, match="no usable credentials .*AWS_ACCESS_KEY_ID"):
        store.publish(fake_export(tmp_path / "e", "e"), f"{bucket}/jena", keep_versions=3)


def test_an_unreachable_store_fails_at_once(object_store, tmp_path):
    bucket = object_store.create_bucket("models")
    object_store.stop()
    started = time.monotonic()
    with pytest.raises(store.StoreError, match="cannot connect to the endpoint"):
        store.publish(fake_export(tmp_path / "e", "e"), f"{bucket}/jena", keep_versions=3)
    assert time.monotonic() - started < 5
    object_store.start()


def test_a_local_base_path_that_is_a_file_is_a_one_line_error(tmp_path):
    (tmp_path / "serving").write_text("not a directory")
    with pytest.raises(ValueError, match=r"serving: is a file, not a directory; check serving.base_path"):
        publish(fake_export(tmp_path / "e", "e"), tmp_path / "serving/jena_temperature", keep_versions=3)
    assert (tmp_path / "serving").read_text() == "not a directory"


def test_a_store_error_mid_upload_is_one_line_and_leaves_nothing_loadable(model_url, tmp_path, monkeypatch):
    upload = remote.upload

    def upload_then_fail(s, saved_model, number, names):
        upload(s, saved_model, number, names[:2])
        raise OSError("connection reset by peer")

    monkeypatch.setattr(remote, "upload", upload_then_fail)
    with pytest.raises(store.StoreError, match=r"publication 1 failed, nothing published \(OSError: connection reset"):
        store.publish(fake_export(tmp_path / "e", "e"), model_url, keep_versions=3)
    assert outcome(model_url, 1)["outcome"] == "abandoned"
    assert not [name for name in files_under(model_url) if name.startswith("1/")]
    monkeypatch.setattr(remote, "upload", upload)
    assert store.publish(fake_export(tmp_path / "f", "f"), model_url, keep_versions=3).version == 2
