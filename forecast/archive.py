"""The forecast archive: every issued forecast, one Parquet file per model, version and issue time.

In:  a served model's answer (forecast.client's `Forecast`) turned into rows by
     `forecast_rows`; an archive root: a local directory, ``s3://bucket/prefix``
     or ``gs://bucket/prefix`` (serving.store's client, endpoints and
     credentials from the standard environment).
Out: ``<root>/issue_date=YYYY-MM-DD/<model>-<version>-<YYYYmmddTHHMMSSZ>.parquet``
     (Hive-style partitions by the issue day, UTC), and the archived rows read
     back as one DataFrame by `read`.

Rows: one per issued forecast and hour ahead, the columns of `FIXED_COLUMNS`
in order (model_name string, model_version int64, issue_time, requested_at,
valid_time timestamp[s, UTC], hours_ahead int16, median float32 degC), then one
float32 column per quantile level, named ``q<level in %>`` (q10, q50, q90),
ascending. `issue_time` is the hour of the last reading the forecast starts
from (the readings' clock, taken as UTC as the model's `timestamps` input
takes it), not the wall clock; `requested_at` is the wall clock when the
server was asked; `valid_time` is issue_time + hours_ahead hours. Parquet has
no seconds unit: the files hold milliseconds, and `read` gives seconds.

Writes are all or nothing, and never two files for one forecast: locally a
file is written under a hidden temporary name in its partition and linked to
its final name, which fails if that name exists; in object storage it is one
PUT that is conditional on the object not existing (S3 ``If-None-Match: *``,
GCS ``ifGenerationMatch=0``), so a crash leaves no object and a second writer
finds the first one's. Appending a forecast already archived changes nothing.

An archive holds one model's forecasts. Files of another model, files outside
the layout and files with other columns are `ArchiveError`s: one line naming
the file and the problem. Names starting with ``.`` or ``_`` are ignored (a
writer's temporary files, Hive's and Spark's markers). `read` checks every
file it lists. An hourly `append` lists only the root's partitions and its
issue day's partition (the nearest other one holding files when that is
empty): every append is checked so, so any partition's model is the archive's,
and an append costs the same in the archive's tenth year as on its first day.
"""

import datetime
import errno
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from serving.store.client import FILE_TIMEOUT_SECONDS, Store, check_usable, open_store
from serving.store.layout import is_remote

FIXED_COLUMNS = [
    ("model_name", pa.string()),
    ("model_version", pa.int64()),
    ("issue_time", pa.timestamp("s", tz="UTC")),
    ("requested_at", pa.timestamp("s", tz="UTC")),
    ("hours_ahead", pa.int16()),
    ("valid_time", pa.timestamp("s", tz="UTC")),
    ("median", pa.float32()),
]
FIXED_NAMES = [name for name, _ in FIXED_COLUMNS]
SORT_ORDER = ["issue_time", "model_version", "hours_ahead"]
QUANTILE_COLUMN = re.compile(r"q(\d+(?:\.\d+)?)")
PARTITION = re.compile(r"issue_date=(\d{4}-\d{2}-\d{2})")
FILE_NAME = re.compile(r"(?P<model>.+)-(?P<version>\d+)-(?P<issued>\d{8}T\d{6}Z)\.parquet")
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
TIME_FORMAT = "%Y%m%dT%H%M%SZ"
LAYOUT = "issue_date=YYYY-MM-DD/<model>-<version>-<YYYYmmddTHHMMSSZ>.parquet"
# Small files: no statistics, dictionaries or stored Arrow schema (read() conforms every file to the schema).
PARQUET_OPTIONS = {"compression": "zstd", "use_dictionary": False, "write_statistics": False, "store_schema": False}
FILES_PER_READ = 500  # object-store files fetched by one bounded call


class ArchiveError(ValueError):
    """Rows or files that are not this archive's: one line naming the file (or rows) and the problem."""


def quantile_column(level: float) -> str:
    """The column of a quantile level: 0.1 -> "q10", 0.025 -> "q2.5"."""
    return f"q{round(float(level) * 100, 4):g}"


def level_of(column: str) -> float | None:
    """The quantile level of a column name ("q90" -> 0.9), None for any other name."""
    match = QUANTILE_COLUMN.fullmatch(column)
    return float(match.group(1)) / 100 if match else None


def archive_schema(levels) -> pa.Schema:
    """The archive's columns for these quantile levels."""
    return pa.schema(FIXED_COLUMNS + [(quantile_column(level), pa.float32()) for level in levels])


def utc(moment) -> pd.Timestamp:
    """A moment as a UTC Timestamp; a naive one is taken to be UTC."""
    moment = pd.Timestamp(moment)
    return moment.tz_localize("UTC") if moment.tzinfo is None else moment.tz_convert("UTC")


def relative_path(model_name: str, version: int, issue_time) -> str:
    """Where a forecast lives below the archive root: its issue day's partition and its file."""
    issued = utc(issue_time)
    return f"issue_date={issued:%Y-%m-%d}/{model_name}-{int(version)}-{issued:{TIME_FORMAT}}.parquet"


def location(root, model_name: str, version: int, issue_time) -> str:
    """The path or URL of a forecast's file in the archive at `root`."""
    return f"{str(root).rstrip('/')}/{relative_path(model_name, version, issue_time)}"


def levels_differ(served, expected) -> bool:
    """Whether a forecast's quantile levels are not `expected` (another count, or other values)."""
    served, expected = np.asarray(served, np.float64), np.asarray(expected, np.float64)
    return served.shape != expected.shape or not np.allclose(served, expected, atol=1e-6)


def forecast_rows(forecast, issue_time, requested_at, levels) -> pd.DataFrame:
    """The archive's rows of the first forecast in a client `Forecast`: one per hour +1 .. +horizon.

    `issue_time` is the hour of the last history row; `requested_at` when the
    server was asked (both Timestamps, naive ones are UTC); `levels` the
    quantile levels that name the columns (the model card's), which must be
    the ones the model served. ArchiveError for a model without an hourly
    forecast, an answer that names no version, or one whose hours or levels
    are not what the caller expects.
    """
    if forecast.paths is None or forecast.quantiles is None:
        raise ArchiveError(
            f"model {forecast.model_name} serves no hourly forecast (temperature_path_degC and "
            "temperature_quantiles_degC): only hourly forecasts are archived"
        )
    if not forecast.version:
        raise ArchiveError(f"the answer of model {forecast.model_name} does not say which version gave it")
    levels = [float(level) for level in levels]
    if forecast.levels is not None and levels_differ(forecast.levels[0], levels):
        raise ArchiveError(
            f"model {forecast.model_name} version {forecast.version} serves the quantile levels "
            f"{[round(float(level), 4) for level in forecast.levels[0]]}, not {levels}"
        )
    issued, asked = utc(issue_time), utc(requested_at).floor("s")
    medians, quantiles = np.asarray(forecast.paths[0], np.float32), np.asarray(forecast.quantiles[0], np.float32)
    hours = len(medians)
    if quantiles.shape != (hours, len(levels)):
        raise ArchiveError(f"quantiles of shape {quantiles.shape}, expected ({hours}, {len(levels)}): hours x levels")
    last_valid = pd.Timestamp(int(forecast.valid_times[0]), unit="s", tz="UTC")
    if last_valid != issued + pd.Timedelta(hours=hours):
        raise ArchiveError(
            f"the forecast's last hour is valid at {last_valid:%Y-%m-%d %H:%M}, but {hours} hours after the "
            f"issue time {issued:%Y-%m-%d %H:%M} is {issued + pd.Timedelta(hours=hours):%Y-%m-%d %H:%M}"
        )
    hours_ahead = np.arange(1, hours + 1, dtype=np.int16)
    rows = {
        "model_name": [forecast.model_name] * hours,
        "model_version": np.full(hours, int(forecast.version), np.int64),
        "issue_time": [issued] * hours,
        "requested_at": [asked] * hours,
        "hours_ahead": hours_ahead,
        "valid_time": issued + pd.to_timedelta(hours_ahead.astype(np.int64), unit="h"),
        "median": medians,
        **{quantile_column(level): quantiles[:, index] for index, level in enumerate(levels)},
    }
    return pa.Table.from_pydict(rows, schema=archive_schema(levels)).to_pandas()


def empty_frame() -> pd.DataFrame:
    """The archive's fixed columns and types, no rows (the quantile columns depend on the model)."""
    return pa.schema(FIXED_COLUMNS).empty_table().to_pandas()


def quantile_levels(names: list[str], where: str) -> list[float]:
    """The levels of the columns after the fixed ones; ArchiveError unless the columns are the archive's."""
    if names[: len(FIXED_NAMES)] != FIXED_NAMES or len(names) == len(FIXED_NAMES):
        raise ArchiveError(
            f"{where}: columns {names} are not the archive's: {FIXED_NAMES} then q<level %> columns (q10, q50, q90)"
        )
    levels = [level_of(name) for name in names[len(FIXED_NAMES) :]]
    if None in levels:
        unexpected = [name for name, level in zip(names[len(FIXED_NAMES) :], levels) if level is None]
        raise ArchiveError(f"{where}: unexpected columns {unexpected}; after {FIXED_NAMES} only q<level %> columns")
    if levels != sorted(set(levels)):
        raise ArchiveError(f"{where}: the quantile columns {names[len(FIXED_NAMES) :]} are not in ascending order")
    return levels


def archive_types(schema: pa.Schema, where: str) -> pa.Schema:
    """The archive's schema for a file of `schema`; ArchiveError naming `where` for other columns or types.

    Parquet keeps timestamps in milliseconds at least, and strings may come back large: both are taken (and cast
    back when read).
    """
    target = archive_schema(quantile_levels(schema.names, where))
    for field, expected in zip(schema, target):
        if not (
            field.type.equals(expected.type)
            or (pa.types.is_timestamp(field.type) and pa.types.is_timestamp(expected.type) and field.type.tz == "UTC")
            or (pa.types.is_large_string(field.type) and pa.types.is_string(expected.type))
        ):
            raise ArchiveError(f"{where}: column {field.name} is {field.type}, the archive's is {expected.type}")
    return target


def conform(table: pa.Table, where: str) -> pa.Table:
    """A file's `table` in exactly the archive's types; ArchiveError naming `where` for other columns or types, or
    values that do not convert."""
    try:
        return table.cast(archive_types(table.schema, where))
    except pa.ArrowInvalid as error:
        raise ArchiveError(f"{where}: {error}") from None


def from_frame(frame: pd.DataFrame, where: str) -> pa.Table:
    """Rows to append as an Arrow table of the archive's schema; ArchiveError for other columns or values
    that do not convert (numbers of another width are converted)."""
    schema = archive_schema(quantile_levels([str(name) for name in frame.columns], where))
    try:
        return pa.Table.from_pandas(frame, schema=schema, preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError) as error:
        raise ArchiveError(f"{where}: {' '.join(str(error).split())}") from None


def check_one_forecast(table: pa.Table, where: str) -> tuple[str, int, pd.Timestamp]:
    """(model, version, issue time) of rows (in the archive's schema) that hold exactly one forecast, hours
    +1 .. +horizon in order."""
    if table.num_rows == 0:
        raise ArchiveError(f"{where}: no rows")
    missing = [name for name in table.schema.names if table[name].null_count]
    if set(missing) & set(FIXED_NAMES):
        raise ArchiveError(f"{where}: missing values in {missing}")
    names, versions = table["model_name"].to_numpy(zero_copy_only=False), table["model_version"].to_numpy()
    issued = table["issue_time"].to_numpy()
    keys = len(set(zip(names, versions, issued)))
    if keys != 1:
        raise ArchiveError(f"{where}: {keys} forecasts (model, version, issue time): append them one at a time")
    model_name = str(names[0])
    if not MODEL_NAME.fullmatch(model_name):
        raise ArchiveError(f"{where}: model name {model_name!r} cannot name a file (letters, digits, . _ -)")
    hours = table["hours_ahead"].to_numpy()
    if not np.array_equal(hours, np.arange(1, len(hours) + 1)):
        raise ArchiveError(f"{where}: hours_ahead must run 1 .. {len(hours)} in order, got {hours.tolist()}")
    if not (table["valid_time"].to_numpy() == issued[0] + hours.astype("timedelta64[h]")).all():
        raise ArchiveError(f"{where}: valid_time is not issue_time + hours_ahead hours")
    return model_name, int(versions[0]), pd.Timestamp(issued[0]).tz_localize("UTC")


@dataclass(frozen=True)
class ArchiveFile:
    """A file found in the archive: its path below the root, and what its name says."""

    relative: str
    model_name: str
    version: int
    issue_time: pd.Timestamp


def hidden(name: str) -> bool:
    """Whether a file or folder name is not the archive's: a writer's temporary file, Hive's or Spark's marker."""
    return name.startswith((".", "_"))


def issue_moment(root, relative: str, stamp: str) -> pd.Timestamp:
    """The UTC moment of a file name's YYYYmmddTHHMMSSZ (read with int(): strptime is 10 times slower, and
    read parses every file's name)."""
    try:
        return pd.Timestamp(
            datetime.datetime(
                int(stamp[:4]),
                int(stamp[4:6]),
                int(stamp[6:8]),
                int(stamp[9:11]),
                int(stamp[11:13]),
                int(stamp[13:15]),
                tzinfo=datetime.UTC,
            )
        )
    except ValueError as error:
        raise ArchiveError(f"{root}/{relative}: {stamp} is not a time ({error})") from None


def parse_listing(root, relatives: list[str]) -> list[ArchiveFile]:
    """The archive's files from their paths below the root; ArchiveError for a file outside the layout."""
    found = []
    for relative in relatives:
        parts = relative.split("/")
        if any(hidden(part) for part in parts):
            continue
        partition = PARTITION.fullmatch(parts[0]) if len(parts) == 2 else None
        named = FILE_NAME.fullmatch(parts[-1])
        if partition is None or named is None:
            raise ArchiveError(f"{root}/{relative}: not a forecast archive file ({LAYOUT})")
        issued = issue_moment(root, relative, named.group("issued"))
        if named.group("issued")[:8] != partition.group(1).replace("-", ""):
            raise ArchiveError(f"{root}/{relative}: issued {issued:%Y-%m-%d %H:%M}, filed under {parts[0]}")
        found.append(ArchiveFile(relative, named.group("model"), int(named.group("version")), issued))
    return found


def files_beside(root, archive, partition: str) -> list[ArchiveFile]:
    """The files an append is checked against: those in its issue day's `partition`, or when it holds none, those
    in the nearest other partition that holds any (the earlier of two as near). ArchiveError for anything at the
    root that is not a partition."""
    partitions = [name for name in archive.partitions() if not hidden(name)]
    for name in partitions:
        if not PARTITION.fullmatch(name):
            raise ArchiveError(f"{root}/{name}: not a forecast archive file ({LAYOUT})")
    files = parse_listing(root, archive.names(partition)) if partition in partitions else []
    day = datetime.date.fromisoformat(PARTITION.fullmatch(partition).group(1))

    def distance(name: str) -> tuple[int, str]:
        return abs((datetime.date.fromisoformat(PARTITION.fullmatch(name).group(1)) - day).days), name

    for other in sorted((name for name in partitions if name != partition), key=distance):
        if files:
            break
        files = parse_listing(root, archive.names(other))
    return files


def check_model(root, files: list[ArchiveFile], model_name: str | None) -> None:
    """ArchiveError if the archive holds another model's forecasts than `model_name` (or, for None, two models')."""
    expected = model_name or (files[0].model_name if files else None)
    for file in files:
        if file.model_name == expected:
            continue
        if model_name:
            raise ArchiveError(
                f"{root}/{file.relative}: a forecast of model {file.model_name}, not of {model_name}: "
                "another model's archive"
            )
        raise ArchiveError(
            f"{root}/{file.relative}: a forecast of model {file.model_name} in an archive of {expected}: "
            "one archive per model"
        )


class LocalArchive:
    """An archive in a local directory."""

    def __init__(self, root):
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise ArchiveError(f"{root}: is a file, not an archive directory")

    def names(self, under: str = "") -> list[str]:
        """Every file below the root (or below its folder `under`), as paths relative to the root."""
        found = []
        for directory, _, files in os.walk(self.root / under):
            below = Path(directory).relative_to(self.root).as_posix()
            found += [name if below == "." else f"{below}/{name}" for name in files]
        return found

    def partitions(self) -> list[str]:
        """The names directly below the root."""
        return os.listdir(self.root) if self.root.is_dir() else []

    def read(self, relatives: list[str]) -> dict[str, bytes]:
        return {relative: (self.root / relative).read_bytes() for relative in relatives}

    def write_new(self, relative: str, data: bytes) -> bool:
        """Write a file that must not exist yet, all or nothing; False (nothing written) if it exists."""
        final = self.root / relative
        final.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as file:
                os.fchmod(file.fileno(), 0o644)  # mkstemp's 0600 would hide the archive from its readers
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            return link_new(temporary, final)
        finally:
            Path(temporary).unlink(missing_ok=True)


def link_new(temporary, final: Path) -> bool:
    """Give the complete file `temporary` the name `final` unless that exists (a hard link fails then).
    Where hard links are not supported, a rename after a check: only a concurrent writer of the same
    forecast could slip between the two, and it would write the same rows."""
    try:
        os.link(temporary, final)
        return True
    except FileExistsError:
        return False
    except OSError as error:
        if error.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise
    if final.exists():
        return False
    os.rename(temporary, final)
    return True


class RemoteArchive:
    """An archive in object storage, through serving.store's client (bounded calls, one-line StoreErrors)."""

    def __init__(self, root: str):
        self.store: Store = open_store(root)
        check_usable(self.store)

    def names(self, under: str = "") -> list[str]:
        """Every object below the root (or below its folder `under`), as paths relative to the root."""
        store = self.store
        store.fs.invalidate_cache()
        try:
            paths = store.bounded(store.fs.find, store.path(under) if under else store.root, withdirs=False)
        except FileNotFoundError:
            return []
        return [path[len(store.root) :].lstrip("/") for path in paths if path != store.root]

    def partitions(self) -> list[str]:
        """The names directly below the root (one delimited listing)."""
        store = self.store
        store.fs.invalidate_cache()
        try:
            paths = store.bounded(store.fs.ls, store.root, detail=False)
        except FileNotFoundError:
            return []
        return [path.rstrip("/").rsplit("/", 1)[-1] for path in paths if path.rstrip("/") != store.root]

    def read(self, relatives: list[str]) -> dict[str, bytes]:
        store, found = self.store, {}
        for start in range(0, len(relatives), FILES_PER_READ):
            batch = relatives[start : start + FILES_PER_READ]
            paths = [store.path(relative) for relative in batch]
            contents = store.bounded(store.fs.cat, paths, timeout=FILE_TIMEOUT_SECONDS)
            found.update({relative: contents[path] for relative, path in zip(batch, paths)})
        return found

    def write_new(self, relative: str, data: bytes) -> bool:
        """One conditional PUT; False (nothing written) if the object exists."""
        try:
            self.store.bounded(self.store.fs.pipe_file, self.store.path(relative), data, mode="create")
            return True
        except FileExistsError:
            return False


def open_archive(root):
    """The archive at `root`: LocalArchive, or RemoteArchive (StoreError if the store cannot be used)."""
    return RemoteArchive(str(root)) if is_remote(root) else LocalArchive(root)


def append(root, table: pd.DataFrame) -> str | None:
    """Archive one forecast's rows (`forecast_rows`); the path written, or None if it was archived already.

    ArchiveError for rows that are not one forecast in the archive's columns, or
    an archive holding another model's forecasts; StoreError from object storage.
    """
    arrow = from_frame(table, "the rows to append")
    model_name, version, issued = check_one_forecast(arrow, "the rows to append")
    archive = open_archive(root)
    relative = relative_path(model_name, version, issued)
    files = files_beside(root, archive, relative.split("/")[0])
    check_model(root, files, model_name)
    if any(file.relative == relative for file in files):
        return None
    buffer = pa.BufferOutputStream()
    pq.write_table(arrow.replace_schema_metadata(None), buffer, **PARQUET_OPTIONS)
    if not archive.write_new(relative, buffer.getvalue().to_pybytes()):
        return None
    return location(root, model_name, version, issued)


def in_archive_types(table: pa.Table) -> pa.Table:
    """Tables of the archive's columns put together: the fixed columns, then every quantile level found, ascending,
    in the archive's types."""
    levels = sorted({level_of(name) for name in table.schema.names[len(FIXED_NAMES) :]})
    schema = archive_schema(levels)
    return table.select(schema.names).cast(schema)


def combined(root, files: list[ArchiveFile], tables: list[pa.Table]) -> pa.Table:
    """The files' tables as one in the archive's types, the union of their quantile columns (null where a file has
    none). Each distinct schema is checked once and the whole cast at once; a file whose values do not convert is
    then found and named (ArchiveError)."""
    checked = []
    for file, table in zip(files, tables):
        if not any(table.schema.equals(schema) for schema in checked):  # one or two schemas in thousands of files
            archive_types(table.schema, f"{root}/{file.relative}")
            checked.append(table.schema)
    try:
        return in_archive_types(pa.concat_tables(tables, promote_options="permissive"))
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        conformed = [conform(table, f"{root}/{file.relative}") for file, table in zip(files, tables)]
        return in_archive_types(pa.concat_tables(conformed, promote_options="permissive"))


def read(root, since=None, until=None, model_name: str | None = None) -> pd.DataFrame:
    """The archived rows whose issue time is in [since, until) (either end open when None), in the archive's
    columns, sorted by issue time, version and hour ahead; an empty frame of the fixed columns if none.

    Every file is checked against the layout and the model (`model_name`, or
    the one model the archive holds) before any is read, every file read
    against the columns and its own name: ArchiveError naming the file.
    Quantile columns are the union over the versions read (NaN where a
    version has no such level).
    """
    archive = open_archive(root)
    files = parse_listing(root, archive.names())
    check_model(root, files, model_name)
    since, until = (None if moment is None else utc(moment) for moment in (since, until))
    wanted = [
        file
        for file in files
        if (since is None or file.issue_time >= since) and (until is None or file.issue_time < until)
    ]
    if not wanted:
        return empty_frame()
    contents = archive.read([file.relative for file in wanted])
    tables = [parquet_table(contents[file.relative], root, file) for file in wanted]
    rows = combined(root, wanted, tables)
    check_names(root, wanted, [table.num_rows for table in tables], rows)
    return rows.sort_by([(name, "ascending") for name in SORT_ORDER]).to_pandas()


def parquet_table(data: bytes, root, file: ArchiveFile) -> pa.Table:
    try:
        return pq.ParquetFile(pa.BufferReader(data)).read(use_threads=False)
    except (pa.ArrowInvalid, OSError) as error:
        raise ArchiveError(f"{root}/{file.relative}: not a readable Parquet file ({error})") from None


def check_names(root, files: list[ArchiveFile], counts: list[int], rows: pa.Table) -> None:
    """ArchiveError naming the first file whose rows are not the forecast its name says: `rows` are the files'
    rows one file after the other, `counts` how many each file holds (all files checked at once)."""
    counts = np.asarray(counts)
    owner = np.repeat(np.arange(len(files)), counts)
    names = rows["model_name"].to_numpy(zero_copy_only=False)
    versions = rows["model_version"].to_numpy()
    issued = rows["issue_time"].to_numpy().astype("datetime64[s]")
    expected_issued = np.array([file.issue_time.tz_localize(None) for file in files], "datetime64[s]")
    wrong = (
        (names != np.array([file.model_name for file in files], object)[owner])
        | (versions != np.array([file.version for file in files])[owner])
        | (issued != expected_issued[owner])
    )
    empty = np.flatnonzero(counts == 0)
    if wrong.any() or len(empty):
        index = owner[np.argmax(wrong)] if wrong.any() else empty[0]
        raise ArchiveError(f"{root}/{files[index].relative}: its rows are not the forecast its name says")
