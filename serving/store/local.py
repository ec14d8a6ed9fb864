"""Numbered versions in a local directory: list, publish by rename under a lock, retire.

In:  a model directory (``<base_path>/<model_name>``), a SavedModel to publish.
Out: the directory's versions; at most one new version ``<N>/``, renamed into
     place whole; versions beyond retention renamed away, then deleted.

The protocol (staging, lock, ``.last_version``, leftovers) is described in
``serving.store``'s docstring.
"""

import contextlib
import fcntl
import os
import shutil
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path

from serving.store.layout import (
    Publication,
    PublicationRefused,
    fingerprint,
    parse_version,
    process_alive,
    versions_to_retire,
)

LOCK_NAME = ".publish.lock"
LAST_VERSION_NAME = ".last_version"
STAGING_PREFIX = ".staging-"
RETIRING_PREFIX = ".retiring-"


def local_versions(directory) -> dict[int, str]:
    """Version -> child name of a local model directory: its subdirectories whose names are versions.

    Of two names for one number ("7", "007"), the last in sorted order counts, as TF Serving warns and does.
    """
    if not os.path.isdir(directory):
        return {}
    found = {}
    for entry in sorted(os.scandir(directory), key=lambda entry: entry.name):
        version = parse_version(entry.name)
        if version is not None and entry.is_dir():
            found[version] = entry.name
    return found


@contextlib.contextmanager
def locked(directory: Path):
    """Hold the model directory's lock file (an exclusive flock, released if the process dies)."""
    with open(directory / LOCK_NAME, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


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
    """Write the record atomically: a temporary file in the same directory, renamed over it."""
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=f"{LAST_VERSION_NAME}.")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as record:
            record.write(f"{version}\n")
        os.replace(temporary, directory / LAST_VERSION_NAME)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


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


def retire(directory, version: int) -> None:
    """Remove a version: one rename takes it out of the server's sight, then it is deleted."""
    directory = Path(directory)
    name = local_versions(directory).get(version, str(version))
    hidden = Path(tempfile.mkdtemp(dir=directory, prefix=f"{_hidden_prefix(RETIRING_PREFIX)}{name.strip()}-"))
    os.replace(directory / name, hidden / name)
    shutil.rmtree(hidden)


def publish(
    saved_model: Path,
    directory,
    keep_versions: int,
    protected: set[int] = frozenset(),
    still_blessed: Callable[[Path | None], tuple[bool, str]] | None = None,
) -> Publication:
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
        with locked(directory):
            remove_leftovers(directory)
            names = local_versions(directory)
            versions = sorted(names)
            newest = directory / names[versions[-1]] if versions else None
            if newest is not None and fingerprint(newest) == new_fingerprint:
                version, created, name = versions[-1], False, names[versions[-1]]
            else:
                if still_blessed is not None:
                    blessed, reason = still_blessed(newest)
                    if not blessed:
                        raise PublicationRefused(reason)
                version, created = next_version(directory, versions), True
                name = str(version)
                os.rename(staged, directory / name)
                _record_last_version(directory, version)
                versions.append(version)
            retired = versions_to_retire(versions, keep_versions, set(protected))
            for old in retired:
                retire(directory, old)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return Publication(version, str(directory / name), new_fingerprint, created, retired)
