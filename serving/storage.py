"""Model versions in object storage (s3://, gs://), mirrored into a local directory.

One implementation serves two users: the ModelServer's local cache (the
manager lists and loads a mirror of a remote base path, see ``ModelCache``)
and ``python -m serving.sync`` (a mirror that real TF Serving watches).

* A remote base path is listed with one recursive listing per poll. Its
  children whose names parse as versions (``parse_version``) are versions;
  anything else (``.publications/``, ``publication.json``, junk) is ignored.
* A version is complete once ``<version>/saved_model.pb`` exists. That is
  all TF Serving knows, and since publishers (ours, TFX's Pusher) upload
  ``saved_model.pb`` last, every other file is there by then. A publisher's
  completion marker is deliberately not required: a replica reading gs://
  directly with real TF Serving loads at ``saved_model.pb``, and a fleet must
  switch versions on one rule, whichever way each replica reads the store.
* A complete version is copied under a hidden name (``.partial-<name>-…``)
  and renamed to its number, so the directory never shows a number without
  all of its files. Versions no longer wanted (deleted at the source, or
  outside the model's version policy) are renamed away, then deleted.
* Every store call is bounded (``STORE_TIMEOUT_SECONDS``, few retries): an
  unreachable or slow store raises ``StoreUnavailable`` and changes nothing
  locally; the caller retries on its next poll. Permanent mistakes (unknown
  scheme, missing bucket, a base path that is a file) raise ``BadBasePath``.
* Credentials and endpoints come from the standard environment only
  (``AWS_*``, ``AWS_ENDPOINT_URL``, ``GOOGLE_APPLICATION_CREDENTIALS``,
  ``STORAGE_EMULATOR_HOST``), as the s3fs/gcsfs clients read them.
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
from typing import Callable

log = logging.getLogger("serving")

REMOTE_SCHEMES = ("s3", "gs")
SAVED_MODEL_FILE = "saved_model.pb"
PARTIAL_PREFIX = ".partial-"
REMOVING_PREFIX = ".removing-"
# One listing or one file copy may take this long, retries included, before the store counts as unavailable.
STORE_TIMEOUT_SECONDS = 10.0
FILE_COPY_TIMEOUT_SECONDS = 120.0

# absl::SimpleAtoi, which TF Serving's FileSystemStoragePathSource parses names with:
# ASCII whitespace around, an optional sign, ASCII decimal digits, within int64.
_VERSION_NAME = re.compile(r"[ \t\n\v\f\r]*([+-]?[0-9]+)[ \t\n\v\f\r]*", re.ASCII)
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def parse_version(name: str) -> int | None:
    """A base path child's version number as TF Serving reads it, or None (ignored)."""
    match = _VERSION_NAME.fullmatch(name)
    if not match:
        return None
    version = int(match.group(1))
    return version if INT64_MIN <= version <= INT64_MAX else None


class BadBasePath(OSError):
    """A base path that cannot work however often it is retried: unknown scheme, no bucket, a file."""


class StoreUnavailable(OSError):
    """The store did not answer in time or failed; nothing was changed locally. Retry later."""


def is_remote(path: str) -> bool:
    """True for URLs (``s3://``, ``gs://``, or an unknown ``scheme://`` that ``open_store`` rejects)."""
    return "://" in path


def open_store(url: str):
    """(file system, bucket/prefix) for a remote base path; raises BadBasePath for an unusable URL."""
    scheme, _, rest = url.partition("://")
    scheme = scheme.lower()
    if scheme not in REMOTE_SCHEMES:
        raise BadBasePath(f"Unknown scheme '{scheme}://' in base path {url}: use s3://, gs:// or a local path")
    root = rest.strip("/")
    if not root:
        raise BadBasePath(f"Base path {url} names no bucket")
    if scheme == "s3":
        import s3fs

        # botocore retries a refused connection for ~20 s by default; one retry, short timeouts.
        store = s3fs.S3FileSystem(config_kwargs={"connect_timeout": 3, "read_timeout": STORE_TIMEOUT_SECONDS,
                                                 "retries": {"max_attempts": 2, "mode": "standard"}})
        store.retries = 2  # s3fs' own retry loop around botocore's
    else:
        # The plain JSON-API client: gcsfs' default class first asks Google's control plane for the
        # bucket's layout on every call, which an emulator or a restricted service account cannot answer.
        from gcsfs.core import GCSFileSystem

        store = GCSFileSystem(requests_timeout=STORE_TIMEOUT_SECONDS)
    return store, root


def _bounded(url: str, call, *args, timeout: float = STORE_TIMEOUT_SECONDS, **kwargs):
    """Runs one store call within ``timeout``; failures other than a missing object become StoreUnavailable."""
    try:
        return call(*args, timeout=timeout, **kwargs)
    except FileNotFoundError:
        raise
    except Exception as error:  # refused, reset, timed out, 5xx, credentials: all "try again later"
        detail = str(error).splitlines()[0] if str(error) else "no answer"
        raise StoreUnavailable(f"{url}: {type(error).__name__}: {detail}") from error


@dataclasses.dataclass
class RemoteVersion:
    name: str  # the child's name at the source, e.g. "00000007"
    files: dict[str, int]  # path inside the version -> size in bytes

    @property
    def complete(self) -> bool:
        return SAVED_MODEL_FILE in self.files


def list_versions(url: str) -> dict[int, RemoteVersion]:
    """The version children of a remote base path with their files, from one recursive listing.

    Raises BadBasePath (unknown scheme, missing bucket, base path is a file),
    FileNotFoundError (no objects under the base path yet), StoreUnavailable.
    """
    store, root = open_store(url)
    store.invalidate_cache()
    bucket = root.split("/", 1)[0]
    try:
        entries = _bounded(url, store.find, root, detail=True, withdirs=False)
    except FileNotFoundError:
        entries = {}
    if root in entries and entries[root].get("type") == "file":
        raise BadBasePath(f"Base path {url} is a file, not a directory of numbered versions")
    if not entries:
        if not _bounded(url, store.exists, bucket):
            raise BadBasePath(f"Bucket '{bucket}' of base path {url} does not exist")
        raise FileNotFoundError(f"No objects under base path {url}")
    files_by_name: dict[str, dict[str, int]] = {}
    for key, info in entries.items():
        child, _, inside = key[len(root) + 1:].partition("/")
        if parse_version(child) is None or not inside or inside.endswith("/"):
            continue  # not a version, or a "directory" placeholder object
        files_by_name.setdefault(child, {})[inside] = int(info.get("size") or 0)
    versions: dict[int, RemoteVersion] = {}
    for name in sorted(files_by_name):
        version = parse_version(name)
        if version in versions:
            log.warning("Duplicate version directories detected. Version %d will be loaded from %s, %s will be "
                        "ignored.", version, name, versions[version].name)
        versions[version] = RemoteVersion(name, files_by_name[name])
    return versions


def local_versions(directory: str) -> dict[int, str]:
    """Version -> directory name of the complete copies in a local mirror (hidden work dirs excluded)."""
    found = {}
    for name in sorted(os.listdir(directory)):
        version = parse_version(name)
        if version is not None and os.path.isdir(os.path.join(directory, name)):
            found[version] = name
    return found


@dataclasses.dataclass
class MirrorResult:
    added: list[int]
    removed: list[int]
    kept: list[int]


def mirror(url: str, destination: str, wanted: Callable[[set[int]], set[int]] | None = None,
           stop: threading.Event | None = None) -> MirrorResult:
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
            log.info("Removed version %d from %s: %s at %s", version, destination,
                     "deleted or incomplete" if version not in complete else "not wanted by the version policy",
                     url)
    return MirrorResult(added=added, removed=removed, kept=sorted(keep & set(present)))


def _copy_version(url: str, version: RemoteVersion, destination: str, stop: threading.Event | None) -> bool:
    """Copies one version under a hidden name, then renames it to its number. False if stopped or gone."""
    store, root = open_store(url)
    started = time.monotonic()
    partial = tempfile.mkdtemp(prefix=f"{PARTIAL_PREFIX}{version.name}-", dir=destination)
    try:
        # saved_model.pb last here too, though nothing watches a hidden directory.
        for inside in sorted(version.files, key=lambda name: (name == SAVED_MODEL_FILE, name)):
            if stop is not None and stop.is_set():
                shutil.rmtree(partial, ignore_errors=True)
                return False
            target = os.path.join(partial, *inside.split("/"))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            _bounded(url, store.get_file, f"{root}/{version.name}/{inside}", target,
                     timeout=FILE_COPY_TIMEOUT_SECONDS)
            if os.path.getsize(target) != version.files[inside]:
                raise StoreUnavailable(f"{url}: {version.name}/{inside} arrived with {os.path.getsize(target)} "
                                       f"bytes, the listing said {version.files[inside]}")
        os.rename(partial, os.path.join(destination, version.name))
    except FileNotFoundError:
        shutil.rmtree(partial, ignore_errors=True)
        log.warning("Version %s vanished from %s while being copied; skipped", version.name, url)
        return False
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    log.info("Mirrored version %s of %s into %s (%d files, %d bytes) in %.2f s", version.name, url,
             destination, len(version.files), sum(version.files.values()), time.monotonic() - started)
    return True


def _remove(destination: str, name: str) -> None:
    """Renames a version away first, so it disappears at once for a watcher, then deletes it."""
    doomed = tempfile.mkdtemp(prefix=f"{REMOVING_PREFIX}{name}-", dir=destination)
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
