"""download: local paths and file:// URLs, zip checks, retries over HTTP, clean offline failure."""

import http.server
import io
import threading
import zipfile

import pytest

from pipeline import schema
from pipeline.download import DownloadError, header_problems, obtain_csv
from tests.helpers.readings import make_readings, to_csv_text
from tests.helpers.repository import run_stage


@pytest.fixture
def csv_text():
    return to_csv_text(make_readings(periods=12))


def zipped(text: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as bundle:
        bundle.writestr(schema.CSV_NAME, text)
    return buffer.getvalue()


def test_local_csv_path(tmp_path, csv_text):
    source = tmp_path / "copy.csv"
    source.write_text(csv_text)
    obtain_csv(str(source), tmp_path / "out" / schema.CSV_NAME)
    assert (tmp_path / "out" / schema.CSV_NAME).read_text() == csv_text


def test_file_url_to_a_zip(tmp_path, csv_text):
    source = tmp_path / "jena.zip"
    source.write_bytes(zipped(csv_text))
    obtain_csv(source.as_uri(), tmp_path / schema.CSV_NAME)
    assert (tmp_path / schema.CSV_NAME).read_text() == csv_text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["jena.zip", schema.CSV_NAME]


def test_corrupt_zip_leaves_nothing(tmp_path, csv_text):
    data = bytearray(zipped(csv_text * 3))
    data[60:80] = b"\0" * 20  # damage the compressed member, keep the directory
    source = tmp_path / "broken.zip"
    source.write_bytes(bytes(data))
    destination = tmp_path / "out" / schema.CSV_NAME
    with pytest.raises(DownloadError, match="broken.zip"):
        obtain_csv(str(source), destination)
    assert list((tmp_path / "out").iterdir()) == []


def test_a_file_that_is_not_jena_is_rejected(tmp_path):
    source = tmp_path / "other.csv"
    source.write_text("a,b\n1,2\n")
    with pytest.raises(DownloadError, match="not a Jena climate CSV"):
        obtain_csv(str(source), tmp_path / "out" / schema.CSV_NAME)
    assert list((tmp_path / "out").iterdir()) == []


def test_a_missing_column_is_named(tmp_path, csv_text):
    lines = csv_text.splitlines(keepends=True)
    without_rh = "".join(
        ",".join(v for i, v in enumerate(line.rstrip("\n").split(",")) if i != 5) + "\n" for line in lines
    )
    source = tmp_path / "no_rh.csv"
    source.write_text(without_rh)
    with pytest.raises(DownloadError, match=r"no_rh.csv: not a Jena climate CSV: missing columns \['rh \(%\)'\]$"):
        obtain_csv(str(source), tmp_path / "out" / schema.CSV_NAME)
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize(
    "header, problem",
    [
        ([*schema.COLUMNS, "extra (x)"], "unexpected columns ['extra (x)']"),
        (
            [schema.DATE_COLUMN, schema.MEASUREMENTS[1], schema.MEASUREMENTS[0], *schema.MEASUREMENTS[2:]],
            "columns out of order: 'p (mbar)' at position 3 (expected 2), 'T (degC)' at position 2 (expected 3)",
        ),
        ([*schema.COLUMNS, schema.MEASUREMENTS[0]], "duplicated columns ['p (mbar)']"),
        (schema.COLUMNS, ""),
    ],
)
def test_header_problems_name_the_columns(header, problem):
    assert header_problems(list(header)) == problem


def test_missing_local_file_names_both_ways_out(tmp_path):
    with pytest.raises(DownloadError) as error:
        obtain_csv(str(tmp_path / "nowhere.zip"), tmp_path / schema.CSV_NAME)
    message = str(error.value)
    assert "nowhere.zip" in message and "data.url" in message and "data.source: synthetic" in message


class FlakyServer(http.server.BaseHTTPRequestHandler):
    """Answers 503 to the first `failures` requests, then the zip."""

    failures = 0
    body = b""
    requests_seen = 0

    def do_GET(self):
        type(self).requests_seen += 1
        if type(self).requests_seen <= type(self).failures:
            self.send_response(503)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


@pytest.fixture
def flaky_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FlakyServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


def test_http_download_retries_transient_failures(tmp_path, csv_text, flaky_server):
    FlakyServer.failures, FlakyServer.body, FlakyServer.requests_seen = 2, zipped(csv_text), 0
    url = f"http://127.0.0.1:{flaky_server.server_port}/jena_climate_2009_2016.csv.zip"
    obtain_csv(url, tmp_path / schema.CSV_NAME, retries=4, backoff_seconds=0)
    assert FlakyServer.requests_seen == 3
    assert (tmp_path / schema.CSV_NAME).read_text() == csv_text
    assert [p.name for p in tmp_path.iterdir()] == [schema.CSV_NAME]


def test_http_download_gives_up_with_a_clear_error(tmp_path, csv_text, flaky_server):
    FlakyServer.failures, FlakyServer.body, FlakyServer.requests_seen = 99, b"", 0
    url = f"http://127.0.0.1:{flaky_server.server_port}/jena.zip"
    with pytest.raises(DownloadError, match=r"(?s)could not download .*jena\.zip: .*503.*after 4 attempts"):
        obtain_csv(url, tmp_path / schema.CSV_NAME, retries=4, backoff_seconds=0)
    assert FlakyServer.requests_seen == 4
    assert list(tmp_path.iterdir()) == []


def test_offline_stage_fails_cleanly(tmp_path):
    url = "http://127.0.0.1:9/jena_climate_2009_2016.csv.zip"  # the discard port: connection refused
    (tmp_path / "params.yaml").write_text(
        f"seed: 1\ndata:\n  source: jena\n  url: {url}\n  retries: 2\n  backoff_seconds: 0\n"
    )
    result = run_stage("download", tmp_path)
    assert result.returncode != 0
    assert f"could not download the Jena climate data from {url}" in result.stderr
    assert "after 2 attempts" in result.stderr and "data.source: synthetic" in result.stderr
    assert "Traceback" not in result.stderr
    assert list((tmp_path / "data" / "raw").iterdir()) == []
