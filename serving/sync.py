"""Mirror a remote model base path into a local directory that TensorFlow Serving watches.

``python -m serving.sync SOURCE DEST [--poll_seconds N] [--once]``, e.g.
``python -m serving.sync s3://bucket/models/jena_temperature /models/jena_temperature``.

Real TF Serving has not read s3:// since 2.7, so on S3 this runs beside it
(a sidecar sharing a volume). Every poll it lists SOURCE once and makes DEST
hold exactly SOURCE's complete versions (``saved_model.pb`` present): a new
version is copied under a hidden name and renamed to its number, so TF
Serving never sees a half-copied version; a version deleted at the source is
removed (rollback). It mirrors as the ModelServer's own cache does
(``serving.store``). Credentials and endpoints come from the standard environment.

A failing poll (store unreachable, slow, no objects yet) changes nothing in
DEST and is retried next poll; it is logged once per streak of failures and
once when polls succeed again. SIGTERM or SIGINT ends the loop after the
current file (a half-copied version is removed) with exit code 0.

Exit codes: 0 done (or stopped by a signal); 2 bad arguments (unknown
scheme, missing bucket, SOURCE is a file, DEST is not a directory);
3 SOURCE unreachable or failing (``--once``); 4 no objects under SOURCE
(``--once``); 5 DEST cannot be written (``--once``).
"""

import argparse
import logging
import os
import signal
import sys
import threading
import time

from serving.store import BadBasePath, StoreUnavailable, is_remote, mirror

log = logging.getLogger("serving")

EXIT_OK, EXIT_BAD_ARGUMENTS, EXIT_UNAVAILABLE, EXIT_NO_VERSIONS, EXIT_DEST_FAILED = 0, 2, 3, 4, 5
# TF Serving's default poll is 1 s, a billed LIST per second per replica on object storage; production uses 30-60 s.
DEFAULT_POLL_SECONDS = 30.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m serving.sync", description=__doc__.split("\n\n")[0], allow_abbrev=False
    )
    parser.add_argument("source", metavar="SOURCE", help="remote base path: s3://bucket/prefix or gs://bucket/prefix")
    parser.add_argument("dest", metavar="DEST", help="local directory TF Serving watches (created if missing)")
    parser.add_argument(
        "--poll_seconds",
        type=float,
        default=DEFAULT_POLL_SECONDS,
        help=f"seconds between polls (default {DEFAULT_POLL_SECONDS:g})",
    )
    parser.add_argument("--once", action="store_true", help="mirror once and exit")
    return parser


def sync_once(source: str, dest: str, stop: threading.Event | None = None) -> None:
    """One mirror pass; raises as ``serving.store.mirror`` does."""
    result = mirror(source, dest, stop=stop)
    if result.added or result.removed:
        log.info(
            "%s -> %s: now holds versions %s (added %s, removed %s)",
            source,
            dest,
            sorted(result.kept + result.added),
            result.added or "none",
            result.removed or "none",
        )


def run_loop(source: str, dest: str, poll_seconds: float, stop: threading.Event) -> int:
    """Mirrors every ``poll_seconds`` until ``stop`` is set; failures are logged once per streak.

    A bad SOURCE on the first poll ends it with EXIT_BAD_ARGUMENTS; later, every failure (even a bucket
    deleted under us, which an operator may restore) is retried.
    """
    failing_since = None
    failed_polls = 0
    first_poll = True
    while not stop.is_set():
        try:
            sync_once(source, dest, stop)
        except BadBasePath as error:
            if first_poll:
                print(f"serving.sync: {error}", file=sys.stderr)
                return EXIT_BAD_ARGUMENTS
            failed_polls, failing_since = _note_failure(error, failed_polls, failing_since, poll_seconds)
        except OSError as error:  # store unreachable or slow, no objects yet, DEST not writable
            failed_polls, failing_since = _note_failure(error, failed_polls, failing_since, poll_seconds)
        else:
            if failed_polls:
                log.info(
                    "Polls of %s succeed again after %d failed poll(s) over %.0f s",
                    source,
                    failed_polls,
                    time.monotonic() - failing_since,
                )
            failed_polls, failing_since = 0, None
        first_poll = False
        stop.wait(poll_seconds)
    log.info("Stopped syncing %s into %s", source, dest)
    return EXIT_OK


def _note_failure(error: Exception, failed_polls: int, failing_since: float | None, poll_seconds: float):
    if not failed_polls:
        log.error(
            "Poll failed, DEST left unchanged: %s (retrying every %g s; logged again when it recovers)",
            error,
            poll_seconds,
        )
        failing_since = time.monotonic()
    return failed_polls + 1, failing_since


def main(argv=None) -> int:
    flags = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s sync: %(message)s", stream=sys.stderr)
    log.setLevel(logging.INFO)  # our lines; the clients' libraries only when they warn
    if not is_remote(flags.source):
        print(
            f"serving.sync: SOURCE {flags.source} is not a URL: use s3://bucket/prefix or gs://bucket/prefix",
            file=sys.stderr,
        )
        return EXIT_BAD_ARGUMENTS
    if os.path.exists(flags.dest) and not os.path.isdir(flags.dest):
        print(f"serving.sync: DEST {flags.dest} exists and is not a directory", file=sys.stderr)
        return EXIT_BAD_ARGUMENTS
    if flags.poll_seconds <= 0:
        print(f"serving.sync: --poll_seconds must be positive, got {flags.poll_seconds:g}", file=sys.stderr)
        return EXIT_BAD_ARGUMENTS

    stop = threading.Event()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signal_number, lambda number, frame: stop.set())
    if not flags.once:
        return run_loop(flags.source, flags.dest, flags.poll_seconds, stop)
    try:
        sync_once(flags.source, flags.dest, stop)
        return EXIT_OK
    except OSError as error:
        print(f"serving.sync: {error}", file=sys.stderr)
        return _exit_code(error)


def _exit_code(error: OSError) -> int:
    if isinstance(error, BadBasePath):
        return EXIT_BAD_ARGUMENTS
    if isinstance(error, StoreUnavailable):
        return EXIT_UNAVAILABLE
    if isinstance(error, FileNotFoundError):
        return EXIT_NO_VERSIONS
    return EXIT_DEST_FAILED


if __name__ == "__main__":
    sys.exit(main())
