"""Publication into object storage (s3://, gs://): claim, settle, decide, upload, record, retire.

In:  a SavedModel directory, a model directory URL, retention and the blessing callback.
Out: at most one new version ``<N>/`` uploaded with ``saved_model.pb`` last,
     records under ``<model>/.publications/``, retention applied, a ``Publication``.

The protocol (claims by conditional writes, heartbeats, settling in number
order, abandoned publications) is described in ``serving.store``'s docstring.
"""

import contextlib
import os
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from serving.store.client import Listing, Store, check_usable, describe, fetch_version, look, open_store
from serving.store.layout import (
    MODEL_CARD_FILE,
    SAVED_MODEL_FILE,
    Publication,
    PublicationRefused,
    StoreError,
    fingerprint,
    join,
    process_alive,
    versions_to_retire,
)

STALE_SECONDS = 600.0  # a publisher silent this long is dead (it heartbeats every HEARTBEAT_SECONDS)
HEARTBEAT_SECONDS = 10.0
WAIT_SECONDS = 3600.0  # longest wait for lower-numbered publications to settle
POLL_SECONDS = 0.5
MAX_CLAIM_ATTEMPTS = 100


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
            store.write_json(
                store.record(number, "claim"),
                {**owner.as_dict(), "started": time.time(), "fingerprint": new_fingerprint},
                exclusive=True,
            )
            return number
        except FileExistsError:
            number = max(number + 1, look(store).highest_number() + 1)
    raise StoreError(f"{store.url}: no version number claimed after {MAX_CLAIM_ATTEMPTS} attempts")


def _outcome(store: Store, number: int, kinds: set[str]) -> dict | None:
    """Publication `number`'s outcome, or None while none can be read: a listing is a snapshot, and an
    outcome it shows may not be readable yet (a conditional write under way), so it counts as undecided
    and the caller looks again."""
    if "outcome" not in kinds:
        return None
    try:
        return store.read_json(store.record(number, "outcome"))
    except FileNotFoundError:
        return None


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
    uploaded = listing.versions.get(number)
    finished = (uploaded is not None and uploaded.complete) or "complete" in kinds  # (maybe retired since)
    if outcome is not None and (outcome["outcome"] != "published" or finished):
        if outcome["outcome"] != "published" and uploaded is not None:
            store.remove(store.path(str(number)))  # a settled publication's leftover files
        return True
    if not _owner_dead(store, number, kinds, stale_seconds):
        return False
    abandoned = {"outcome": "abandoned", "reason": "its publisher died before the upload finished", "at": time.time()}
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
            except Exception:  # noqa: BLE001
                pass  # a missed beat only makes us look older; store errors surface in the caller
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
        pending = [
            lower
            for lower in sorted(listing.records)
            if lower < number and not settle(store, lower, listing, stale_seconds)
        ]
        if not pending:
            return look(store)  # settling may have removed files
        if time.monotonic() > deadline:
            raise StoreError(f"{store.url}: publications {pending} still running after {wait_seconds:.0f} s")
        time.sleep(POLL_SECONDS)


def version_fingerprint(store: Store, version: int, listing: Listing) -> str | None:
    """The fingerprint recorded when `version` was published, or in its model card; None if unknown."""
    try:
        if "outcome" in listing.records.get(version, set()):
            return store.read_json(store.record(version, "outcome")).get("fingerprint")
        return store.read_json(store.path(listing.versions[version].name, MODEL_CARD_FILE)).get("fingerprint")
    except (FileNotFoundError, ValueError):
        return None


def upload(store: Store, saved_model: Path, number: int, names: list[str]) -> None:
    for name in names:
        store.fs.put_file(str(saved_model / name), store.path(str(number), name))


def finish(
    store: Store,
    number: int,
    saved_model: Path,
    names: list[str],
    new_fingerprint: str,
    listing: Listing,
    still_blessed: Callable[[Path | None], tuple[bool, str]] | None,
    end: Callable[[str, str], None],
) -> tuple[int, bool]:
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
            copy = None
            if newest is not None:
                copy = Path(scratch) / listing.versions[newest].name
                fetch_version(store, listing.versions[newest], copy)
            blessed, reason = still_blessed(copy)
        if not blessed:
            end("refused", reason)
            raise PublicationRefused(reason)
    end("published", f"published as version {number}")
    upload(store, saved_model, number, [name for name in names if name != SAVED_MODEL_FILE])
    store.fs.put_file(str(saved_model / SAVED_MODEL_FILE), store.path(str(number), SAVED_MODEL_FILE))
    return number, True


def publish(
    saved_model: Path,
    url: str,
    keep_versions: int,
    protected: set[int] = frozenset(),
    still_blessed: Callable[[Path | None], tuple[bool, str]] | None = None,
    stale_seconds: float = STALE_SECONDS,
    wait_seconds: float = WAIT_SECONDS,
) -> Publication:
    """Make `saved_model` the newest version at `url` unless it already is; apply retention.

    `still_blessed` is asked with a local copy of the newest complete version
    (a directory named as the version), after every lower-numbered publication
    has settled, as the local publication asks it under its lock.
    """
    saved_model = Path(saved_model)
    if not (saved_model / SAVED_MODEL_FILE).is_file():
        raise ValueError(f"{saved_model}: not a SavedModel (no {SAVED_MODEL_FILE})")
    versions_to_retire([], keep_versions, set())  # a bad keep_versions fails before anything is written
    store = open_store(url)
    check_usable(store)
    new_fingerprint = fingerprint(saved_model)
    names = sorted(path.relative_to(saved_model).as_posix() for path in saved_model.rglob("*") if path.is_file())
    number = claim_number(store, Owner.this_process(), new_fingerprint)
    decided = []  # the outcome, once written

    def end(outcome: str, reason: str, exclusive: bool = True) -> None:
        store.write_json(
            store.record(number, "outcome"),
            {"outcome": outcome, "reason": reason, "fingerprint": new_fingerprint, "at": time.time()},
            exclusive=exclusive,
        )
        decided.append(outcome)

    try:
        with heartbeat(store, number):
            listing = wait_for_lower(store, number, stale_seconds, wait_seconds)
            version, created = finish(store, number, saved_model, names, new_fingerprint, listing, still_blessed, end)
            if created:
                store.write_json(
                    store.record(number, "complete"),
                    {
                        "fingerprint": new_fingerprint,
                        "at": time.time(),
                        "files": {name: (saved_model / name).stat().st_size for name in names},
                    },
                )
    except FileExistsError:
        # our outcome was written by another publication: it took us for dead
        store.remove(store.path(str(number)))
        raise StoreError(
            f"{store.url}: publication {number} was settled as abandoned by another publisher "
            f"(silent for over {stale_seconds:.0f} s); nothing published"
        ) from None
    except BaseException as error:
        # leave nothing half-uploaded, and settle the number if the store still answers
        try:
            if not decided or (
                decided == ["published"] and not store.fs.exists(store.path(str(number), SAVED_MODEL_FILE))
            ):
                end("abandoned", f"publication failed: {describe(error)}", exclusive=not decided)
                store.remove(store.path(str(number)))
        except Exception:  # noqa: BLE001
            pass  # the next publication settles it once this process is gone
        if isinstance(error, Exception) and not isinstance(error, (StoreError, PublicationRefused, ValueError)):
            raise StoreError(
                f"{store.url}: publication {number} failed, nothing published "
                f"({type(error).__name__}: {describe(error)})"
            ) from error
        raise
    listing = look(store)
    retired = versions_to_retire(listing.complete(), keep_versions, set(protected))
    for old in retired:
        retire(store, old, listing)
    return Publication(version, join(store.url, _name(listing, version)), new_fingerprint, created, retired)


def _name(listing: Listing, version: int) -> str:
    """The child name of `version` in the store (ours are plain numbers; another publisher's may be "007")."""
    found = listing.versions.get(version)
    return found.name if found is not None else str(version)


def retire(store: Store, version: int, listing: Listing | None = None) -> None:
    """Delete a version, saved_model.pb first, so that no reader starts copying it half-deleted."""
    name = _name(listing or look(store), version)
    try:
        store.fs.rm_file(store.path(name, SAVED_MODEL_FILE))
    except FileNotFoundError:
        pass
    store.remove(store.path(name))
