"""The version store in a local directory (serving.store): numbering, atomicity, concurrency, idempotence, retention.

The exports here are stand-ins with a SavedModel's layout (no TensorFlow is
needed to publish); tests/test_export.py publishes a real one. The server
configs in serving/ are checked here too.
"""

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from pipeline.published import labelled_versions, read_model_card
from serving.store import (
    PublicationRefused,
    complete_versions,
    fingerprint,
    publish,
    retire,
    versions_to_retire,
)
from serving.store.local import LAST_VERSION_NAME
from tests.helpers.exports import fake_export, labelled_config
from tests.helpers.repository import REPO_ROOT

MODELS_CONFIG = REPO_ROOT / "serving/models.config"
COMPOSE_FILE = REPO_ROOT / "serving/docker-compose.yml"


def file_sizes(directory: Path) -> dict[str, int]:
    return {str(path.relative_to(directory)): path.stat().st_size for path in directory.rglob("*") if path.is_file()}


def test_first_publication_is_version_1(tmp_path):
    export = fake_export(tmp_path / "export", "a")
    served = tmp_path / "serving/jena_temperature"
    result = publish(export, served, keep_versions=3)
    assert (result.version, result.created, result.retired) == (1, True, [])
    assert result.fingerprint == fingerprint(export)
    assert complete_versions(served) == [1]
    assert file_sizes(served / "1") == file_sizes(export)


def test_identical_model_creates_no_new_version(tmp_path):
    served = tmp_path / "served"
    first = publish(fake_export(tmp_path / "one", "a"), served, keep_versions=3)
    again = publish(fake_export(tmp_path / "two", "a", test_mae=9.9), served, keep_versions=3)  # new card and id only
    assert (again.version, again.created, again.fingerprint) == (1, False, first.fingerprint)
    assert complete_versions(served) == [1]
    assert set(os.listdir(served)) == {"1", ".publish.lock", ".last_version"}  # no staging copy left behind


def test_changed_model_becomes_the_next_version_and_the_old_one_stays(tmp_path):
    served = tmp_path / "served"
    publish(fake_export(tmp_path / "one", "a"), served, keep_versions=3)
    result = publish(fake_export(tmp_path / "two", "b"), served, keep_versions=3)
    assert (result.version, result.created) == (2, True)
    assert complete_versions(served) == [1, 2]


def test_a_model_equal_to_an_older_version_is_published_again_to_be_served(tmp_path):
    served = tmp_path / "served"
    for weights in "aba":
        result = publish(fake_export(tmp_path / f"export-{len(complete_versions(served))}", weights), served, 5)
    assert (result.version, result.created) == (3, True)
    assert fingerprint(served / "3") == fingerprint(served / "1")


def test_version_names_are_read_as_tf_serving_reads_them(tmp_path):
    """absl::SimpleAtoi's rule, as FileSystemStoragePathSource applies it: a sign and digits are a version."""
    for name in ("1", "10", "2", ".staging-x", "7a", "tmp", "-3", "0x10", "1.5"):
        (tmp_path / name).mkdir()
    (tmp_path / "5").write_text("a file, not a version")
    assert complete_versions(tmp_path) == [-3, 1, 2, 10]
    assert complete_versions(tmp_path / "missing") == []


def test_retention_keeps_the_newest_versions(tmp_path):
    served = tmp_path / "served"
    for weights in "abcde":
        result = publish(fake_export(tmp_path / weights, weights), served, keep_versions=2)
    assert complete_versions(served) == [4, 5]
    assert result.retired == [3]
    assert not [name for name in os.listdir(served) if name.startswith(".retiring-")]


def test_retention_never_deletes_a_labelled_version(tmp_path):
    served = tmp_path / "served"
    config = labelled_config(tmp_path / "models.config", {"stable": 2, "canary": 4})
    protected = labelled_versions(config, "jena_temperature")
    for weights in "abcdef":
        publish(fake_export(tmp_path / weights, weights), served, keep_versions=2, protected=protected)
    assert complete_versions(served) == [2, 4, 5, 6]


def test_versions_to_retire():
    assert versions_to_retire([1, 2, 3, 4], 2, set()) == [1, 2]
    assert versions_to_retire([1, 2, 3, 4], 2, {1}) == [2]
    assert versions_to_retire([3, 1], 5, set()) == []
    with pytest.raises(ValueError, match="keep_versions"):
        versions_to_retire([1], 0, set())


def test_labels_are_read_for_our_model_only(tmp_path):
    ours = labelled_config(tmp_path / "ours.config", {"stable": 3, "canary": 4})
    other = labelled_config(tmp_path / "other.config", {"stable": 1}, model_name="another_model")
    assert labelled_versions(ours, "jena_temperature") == {3, 4}
    assert labelled_versions(other, "jena_temperature") == set()
    (tmp_path / "broken.config").write_text("model_config_list { config { nme: 1 } }")
    with pytest.raises(ValueError, match="broken.config"):
        labelled_versions(tmp_path / "broken.config", "jena_temperature")


def test_a_version_number_is_never_given_twice(tmp_path):
    served = tmp_path / "served"
    publish(fake_export(tmp_path / "a", "a"), served, keep_versions=3)
    publish(fake_export(tmp_path / "b", "b"), served, keep_versions=3)
    retire(served, 2)  # a rollback: the newest version is deleted
    result = publish(fake_export(tmp_path / "c", "c"), served, keep_versions=3)
    assert (result.version, result.created) == (3, True)
    assert complete_versions(served) == [1, 3]
    assert (served / LAST_VERSION_NAME).read_text() == "3\n"


def test_an_unreadable_version_record_is_named(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    (served / LAST_VERSION_NAME).write_text("three")
    with pytest.raises(ValueError, match=r"\.last_version: expected the last published version number"):
        publish(fake_export(tmp_path / "a", "a"), served, keep_versions=3)
    assert complete_versions(served) == []


def test_leftovers_of_killed_publications_are_removed(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    host = socket.gethostname()
    dead = [f".staging-{host}-{finished.pid}-k1", f".retiring-{host}-{finished.pid}-4-k2"]
    alive = [f".staging-{host}-{os.getpid()}-k3", f".staging-other-host-{finished.pid}-k4", ".staging-x"]
    for name in dead + alive:
        (served / name / "model").mkdir(parents=True)
    publish(fake_export(tmp_path / "a", "a"), served, keep_versions=3)
    assert set(os.listdir(served)) == {"1", ".publish.lock", LAST_VERSION_NAME, *alive}


def test_the_blessing_is_checked_again_against_the_newest_version(tmp_path):
    served = tmp_path / "served"
    asked = []

    def within_a_tenth(newest):
        newest_mae = newest and read_model_card(newest)["metrics"]["test_mae_degC"]
        asked.append(newest and newest.name)
        return (newest_mae is None or 1.7 <= newest_mae + 0.1), f"1.700 C against {newest_mae}"

    assert publish(fake_export(tmp_path / "a", "a", test_mae=2.0), served, 3, still_blessed=within_a_tenth).version == 1
    publish(fake_export(tmp_path / "b", "b", test_mae=1.5), served, keep_versions=3)  # landed meanwhile
    with pytest.raises(PublicationRefused, match="1.700 C against 1.5"):
        publish(fake_export(tmp_path / "c", "c", test_mae=1.7), served, 3, still_blessed=within_a_tenth)
    assert asked == [None, "2"]
    assert complete_versions(served) == [1, 2]
    assert set(os.listdir(served)) == {"1", "2", ".publish.lock", LAST_VERSION_NAME}


def test_complete_versions_ascend_and_follow_a_rollback(tmp_path):
    served = tmp_path / "served"
    assert complete_versions(served) == []
    publish(fake_export(tmp_path / "a", "a", test_mae=2.0), served, keep_versions=3)
    publish(fake_export(tmp_path / "b", "b", test_mae=1.8), served, keep_versions=3)
    assert complete_versions(served) == [1, 2]
    os.rename(served / "2", served / ".rolled-back")  # a rollback: the newest version is removed
    assert complete_versions(served) == [1]


def test_a_watcher_never_sees_an_incomplete_version(tmp_path):
    """List the directory in a tight loop while versions are published (and old ones retired)."""
    served = tmp_path / "served"
    exports = [fake_export(tmp_path / f"export-{i}", f"w{i}", variables_bytes=4_000_000, assets=300) for i in range(6)]
    complete_layouts = [file_sizes(export) for export in exports]
    seen, incomplete = set(), []
    done = threading.Event()

    def watch():
        while not done.is_set():
            for version in complete_versions(served):
                path = served / str(version)
                try:
                    sizes = file_sizes(path)
                except FileNotFoundError:  # retired while we looked
                    continue
                if not path.exists():
                    continue
                seen.add(version)
                if sizes not in complete_layouts:
                    incomplete.append((version, sizes))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for export in exports:
            publish(export, served, keep_versions=3)
    finally:
        done.set()
        watcher.join()
    assert not incomplete, incomplete[:3]
    assert len(seen) >= 3 and complete_versions(served) == [4, 5, 6]


PUBLISH_ONE = """
import sys, time
from pathlib import Path
from serving.store import publish
export, served, start = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])
time.sleep(max(0.0, start - time.time()))
print(publish(export, served, keep_versions=100).version)
"""


def test_parallel_publications_get_distinct_consecutive_versions(tmp_path):
    served = tmp_path / "served"
    exports = [fake_export(tmp_path / f"export-{i}", f"model {i}", variables_bytes=1_000_000) for i in range(5)]
    start = time.time() + 2.0  # all processes publish at the same moment
    environment = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", PUBLISH_ONE, str(export), str(served), str(start)],
            stdout=subprocess.PIPE,
            text=True,
            env=environment,
        )
        for export in exports
    ]
    versions = [int(process.communicate(timeout=60)[0]) for process in processes]
    assert all(process.returncode == 0 for process in processes)
    assert sorted(versions) == [1, 2, 3, 4, 5]
    assert complete_versions(served) == [1, 2, 3, 4, 5]
    for export, version in zip(exports, versions):
        assert fingerprint(served / str(version)) == fingerprint(export)


def test_models_config_parses_with_the_official_protos():
    config = text_format.Parse(MODELS_CONFIG.read_text(), model_server_config_pb2.ModelServerConfig())
    (model,) = config.model_config_list.config
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text()).get("serving", {})
    assert model.name == params.get("model_name", "jena_temperature")
    assert model.base_path == f"/models/{model.name}"  # where docker-compose.yml mounts the versions
    assert model.model_platform == "tensorflow"
    assert model.model_version_policy.WhichOneof("policy_choice") == "latest"
    assert model.model_version_policy.latest.num_versions == 2
    comments = "\n".join(line for line in MODELS_CONFIG.read_text().splitlines() if line.lstrip().startswith("#"))
    assert "stable" in comments and "canary" in comments


def test_docker_compose_runs_tensorflow_serving_on_the_versions_with_our_config():
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    (service,) = compose["services"].values()
    assert service["image"].split(":")[0] == "tensorflow/serving"
    assert {"8500:8500", "8501:8501"} <= set(service["ports"])
    flags = dict(flag.split("=", 1) for flag in service["command"])
    assert flags["--port"] == "8500" and flags["--rest_api_port"] == "8501"
    sources = {volume["target"]: volume["source"] for volume in service["volumes"]}
    assert (COMPOSE_FILE.parent / sources[flags["--model_config_file"]]).resolve() == MODELS_CONFIG
    config = text_format.Parse(MODELS_CONFIG.read_text(), model_server_config_pb2.ModelServerConfig())
    versions_target = str(Path(config.model_config_list.config[0].base_path).parent)
    assert sources[versions_target] == "${SERVING_DIR:-../models/serving}"  # default: serving.base_path


def test_the_store_reads_fingerprints_where_the_export_writes_its_card():
    from pipeline import schema
    from serving.store import MODEL_CARD_FILE

    assert MODEL_CARD_FILE == schema.MODEL_CARD_FILE
