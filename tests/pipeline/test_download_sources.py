"""download with several sources: the station archives' format, joining, overlaps, bad sources."""

import io
import zipfile

import numpy as np
import pandas as pd
import pytest

from pipeline import schema
from pipeline.download import (
    DownloadError,
    further_sources,
    header_problems,
    join_sources,
    obtain_csv,
    read_source,
)
from pipeline.prepare import count_conflicting_duplicates, prepare, read_raw_csv
from tests.helpers.readings import make_readings, to_csv_text
from tests.helpers.repository import run_stage

# One row's values for the archives' 7 extra columns, a -9999 sentinel among them.
EXTRA_VALUES = "0.00,0.00,-9999.00,12.30,15.10,21.45,428.10"


def archive_bytes(readings: pd.DataFrame, encoding: str = "latin-1") -> bytes:
    """`readings` as the station's archives write them: 21 measurements, CRLF lines, latin-1 header."""
    lines = to_csv_text(readings).splitlines()
    header = lines[0] + "," + ",".join(f'"{name}"' for name in schema.ARCHIVE_EXTRA_MEASUREMENTS)
    return "".join(f"{line}\r\n" for line in [header, *(f"{row},{EXTRA_VALUES}" for row in lines[1:])]).encode(encoding)


def zipped(member: str, data: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as bundle:
        bundle.writestr(member, data)
    return buffer.getvalue()


def base_and_archive(tmp_path, base: pd.DataFrame, newer: pd.DataFrame) -> tuple[str, str]:
    """The base record as a plain CSV path and a zipped archive as a file:// URL."""
    base_path = tmp_path / "jena_climate_2009_2016.csv"
    base_path.write_text(to_csv_text(base))
    archive = tmp_path / "mpi_roof_2017a.zip"
    archive.write_bytes(zipped("mpi_roof_2017a.csv", archive_bytes(newer)))
    return str(base_path), archive.as_uri()


def test_the_archive_header_is_latin_1_and_accepted():
    data = archive_bytes(make_readings(periods=2))
    assert "SWDR (W/m²)".encode("latin-1") in data and b"W/m\xc2\xb2" not in data
    assert header_problems([*schema.COLUMNS, *schema.ARCHIVE_EXTRA_MEASUREMENTS]) == ""


@pytest.mark.parametrize("encoding", ["latin-1", "utf-8"])
def test_an_archive_keeps_only_the_jena_columns(tmp_path, encoding):
    readings = make_readings(start="2017-01-01 00:10", periods=12)
    readings.loc[4, schema.WIND_SPEED] = schema.SENTINEL
    source = tmp_path / "mpi_roof_2017a.csv"
    source.write_bytes(archive_bytes(readings, encoding))
    destination = tmp_path / "out" / schema.CSV_NAME
    [summary] = obtain_csv(str(source), destination)
    assert destination.read_bytes() == to_csv_text(readings).encode("ascii")
    assert summary == {
        "url": str(source),
        "rows": 12,
        "first": "2017-01-01 00:10:00",
        "last": "2017-01-01 02:00:00",
        "replaced": 0,
    }


def test_base_record_and_archive_join_in_time_order(tmp_path):
    base = make_readings(start="2016-12-31 22:10", periods=12, seed=1)
    newer = make_readings(start="2017-01-01 00:10", periods=18, seed=2)
    base_url, archive_url = base_and_archive(tmp_path, base, newer)
    destination = tmp_path / "out" / schema.CSV_NAME
    summaries = obtain_csv(archive_url, destination, further_urls=[base_url])  # listed newest first
    assert destination.read_text() == to_csv_text(pd.concat([base, newer], ignore_index=True))
    assert [(s["url"], s["rows"], s["replaced"]) for s in summaries] == [(archive_url, 18, 0), (base_url, 12, 0)]
    assert [p.name for p in (tmp_path / "out").iterdir()] == [schema.CSV_NAME]


def test_an_overlap_keeps_the_later_source_and_counts_the_disagreements(tmp_path):
    base = make_readings(start="2017-01-01 00:10", periods=36, seed=1)
    newer = make_readings(start="2017-01-01 04:10", periods=36, seed=2)  # its first 2 hours overlap the base
    overlap = base[schema.DATE_COLUMN] >= newer[schema.DATE_COLUMN].iloc[0]
    newer.loc[:11, schema.MEASUREMENTS] = base.loc[overlap, schema.MEASUREMENTS].to_numpy()
    newer.loc[[2, 7, 9], schema.TEMPERATURE] += 0.5  # the station corrected three of the twelve readings
    base_url, archive_url = base_and_archive(tmp_path, base, newer)
    destination = tmp_path / schema.CSV_NAME
    summaries = obtain_csv(base_url, destination, further_urls=[archive_url])
    assert [s["replaced"] for s in summaries] == [12, 0]

    raw = read_raw_csv(destination)
    assert raw[schema.DATE_COLUMN].is_monotonic_increasing and len(raw) == 72
    hourly, report = prepare(raw, max_fill_hours=3)
    assert report["duplicates_dropped"] == 12 and report["conflicting_duplicates"] == 3
    assert report["first_hour"] == "2017-01-01 01:00:00" and report["last_hour"] == "2017-01-01 10:00:00"
    corrected_hour = newer[schema.TEMPERATURE].iloc[6:12].mean()  # 05:10 .. 06:00 holds two corrections
    assert hourly.loc["2017-01-01 06:00", schema.TEMPERATURE] == pytest.approx(corrected_hour)
    assert corrected_hour != pytest.approx(base.loc[overlap, schema.TEMPERATURE].iloc[6:12].mean())


def test_join_puts_the_later_source_first_and_keeps_order_within_a_source():
    def source(stamps, temperatures):
        frame = pd.DataFrame({name: "1.00" for name in schema.COLUMNS}, index=range(len(stamps)))
        frame[schema.DATE_COLUMN] = stamps
        frame[schema.TEMPERATURE] = temperatures
        return frame.assign(**{"parsed time": pd.to_datetime(stamps, format=schema.DATE_FORMAT)})

    older = source(["01.01.2017 00:20:00", "01.01.2017 00:10:00", "01.01.2017 00:20:00"], ["a", "b", "c"])
    newer = source(["01.01.2017 00:20:00", "01.01.2017 00:30:00"], ["d", "e"])
    table, summaries = join_sources([older, newer])
    assert list(table[schema.TEMPERATURE]) == ["b", "d", "a", "c", "e"]
    assert list(table.columns) == schema.COLUMNS
    assert [s["replaced"] for s in summaries] == [2, 0]


def test_conflicting_duplicates_treat_missing_as_equal(readings):
    repeated = readings.iloc[[3, 4, 5]].copy()
    readings.loc[3, schema.WIND_SPEED] = np.nan
    repeated.loc[3, schema.WIND_SPEED] = np.nan  # equal: both missing
    repeated.loc[5, schema.PRESSURE] += 0.01  # differs
    assert count_conflicting_duplicates(pd.concat([readings, repeated], ignore_index=True)) == 1
    assert count_conflicting_duplicates(readings) == 0


def test_a_source_without_a_column_is_named_and_nothing_is_written(tmp_path):
    base_url, _ = base_and_archive(tmp_path, make_readings(periods=6), make_readings(periods=1))
    text = archive_bytes(make_readings(start="2017-01-01 00:10", periods=6)).decode("latin-1")
    without_rh = "".join(
        ",".join(f for i, f in enumerate(line.split(",")) if i != 5) + "\r\n" for line in text.splitlines()
    )
    broken = tmp_path / "mpi_roof_2017b.zip"
    broken.write_bytes(zipped("mpi_roof_2017b.csv", without_rh.encode("latin-1")))
    (tmp_path / "out").mkdir()
    destination = tmp_path / "out" / schema.CSV_NAME
    destination.write_text("the previous record\n")
    problem = r"mpi_roof_2017b\.zip: not a Jena climate CSV: missing columns \['rh \(%\)'\]$"
    with pytest.raises(DownloadError, match=problem):
        obtain_csv(base_url, destination, further_urls=[broken.as_uri()])
    assert destination.read_text() == "the previous record\n"
    assert [p.name for p in (tmp_path / "out").iterdir()] == [schema.CSV_NAME]


def test_a_timestamp_in_another_format_names_source_and_line(tmp_path):
    text = archive_bytes(make_readings(periods=6)).decode("latin-1").split("\r\n")
    text[3] = "2020-01-01 00:30:00" + text[3][19:]
    source = tmp_path / "iso.csv"
    source.write_text("\r\n".join(text), encoding="latin-1")
    problem = r"iso\.csv: column 'Date Time', line 4: cannot parse '2020-01-01 00:30:00'"
    with pytest.raises(DownloadError, match=problem):
        read_source(source, str(source))


def test_a_source_with_no_readings_is_refused(tmp_path):
    source = tmp_path / "empty.csv"
    source.write_bytes(archive_bytes(make_readings(periods=1)).split(b"\r\n")[0] + b"\r\n")
    with pytest.raises(DownloadError, match=r"empty\.csv: no readings below the header"):
        read_source(source, str(source))


def test_stage_joins_the_sources_in_params(tmp_path):
    base = make_readings(start="2016-12-31 23:10", periods=6, seed=1)
    newer = make_readings(start="2017-01-01 00:10", periods=6, seed=2)
    base_url, archive_url = base_and_archive(tmp_path, base, newer)
    (tmp_path / "params.yaml").write_text(
        f"seed: 1\ndata:\n  source: jena\n  url: {base_url}\n  urls:\n    - {archive_url}\n"
        "  retries: 1\n  backoff_seconds: 0\n"
    )
    result = run_stage("download", tmp_path)
    assert result.returncode == 0, result.stderr
    raw = tmp_path / "data" / "raw" / schema.CSV_NAME
    assert raw.read_text() == to_csv_text(pd.concat([base, newer], ignore_index=True))
    assert f"{archive_url}: 6 readings, 2017-01-01 00:10:00 .. 2017-01-01 01:00:00" in result.stdout
    assert "12 readings from 2 source(s)" in result.stdout


@pytest.mark.parametrize("urls", ["file:///tmp/mpi_roof_2017a.zip", [""], [None], {"a": "b"}])
def test_urls_that_are_not_a_list_of_sources_are_refused(urls):
    with pytest.raises(SystemExit, match=r"params.yaml: data.urls must be a list of URLs or paths, got "):
        further_sources({"url": "base.zip", "urls": urls})


def test_missing_or_empty_urls_are_no_further_sources():
    assert further_sources({"url": "base.zip"}) == []
    assert further_sources({"urls": None}) == further_sources({"urls": []}) == []
