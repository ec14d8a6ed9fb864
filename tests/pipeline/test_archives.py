"""The station's archive list: links found on its pages, in time order, for data.urls."""

import http.server
import json
import subprocess
import sys
import threading

import pytest

from pipeline.archives import archive_links, archive_urls, main
from pipeline.serving_check import free_port

OLD_PAGE = """<html><body><h2>Archive</h2>
<a href="mpi_roof_2017b.zip">2017 II</a> <a href='mpi_roof_2017a.zip'>2017 I</a>
<a href="/wetter/mpi_roof_2018a.zip">2018 I</a> <a href="https://example.org/other.zip">other</a>
<a href=mpi_saale_2017a.zip>Saale</a></body></html>"""
NEW_PAGE = """<ul><li><a href="data/mpi_roof_2024.zip">2024</a></li>
<li><a href="data/MPI_ROOF_2021B.zip">2021 II</a></li><li><a href="data/mpi_roof_2018a.zip">again</a></li></ul>"""


def test_links_are_made_absolute_and_only_roof_archives_count():
    links = archive_links(OLD_PAGE, "https://www.bgc-jena.mpg.de/wetter/weather_data.html")
    assert links == {
        "mpi_roof_2017b.zip": "https://www.bgc-jena.mpg.de/wetter/mpi_roof_2017b.zip",
        "mpi_roof_2017a.zip": "https://www.bgc-jena.mpg.de/wetter/mpi_roof_2017a.zip",
        "mpi_roof_2018a.zip": "https://www.bgc-jena.mpg.de/wetter/mpi_roof_2018a.zip",
    }


def test_archives_are_listed_oldest_first_once_each_first_page_winning():
    urls = archive_urls(
        [
            archive_links(OLD_PAGE, "https://www.bgc-jena.mpg.de/wetter/weather_data.html"),
            archive_links(NEW_PAGE, "https://weather.bgc-jena.mpg.de/weather_data.html"),
        ]
    )
    assert urls == [
        "https://www.bgc-jena.mpg.de/wetter/mpi_roof_2017a.zip",
        "https://www.bgc-jena.mpg.de/wetter/mpi_roof_2017b.zip",
        "https://www.bgc-jena.mpg.de/wetter/mpi_roof_2018a.zip",
        "https://weather.bgc-jena.mpg.de/data/MPI_ROOF_2021B.zip",
        "https://weather.bgc-jena.mpg.de/data/mpi_roof_2024.zip",
    ]


@pytest.fixture
def page_server(tmp_path):
    (tmp_path / "weather_data.html").write_text(NEW_PAGE)
    handler = lambda *args: http.server.SimpleHTTPRequestHandler(*args, directory=str(tmp_path))  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_the_command_prints_the_data_urls_value_of_a_served_page(page_server, capsys):
    assert main([f"{page_server}/weather_data.html"]) == 0
    assert json.loads(capsys.readouterr().out) == [
        f"{page_server}/data/mpi_roof_2018a.zip",
        f"{page_server}/data/MPI_ROOF_2021B.zip",
        f"{page_server}/data/mpi_roof_2024.zip",
    ]


def test_a_missing_page_or_a_page_without_archives_is_one_line_and_exit_1(page_server, tmp_path):
    (tmp_path / "empty.html").write_text("<p>nothing here</p>")
    for page, said in [
        (f"{page_server}/gone.html", "archives: cannot read"),
        (str(tmp_path / "empty.html"), "archives: no mpi_roof_*.zip link on"),
    ]:
        result = subprocess.run(
            [sys.executable, "-m", "pipeline.archives", page], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 1 and result.stdout == ""
        assert result.stderr.startswith(said) and len(result.stderr.strip().splitlines()) == 1, result.stderr
