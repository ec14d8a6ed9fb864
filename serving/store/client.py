"""Object storage (s3://, gs://) as the version store reads it: one client factory, bounded calls, listings.

In:  a model directory URL ``s3://bucket/prefix`` or ``gs://bucket/prefix``;
     endpoints and credentials from the standard environment only
     (``AWS_ENDPOINT_URL``, ``AWS_*``; ``STORAGE_EMULATOR_HOST``,
     ``GOOGLE_APPLICATION_CREDENTIALS``), as the s3fs/gcsfs clients read them.
Out: a ``Store`` (client and paths), one ``Listing`` of the directory per
     call (versions with their files, publication records), a version's files
     copied into a local directory; failures as one-line ``StoreError``s.

Every client is made by ``file_system`` with one set of timeouts and retries.
Calls that must not hang (listings, first contact, file copies) are bounded by
``bounded``: an unreachable or slow store raises ``StoreUnavailable``.
"""

import json
import logging
import os
import socket
import threading
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from serving.store.layout import (
    RECORDS,
    SAVED_MODEL_FILE,
    BadBasePath,
    StoreUnavailable,
    join,
    parse_version,
)

log = logging.getLogger("serving")

SCHEMES = {"s3": "s3", "gs": "gs", "gcs": "gs"}
CONNECT_TIMEOUT_SECONDS = 3.0
READ_TIMEOUT_SECONDS = 60.0  # one socket read; a whole call is bounded by its caller
CLIENT_ATTEMPTS = 2  # the clients' own retries of a failed request
CALL_TIMEOUT_SECONDS = 10.0  # one listing or small request, retries included
FILE_TIMEOUT_SECONDS = 120.0  # one file copied out of the store
CREDENTIALS = {
    "s3": "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or an instance role",
    "gs": "GOOGLE_APPLICATION_CREDENTIALS or the machine's service account",
}


def file_system(scheme: str):
    """The fsspec client for ``s3`` or ``gs``, configured from the environment, with bounded retries.

    gcsfs' default class first asks Google's control plane for the bucket's
    layout on every call, which an emulator or a restricted service account
    cannot answer; the core JSON-API class does not. gcsfs also logs a
    traceback for every failed request; the failure reaches us and is reported
    in one line, so its logger only keeps critical messages.
    """
    if scheme == "s3":
        import s3fs

        fs = s3fs.S3FileSystem(
            config_kwargs={
                "connect_timeout": CONNECT_TIMEOUT_SECONDS,
                "read_timeout": READ_TIMEOUT_SECONDS,
                "retries": {"max_attempts": CLIENT_ATTEMPTS, "mode": "standard"},
            }
        )
    else:
        import gcsfs.core

        fs = gcsfs.core.GCSFileSystem(requests_timeout=READ_TIMEOUT_SECONDS)
        logging.getLogger("gcsfs").setLevel(logging.CRITICAL)
    fs.retries = CLIENT_ATTEMPTS  # s3fs retries each call 5 times by default (gcsfs' count is fixed)
    return fs


def describe(error: BaseException) -> str:
    """The first 300 characters of an error's message on one line."""
    return (" ".join(str(error).split()) or type(error).__name__)[:300]


@dataclass
class Store:
    """A model directory in an object store: `url` as given, `root` as the file system names it."""

    url: str
    scheme: str
    fs: object
    root: str

    def path(self, *names: str) -> str:
        return join(self.root, *names)

    def record(self, number: int, kind: str) -> str:
        return self.path(RECORDS, f"{number}.{kind}")

    def bounded(self, call, *args, timeout: float = CALL_TIMEOUT_SECONDS, **kwargs):
        """``call(*args, **kwargs)`` within ``timeout``; a missing or existing object raises as the client does,
        every other failure (refused, reset, timed out, 5xx, credentials) as one-line StoreUnavailable."""
        try:
            return call(*args, timeout=timeout, **kwargs)
        except (FileNotFoundError, FileExistsError):
            raise
        except Exception as error:
            name = type(error).__name__
            if "Credential" in name or "Auth" in name or isinstance(error, PermissionError):
                raise StoreUnavailable(
                    f"{self.url}: no usable credentials ({name}: {describe(error)}); provide "
                    f"{CREDENTIALS[self.scheme]} in the environment"
                ) from error
            if "Timeout" in name and not str(error):
                raise StoreUnavailable(f"{self.url}: no answer within {timeout:.0f} s") from error
            raise StoreUnavailable(f"{self.url}: {name}: {describe(error)}") from error

    def read_json(self, path: str) -> dict:
        return json.loads(self.fs.cat_file(path))

    def write_json(self, path: str, data: dict, exclusive: bool = False) -> None:
        """Write `data`; with `exclusive`, FileExistsError if the object exists (a conditional write)."""
        self.fs.pipe_file(path, json.dumps(data, sort_keys=True).encode(), mode="create" if exclusive else "overwrite")

    def remove(self, path: str) -> None:
        try:
            self.fs.rm(path, recursive=True)
        except FileNotFoundError:
            pass
        self.fs.invalidate_cache()

    def bucket_exists(self) -> bool:
        """Whether the bucket exists; unlike the clients' exists(), credential and connection errors raise."""
        try:
            self.bounded(self.fs.info, self.root.split("/", 1)[0])
        except FileNotFoundError:
            return False
        return True

    def no_bucket(self) -> BadBasePath:
        bucket = self.root.split("/", 1)[0]
        return BadBasePath(f"{self.url}: bucket {bucket!r} does not exist (or these credentials cannot see it)")

    def is_a_file(self, prefix: str) -> BadBasePath:
        return BadBasePath(f"{self.url}: {self.scheme}://{prefix} is a file, not a directory of numbered versions")


def open_store(url: str) -> Store:
    """The store of a model directory URL, without contacting it; BadBasePath for an unknown scheme or no bucket."""
    scheme, _, rest = str(url).partition("://")
    if scheme.lower() not in SCHEMES:
        raise BadBasePath(f"{url}: unknown scheme {scheme!r}; use s3://, gs:// or a local path")
    scheme = SCHEMES[scheme.lower()]
    root = rest.strip("/")
    if not root.split("/", 1)[0]:
        raise BadBasePath(f"{url}: no bucket named")
    return Store(url=str(url).rstrip("/"), scheme=scheme, fs=file_system(scheme), root=root)


def _configured_endpoint(scheme: str) -> str | None:
    """The endpoint the environment points the client at, if not the provider's default."""
    if scheme == "s3":
        return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    host = os.environ.get("STORAGE_EMULATOR_HOST")
    return host if host and "://" in host else (f"http://{host}" if host else None)


def check_usable(store: Store) -> None:
    """Fail with one line, before anything is written, if the store cannot hold versions at its URL.

    A refused connection (which the clients retry for seconds), missing
    credentials, a bucket that does not exist and a path that is a file are
    told apart.
    """
    endpoint = _configured_endpoint(store.scheme)
    if endpoint:
        parsed = urllib.parse.urlsplit(endpoint)
        try:
            socket.create_connection(
                (parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80)),
                timeout=CONNECT_TIMEOUT_SECONDS,
            ).close()
        except OSError as error:
            raise StoreUnavailable(f"{store.url}: cannot connect to the endpoint {endpoint} ({error})") from None
    store.fs.invalidate_cache()
    if not store.bucket_exists():
        raise store.no_bucket()
    parts = store.root.split("/")
    for depth in range(2, len(parts) + 1):
        prefix = "/".join(parts[:depth])
        if store.bounded(store.fs.isfile, prefix):
            raise store.is_a_file(prefix)


@dataclass
class Version:
    """A version found in the store: its child name (e.g. "00000007") and files (relative path -> bytes)."""

    name: str
    files: dict[str, int] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        """TF Serving loads a version once saved_model.pb is there; publishers upload it last."""
        return SAVED_MODEL_FILE in self.files


@dataclass
class Listing:
    """One listing of a model directory: versions with their files, and publication records by number."""

    versions: dict[int, Version] = field(default_factory=dict)
    records: dict[int, set[str]] = field(default_factory=dict)  # number -> {"claim", "alive", ...}
    objects: int = 0  # every object under the directory, versions or not
    root_is_file: bool = False

    def complete(self) -> list[int]:
        """The versions TensorFlow Serving can load, ascending."""
        return sorted(number for number, version in self.versions.items() if version.complete)

    def highest_number(self) -> int:
        return max([0, *self.versions, *self.records])


def look(store: Store) -> Listing:
    """List everything under the model directory with one bounded recursive listing.

    Children whose names are not versions (``parse_version``) are ignored, as
    TF Serving ignores them, except the publication records in RECORDS.
    """
    store.fs.invalidate_cache()
    try:
        found = store.bounded(store.fs.find, store.root, detail=True, withdirs=False)
    except FileNotFoundError:
        found = {}
    listing = Listing(objects=len(found), root_is_file=found.get(store.root, {}).get("type") == "file")
    names: dict[str, dict[str, int]] = {}
    for path, info in found.items():
        child, _, inside = path[len(store.root) :].lstrip("/").partition("/")
        if parse_version(child) is not None and inside and not inside.endswith("/"):
            names.setdefault(child, {})[inside] = int(info.get("size") or 0)
        elif child == RECORDS and "/" not in inside:
            number, _, kind = inside.partition(".")
            if parse_version(number) is not None and kind:
                listing.records.setdefault(parse_version(number), set()).add(kind)
    for name in sorted(names):
        version = parse_version(name)
        if version in listing.versions:
            log.warning(
                "Duplicate version directories detected. Version %d will be loaded from %s, %s will be ignored.",
                version,
                name,
                listing.versions[version].name,
            )
        listing.versions[version] = Version(name, names[name])
    return listing


def list_versions(url: str) -> dict[int, Version]:
    """The versions of a remote base path with their files, from one listing.

    Raises BadBasePath (unknown scheme, missing bucket, base path is a file),
    FileNotFoundError (no objects under the base path yet), StoreUnavailable.
    """
    store = open_store(url)
    listing = look(store)
    if listing.root_is_file:
        raise store.is_a_file(store.root)
    if not listing.objects:
        if not store.bucket_exists():
            raise store.no_bucket()
        raise FileNotFoundError(f"No objects under base path {url}")
    return listing.versions


def fetch_version(store: Store, version: Version, target: Path, stop: threading.Event | None = None) -> bool:
    """Copy a listed version's files into the directory `target`, saved_model.pb last; False if stopped.

    Raises FileNotFoundError if a file vanished, StoreUnavailable if the store
    fails or a file arrives with another size than listed.
    """
    for inside in sorted(version.files, key=lambda name: (name == SAVED_MODEL_FILE, name)):
        if stop is not None and stop.is_set():
            return False
        local = Path(target, *inside.split("/"))
        local.parent.mkdir(parents=True, exist_ok=True)
        store.bounded(store.fs.get_file, store.path(version.name, inside), str(local), timeout=FILE_TIMEOUT_SECONDS)
        if local.stat().st_size != version.files[inside]:
            raise StoreUnavailable(
                f"{store.url}: {version.name}/{inside} arrived with {local.stat().st_size} "
                f"bytes, the listing said {version.files[inside]}"
            )
    return True
