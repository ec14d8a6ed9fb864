"""Stage 1, download: fetch the Jena climate record, or generate a synthetic one.

In:  params `data.source` (`jena` or `synthetic`); for `jena`, `data.url` (the base
     record, 2009-2016) and `data.urls` (a list of further records, default empty),
     each an http(s) URL, a `file://` URL or a local path, to a zip or to the CSV
     itself, and `data.retries`, `data.backoff_seconds`; for `synthetic`,
     `data.synthetic_start`, `data.synthetic_end` and `seed`.
Out: data/raw/jena_climate_2009_2016.csv: one Jena-format CSV (the 14 measurements,
     quoted header) holding every source's readings in time order.

Sources come in two formats: the 2009-2016 record's 14 measurements, and the
station's own archives, which add 7 more (rain, radiation, logger temperature,
CO2; schema.ARCHIVE_EXTRA_MEASUREMENTS) under a latin-1 header. The Max Planck
Institute for Biogeochemistry publishes those half-year archives as
https://www.bgc-jena.mpg.de/wetter/mpi_roof_2017a.zip, ..._2017b.zip and so on,
newer ones under https://weather.bgc-jena.mpg.de/ (mpi_roof_2021b.zip; from 2024
one zip a year, mpi_roof_2024.zip), listed at
https://weather.bgc-jena.mpg.de/weather_data.html. Only the 14 columns are kept.

Rows of one timestamp are duplicates, whether within a source or across two. All
are written, the later source's row first: the prepare stage keeps the first
reading of a timestamp and counts the duplicates and those that disagree, so the
later source in the list wins. List a corrected publication after the one it
corrects.

Each download streams to a temporary file with a progress bar and retries
transient failures with exponential back-off; zips are verified, every header
and timestamp is checked, and only then is the joined CSV renamed into place:
a failure leaves nothing that DVC could mistake for good data.
"""

import csv
import shutil
import sys
import tempfile
import time
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import requests
from tqdm import tqdm

from pipeline import schema, synthetic
from pipeline.atomic import atomic_path
from pipeline.config import RAW_CSV, load_params, stage_command_line

TIMEOUT_SECONDS = 30
CHUNK_BYTES = 1 << 20
RETRYABLE_HTTP_STATUS = {408, 429, 500, 502, 503, 504}
TIMES = "parsed time"  # the column read_source adds for sorting; never written


class DownloadError(RuntimeError):
    """The data could not be fetched; the message says why and what to do."""


def _way_out(url: str, reason: str) -> DownloadError:
    return DownloadError(
        f"could not download the Jena climate data from {url}: {reason}\n"
        "Ways out:\n"
        "  - point data.url (or that entry of data.urls) in params.yaml at a local copy "
        "of the zip or CSV (a path or a file:// URL), or\n"
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
                with (
                    open(destination, "wb") as out,
                    tqdm(
                        total=total,
                        unit="B",
                        unit_scale=True,
                        desc=Path(urllib.parse.urlparse(url).path).name,
                        file=sys.stderr,
                        disable=None,
                    ) as progress,
                ):
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


def obtain_source(url: str, scratch: Path, retries: int, backoff_seconds: float) -> Path:
    """The CSV behind `url` (zip or plain CSV, remote or local), as a file in `scratch`."""
    source = local_path(url)
    if source is None:
        source = scratch / "download"
        fetch(url, source, retries, backoff_seconds)
    elif not source.is_file():
        raise _way_out(url, f"no such file: {source}")
    if not zipfile.is_zipfile(source):
        return source
    extracted = scratch / "extracted.csv"
    extract_csv(source, extracted)
    return extracted


def header_problems(header: list[str]) -> str:
    """What is wrong with a CSV header, naming the columns: '' when it holds the 14 measurements
    in the Jena order, followed by nothing or by the station archives' extra columns."""
    if header == schema.COLUMNS:
        return ""
    missing = [name for name in schema.COLUMNS if name not in header]
    extra = [name for name in header if name not in schema.COLUMNS and name not in schema.ARCHIVE_EXTRA_MEASUREMENTS]
    problems = []
    if missing:
        problems.append(f"missing columns {missing}")
    if extra:
        problems.append(f"unexpected columns {extra}")
    if not problems:
        ours = [name for name in header if name in schema.COLUMNS]
        duplicated = sorted({name for name in ours if ours.count(name) > 1})
        if duplicated:
            problems.append(f"duplicated columns {duplicated}")
        else:
            misplaced = [
                f"{name!r} at position {header.index(name) + 1} (expected {position + 1})"
                for position, name in enumerate(schema.COLUMNS)
                if ours.index(name) != position
            ]
            if misplaced:
                problems.append("columns out of order: " + ", ".join(misplaced))
    return "; ".join(problems)


def text_encoding(csv_path: Path) -> str:
    """UTF-8 (with or without a byte-order mark) when the header decodes as such, else latin-1,
    the station archives' encoding (`SWDR (W/m²)`)."""
    with open(csv_path, "rb") as handle:
        first_line = handle.readline()
    try:
        first_line.decode("utf-8")
    except UnicodeDecodeError:
        return "latin-1"
    return "utf-8-sig"


def read_source(csv_path: Path, origin: str) -> pd.DataFrame:
    """The Jena columns of one source as text, in its row order, and its parsed times in TIMES.

    Raises DownloadError naming `origin` and the column, line or value at fault."""
    encoding = text_encoding(csv_path)
    with open(csv_path, encoding=encoding, newline="") as handle:
        header = [name.strip() for name in next(csv.reader(handle), [])]
    problems = header_problems(header)
    if problems:
        raise DownloadError(f"{origin}: not a Jena climate CSV: {problems}")
    try:
        text = pd.read_csv(
            csv_path,
            dtype=str,
            keep_default_na=False,
            encoding=encoding,
            engine="c",
            usecols=lambda name: name.strip() in schema.COLUMNS,
        )
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise DownloadError(f"{origin}: not a readable CSV ({error})") from error
    text.columns = [name.strip() for name in text.columns]
    if text.empty:
        raise DownloadError(f"{origin}: no readings below the header")
    times = pd.to_datetime(text[schema.DATE_COLUMN], format=schema.DATE_FORMAT, errors="coerce")
    bad = times.isna().to_numpy()
    if bad.any():
        row = int(np.argmax(bad))
        raise DownloadError(
            f"{origin}: column {schema.DATE_COLUMN!r}, line {row + 2}: cannot parse "
            f"{text[schema.DATE_COLUMN].iloc[row]!r} as a time like 01.01.2009 00:10:00 "
            f"({int(bad.sum())} bad value(s) in this column)"
        )
    return text[schema.COLUMNS].assign(**{TIMES: times})


def join_sources(sources: list[pd.DataFrame]) -> tuple[pd.DataFrame, list[dict]]:
    """Every source's rows (read_source's tables, oldest publication first) in one table ordered by time.

    Rows of one timestamp keep their order within a source, and a later source's rows
    come before an earlier one's: the first row of a timestamp is the one to keep.
    Returns the table (the Jena columns) and per source: rows, first and last time, and
    `replaced`, its rows whose timestamp a later source also has."""
    times = np.concatenate([source[TIMES].to_numpy() for source in sources])
    rank = np.concatenate([np.full(len(source), position) for position, source in enumerate(sources)])
    order = np.lexsort((np.arange(len(times)), -rank, times))
    table = pd.concat([source[schema.COLUMNS] for source in sources], ignore_index=True).iloc[order]
    latest_rank = pd.Series(rank).groupby(times).transform("max").to_numpy()
    replaced = np.bincount(rank[rank < latest_rank], minlength=len(sources))
    summaries = [
        {
            "rows": len(source),
            "first": str(source[TIMES].min()),
            "last": str(source[TIMES].max()),
            "replaced": int(replaced[position]),
        }
        for position, source in enumerate(sources)
    ]
    return table.reset_index(drop=True), summaries


def write_jena_text(table: pd.DataFrame, path: Path) -> None:
    """Write the Jena columns of `table`, text as it is, under the quoted Jena header."""
    with open(path, "w", encoding="utf-8", newline="") as out:
        out.write(schema.CSV_HEADER + "\n")
        table[schema.COLUMNS].to_csv(out, header=False, index=False, lineterminator="\n")


def obtain_csv(
    url: str, destination: Path, retries: int = 4, backoff_seconds: float = 2.0, further_urls: Sequence[str] = ()
) -> list[dict]:
    """Join the CSVs behind `url` and `further_urls` into one Jena CSV at `destination`, atomically.

    Returns join_sources' summaries, each with its `url`."""
    urls = [url, *further_urls]
    destination.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=destination.parent, prefix=".download-") as scratch:
        sources = []
        for position, source_url in enumerate(urls):
            source_scratch = Path(scratch) / str(position)
            source_scratch.mkdir()
            sources.append(read_source(obtain_source(source_url, source_scratch, retries, backoff_seconds), source_url))
        table, summaries = join_sources(sources)
        del sources  # the joined table is a copy: free the per-source tables before writing
        with atomic_path(destination, suffix=".csv") as temporary_csv:
            write_jena_text(table, temporary_csv)
    return [{"url": source_url, **summary} for source_url, summary in zip(urls, summaries)]


def further_sources(data: dict) -> list[str]:
    """`data.urls` from params: a list of URLs or paths; missing or null is none."""
    urls = data.get("urls") or []
    if not isinstance(urls, list) or not all(isinstance(url, str) and url for url in urls):
        raise SystemExit(f"params.yaml: data.urls must be a list of URLs or paths, got {urls!r}")
    return urls


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
            summaries = obtain_csv(
                data["url"], RAW_CSV, data["retries"], data["backoff_seconds"], further_sources(data)
            )
        except DownloadError as error:
            raise SystemExit(f"download: {error}") from None
        for summary in summaries:
            print(
                f"  {summary['url']}: {summary['rows']:,} readings, {summary['first']} .. {summary['last']}; "
                f"{summary['replaced']:,} of their timestamps also in a later source, which wins"
            )
        print(
            f"wrote {RAW_CSV}: {sum(summary['rows'] for summary in summaries):,} readings "
            f"from {len(summaries)} source(s), in time order"
        )
    else:
        raise SystemExit(f"params.yaml: data.source must be 'jena' or 'synthetic', got {source!r}")


if __name__ == "__main__":
    stage_command_line(__doc__, __spec__.name)
    main()
