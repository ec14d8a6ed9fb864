"""The version store: numbered versions of a model under a base path, local, ``s3://`` or ``gs://``.

In:  a model directory (``<base_path>/<model_name>``: a local path or a URL),
     a SavedModel to publish, retention (``keep_versions``, labelled versions),
     a callback that decides whether the model may still be published.
Out: the directory's complete versions, a version copied into a local
     directory, a new version published (``Publication``), old ones retired.

One module answers "which versions are there" for the publisher (the
pipeline's export, evaluate and smoke stages), the ModelServer's cache and
``serving.sync``, so they can never disagree.

Layout and version names
    The layout is TensorFlow Serving's: a child of the model directory whose
    name ``absl::SimpleAtoi`` reads as a number (``parse_version``: ASCII
    whitespace around, an optional sign, digits, within int64) is a version;
    every other name (``.publications``, ``.staging-…``, ``README``) is
    ignored. Of two names for one number ("7", "007") the last in sorted order
    counts. Locally a version is complete when its directory exists (it
    appears by one rename); in object storage, once ``<N>/saved_model.pb``
    exists, which every publisher (ours, TFX's Pusher) uploads last. A
    publisher's completion record is not required, so a fleet switches
    versions on one rule whichever way each replica reads the store.

Publication in a local directory (``serving.store.local``)
    TensorFlow Serving loads a numeric directory the moment it appears, so a
    version is copied under a hidden name (``.staging-<host>-<pid>-…``) in
    the same directory and renamed to its number in one step; a numeric
    directory is never written into. Versions are retired the same way:
    renamed to a hidden name, then deleted. Every step that reads or changes
    the numbering runs under the lock file ``.publish.lock``, so parallel
    publications get distinct, consecutive numbers. A number is never given
    twice: the highest one ever published is kept in ``.last_version``, so
    after a rollback (the newest version deleted) the next model gets a new
    number. Staging copies left by a killed publication are removed by the
    next one.

Publication in object storage (``serving.store.remote``)
    An object store has no rename and no lock, so:

    1. Claim. ``.publications/<N>.claim`` is created with a conditional write
       that fails if it exists (S3 ``If-None-Match: *``, GCS
       ``ifGenerationMatch=0``), N one more than every number claimed or
       present. Of two publishers, on any machines, one gets N and the other
       tries N+1. Claims are kept, so a number is never given twice.
    2. Wait until every lower claim is settled (published, refused or
       abandoned): publications settle in the order of their numbers.
    3. Decide (below). ``.publications/<N>.outcome`` is created conditionally
       saying "published": the point of no return.
    4. Upload every file into ``<N>/``, ``saved_model.pb`` last, so nothing
       loads before the version is complete; then the completion record
       ``.publications/<N>.complete`` (the version's files and sizes).

    A killed publisher leaves a claim without an outcome, or an outcome and
    files without ``saved_model.pb``: never loadable. The next publication
    settles it as "abandoned" and deletes its files, once its owner is known to
    be dead (same host, process gone) or silent for ``stale_seconds`` (a live
    publisher rewrites ``.publications/<N>.alive`` while it uploads and
    waits). "abandoned" is written with the same conditional write, so a
    publisher that was only slow finds its number taken and stops, deleting
    its files. Retirement deletes ``saved_model.pb`` first, so no reader
    starts copying a half-deleted version.

The decision, in both
    Under the lock (locally) or once every lower publication has settled
    (object storage), against the newest complete version: a model whose
    fingerprint (``fingerprint``, a hash of the SavedModel's content) equals
    it is already served, and no version is made; otherwise ``still_blessed``
    (when given) is asked with a local directory holding that version (None
    when there is none), and a model no longer good enough is refused with
    ``PublicationRefused``. Then retention: all but the newest
    ``keep_versions`` versions go, except the protected ones (those the
    server's version labels point at, which the caller reads from its config).

Reading (``serving.store.mirror``)
    A remote base path is listed with one recursive listing per poll. A
    complete version is copied under a hidden name (``.partial-…``) and
    renamed to its number, so a local directory never shows a number without
    all of its files; versions no longer wanted are renamed away, then
    deleted. The ModelServer's cache (``ModelCache.local_base_path``, the
    manager's hook) and ``python -m serving.sync`` both mirror this way.

Failures (``serving.store.client``)
    Every client comes from one factory (``file_system``: one set of timeouts
    and retries). Listings, first contact and file copies are bounded: an
    unreachable or slow store raises ``StoreUnavailable`` and changes nothing
    locally. Permanent mistakes (unknown scheme, missing bucket, a base path
    that is a file) raise ``BadBasePath``. Both are ``StoreError``s, one line
    naming the URL. Credentials and endpoints come from the standard
    environment only (``AWS_*``, ``AWS_ENDPOINT_URL``,
    ``GOOGLE_APPLICATION_CREDENTIALS``, ``STORAGE_EMULATOR_HOST``).
"""

import contextlib
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from serving.store import local, remote
from serving.store.client import Listing, Store, check_usable, fetch_version, list_versions, look, open_store
from serving.store.layout import (
    MODEL_CARD_FILE,
    SAVED_MODEL_FILE,
    BadBasePath,
    Publication,
    PublicationRefused,
    StoreError,
    StoreUnavailable,
    fingerprint,
    is_remote,
    parse_version,
    versions_to_retire,
)
from serving.store.local import local_versions
from serving.store.mirror import ModelCache, mirror

__all__ = [
    "MODEL_CARD_FILE",
    "SAVED_MODEL_FILE",
    "BadBasePath",
    "ModelCache",
    "Publication",
    "PublicationRefused",
    "StoreError",
    "StoreUnavailable",
    "complete_versions",
    "fingerprint",
    "is_remote",
    "list_versions",
    "local_version",
    "local_versions",
    "mirror",
    "newest_published",
    "parse_version",
    "publish",
    "retire",
    "version_file",
    "versions_to_retire",
]


def _checked_listing(url: str) -> tuple[Store, Listing]:
    """A listing of the model directory at `url`, after checking that the store can hold it (StoreError if not)."""
    store = open_store(url)
    check_usable(store)
    return store, look(store)


def complete_versions(directory) -> list[int]:
    """The loadable versions of the model at `directory` (local, or a store URL), ascending."""
    if not is_remote(directory):
        return sorted(local_versions(directory))
    return _checked_listing(str(directory))[1].complete()


@contextlib.contextmanager
def local_version(directory, version: int) -> Iterator[Path]:
    """A local directory holding `version` of the model at `directory`: in place, or copied from a store."""
    if not is_remote(directory):
        yield Path(directory) / local_versions(directory).get(version, str(version))
        return
    store, listing = _checked_listing(str(directory))
    found = listing.versions.get(version)
    if found is None or not found.complete:
        raise StoreError(f"{directory}: no complete version {version}")
    with tempfile.TemporaryDirectory(prefix="published-") as scratch:
        copy = Path(scratch) / found.name
        fetch_version(store, found, copy)
        yield copy


def version_file(directory, version: int, inside: str) -> bytes | None:
    """The bytes of one file of a version (e.g. its model card), without copying the rest; None when the
    model at `directory` (local, or a store URL) has no complete `version`, FileNotFoundError when the
    version lacks the file."""
    if not is_remote(directory):
        name = local_versions(directory).get(version)
        return None if name is None else (Path(directory) / name / inside).read_bytes()
    store, listing = _checked_listing(str(directory))
    found = listing.versions.get(version)
    if found is None or not found.complete:
        return None
    if inside not in found.files:
        raise FileNotFoundError(f"{directory}/{found.name}/{inside}")
    return store.bounded(store.fs.cat_file, store.path(found.name, inside))


@contextlib.contextmanager
def newest_published(directory) -> Iterator[tuple[int | None, Path | None]]:
    """(version, local directory holding it) of the newest complete version, or (None, None).

    A local model directory is used in place; from a store the version is
    copied into a temporary directory, removed afterwards.
    """
    versions = complete_versions(directory)
    if not versions:
        yield None, None
        return
    with local_version(directory, versions[-1]) as saved_model:
        yield versions[-1], saved_model


def publish(
    saved_model: Path,
    directory,
    keep_versions: int,
    protected: set[int] = frozenset(),
    still_blessed: Callable[[Path | None], tuple[bool, str]] | None = None,
    **remote_options,
) -> Publication:
    """Make `saved_model` the newest version at `directory` unless it already is; apply retention.

    `remote_options` (``stale_seconds``, ``wait_seconds``) tune the object-store protocol.
    """
    if is_remote(directory):
        return remote.publish(saved_model, str(directory), keep_versions, protected, still_blessed, **remote_options)
    return local.publish(saved_model, directory, keep_versions, protected, still_blessed)


def retire(directory, version: int) -> None:
    """Delete `version` of the model at `directory` so that no reader sees it half-deleted."""
    if is_remote(directory):
        remote.retire(open_store(str(directory)), version)
    else:
        local.retire(directory, version)
