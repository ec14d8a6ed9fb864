"""Publish versions into object storage (s3://, gs://) with the promises pipeline.publish makes locally.

In:  an exported SavedModel directory and a model directory URL
     `s3://bucket/prefix/<model_name>` or `gs://bucket/prefix/<model_name>`;
     endpoints and credentials come from the standard environment only
     (AWS_ENDPOINT_URL, AWS_*; STORAGE_EMULATOR_HOST, GOOGLE_APPLICATION_CREDENTIALS).
Out: at most one new version `<model>/<N>/`, retention applied, and a
     `pipeline.publish.Publication`; records of every publication under
     `<model>/.publications/` (a name TensorFlow Serving ignores: not a number).

An object store has no rename and no lock, so the local scheme (stage under a
hidden name, rename under a lock file) becomes:

1. Claim.  `.publications/<N>.claim` is created with a conditional write that
   fails if it exists (S3 `If-None-Match: *`, GCS `ifGenerationMatch=0`), N one
   more than every number claimed or present. Of two publishers, on any
   machines, one gets N and the other tries N+1. Claims are kept, so a number
   is never given twice (they play `.last_version`'s part).
2. Wait until every lower claim is settled (published, refused or abandoned):
   publications settle in the order of their numbers, as under the local lock.
3. Decide. Against the newest complete version below N: identical fingerprint,
   or no longer blessed (`still_blessed`), ends the claim with no version.
   Otherwise `.publications/<N>.outcome` is created conditionally saying
   "published": this is the point of no return.
4. Upload every file into `<N>/`, `saved_model.pb` last: TensorFlow Serving
   loads a version when `saved_model.pb` is there, so nothing loads before the
   version is complete. Then the completion record `.publications/<N>.complete`
   (the version's files and sizes).
5. Retention, as locally: the newest `keep_versions` and labelled versions stay.

A killed publisher leaves a claim without an outcome, or an outcome and files
without `saved_model.pb`: never loadable. The next publication settles it as
"abandoned" and deletes its files, once its owner is known to be dead (same
host, process gone) or silent for `stale_seconds` (a live publisher rewrites
`.publications/<N>.alive` while it uploads and waits). The "abandoned" outcome
is created with the same conditional write, so a publisher that was only slow
finds its number taken from it and stops, deleting its files.
"""

import concurrent.futures
import contextlib
import json
import logging
import os
import socket
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.publish import (
    MODEL_CARD, Publication, PublicationRefused, fingerprint, newest_version, process_alive, version_numbers,
    versions_to_retire,
)

SCHEMES = {"s3": "s3", "gs": "gs", "gcs": "gs"}
RECORDS = ".publications"
LAST_FILE = "saved_model.pb"
STALE_SECONDS = 600.0       # a publisher silent this long is dead (it heartbeats every HEARTBEAT_SECONDS)
HEARTBEAT_SECONDS = 10.0
WAIT_SECONDS = 3600.0       # longest wait for lower-numbered publications to settle
POLL_SECONDS = 0.5
REACH_SECONDS = 20.0        # first contact with the store; the clients' own retries take longer
MAX_CLAIM_ATTEMPTS = 100


class StoreError(Exception):
    """The store cannot be used as given: one line naming the URL and the problem."""


def is_store_url(location) -> bool:
    """True for `scheme://...` (object storage), False for a local path."""
    return "://" in str(location)


def join(base: str, *names: str) -> str:
    return "/".join([str(base).rstrip("/"), *names])


CREDENTIALS = {"s3": "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or an instance role",
               "gs": "GOOGLE_APPLICATION_CREDENTIALS or the machine's service account"}


def _file_system(scheme: str):
    """An fsspec file system configured from the environment, with bounded retries.

    gcsfs' default class probes each bucket's layout with credentials an emulator
    does not need and logs a warning for it; the core class does not. gcsfs also
    logs a traceback for every failed request; the failure reaches us and is
    reported in one line, so its logger only keeps critical messages.
    """
    if scheme == "s3":
        import s3fs

        fs = s3fs.S3FileSystem(config_kwargs={
            "connect_timeout": 5, "read_timeout": 60, "retries": {"max_attempts": 2, "mode": "standard"}})
    else:
        import gcsfs.core

        fs = gcsfs.core.GCSFileSystem(requests_timeout=60)
        logging.getLogger("gcsfs").setLevel(logging.CRITICAL)
    fs.retries = 2  # s3fs retries each call 5 times by default (gcsfs' count is fixed; _bounded caps it)
    return fs


def _configured_endpoint(scheme: str) -> str | None:
    """The endpoint the environment points the client at, if not the provider's default."""
    if scheme == "s3":
        return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    host = os.environ.get("STORAGE_EMULATOR_HOST")
    return host if host and "://" in host else (f"http://{host}" if host else None)


def _check_reachable(url: str, endpoint: str) -> None:
    """Fail at once on a refused connection, which the clients would retry for tens of seconds."""
    parsed = urllib.parse.urlsplit(endpoint)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((parsed.hostname, port), timeout=5).close()
    except OSError as error:
        raise StoreError(f"{url}: cannot connect to the endpoint {endpoint} ({error})") from None


def _bounded(call: Callable, seconds: float, what: str):
    """`call()`, or StoreError if it takes longer than `seconds` (the client keeps retrying in the background)."""
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        return pool.submit(call).result(timeout=seconds)
    except concurrent.futures.TimeoutError:
        raise StoreError(f"{what}: no answer within {seconds:.0f} s; is the endpoint reachable?") from None
    finally:
        pool.shutdown(wait=False)


def _describe(error: Exception) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text[:300]


@dataclass
class Store:
    """A model directory in an object store: `url` as given, `root` as the file system names it."""

    url: str
    fs: object
    root: str

    def path(self, *names: str) -> str:
        return join(self.root, *names)

    def record(self, number: int, kind: str) -> str:
        return self.path(RECORDS, f"{number}.{kind}")

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


def open_store(url: str) -> Store:
    """Check that `url` names a usable model directory in an object store; StoreError (one line) if not.

    Unknown scheme, unreachable endpoint, missing credentials, a bucket that does
    not exist and a path that is a file are told apart.
    """
    scheme, _, rest = str(url).partition("://")
    if scheme not in SCHEMES:
        raise StoreError(f"{url}: unknown scheme {scheme!r}; use s3://, gs:// or a local path")
    bucket = rest.split("/", 1)[0]
    if not bucket:
        raise StoreError(f"{url}: no bucket named")
    endpoint = _configured_endpoint(SCHEMES[scheme])
    if endpoint:
        _check_reachable(url, endpoint)
    fs = _file_system(SCHEMES[scheme])
    root = rest.rstrip("/")

    def inspect():
        fs.invalidate_cache()
        try:
            fs.info(bucket)  # unlike exists(), lets credential and connection errors through
        except FileNotFoundError:
            raise StoreError(f"{url}: bucket {bucket!r} does not exist (or these credentials cannot see it)") from None
        parts = root.split("/")
        for depth in range(2, len(parts) + 1):
            prefix = "/".join(parts[:depth])
            if fs.isfile(prefix):
                raise StoreError(f"{url}: {SCHEMES[scheme]}://{prefix} is a file, not a directory")

    try:
        _bounded(inspect, REACH_SECONDS, f"{url}")
    except StoreError:
        raise
    except Exception as error:  # the clients' errors differ per store; all mean this URL cannot be used
        name = type(error).__name__
        if "Credential" in name or "Auth" in name or isinstance(error, PermissionError):
            raise StoreError(f"{url}: no usable credentials ({name}: {_describe(error)}); provide "
                             f"{CREDENTIALS[SCHEMES[scheme]]} in the environment") from None
        raise StoreError(f"{url}: cannot use the store ({name}: {_describe(error)})") from None
    return Store(url=str(url).rstrip("/"), fs=fs, root=root)


# --- what is in the model directory -------------------------------------------------------------


@dataclass
class Listing:
    """One listing of a model directory: version files and publication records, by number."""

    files: dict[int, dict[str, int]] = field(default_factory=dict)    # version -> relative name -> size
    records: dict[int, set[str]] = field(default_factory=dict)        # number -> {"claim", "alive", ...}

    def complete(self) -> list[int]:
        """Versions TensorFlow Serving can load: numeric directories holding saved_model.pb, ascending."""
        return sorted(number for number, names in self.files.items() if LAST_FILE in names)

    def highest_number(self) -> int:
        return max([0, *self.files, *self.records])


def look(store: Store) -> Listing:
    """List everything under the model directory once. Names that are not numbers are ignored, as
    TensorFlow Serving ignores them."""
    store.fs.invalidate_cache()
    listing = Listing()
    try:
        found = store.fs.find(store.root, detail=True)
    except FileNotFoundError:
        return listing
    for path, info in found.items():
        relative = path[len(store.root):].lstrip("/")
        top, _, rest = relative.partition("/")
        if top.isascii() and top.isdigit() and rest:
            listing.files.setdefault(int(top), {})[rest] = int(info.get("size") or 0)
        elif top == RECORDS and "/" not in rest:
            number, _, kind = rest.partition(".")
            if number.isascii() and number.isdigit() and kind:
                listing.records.setdefault(int(number), set()).add(kind)
    return listing


def complete_versions(directory) -> list[int]:
    """The loadable versions of the model at `directory` (local, or a store URL), ascending."""
    if not is_store_url(directory):
        return version_numbers(Path(directory))
    return look(open_store(str(directory))).complete()


def download_version(store: Store, version: int, destination: Path) -> Path:
    """Copy version `version` into `destination/<version>/`; returns that directory."""
    target = Path(destination) / str(version)
    for relative in look(store).files.get(version, {}):
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        store.fs.get_file(store.path(str(version), relative), str(target / relative))
    return target


@contextlib.contextmanager
def newest_published(directory):
    """(version, directory holding it) of the newest published version, or (None, None).

    A local model directory is used in place; from a store the newest complete
    version is copied into a temporary directory, removed afterwards.
    """
    if not is_store_url(directory):
        version = newest_version(Path(directory))
        yield version, (Path(directory) / str(version) if version is not None else None)
        return
    versions = complete_versions(str(directory))
    if not versions:
        yield None, None
        return
    with local_version(directory, versions[-1]) as saved_model:
        yield versions[-1], saved_model


@contextlib.contextmanager
def local_version(directory, version: int):
    """A local directory holding `version` of the model at `directory`: in place, or copied from a store."""
    if not is_store_url(directory):
        yield Path(directory) / str(version)
        return
    store = open_store(str(directory))
    if version not in look(store).complete():
        raise StoreError(f"{directory}: no complete version {version}")
    with tempfile.TemporaryDirectory(prefix="published-") as scratch:
        yield download_version(store, version, Path(scratch))


# --- publication --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Owner:
    """Who publishes: enough to tell, from another process, whether it still runs."""

    host: str
    pid: int
    token: str

    @classmethod
    def this_process(cls) -> "Owner":
        return cls(socket.gethostname(), os.getpid(), uuid.uuid4().hex)

    def as_dict(self) -> dict:
        return {"host": self.host, "pid": self.pid, "token": self.token}


def claim_number(store: Store, owner: Owner, new_fingerprint: str) -> int:
    """The next number, claimed with a conditional write; another publisher's claim moves us on."""
    number = look(store).highest_number() + 1
    for _ in range(MAX_CLAIM_ATTEMPTS):
        try:
            store.write_json(store.record(number, "claim"), {**owner.as_dict(), "started": time.time(),
                                                             "fingerprint": new_fingerprint}, exclusive=True)
            return number
        except FileExistsError:
            number = max(number + 1, look(store).highest_number() + 1)
    raise StoreError(f"{store.url}: no version number claimed after {MAX_CLAIM_ATTEMPTS} attempts")


def _outcome(store: Store, number: int, kinds: set[str]) -> dict | None:
    return store.read_json(store.record(number, "outcome")) if "outcome" in kinds else None


def _owner_dead(store: Store, number: int, kinds: set[str], stale_seconds: float) -> bool:
    """Dead: its process is gone from this host, or it has not been heard of for `stale_seconds`."""
    try:
        claim = store.read_json(store.record(number, "claim"))
    except FileNotFoundError:
        return True
    if claim.get("host") == socket.gethostname() and not process_alive(int(claim.get("pid", 0))):
        return True
    heard = float(claim.get("started", 0))
    if "alive" in kinds:
        try:
            heard = max(heard, float(store.read_json(store.record(number, "alive"))["at"]))
        except (FileNotFoundError, KeyError, ValueError):
            pass
    return time.time() - heard > stale_seconds


def settle(store: Store, number: int, listing: Listing, stale_seconds: float) -> bool:
    """Whether publication `number` is settled; a dead publisher's is settled as abandoned here."""
    kinds = listing.records.get(number, set())
    if "claim" not in kinds:
        return True
    outcome = _outcome(store, number, kinds)
    finished = LAST_FILE in listing.files.get(number, {}) or "complete" in kinds  # (maybe retired since)
    if outcome is not None and (outcome["outcome"] != "published" or finished):
        if outcome["outcome"] != "published" and number in listing.files:
            store.remove(store.path(str(number)))  # a settled publication's leftover files
        return True
    if not _owner_dead(store, number, kinds, stale_seconds):
        return False
    abandoned = {"outcome": "abandoned", "reason": "its publisher died before the upload finished",
                 "at": time.time()}
    if outcome is None:
        try:
            store.write_json(store.record(number, "outcome"), abandoned, exclusive=True)
        except FileExistsError:
            return False  # its publisher decided just now: look again
    else:  # it decided to publish, then died before saved_model.pb: nothing loadable was left
        store.write_json(store.record(number, "outcome"), abandoned)
    store.remove(store.path(str(number)))
    return True


@contextlib.contextmanager
def heartbeat(store: Store, number: int):
    """While in the block, rewrite `<N>.alive` every HEARTBEAT_SECONDS so that others know we run,
    however long one file takes to upload."""
    stop = threading.Event()

    def beat():
        while True:
            try:
                store.write_json(store.record(number, "alive"), {"at": time.time()})
            except Exception:  # noqa: BLE001  a missed beat only makes us look older; store errors surface in the caller
                pass
            if stop.wait(HEARTBEAT_SECONDS):
                return

    thread = threading.Thread(target=beat, name=f"heartbeat-{number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def wait_for_lower(store: Store, number: int, stale_seconds: float, wait_seconds: float) -> Listing:
    """Block until every publication numbered below `number` is settled; returns the last listing."""
    deadline = time.monotonic() + wait_seconds
    while True:
        listing = look(store)
        pending = [lower for lower in sorted(listing.records) if lower < number
                   and not settle(store, lower, listing, stale_seconds)]
        if not pending:
            return look(store)  # settling may have removed files
        if time.monotonic() > deadline:
            raise StoreError(f"{store.url}: publications {pending} still running after {wait_seconds:.0f} s")
        time.sleep(POLL_SECONDS)


def version_fingerprint(store: Store, version: int, listing: Listing) -> str | None:
    """The fingerprint recorded when `version` was published, or in its model card; None if unknown."""
    kinds = listing.records.get(version, set())
    try:
        if "outcome" in kinds:
            return store.read_json(store.record(version, "outcome")).get("fingerprint")
        return store.read_json(store.path(str(version), MODEL_CARD.as_posix())).get("fingerprint")
    except (FileNotFoundError, ValueError):
        return None


def upload(store: Store, saved_model: Path, number: int, names: list[str]) -> None:
    for name in names:
        store.fs.put_file(str(saved_model / name), store.path(str(number), name))


def finish(store: Store, number: int, saved_model: Path, names: list[str], new_fingerprint: str,
           listing: Listing, still_blessed: Callable[[Path | None], tuple[bool, str]] | None,
           end: Callable[[str, str], None]) -> tuple[int, bool]:
    """Decide publication `number` against the newest complete version below it and carry it out;
    returns (the version serving the model, whether it is new).

    Files are uploaded only once the decision is made, with saved_model.pb last:
    TensorFlow Serving on gs:// tries to load a numeric directory as soon as it
    lists it (and retries a few times, a minute apart), so the time a version
    directory exists without saved_model.pb is kept to the upload itself.
    """
    below = [version for version in listing.complete() if version < number]
    newest = below[-1] if below else None
    if newest is not None and version_fingerprint(store, newest, listing) == new_fingerprint:
        end("identical", f"identical to version {newest}")
        return newest, False
    if still_blessed is not None:
        with tempfile.TemporaryDirectory(prefix="published-") as scratch:
            copy = download_version(store, newest, Path(scratch)) if newest is not None else None
            blessed, reason = still_blessed(copy)
        if not blessed:
            end("refused", reason)
            raise PublicationRefused(reason)
    end("published", f"published as version {number}")
    upload(store, saved_model, number, [name for name in names if name != LAST_FILE])
    store.fs.put_file(str(saved_model / LAST_FILE), store.path(str(number), LAST_FILE))
    return number, True


def publish(saved_model: Path, url: str, keep_versions: int, protected: set[int] = frozenset(),
            still_blessed: Callable[[Path | None], tuple[bool, str]] | None = None,
            stale_seconds: float = STALE_SECONDS, wait_seconds: float = WAIT_SECONDS) -> Publication:
    """Make `saved_model` the newest version at `url` unless it already is; apply retention.

    `still_blessed` is asked with a local copy of the newest complete version
    (a directory named by its number), after every lower-numbered publication
    has settled, as the local publication asks it under its lock.
    """
    saved_model = Path(saved_model)
    if not (saved_model / LAST_FILE).is_file():
        raise ValueError(f"{saved_model}: not a SavedModel (no {LAST_FILE})")
    versions_to_retire([], keep_versions, set())  # a bad keep_versions fails before anything is written
    store = open_store(url)
    new_fingerprint = fingerprint(saved_model)
    names = sorted(path.relative_to(saved_model).as_posix() for path in saved_model.rglob("*") if path.is_file())
    number = claim_number(store, Owner.this_process(), new_fingerprint)
    decided = []  # the outcome, once written

    def end(outcome: str, reason: str, exclusive: bool = True) -> None:
        store.write_json(store.record(number, "outcome"), {"outcome": outcome, "reason": reason,
                                                           "fingerprint": new_fingerprint, "at": time.time()},
                         exclusive=exclusive)
        decided.append(outcome)

    try:
        with heartbeat(store, number):
            listing = wait_for_lower(store, number, stale_seconds, wait_seconds)
            version, created = finish(store, number, saved_model, names, new_fingerprint, listing, still_blessed,
                                      end)
            if created:
                store.write_json(store.record(number, "complete"), {
                    "fingerprint": new_fingerprint, "at": time.time(),
                    "files": {name: (saved_model / name).stat().st_size for name in names}})
    except FileExistsError:
        # our outcome was written by another publication: it took us for dead
        store.remove(store.path(str(number)))
        raise StoreError(f"{store.url}: publication {number} was settled as abandoned by another publisher "
                         f"(silent for over {stale_seconds:.0f} s); nothing published") from None
    except BaseException as error:
        # leave nothing half-uploaded, and settle the number if the store still answers
        try:
            if not decided or (decided == ["published"]
                               and not store.fs.exists(store.path(str(number), LAST_FILE))):
                end("abandoned", f"publication failed: {_describe(error)}", exclusive=not decided)
                store.remove(store.path(str(number)))
        except Exception:  # noqa: BLE001
            pass  # the next publication settles it once this process is gone
        if isinstance(error, Exception) and not isinstance(error, (StoreError, PublicationRefused, ValueError)):
            raise StoreError(f"{store.url}: publication {number} failed, nothing published "
                             f"({type(error).__name__}: {_describe(error)})") from error
        raise
    complete = look(store).complete()
    retired = versions_to_retire(complete, keep_versions, set(protected))
    for old in retired:
        retire(store, old)
    return Publication(version, join(store.url, str(version)), new_fingerprint, created, retired)


def retire(store: Store, version: int) -> None:
    """Delete a version, saved_model.pb first, so that no reader starts copying it half-deleted."""
    try:
        store.fs.rm_file(store.path(str(version), LAST_FILE))
    except FileNotFoundError:
        pass
    store.remove(store.path(str(version)))
