"""Stage 1, download: fetch the Jena climate CSV, or generate a synthetic one.

In:  params `data.source` (`jena` or `synthetic`), `data.url` (an http(s) URL,
     a `file://` URL or a local path, to the zip or to the CSV itself),
     `data.synthetic_start`, `data.synthetic_end` and `seed`.
Out: data/raw/jena_climate_2009_2016.csv, the unzipped CSV.

The download streams to a temporary file with a progress bar, retries
transient failures with exponential back-off, verifies the zip and only then
renames the CSV into place: an interrupted run leaves nothing that DVC could
mistake for good data.
"""

import shutil
import sys
import tempfile
import time
import urllib.parse
import urllib.request
import zipfile
import zlib
from pathlib import Path

import requests
from tqdm import tqdm

from pipeline import schema, synthetic
from pipeline.atomic import atomic_path
from pipeline.config import RAW_CSV, load_params, stage_command_line

TIMEOUT_SECONDS = 30
CHUNK_BYTES = 1 << 20
RETRYABLE_HTTP_STATUS = {408, 429, 500, 502, 503, 504}


class DownloadError(RuntimeError):
    """The data could not be fetched; the message says why and what to do."""


def _way_out(url: str, reason: str) -> DownloadError:
    return DownloadError(
        f"could not download the Jena climate data from {url}: {reason}\n"
        "Ways out:\n"
        "  - point data.url in params.yaml at a local copy of the zip or CSV "
        "(a path or a file:// URL), or\n"
        "  - set data.source: synthetic to generate data offline."
    )


def local_path(url: str) -> Path | None:
    """The filesystem path a `file://` URL or plain path names, else None."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":
        return Path(urllib.request.url2pathname(parsed.path))
    if parsed.scheme == "":
        return Path(url)
    return None


def fetch(url: str, destination: Path, retries: int, backoff_seconds: float) -> None:
    """Stream `url` into `destination`; retry connection errors, timeouts and 5xx answers,
    waiting `backoff_seconds`, then twice as long, and so on."""
    for attempt in range(1, retries + 1):
        try:
            with requests.get(url, stream=True, timeout=TIMEOUT_SECONDS) as response:
                if response.status_code in RETRYABLE_HTTP_STATUS:
                    raise requests.HTTPError(f"HTTP {response.status_code}", response=response)
                if response.status_code != 200:
                    raise _way_out(url, f"HTTP {response.status_code} {response.reason}")
                total = int(response.headers.get("content-length", 0)) or None
                with open(destination, "wb") as out, tqdm(
                    total=total, unit="B", unit_scale=True, desc=Path(urllib.parse.urlparse(url).path).name,
                    file=sys.stderr, disable=None,
                ) as progress:
                    for chunk in response.iter_content(CHUNK_BYTES):
                        out.write(chunk)
                        progress.update(len(chunk))
                if total is not None and destination.stat().st_size != total:
                    raise requests.ConnectionError(
                        f"connection closed after {destination.stat().st_size} of {total} bytes"
                    )
                return
        except (requests.ConnectionError, requests.Timeout, requests.HTTPError) as error:
            if attempt == retries:
                raise _way_out(url, f"{error} (after {retries} attempts)") from error
            wait = backoff_seconds * 2 ** (attempt - 1)
            print(f"download attempt {attempt}/{retries} failed ({error}); retrying in {wait:.0f} s", file=sys.stderr)
            time.sleep(wait)


def extract_csv(archive: Path, destination: Path) -> None:
    """Verify the zip and copy its single CSV member to `destination`."""
    try:
        with zipfile.ZipFile(archive) as bundle:
            broken = bundle.testzip()
            if broken is not None:
                raise DownloadError(f"{archive}: member {broken} is corrupt (CRC mismatch)")
            members = [name for name in bundle.namelist() if name.endswith(".csv") and not name.startswith("__MACOSX")]
            if len(members) != 1:
                raise DownloadError(f"{archive}: expected one CSV inside the zip, found {members or 'none'}")
            with bundle.open(members[0]) as source, open(destination, "wb") as out:
                shutil.copyfileobj(source, out, CHUNK_BYTES)
    except (zipfile.BadZipFile, zlib.error, EOFError) as error:
        raise DownloadError(f"{archive}: not a valid zip file ({error})") from error


def obtain_csv(url: str, destination: Path, retries: int = 4, backoff_seconds: float = 2.0) -> None:
    """Put the CSV behind `url` (zip or plain CSV, remote or local) at `destination`, atomically."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=destination.parent, prefix=".download-") as scratch:
        source = local_path(url)
        if source is None:
            source = Path(scratch) / "download"
            fetch(url, source, retries, backoff_seconds)
        elif not source.is_file():
            raise _way_out(url, f"no such file: {source}")
        with atomic_path(destination, suffix=".csv") as temporary_csv:
            if zipfile.is_zipfile(source):
                extract_csv(source, temporary_csv)
            else:
                shutil.copyfile(source, temporary_csv)
            check_header(temporary_csv, url)


def header_problems(header: list[str]) -> str:
    """What is wrong with a CSV header, naming the columns: '' when it is the Jena header."""
    if header == schema.COLUMNS:
        return ""
    missing = [name for name in schema.COLUMNS if name not in header]
    extra = [name for name in header if name not in schema.COLUMNS]
    problems = []
    if missing:
        problems.append(f"missing columns {missing}")
    if extra:
        problems.append(f"unexpected columns {extra}")
    if not problems:
        misplaced = [f"{name!r} at position {header.index(name) + 1} (expected {position + 1})"
                     for position, name in enumerate(schema.COLUMNS) if header.index(name) != position]
        if misplaced:
            problems.append("columns out of order: " + ", ".join(misplaced))
        else:
            problems.append("duplicated columns " + str(sorted({n for n in header if header.count(n) > 1})))
    return "; ".join(problems)


def check_header(csv_path: Path, origin: str) -> None:
    """Fail early when the file is not a Jena climate CSV, naming the wrong columns."""
    with open(csv_path, encoding="utf-8", errors="replace") as handle:
        header = [name.strip().strip('"') for name in handle.readline().strip().split(",")]
    problems = header_problems(header)
    if problems:
        raise DownloadError(f"{origin}: not a Jena climate CSV: {problems}")


def main() -> None:
    params = load_params()
    data = params["data"]
    source = data["source"]
    if source == "synthetic":
        readings = synthetic.generate_readings(data["synthetic_start"], data["synthetic_end"], seed=params["seed"])
        with atomic_path(RAW_CSV, suffix=".csv") as temporary:
            synthetic.write_jena_csv(readings, temporary)
        print(f"wrote {len(readings):,} synthetic readings to {RAW_CSV}")
    elif source == "jena":
        try:
            obtain_csv(data["url"], RAW_CSV, data["retries"], data["backoff_seconds"])
        except DownloadError as error:
            raise SystemExit(f"download: {error}") from None
        print(f"wrote {RAW_CSV} from {data['url']}")
    else:
        raise SystemExit(f"params.yaml: data.source must be 'jena' or 'synthetic', got {source!r}")


if __name__ == "__main__":
    stage_command_line(__doc__, __spec__.name)
    main()
