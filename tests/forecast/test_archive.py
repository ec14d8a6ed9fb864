"""The forecast archive: its exact columns, one file per forecast by issue day, all-or-nothing writes,
local and in S3/GCS on loopback, and the files it refuses to read."""

import errno
import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from forecast import archive
from forecast.archive import ArchiveError
from forecast.client import Forecast

MODEL = "jena_temperature"
LEVELS = [0.1, 0.5, 0.9]
ISSUED = pd.Timestamp("2026-03-01 05:00", tz="UTC")
ASKED = pd.Timestamp("2026-03-01 05:07:31.6", tz="UTC")


def answer(issued=ISSUED, version=3, hours=24, levels=LEVELS, model_name=MODEL, offset=0.0) -> Forecast:
    """A client Forecast as the served model gives it: medians offset + 0.0, 0.1, ...; band -1 / +2 around them."""
    medians = np.float32(offset) + np.arange(hours, dtype=np.float32) / 10
    spread = np.linspace(-1, 2, len(levels), dtype=np.float32)
    return Forecast(
        medians[-1:],
        np.array([int(issued.timestamp()) + hours * 3600]),
        model_name,
        version,
        paths=medians[None],
        quantiles=(medians[:, None] + spread)[None],
        levels=np.float32([levels]),
    )


def rows(issued=ISSUED, asked=ASKED, levels=LEVELS, **kwargs) -> pd.DataFrame:
    return archive.forecast_rows(answer(issued, levels=levels, **kwargs), issued, asked, levels)


def files_under(root) -> list[str]:
    return sorted(path.relative_to(root).as_posix() for path in root.rglob("*") if path.is_file())


def test_a_forecast_round_trips_in_the_archive_columns_and_types(tmp_path):
    root = tmp_path / "archive"
    written = archive.append(root, rows())
    assert written == f"{root}/issue_date=2026-03-01/jena_temperature-3-20260301T050000Z.parquet"
    assert os.stat(written).st_mode & 0o777 == 0o644  # readable by the verification's user

    # The file: Parquet keeps timestamps in milliseconds (it has no seconds), UTC-adjusted.
    stored = pq.read_schema(written)
    utc_ms = pa.timestamp("ms", tz="UTC")
    assert [(field.name, field.type) for field in stored] == [
        ("model_name", pa.string()),
        ("model_version", pa.int64()),
        ("issue_time", utc_ms),
        ("requested_at", utc_ms),
        ("hours_ahead", pa.int16()),
        ("valid_time", utc_ms),
        ("median", pa.float32()),
        ("q10", pa.float32()),
        ("q50", pa.float32()),
        ("q90", pa.float32()),
    ]

    frame = archive.read(root)
    utc_s = pd.DatetimeTZDtype("s", "UTC")
    assert list(frame.dtypes.items()) == [
        ("model_name", pd.StringDtype(na_value=np.nan)),
        ("model_version", np.dtype(np.int64)),
        ("issue_time", utc_s),
        ("requested_at", utc_s),
        ("hours_ahead", np.dtype(np.int16)),
        ("valid_time", utc_s),
        ("median", np.dtype(np.float32)),
        ("q10", np.dtype(np.float32)),
        ("q50", np.dtype(np.float32)),
        ("q90", np.dtype(np.float32)),
    ]
    assert len(frame) == 24 and set(frame["model_name"]) == {MODEL} and set(frame["model_version"]) == {3}
    assert (frame["issue_time"] == ISSUED).all()
    assert (frame["requested_at"] == pd.Timestamp("2026-03-01 05:07:31", tz="UTC")).all()  # whole seconds
    assert frame["hours_ahead"].tolist() == list(range(1, 25))
    assert frame["valid_time"].iloc[0] == pd.Timestamp("2026-03-01 06:00", tz="UTC")
    assert frame["valid_time"].iloc[-1] == pd.Timestamp("2026-03-02 05:00", tz="UTC")
    medians = np.arange(24, dtype=np.float32) / 10
    np.testing.assert_array_equal(frame["median"], medians)
    np.testing.assert_array_equal(frame["q10"], medians - 1)
    np.testing.assert_array_equal(frame["q50"], medians + np.float32(0.5))
    np.testing.assert_array_equal(frame["q90"], medians + 2)


def test_appending_the_same_forecast_twice_keeps_one_file_and_one_set_of_rows(tmp_path):
    root = tmp_path / "archive"
    first = archive.append(root, rows())
    before = open(first, "rb").read()
    # The same model, version and issue time, asked again later (another answer): nothing changes.
    again = rows(asked=ASKED + pd.Timedelta(minutes=30), offset=5.0)
    assert archive.append(root, again) is None
    assert files_under(root) == ["issue_date=2026-03-01/jena_temperature-3-20260301T050000Z.parquet"]
    assert open(first, "rb").read() == before
    frame = archive.read(root)
    assert len(frame) == 24 and frame["median"].iloc[0] == 0.0


def test_forecasts_are_filed_by_issue_day_and_read_by_issue_time(tmp_path):
    root = tmp_path / "archive"
    issues = [pd.Timestamp(moment, tz="UTC") for moment in ("2026-03-01 22:00", "2026-03-01 23:00", "2026-03-02 00:00")]
    for issued in issues:
        archive.append(root, rows(issued, asked=issued))
    archive.append(root, rows(issues[1], asked=issues[1], version=4))  # a second version, same hour
    assert files_under(root) == [
        "issue_date=2026-03-01/jena_temperature-3-20260301T220000Z.parquet",
        "issue_date=2026-03-01/jena_temperature-3-20260301T230000Z.parquet",
        "issue_date=2026-03-01/jena_temperature-4-20260301T230000Z.parquet",
        "issue_date=2026-03-02/jena_temperature-3-20260302T000000Z.parquet",
    ]

    everything = archive.read(root, model_name=MODEL)
    assert len(everything) == 4 * 24
    keys = everything[["issue_time", "model_version"]].drop_duplicates()
    assert list(keys.itertuples(index=False, name=None)) == [
        (issues[0], 3),
        (issues[1], 3),
        (issues[1], 4),
        (issues[2], 3),
    ]
    # [since, until): the start is in, the end is out; naive moments are UTC
    window = archive.read(root, since="2026-03-01 23:00", until=issues[2])
    assert set(window["issue_time"]) == {issues[1]} and len(window) == 2 * 24
    assert len(archive.read(root, since=issues[2])) == 24
    assert archive.read(root, until=issues[0]).empty


def test_a_write_that_fails_leaves_nothing_under_the_final_name(tmp_path, monkeypatch):
    root = tmp_path / "archive"

    def disk_full(descriptor):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)  # after the bytes were written, before the link
    with pytest.raises(OSError, match="No space left"):
        archive.append(root, rows())
    assert files_under(root) == []  # no file, and no temporary left behind
    assert archive.read(root).empty
    monkeypatch.undo()
    assert archive.append(root, rows()) is not None  # the next run archives it


def test_a_writer_that_finds_the_file_written_meanwhile_keeps_the_first(tmp_path, monkeypatch):
    """Two runs of the same forecast at once: both list an archive without it; the second link fails."""
    root = tmp_path / "archive"
    first = archive.append(root, rows())
    before = open(first, "rb").read()
    monkeypatch.setattr(archive.LocalArchive, "names", lambda self, under="": [])
    assert archive.append(root, rows(offset=9.0)) is None
    assert open(first, "rb").read() == before
    assert files_under(root) == ["issue_date=2026-03-01/jena_temperature-3-20260301T050000Z.parquet"]


def test_without_hard_links_the_file_is_renamed_into_place_once(tmp_path, monkeypatch):
    def no_links(source, target):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    root = tmp_path / "archive"
    assert archive.append(root, rows()) is not None
    assert archive.append(root, rows(offset=9.0)) is None
    assert files_under(root) == ["issue_date=2026-03-01/jena_temperature-3-20260301T050000Z.parquet"]
    assert archive.read(root)["median"].iloc[0] == 0.0


def test_in_object_storage_a_forecast_is_one_put_read_back_by_issue_time(object_store):
    root = object_store.create_bucket("forecasts") + "/jena/archive"
    written = archive.append(root, rows())
    assert written == f"{root}/issue_date=2026-03-01/jena_temperature-3-20260301T050000Z.parquet"
    assert archive.append(root, rows(offset=9.0)) is None
    archive.append(root, rows(ISSUED + pd.Timedelta(hours=20), asked=ISSUED + pd.Timedelta(hours=20)))

    frame = archive.read(root, model_name=MODEL)
    assert len(frame) == 2 * 24 and frame["median"].iloc[0] == 0.0
    assert list(frame["issue_time"].drop_duplicates()) == [ISSUED, ISSUED + pd.Timedelta(hours=20)]
    assert archive.read(root, since=ISSUED + pd.Timedelta(hours=1))["issue_time"].nunique() == 1
    assert sorted(archive.open_archive(root).names()) == [
        "issue_date=2026-03-01/jena_temperature-3-20260301T050000Z.parquet",
        "issue_date=2026-03-02/jena_temperature-3-20260302T010000Z.parquet",
    ]
    # an append on a day of its own is checked against the nearest day: another model's archive is refused
    with pytest.raises(
        ArchiveError, match=r"20260302T010000Z\.parquet: a forecast of model jena_temperature, not of x"
    ):
        archive.append(root, rows(ISSUED + pd.Timedelta(days=5), asked=ISSUED, model_name="x"))


def test_in_s3_a_writer_that_listed_before_anothers_put_keeps_the_first(s3_server, monkeypatch):
    """The PUT is conditional (If-None-Match: *). S3 only: gcp-storage-emulator ignores GCS's ifGenerationMatch=0
    (tests/serving/test_store_remote.py shows it), which real GCS honours the same way."""
    root = s3_server.create_bucket("forecasts") + "/archive"
    archive.append(root, rows())
    monkeypatch.setattr(archive.RemoteArchive, "names", lambda self, under="": [])
    assert archive.append(root, rows(offset=9.0)) is None
    monkeypatch.undo()
    assert archive.read(root)["median"].iloc[0] == 0.0


def test_an_unreachable_store_is_one_line_and_nothing_is_written(s3_server):
    from serving.store import StoreUnavailable

    root = s3_server.create_bucket("forecasts") + "/archive"
    s3_server.stop()
    with pytest.raises(StoreUnavailable, match=r"s3://forecasts/archive: cannot connect"):
        archive.append(root, rows())
    s3_server.start()
    assert archive.read(root).empty


def test_another_models_archive_is_refused_naming_the_file(tmp_path):
    root = tmp_path / "archive"
    archive.append(root, rows(model_name="other-model"))
    other_file = f"{root}/issue_date=2026-03-01/other-model-3-20260301T050000Z.parquet"
    with pytest.raises(ArchiveError) as refused:
        archive.append(root, rows())
    assert (
        str(refused.value)
        == f"{other_file}: a forecast of model other-model, not of jena_temperature: another model's archive"
    )
    assert files_under(root) == ["issue_date=2026-03-01/other-model-3-20260301T050000Z.parquet"]
    with pytest.raises(ArchiveError) as refused:
        archive.read(root, model_name=MODEL)
    assert (
        str(refused.value)
        == f"{other_file}: a forecast of model other-model, not of jena_temperature: another model's archive"
    )
    assert archive.read(root, model_name="other-model")["model_name"].unique().tolist() == ["other-model"]
    # Read without a model name, an archive must hold one model's forecasts.
    archive.append(root / "mixed", rows())
    other = pa.Table.from_pandas(rows(model_name="other-model"), preserve_index=False)
    write_parquet(root / "mixed", "issue_date=2026-03-01/other-model-3-20260301T050000Z.parquet", other)
    with pytest.raises(ArchiveError, match="in an archive of (other-model|jena_temperature): one archive per model$"):
        archive.read(root / "mixed")


def test_an_append_lists_its_day_and_the_nearest_other_not_the_whole_archive(tmp_path, monkeypatch):
    """Every append is checked against its day's partition, or when that is empty the nearest other one that holds
    files, so an hourly append costs the same however many days the archive holds; another model's archive is still
    refused."""
    root = tmp_path / "archive"
    days = [ISSUED + pd.Timedelta(days=day) for day in (0, 1, 2, 9)]
    for issued in days:
        archive.append(root, rows(issued, asked=issued))
    listed = []
    names = archive.LocalArchive.names
    monkeypatch.setattr(
        archive.LocalArchive, "names", lambda self, under="": listed.append(under) or names(self, under)
    )
    archive.append(root, rows(ISSUED + pd.Timedelta(days=8), asked=ISSUED))
    assert listed == ["issue_date=2026-03-10"]  # no partition for 9 March yet: the 10th is the nearest
    listed.clear()
    assert archive.append(root, rows(days[1], asked=days[1])) is None  # the file is found in its own day
    assert listed == ["issue_date=2026-03-02"]
    monkeypatch.undo()

    other = rows(ISSUED + pd.Timedelta(days=20), asked=ISSUED, model_name="other-model")
    with pytest.raises(
        ArchiveError,
        match=r"^\S+/issue_date=2026-03-10/jena_temperature-3-20260310T050000Z\.parquet: a "
        r"forecast of model jena_temperature, not of other-model: another model's archive$",
    ):
        archive.append(root, other)
    assert not (root / "issue_date=2026-03-21").exists()
    (root / "notes.txt").write_text("x")
    with pytest.raises(ArchiveError, match=rf"^{root}/notes.txt: not a forecast archive file"):
        archive.append(root, rows(ISSUED + pd.Timedelta(days=3), asked=ISSUED))


def test_a_file_named_with_an_impossible_time_is_named(tmp_path):
    root = tmp_path / "archive"
    relative = "issue_date=2026-13-01/jena_temperature-3-20261301T050000Z.parquet"
    write_parquet(root, relative, archived_table())
    with pytest.raises(ArchiveError, match=rf"^{root}/{relative}: 20261301T050000Z is not a time"):
        archive.read(root)


def write_parquet(root, relative: str, table: pa.Table) -> str:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return str(path)


def archived_table() -> pa.Table:
    return pa.Table.from_pandas(rows(), preserve_index=False)


@pytest.mark.parametrize(
    "change, problem",
    [
        (lambda table: table.append_column("note", pa.array(["x"] * table.num_rows)), r"unexpected columns \['note'\]"),
        (lambda table: table.drop_columns(["requested_at"]), r"columns \[.*\] are not the archive's"),
        (lambda table: table.drop_columns(["q10", "q50", "q90"]), r"columns \[.*\] are not the archive's"),
        (
            lambda table: table.set_column(6, "median", table["median"].cast(pa.float64())),
            "column median is double, the archive's is float",
        ),
        (
            lambda table: table.set_column(2, "issue_time", table["issue_time"].cast(pa.timestamp("ms"))),
            r"column issue_time is timestamp\[ms\], the archive's is timestamp\[s, tz=UTC\]",
        ),
        (
            lambda table: table.select([0, 1, 2, 3, 4, 5, 6, 9, 8, 7]),
            r"the quantile columns \['q90', 'q50', 'q10'\] are not in ascending order",
        ),
    ],
)
def test_a_file_with_other_columns_is_named(tmp_path, change, problem):
    root = tmp_path / "archive"
    archive.append(root, rows(ISSUED - pd.Timedelta(hours=1), asked=ISSUED))
    path = write_parquet(
        root, "issue_date=2026-03-01/jena_temperature-3-20260301T050000Z.parquet", change(archived_table())
    )
    with pytest.raises(ArchiveError, match=rf"^{path}: {problem}"):
        archive.read(root)


def test_a_file_whose_values_do_not_convert_is_named_among_many(tmp_path):
    """The files are cast to the archive's types all at once; when that fails, the file at fault is named."""
    root = tmp_path / "archive"
    for hour in range(3):
        archive.append(root, rows(ISSUED + pd.Timedelta(hours=hour), asked=ISSUED))
    table = archived_table()
    asked = pa.array([ASKED.value // 10**6] * table.num_rows, pa.timestamp("ms", tz="UTC"))  # 05:07:31.600
    path = write_parquet(
        root,
        "issue_date=2026-03-01/jena_temperature-3-20260301T050000Z.parquet",
        table.set_column(3, "requested_at", asked),
    )
    with pytest.raises(ArchiveError, match=rf"^{path}: Casting from timestamp\[ms, tz=UTC\] to timestamp\[s, tz=UTC\]"):
        archive.read(root)


def test_a_file_that_is_not_the_forecast_its_name_says_is_named(tmp_path):
    root = tmp_path / "archive"
    path = write_parquet(root, "issue_date=2026-03-01/jena_temperature-4-20260301T050000Z.parquet", archived_table())
    with pytest.raises(ArchiveError, match=rf"^{path}: its rows are not the forecast its name says$"):
        archive.read(root)
    (root / "issue_date=2026-03-01/jena_temperature-4-20260301T050000Z.parquet").write_bytes(b"not parquet")
    with pytest.raises(ArchiveError, match=rf"^{path}: not a readable Parquet file"):
        archive.read(root)


@pytest.mark.parametrize(
    "relative, problem",
    [
        ("README.txt", "not a forecast archive file"),
        ("issue_date=2026-03-01/forecast.parquet", "not a forecast archive file"),
        ("2026-03-01/jena_temperature-3-20260301T050000Z.parquet", "not a forecast archive file"),
        ("issue_date=2026-03-02/jena_temperature-3-20260301T050000Z.parquet", "issued 2026-03-01 05:00, filed under"),
    ],
)
def test_files_outside_the_layout_are_named_and_hidden_ones_ignored(tmp_path, relative, problem):
    root = tmp_path / "archive"
    archive.append(root, rows())
    for hidden in ("_SUCCESS", "issue_date=2026-03-01/.jena_temperature-3-20260301T060000Z.parquet.x.tmp"):
        (root / hidden).write_bytes(b"")
    assert len(archive.read(root)) == 24
    (root / relative).parent.mkdir(parents=True, exist_ok=True)
    (root / relative).write_bytes(b"")
    with pytest.raises(ArchiveError, match=rf"^{root}/{relative}: {problem}"):
        archive.read(root)


def test_rows_that_are_not_one_whole_forecast_are_refused_and_nothing_is_written(tmp_path):
    root = tmp_path / "archive"
    two = pd.concat([rows(), rows(ISSUED + pd.Timedelta(hours=1))], ignore_index=True)
    with pytest.raises(ArchiveError, match="^the rows to append: 2 forecasts"):
        archive.append(root, two)
    with pytest.raises(ArchiveError, match=r"^the rows to append: hours_ahead must run 1 \.\. 23"):
        archive.append(root, rows().iloc[1:])
    with pytest.raises(ArchiveError, match=r"^the rows to append: unexpected columns \['note'\]"):
        archive.append(root, rows().assign(note="x"))
    with pytest.raises(ArchiveError, match="^the rows to append: valid_time is not issue_time"):
        archive.append(root, rows().assign(valid_time=ISSUED))
    assert not root.exists()


def test_a_forecast_that_cannot_be_archived_says_why():
    old_style = Forecast(np.float32([1.0]), np.array([int(ISSUED.timestamp()) + 86400]), MODEL, 1)
    with pytest.raises(ArchiveError, match="serves no hourly forecast"):
        archive.forecast_rows(old_style, ISSUED, ASKED, LEVELS)
    with pytest.raises(ArchiveError, match=r"serves the quantile levels \[0.1, 0.5, 0.9\], not \[0.05, 0.5, 0.95\]"):
        archive.forecast_rows(answer(), ISSUED, ASKED, [0.05, 0.5, 0.95])
    with pytest.raises(ArchiveError, match=r"serves the quantile levels \[0.1, 0.5, 0.9\], not \[0.1, 0.9\]"):
        archive.forecast_rows(answer(), ISSUED, ASKED, [0.1, 0.9])  # another count of levels
    with pytest.raises(ArchiveError, match="does not say which version"):
        archive.forecast_rows(answer(version=None), ISSUED, ASKED, LEVELS)
    with pytest.raises(ArchiveError, match="last hour is valid at 2026-03-02 05:00, but 24 hours after"):
        archive.forecast_rows(answer(), ISSUED - pd.Timedelta(hours=1), ASKED, LEVELS)


def test_versions_with_other_quantile_levels_read_as_one_table(tmp_path):
    archive.append(tmp_path, rows(version=1))
    archive.append(tmp_path, rows(version=2, levels=[0.05, 0.5, 0.95]))
    frame = archive.read(tmp_path)
    assert list(frame.columns[7:]) == ["q5", "q10", "q50", "q90", "q95"]
    version_1, version_2 = frame[frame["model_version"] == 1], frame[frame["model_version"] == 2]
    assert version_1["q5"].isna().all() and version_2["q10"].isna().all()
    assert not version_1["q10"].isna().any() and not version_2["q95"].isna().any()


def test_an_empty_or_absent_archive_reads_as_no_rows_with_the_fixed_columns(tmp_path):
    frame = archive.read(tmp_path / "never-written")
    assert frame.empty and list(frame.columns) == archive.FIXED_NAMES
    assert frame["issue_time"].dtype == pd.DatetimeTZDtype("s", "UTC")
    (tmp_path / "file").write_text("")
    with pytest.raises(ArchiveError, match="is a file, not an archive directory"):
        archive.read(tmp_path / "file")


def test_quantile_column_names_follow_the_levels():
    assert [archive.quantile_column(level) for level in (0.1, 0.5, 0.9, 0.025, np.float32(0.1))] == [
        "q10",
        "q50",
        "q90",
        "q2.5",
        "q10",
    ]
    assert [archive.level_of(name) for name in ("q10", "q2.5", "median", "q")] == [0.1, 0.025, None, None]
