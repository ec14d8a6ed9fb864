"""The station's published archives, as a `data.urls` list.

In:  the pages that list the Jena roof station's archives (by default the Max
     Planck Institute for Biogeochemistry's two weather pages).
Out: on stdout, a JSON list of every `mpi_roof_<year>[a|b].zip` they link to,
     absolute, oldest first: the value for `dvc exp run -S data.urls=...`.

    python -m pipeline.archives                      # the default pages
    python -m pipeline.archives PAGE_URL_OR_FILE ...

The station publishes half-year archives (`mpi_roof_2017a.zip` January-June,
`mpi_roof_2017b.zip` July-December) and, later, whole years
(`mpi_roof_2024.zip`); the record grows as they appear, so the list is read
from the pages rather than written down. A page that cannot be read is one
clear line on stderr and exit 1; nothing is printed then.
"""

import argparse
import json
import re
import sys
import urllib.parse
from pathlib import Path

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

PAGES = ("https://www.bgc-jena.mpg.de/wetter/weather_data.html", "https://weather.bgc-jena.mpg.de/weather_data.html")
ARCHIVE_NAME = re.compile(r"mpi_roof_(\d{4})([ab]?)\.zip", re.IGNORECASE)  # year, half (a, b or none)
ARCHIVE_LINK = re.compile(r"""href\s*=\s*["']?([^"'\s>]*""" + ARCHIVE_NAME.pattern + ")", re.IGNORECASE)
TIMEOUT_SECONDS = 30
RETRIES = 3


def archive_links(page: str, page_url: str) -> dict[str, str]:
    """{archive file name: absolute URL} of every station archive `page` links to."""
    return {
        match.group(1).rsplit("/", 1)[-1].lower(): urllib.parse.urljoin(page_url, match.group(1))
        for match in ARCHIVE_LINK.finditer(page)
    }


def period(name: str) -> tuple[int, int]:
    """Sort key of an archive name: its year, then the half (a whole year sorts before its halves)."""
    year, half = ARCHIVE_NAME.search(name).groups()
    return int(year), " ab".index(half or " ")


def archive_urls(links: list[dict[str, str]]) -> list[str]:
    """One URL per archive, oldest first; an archive on several pages keeps the first page's URL."""
    chosen: dict[str, str] = {}
    for page_links in links:
        for name, url in page_links.items():
            chosen.setdefault(name, url)
    return [chosen[name] for name in sorted(chosen, key=period)]


def read_page(location: str) -> str:
    """The text of a page: an http(s) URL (retried with back-off) or a local file."""
    if urllib.parse.urlparse(location).scheme not in ("http", "https"):
        return Path(location).read_text(encoding="utf-8", errors="replace")
    session = requests.Session()
    retry = Retry(total=RETRIES, backoff_factor=1.0, status_forcelist=(429, 500, 502, 503, 504))
    session.mount("http://", HTTPAdapter(max_retries=retry))
    session.mount("https://", HTTPAdapter(max_retries=retry))
    response = session.get(location, timeout=TIMEOUT_SECONDS)
    response.raise_for_status()
    return response.text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.archives", description=__doc__.split("\n\n")[0])
    parser.add_argument("pages", nargs="*", default=list(PAGES), help="pages listing the archives (URLs or files)")
    args = parser.parse_args(argv)
    links = []
    for page in args.pages:
        try:
            links.append(archive_links(read_page(page), page))
        except (OSError, requests.RequestException) as error:
            print(f"archives: cannot read {page}: {error}", file=sys.stderr)
            return 1
    urls = archive_urls(links)
    if not urls:
        print(f"archives: no mpi_roof_*.zip link on {', '.join(args.pages)}", file=sys.stderr)
        return 1
    print(json.dumps(urls))
    return 0


if __name__ == "__main__":
    sys.exit(main())
