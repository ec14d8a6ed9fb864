"""What a model directory holds, as TensorFlow Serving reads it, and the pure decisions on it.

In:  names of a model directory's children, a SavedModel directory, version
     numbers, a text-format ModelServerConfig.
Out: version numbers (``parse_version``: TF Serving's rule, the only one in
     the project), a SavedModel's content fingerprint, the versions retention
     removes (but those protected, e.g. by version labels), and the errors of the store.
"""

import hashlib
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

SAVED_MODEL_FILE = "saved_model.pb"
# The remote publishers' records: a name TF Serving ignores (not a version).
RECORDS = ".publications"
# Where an export keeps its card; the card records the version's fingerprint.
MODEL_CARD_FILE = "assets.extra/model_card.json"
# TensorFlow writes a random id into fingerprint.pb; the model card holds the fingerprint and the
# creation time. Neither is part of the model's content.
NOT_CONTENT = {Path("fingerprint.pb"), Path(MODEL_CARD_FILE)}

# absl::SimpleAtoi, which TF Serving's FileSystemStoragePathSource parses names with:
# ASCII whitespace around, an optional sign, ASCII decimal digits, within int64.
_VERSION_NAME = re.compile(r"[ \t\n\v\f\r]*([+-]?[0-9]+)[ \t\n\v\f\r]*", re.ASCII)
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def parse_version(name: str) -> int | None:
    """A model directory child's version number as TF Serving reads it, or None (not a version: ignored)."""
    match = _VERSION_NAME.fullmatch(name)
    if not match:
        return None
    version = int(match.group(1))
    return version if INT64_MIN <= version <= INT64_MAX else None


def is_remote(location) -> bool:
    """True for URLs (``s3://``, ``gs://``, or an unknown ``scheme://`` that opening rejects)."""
    return "://" in str(location)


def join(base: str, *names: str) -> str:
    return "/".join([str(base).rstrip("/"), *names])


class StoreError(OSError):
    """The store cannot be used as asked: one line naming the URL or path and the problem."""


class BadBasePath(StoreError):
    """A base path that cannot work however often it is retried: unknown scheme, no bucket, a file."""


class StoreUnavailable(StoreError):
    """The store did not answer in time or failed; nothing was changed locally. Retry later."""


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


def versions_to_retire(versions: list[int], keep_versions: int, protected: set[int]) -> list[int]:
    """All but the newest `keep_versions` versions, except the protected (labelled) ones."""
    if keep_versions < 1:
        raise ValueError(f"serving.keep_versions must be at least 1, got {keep_versions}")
    older = sorted(versions)[:-keep_versions]
    return [version for version in older if version not in protected]


def process_alive(pid: int) -> bool:
    """Whether process `pid` runs on this host (another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, but someone else's
        return True
    return True
