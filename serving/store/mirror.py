"""Remote versions mirrored into a local directory: the ModelServer's cache and ``serving.sync``.

In:  a remote base path (s3://, gs://), a local destination, which versions are wanted.
Out: the destination holding exactly the wanted complete versions, each
     renamed into place whole; a ``MirrorResult`` saying what changed.
"""

import dataclasses
import hashlib
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from serving.store.client import Version, fetch_version, list_versions, open_store
from serving.store.layout import is_remote
from serving.store.local import local_versions

log = logging.getLogger("serving")

PARTIAL_PREFIX = ".partial-"
REMOVING_PREFIX = ".removing-"


@dataclasses.dataclass
class MirrorResult:
    added: list[int]
    removed: list[int]
    kept: list[int]


def mirror(
    url: str,
    destination: str,
    wanted: Callable[[set[int]], set[int]] | None = None,
    stop: threading.Event | None = None,
) -> MirrorResult:
    """Makes ``destination`` hold exactly the wanted complete versions of the remote base path ``url``.

    ``wanted`` picks among the complete versions (default: all of them). New
    versions are copied before old ones are removed, so a watcher never sees
    the directory without a version during an update. ``stop`` aborts between
    files, leaving nothing half-written. Raises as ``list_versions`` does,
    before anything local changes.
    """
    remote = list_versions(url)
    complete = {version for version, listed in remote.items() if listed.complete}
    keep = complete if wanted is None else set(wanted(set(complete))) & complete
    os.makedirs(destination, exist_ok=True)
    _remove_leftovers(destination)
    present = local_versions(destination)
    added = []
    for version in sorted(keep - set(present), reverse=True):
        if stop is not None and stop.is_set():
            break
        if _copy_version(url, remote[version], destination, stop):
            added.append(version)
    removed = []
    for version, name in sorted(present.items()):
        if version not in keep:
            _remove(destination, name)
            removed.append(version)
            log.info(
                "Removed version %d from %s: %s at %s",
                version,
                destination,
                "deleted or incomplete" if version not in complete else "not wanted by the version policy",
                url,
            )
    return MirrorResult(added=added, removed=removed, kept=sorted(keep & set(present)))


def _copy_version(url: str, version: Version, destination: str, stop: threading.Event | None) -> bool:
    """Copies one version under a hidden name, then renames it to its name. False if stopped or gone."""
    started = time.monotonic()
    partial = tempfile.mkdtemp(prefix=f"{PARTIAL_PREFIX}{version.name.strip()}-", dir=destination)
    try:
        if not fetch_version(open_store(url), version, Path(partial), stop):
            shutil.rmtree(partial, ignore_errors=True)
            return False
        os.rename(partial, os.path.join(destination, version.name))
    except FileNotFoundError:
        shutil.rmtree(partial, ignore_errors=True)
        log.warning("Version %s vanished from %s while being copied; skipped", version.name, url)
        return False
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    log.info(
        "Mirrored version %s of %s into %s (%d files, %d bytes) in %.2f s",
        version.name,
        url,
        destination,
        len(version.files),
        sum(version.files.values()),
        time.monotonic() - started,
    )
    return True


def _remove(destination: str, name: str) -> None:
    """Renames a version away first, so it disappears at once for a watcher, then deletes it."""
    doomed = tempfile.mkdtemp(prefix=f"{REMOVING_PREFIX}{name.strip()}-", dir=destination)
    os.rename(os.path.join(destination, name), os.path.join(doomed, name))
    shutil.rmtree(doomed, ignore_errors=True)


def _remove_leftovers(destination: str) -> None:
    """Hidden work directories of an earlier, interrupted run."""
    for name in os.listdir(destination):
        if name.startswith((PARTIAL_PREFIX, REMOVING_PREFIX)):
            shutil.rmtree(os.path.join(destination, name), ignore_errors=True)


class ModelCache:
    """The ModelServer's local copies of remote base paths: one mirror directory per base path.

    ``local_base_path`` is the manager's hook: called on every poll with a
    model's base path and its version policy, it returns a local directory
    to list and load from. Local paths pass through untouched; a remote one
    is mirrored first, copying only the versions the policy aspires to, as
    TF Serving reads only those from gs://.
    """

    def __init__(self, root: str):
        self.root = root

    def local_base_path(self, base_path: str, aspired: Callable[[set[int]], set[int]]) -> str:
        if not is_remote(base_path):
            return base_path
        digest = hashlib.sha256(base_path.encode()).hexdigest()[:16]
        local = os.path.join(self.root, f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', base_path)[:80]}-{digest}")
        mirror(base_path, local, aspired)
        return local
