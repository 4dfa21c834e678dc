"""Live-API readers against a local replay server: paging, retries, cache, secrets.

Nothing here touches the internet: a real HTTP server on 127.0.0.1 (port 0) replays
recorded E-utilities and OpenAlex answers, so requests/urllib3 run for real.
"""

from __future__ import annotations

import copy
import json
import logging
import re
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from bioreasoner.core.io import BadInputError
from bioreasoner.harvest import openalex_api, pubmed_api
from bioreasoner.harvest.http import CachedClient, FetchError
from bioreasoner.harvest.ledger import Ledger
from tests.conftest import loopback, send

FIX = Path(__file__).parent / "fixtures"
SECRET = "s3cr3t-KEY-0123456789"

Reply = tuple[int, dict[str, str], bytes]
Route = Callable[[dict[str, str]], Reply]


# ----------------------------------------------------------------------------- server


@dataclass
class Replay:
    """What the server answers (path -> route) and every request it received."""

    base_url: str = ""
    routes: dict[str, Route] = field(default_factory=dict)
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    def hits(self, path: str) -> list[dict[str, str]]:
        return [q for p, q in self.requests if p == path]


@pytest.fixture
def server() -> Iterator[Replay]:
    replay = Replay()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            url = urlsplit(self.path)
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            replay.requests.append((url.path, query))
            route = replay.routes.get(url.path)
            send(self, *(route(query) if route else (404, {}, b"no route")))

        def log_message(self, *args: Any) -> None:
            pass

    with loopback(Handler) as replay.base_url:
        yield replay


def failing_first(route: Route, *failures: Reply) -> Route:
    """Answer with `failures` in turn, then hand every later request to `route`."""
    left = list(failures)
    return lambda q: left.pop(0) if left else route(q)


def always(reply: Reply) -> Route:
    return lambda q: reply


# ----------------------------------------------------------------------------- recorded answers

EFETCH_XML = (FIX / "pubmed" / "efetch.xml").read_text(encoding="utf-8")
ARTICLES = {
    re.search(r"<PMID Version=\"1\">(\d+)</PMID>", a).group(1): a  # type: ignore[union-attr]
    for a in re.findall(r"<PubmedArticle>.*?</PubmedArticle>", EFETCH_XML, flags=re.S)
}
PMIDS = ["31452104", "28109011", "30000001"]  # esearch order; the last has no abstract
HEAD = EFETCH_XML.split("<PubmedArticleSet>")[0]


def esearch(q: dict[str, str]) -> Reply:
    start, size = int(q.get("retstart", 0)), int(q.get("retmax", 20))
    result = {
        "header": {"type": "esearch", "version": "0.3"},
        "esearchresult": {
            "count": str(len(PMIDS)),
            "retmax": str(size),
            "retstart": str(start),
            "idlist": PMIDS[start : start + size],
            "translationset": [],
            "querytranslation": q.get("term", ""),
        },
    }
    return 200, {"Content-Type": "application/json"}, json.dumps(result).encode()


def efetch(q: dict[str, str]) -> Reply:
    body = "".join(ARTICLES[i] for i in q["id"].split(",") if i in ARTICLES)
    xml = f"{HEAD}<PubmedArticleSet>\n{body}\n</PubmedArticleSet>\n"
    return 200, {"Content-Type": "text/xml"}, xml.encode()


PAGE = json.loads((FIX / "openalex" / "results_page.json").read_text(encoding="utf-8"))
OA_PAGES = {  # cursor -> page; W3001 and W3002 are kept, W3003 has no PMID, W3004 no abstract
    "*": {
        "meta": {**PAGE["meta"], "next_cursor": "IlsxLjAsIDMwMDNdIg=="},
        "results": PAGE["results"][:2],
    },
    "IlsxLjAsIDMwMDNdIg==": {
        "meta": {**PAGE["meta"], "next_cursor": None},
        "results": PAGE["results"][2:],
    },
}


def works(q: dict[str, str]) -> Reply:
    page = copy.deepcopy(OA_PAGES[q["cursor"]])
    page["meta"]["per_page"] = int(q["per-page"])
    return 200, {"Content-Type": "application/json"}, json.dumps(page).encode()


# ----------------------------------------------------------------------------- helpers


def pubmed_spec(server: Replay, tmp_path: Path, **extra: Any) -> dict[str, Any]:
    return {
        "query": "tnf[tiab]",
        "base_url": server.base_url,
        "cache_dir": str(tmp_path / "c"),
        "page_size": 2,
        "search_page_size": 2,
        "rate_limit_per_s": 1000,
        "backoff_s": 0.01,
        "max_retries": 3,
        **extra,
    }


def openalex_spec(server: Replay, tmp_path: Path, **extra: Any) -> dict[str, Any]:
    return {
        "search": "metformin",
        "base_url": server.base_url,
        "cache_dir": str(tmp_path / "c"),
        "mailto": "lab@example.org",
        "per_page": 2,
        "rate_limit_per_s": 1000,
        "backoff_s": 0.01,
        "max_retries": 3,
        **extra,
    }


def run(reader: Callable[..., Iterator[Any]], spec: dict[str, Any]) -> tuple[list[str], Ledger]:
    ledger = Ledger()
    return [p.pmid for p in reader(spec, ledger)], ledger


def cached_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


# ----------------------------------------------------------------------------- PubMed


def test_pubmed_pages_esearch_and_efetch(server: Replay, tmp_path: Path) -> None:
    server.routes = {"/esearch.fcgi": esearch, "/efetch.fcgi": efetch}
    pmids, ledger = run(pubmed_api.read, pubmed_spec(server, tmp_path))
    assert pmids == ["31452104", "28109011"]
    assert ledger.records_in == 3 and ledger.dropped == {"no_abstract": 1}
    searches = server.hits("/esearch.fcgi")
    assert [(q["retstart"], q["retmax"]) for q in searches] == [("0", "2"), ("2", "2")]
    assert all(q["db"] == "pubmed" and q["retmode"] == "json" for q in searches)
    fetches = server.hits("/efetch.fcgi")
    assert [q["id"] for q in fetches] == ["31452104,28109011", "30000001"]
    assert all(q["retmode"] == "xml" and q["tool"] == "bioreasoner" for q in fetches)


def test_pubmed_max_records(server: Replay, tmp_path: Path) -> None:
    server.routes = {"/esearch.fcgi": esearch, "/efetch.fcgi": efetch}
    pmids, _ = run(pubmed_api.read, pubmed_spec(server, tmp_path, max_records=1))
    assert pmids == ["31452104"]
    assert [q["id"] for q in server.hits("/efetch.fcgi")] == ["31452104"]


def test_pubmed_retries_429_and_503(server: Replay, tmp_path: Path) -> None:
    server.routes = {
        "/esearch.fcgi": failing_first(esearch, (429, {"Retry-After": "0"}, b"slow down")),
        "/efetch.fcgi": failing_first(efetch, (503, {}, b"busy"), (502, {}, b"bad gateway")),
    }
    pmids, _ = run(pubmed_api.read, pubmed_spec(server, tmp_path))
    assert pmids == ["31452104", "28109011"]
    assert len(server.hits("/esearch.fcgi")) == 3  # 429, then two pages
    assert len(server.hits("/efetch.fcgi")) == 4  # 503, 502, then two batches


def test_pubmed_second_run_is_served_from_cache(server: Replay, tmp_path: Path) -> None:
    server.routes = {"/esearch.fcgi": esearch, "/efetch.fcgi": efetch}
    first = run(pubmed_api.read, pubmed_spec(server, tmp_path))[0]
    n = len(server.requests)
    second, ledger = run(pubmed_api.read, pubmed_spec(server, tmp_path))
    assert second == first
    assert len(server.requests) == n  # zero HTTP requests the second time
    assert ledger.records_in == 3  # but every record is still counted


def test_api_key_is_sent_but_never_cached_or_logged(
    server: Replay,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("MY_NCBI_KEY", SECRET)
    caplog.set_level(logging.DEBUG, logger="bioreasoner")
    server.routes = {
        "/esearch.fcgi": failing_first(esearch, (429, {"Retry-After": "0"}, b"")),
        "/efetch.fcgi": efetch,
    }
    run(pubmed_api.read, pubmed_spec(server, tmp_path, api_key_env="MY_NCBI_KEY"))
    assert all(q.get("api_key") == SECRET for _, q in server.requests)
    files = cached_files(tmp_path / "c")
    assert files
    for f in files:
        assert SECRET not in str(f)
        assert SECRET.encode() not in f.read_bytes()
    assert "retrying" in caplog.text and "GET " in caplog.text  # the URL was logged ...
    assert SECRET not in caplog.text  # ... without the key
    # The key is not part of the cache key: a run without it reuses the cache.
    monkeypatch.delenv("MY_NCBI_KEY")
    n = len(server.requests)
    run(pubmed_api.read, pubmed_spec(server, tmp_path, api_key_env="MY_NCBI_KEY"))
    assert len(server.requests) == n


def test_gives_up_after_max_retries(server: Replay, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NCBI_API_KEY", SECRET)
    server.routes = {"/esearch.fcgi": esearch, "/efetch.fcgi": always((503, {}, b"down"))}
    with pytest.raises(FetchError) as info:
        run(pubmed_api.read, pubmed_spec(server, tmp_path, max_retries=2))
    msg = str(info.value)
    assert isinstance(info.value, RuntimeError)
    assert "/efetch.fcgi?" in msg and "HTTP 503" in msg and "after 3 attempts" in msg
    assert SECRET not in msg
    assert len(server.hits("/efetch.fcgi")) == 3
    assert not any("efetch" in str(f) for f in cached_files(tmp_path / "c"))


def test_esearch_error_is_bad_input_and_not_cached(server: Replay, tmp_path: Path) -> None:
    error = {"esearchresult": {"ERROR": "Invalid query syntax"}}
    server.routes = {"/esearch.fcgi": always((200, {}, json.dumps(error).encode()))}
    for _ in range(2):  # not cached: the second run asks again
        with pytest.raises(BadInputError, match="esearch error: Invalid query syntax"):
            run(pubmed_api.read, pubmed_spec(server, tmp_path))
    assert len(server.hits("/esearch.fcgi")) == 2


def test_pubmed_needs_a_query(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="'query'"):
        run(pubmed_api.read, {"cache_dir": str(tmp_path)})


# ----------------------------------------------------------------------------- OpenAlex


def test_openalex_cursor_paging(server: Replay, tmp_path: Path) -> None:
    server.routes = {"/works": works}
    pmids, ledger = run(openalex_api.read, openalex_spec(server, tmp_path))
    assert pmids == ["33500001", "35500002"]
    assert ledger.records_in == 4
    assert ledger.dropped == {"no_pmid": 1, "no_abstract": 1}
    hits = server.hits("/works")
    assert [q["cursor"] for q in hits] == ["*", "IlsxLjAsIDMwMDNdIg=="]
    assert all(q["search"] == "metformin" and q["mailto"] == "lab@example.org" for q in hits)
    assert all(q["per-page"] == "2" for q in hits)


def test_openalex_max_records_stops_paging(server: Replay, tmp_path: Path) -> None:
    server.routes = {"/works": works}
    pmids, ledger = run(openalex_api.read, openalex_spec(server, tmp_path, max_records=2))
    assert pmids == ["33500001"]  # the second work of page 1 has no PMID
    assert ledger.records_in == 2
    assert len(server.hits("/works")) == 1


def test_openalex_retry_then_cache(server: Replay, tmp_path: Path) -> None:
    server.routes = {"/works": failing_first(works, (429, {"Retry-After": "0"}, b"{}"))}
    first = run(openalex_api.read, openalex_spec(server, tmp_path))[0]
    assert len(server.hits("/works")) == 3
    second = run(openalex_api.read, openalex_spec(server, tmp_path))[0]
    assert second == first and len(server.hits("/works")) == 3  # all from cache


def test_openalex_author_filter_sent(server: Replay, tmp_path: Path) -> None:
    server.routes = {"/works": works}
    spec = openalex_spec(
        server,
        tmp_path,
        search=None,
        filter="has_pmid:true",
        author_ids=["https://openalex.org/A5023888391", "A5000000001"],
    )
    run(openalex_api.read, spec)
    q = server.hits("/works")[0]
    assert q["filter"] == "has_pmid:true,author.id:A5023888391|A5000000001"
    assert "search" not in q


def test_openalex_bad_page_is_bad_input(server: Replay, tmp_path: Path) -> None:
    server.routes = {"/works": always((200, {}, b"<html>maintenance</html>"))}
    with pytest.raises(BadInputError, match="not an OpenAlex results page"):
        run(openalex_api.read, openalex_spec(server, tmp_path))


@pytest.mark.parametrize(
    ("filter_", "author_ids", "expected"),
    [
        ("type:article", None, "type:article"),  # a plain filter passes through
        (None, ["A1", "A2"], "author.id:A1|A2"),  # ids become one OR filter
        (None, ["https://openalex.org/A9/"], "author.id:A9"),  # URLs are shortened
        ("type:article", ["A1"], "type:article,author.id:A1"),  # both, AND-ed
        (None, [], None),  # nothing
    ],
)
def test_build_filter(filter_: str | None, author_ids: list[str] | None, expected: str | None) -> None:
    assert openalex_api.build_filter(filter_, author_ids) == expected


def test_openalex_needs_search_or_filter(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="needs 'search', 'filter' or 'author_ids'"):
        run(openalex_api.read, {"cache_dir": str(tmp_path)})


# ----------------------------------------------------------------------------- client


def test_client_honours_numeric_retry_after(server: Replay, tmp_path: Path) -> None:
    server.routes = {"/x": failing_first(always((200, {}, b"ok")), (429, {"Retry-After": "7"}, b""))}
    sleeps: list[float] = []
    client = CachedClient(tmp_path, max_retries=2, backoff_s=0.01, sleep=sleeps.append)
    assert client.get(server.base_url + "/x", {"a": 1}) == b"ok"
    assert 7.0 in sleeps


def test_client_backoff_is_exponential(server: Replay, tmp_path: Path) -> None:
    server.routes = {"/x": always((500, {}, b""))}
    sleeps: list[float] = []
    client = CachedClient(tmp_path, max_retries=3, backoff_s=0.01, sleep=sleeps.append)
    with pytest.raises(FetchError, match="HTTP 500"):
        client.get(server.base_url + "/x")
    assert sleeps == pytest.approx([0.01, 0.02, 0.04])


def test_client_does_not_retry_client_errors(server: Replay, tmp_path: Path) -> None:
    server.routes = {"/x": always((400, {}, b"bad term"))}
    client = CachedClient(tmp_path, max_retries=3, backoff_s=0.01)
    with pytest.raises(FetchError, match="HTTP 400: bad term"):
        client.get(server.base_url + "/x")
    assert len(server.requests) == 1


def test_client_retries_connection_errors(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = CachedClient(tmp_path, max_retries=2, backoff_s=0.01, timeout_s=2, exclude_from_key={"api_key"})
    with pytest.raises(FetchError) as info:
        client.get(f"http://127.0.0.1:{port}/x", {"api_key": SECRET, "q": "a"})
    assert "connection error" in str(info.value) and "after 3 attempts" in str(info.value)
    assert SECRET not in str(info.value) and "q=a" in str(info.value)
    assert client.network_requests == 3


def test_client_rate_limit_spaces_requests(server: Replay, tmp_path: Path) -> None:
    server.routes = {"/x": always((200, {}, b"ok"))}
    client = CachedClient(tmp_path, min_interval_s=0.05)
    start = time.monotonic()
    for i in range(3):
        client.get(server.base_url + "/x", {"i": i})
    assert time.monotonic() - start >= 0.1
    client.get(server.base_url + "/x", {"i": 0})  # a cache hit does not wait or count
    assert client.network_requests == 3
