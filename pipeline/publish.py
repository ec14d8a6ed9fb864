"""Publish an exported SavedModel as the next numbered version that TensorFlow Serving watches.

In:  an exported SavedModel directory (models/export/, with its model card in
     assets.extra/model_card.json), the watched model directory
     `<serving.base_path>/<serving.model_name>/`, how many versions to keep
     (`serving.keep_versions`) and the version labels of the server's model
     config (`serving.config_file`, text-format ModelServerConfig).
Out: at most one new version directory `<model directory>/<N>/`, older
     versions beyond the newest `keep_versions` removed, and a `Publication`
     saying what happened.

TensorFlow Serving loads a numeric directory the moment it appears, so a
version is copied under a hidden, non-numeric name in the same directory and
renamed to its number in one step; a numeric directory is never written into.
Versions are retired the same way: renamed to a hidden name, then deleted.
Every step that reads or changes the numbering runs under a lock file in the
model directory, so parallel publications get distinct, consecutive numbers.
A number is never given twice: the highest one ever published is kept in
`.last_version`, so after a rollback (the newest version deleted) the next
model gets a new number, not the deleted one's. Staging copies left by a
killed publication are removed by the next one.

Under the lock, `still_blessed` (when given) is asked again with the newest
published version's directory: another publication may have landed since the
model was evaluated (queued experiments), and a model that is no longer good
enough is refused with `PublicationRefused`.

A model whose fingerprint (a hash of the SavedModel's content, see
`fingerprint`) equals the newest version's is already served: no new version.
`newest_version` is the one answer to "which version is published", for the
evaluate stage's comparison too.
"""

import hashlib
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from filelock import FileLock
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from pipeline import schema
from pipeline.atomic import atomic_path

MODEL_CARD = Path(schema.MODEL_CARD_FILE)
# TensorFlow writes a random id into fingerprint.pb; the model card holds the
# fingerprint and the creation time. Neither is part of the model's content.
NOT_CONTENT = {Path("fingerprint.pb"), MODEL_CARD}
LOCK_NAME = ".publish.lock"
LAST_VERSION_NAME = ".last_version"
STAGING_PREFIX = ".staging-"
RETIRING_PREFIX = ".retiring-"


class PublicationRefused(Exception):
    """The model was blessed when evaluated, but not against the version published since."""


@dataclass(frozen=True)
class Publication:
    """What a publication did: the version serving the model, and what changed."""

    version: int
    path: str
    fingerprint: str
    created: bool
    retired: list[int]

    def as_dict(self) -> dict:
        return asdict(self)


def model_directory(serving: dict) -> Path | str:
    """The directory TensorFlow Serving watches: `<base_path>/<model_name>`.

    base_path may be absolute, relative, or an object-storage URL (`s3://bucket/prefix`,
    `gs://bucket/prefix`), in which case the answer is a URL string (see pipeline.store).
    """
    base_path = str(serving["base_path"])
    if "://" in base_path:
        return f"{base_path.rstrip('/')}/{serving['model_name']}"
    return Path(base_path) / serving["model_name"]


def version_numbers(directory: Path) -> list[int]:
    """The versions in a model directory, ascending: its children named by digits only."""
    if not Path(directory).is_dir():
        return []
    return sorted(int(entry.name) for entry in os.scandir(directory)
                  if entry.is_dir() and entry.name.isascii() and entry.name.isdigit())


def fingerprint(saved_model: Path) -> str:
    """SHA-256 over the relative paths and bytes of a SavedModel's files, except NOT_CONTENT.

    The export is deterministic, so exporting the same weights twice gives the same fingerprint.
    """
    saved_model = Path(saved_model)
    digest = hashlib.sha256()
    for path in sorted(path for path in saved_model.rglob("*") if path.is_file()):
        relative = path.relative_to(saved_model)
        if relative in NOT_CONTENT:
            continue
        digest.update(relative.as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def read_model_card(saved_model: Path) -> dict:
    path = Path(saved_model) / MODEL_CARD
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: no readable model card ({error})") from None


def newest_version(directory: Path) -> int | None:
    """The published version that serves by default (the highest number); None if none is published."""
    versions = version_numbers(directory)
    return versions[-1] if versions else None


def next_version(directory: Path, versions: list[int]) -> int:
    """One more than the highest version present or ever published (kept in LAST_VERSION_NAME)."""
    record = Path(directory) / LAST_VERSION_NAME
    try:
        last = int(record.read_text(encoding="utf-8"))
    except FileNotFoundError:
        last = 0
    except ValueError:
        raise ValueError(f"{record}: expected the last published version number, found something else") from None
    return max([last, *versions]) + 1


def _record_last_version(directory: Path, version: int) -> None:
    with atomic_path(directory / LAST_VERSION_NAME) as temporary:
        temporary.write_text(f"{version}\n", encoding="utf-8")


def _hidden_prefix(kind: str) -> str:
    """Hidden names say which process made them, so a leftover of a dead one can be recognised."""
    return f"{kind}{socket.gethostname()}-{os.getpid()}-"


def remove_leftovers(directory: Path) -> None:
    """Delete staging and retiring directories of processes on this host that no longer run."""
    host_prefixes = tuple(f"{kind}{socket.gethostname()}-" for kind in (STAGING_PREFIX, RETIRING_PREFIX))
    for entry in os.scandir(directory):
        for host_prefix in host_prefixes:
            pid = entry.name.removeprefix(host_prefix).split("-", 1)[0]
            if entry.name.startswith(host_prefix) and pid.isdigit() and not process_alive(int(pid)):
                shutil.rmtree(entry.path, ignore_errors=True)


def process_alive(pid: int) -> bool:
    """Whether process `pid` runs on this host (another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, but someone else's
        return True
    return True


def labelled_versions(config_file: Path, model_name: str) -> set[int]:
    """The versions that version labels point at for `model_name` in a text-format ModelServerConfig."""
    config = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(Path(config_file).read_text(encoding="utf-8"), config)
    except text_format.ParseError as error:
        raise ValueError(f"{config_file}: not a valid ModelServerConfig ({error})") from None
    return {version
            for model in config.model_config_list.config if model.name == model_name
            for version in model.version_labels.values()}


def versions_to_retire(versions: list[int], keep_versions: int, protected: set[int]) -> list[int]:
    """All but the newest `keep_versions` versions, except the protected (labelled) ones."""
    if keep_versions < 1:
        raise ValueError(f"serving.keep_versions must be at least 1, got {keep_versions}")
    older = sorted(versions)[:-keep_versions]
    return [version for version in older if version not in protected]


def retire(directory: Path, version: int) -> None:
    """Remove a version: one rename takes it out of the server's sight, then it is deleted."""
    hidden = Path(tempfile.mkdtemp(dir=directory, prefix=f"{_hidden_prefix(RETIRING_PREFIX)}{version}-"))
    os.replace(directory / str(version), hidden / str(version))
    shutil.rmtree(hidden)


def publish(saved_model: Path, directory: Path, keep_versions: int, protected: set[int] = frozenset(),
            still_blessed: Callable[[Path | None], tuple[bool, str]] | None = None) -> Publication:
    """Make `saved_model` the newest version in `directory` unless it already is; apply retention.

    The copy is staged under a hidden name before the lock is taken; the
    re-check of the blessing, numbering, the rename into place and retention
    happen under the lock.
    """
    directory = Path(directory)
    for level in (directory.parent, directory):
        if level.exists() and not level.is_dir():
            raise ValueError(f"{level}: is a file, not a directory; check serving.base_path")
    directory.mkdir(parents=True, exist_ok=True)
    new_fingerprint = fingerprint(saved_model)
    staging = Path(tempfile.mkdtemp(dir=directory, prefix=_hidden_prefix(STAGING_PREFIX)))
    try:
        staged = staging / "model"
        shutil.copytree(saved_model, staged)
        with FileLock(directory / LOCK_NAME):
            remove_leftovers(directory)
            versions = version_numbers(directory)
            if versions and fingerprint(directory / str(versions[-1])) == new_fingerprint:
                version, created = versions[-1], False
            else:
                if still_blessed is not None:
                    newest = directory / str(versions[-1]) if versions else None
                    blessed, reason = still_blessed(newest)
                    if not blessed:
                        raise PublicationRefused(reason)
                version, created = next_version(directory, versions), True
                os.rename(staged, directory / str(version))
                _record_last_version(directory, version)
                versions.append(version)
            retired = versions_to_retire(versions, keep_versions, set(protected))
            for old in retired:
                retire(directory, old)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return Publication(version, str(directory / str(version)), new_fingerprint, created, retired)
