"""Write files and directories so that readers never see them half-written.

Each output is written under a temporary name in its destination directory and
renamed into place only when complete; on any error the temporary is removed.
DVC and TensorFlow Serving can therefore never pick up a partial output.
"""

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_path(destination: Path, suffix: str = ".tmp"):
    """Yield a temporary file path beside `destination`; rename it there on success."""
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=destination.parent, prefix=f".{destination.name}.", suffix=suffix)
    os.close(handle)
    temporary = Path(temporary)
    try:
        yield temporary
        os.replace(temporary, destination)
    finally:
        temporary.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_directory(destination: Path):
    """Yield an empty temporary directory beside `destination`; swap it into place on success.

    An existing `destination` is moved aside first and deleted after the swap,
    so the destination is always either the old or the new complete directory
    but for the instant between two renames.
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(dir=destination.parent, prefix=f".{destination.name}."))
    try:
        yield temporary
        old = None
        if destination.exists():
            old = Path(tempfile.mkdtemp(dir=destination.parent, prefix=f".{destination.name}.old."))
            os.replace(destination, old / destination.name)
        os.replace(temporary, destination)
        if old is not None:
            shutil.rmtree(old)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def write_text(destination: Path, text: str, suffix: str = ".tmp") -> None:
    """Atomically write `text` (UTF-8); the temporary file's name ends in `suffix`."""
    with atomic_path(destination, suffix=suffix) as temporary:
        temporary.write_text(text, encoding="utf-8")


def write_json(destination: Path, data) -> None:
    """Atomically write `data` as indented JSON."""
    write_text(destination, json.dumps(data, indent=2, sort_keys=True) + "\n", suffix=".json")
