"""Live PubMed through NCBI E-utilities: esearch for PMIDs, then efetch XML in batches.

NCBI asks for at most 3 requests a second without an API key (10 with one) and for
`tool`/`email` to identify the caller. The key is read from the environment variable
named in the spec, never from params.yaml, so it cannot end up in the repository.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from typing import Any

from tqdm import tqdm

from bioreasoner.core.io import BadInputError
from bioreasoner.core.records import Paper
from bioreasoner.harvest.http import CachedClient
from bioreasoner.harvest.ledger import Ledger
from bioreasoner.harvest.pubmed_xml import parse_pubmed_xml

log = logging.getLogger(__name__)

KIND = "pubmed_api"
DEFAULTS: dict[str, Any] = {
    "max_records": 100,
    "page_size": 100,
    "search_page_size": 10000,
    "base_url": "https://eutils.ncbi.nlm.nih.gov/entrez/eutils",
    "cache_dir": ".cache/harvest/pubmed",
    "rate_limit_per_s": None,  # 3 without an API key, 10 with one
    "api_key_env": "NCBI_API_KEY",
    "email": None,
    "tool": "bioreasoner",
    "max_retries": 5,
    "backoff_s": 1.0,
    "timeout_s": 60.0,
}
ESEARCH_MAX = 10000  # esearch returns at most this many ids a request
EFETCH_MAX = 200  # NCBI recommends POST above ~200 ids; stay under it with GET


def read(spec: dict[str, Any], ledger: Ledger) -> Iterator[Paper]:
    cfg = {**DEFAULTS, **spec}
    if not str(cfg.get("query") or "").strip():
        raise BadInputError("params.yaml", f"source '{KIND}'", "'query' (an esearch term) is required")
    api_key = os.environ.get(str(cfg["api_key_env"])) if cfg["api_key_env"] else None
    rate = float(cfg["rate_limit_per_s"] or (10 if api_key else 3))
    client = CachedClient(
        cfg["cache_dir"],
        min_interval_s=1.0 / rate,
        max_retries=cfg["max_retries"],
        backoff_s=cfg["backoff_s"],
        timeout_s=cfg["timeout_s"],
        exclude_from_key={"api_key"},
    )
    common = {"db": "pubmed", "tool": cfg["tool"], "email": cfg["email"], "api_key": api_key}
    base = str(cfg["base_url"]).rstrip("/")
    pmids = search(
        client,
        base,
        str(cfg["query"]),
        int(cfg["max_records"]),
        common,
        min(int(cfg["search_page_size"]), ESEARCH_MAX),
    )
    log.info("%s: esearch found %d PMIDs for %r", KIND, len(pmids), cfg["query"])
    yield from fetch(client, base, pmids, max(1, min(int(cfg["page_size"]), EFETCH_MAX)), common, ledger)


def search(
    client: CachedClient,
    base: str,
    term: str,
    max_records: int,
    common: dict[str, Any],
    page: int = ESEARCH_MAX,
) -> list[str]:
    """Up to max_records PMIDs for `term`, paging esearch with retstart/retmax.

    PubMed's esearch serves only the first 10,000 hits of a query; narrow the query
    (e.g. by date) to harvest more.
    """
    url = f"{base}/esearch.fcgi"
    pmids: list[str] = []
    seen: set[str] = set()
    start = 0
    while len(pmids) < max_records:
        params = {
            **common,
            "term": term,
            "retmode": "json",
            "retstart": start,
            "retmax": min(page, max_records - len(pmids)),
        }
        result = _esearch_result(client, url, params)
        ids = [str(i) for i in result.get("idlist") or []]
        for i in ids:
            if i not in seen:
                seen.add(i)
                pmids.append(i)
        start += len(ids)
        count = str(result.get("count") or "0")
        if not ids or start >= (int(count) if count.isdigit() else 0):
            break
    return pmids[:max_records]


def _esearch_result(client: CachedClient, url: str, params: dict[str, Any]) -> dict[str, Any]:
    body = client.get(url, params)
    label = client.describe(url, {k: v for k, v in params.items() if v is not None})
    try:
        result = json.loads(body)["esearchresult"]
        if not isinstance(result, dict):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        client.forget(url, params)
        raise BadInputError(label, None, "esearch answer is not JSON with 'esearchresult'") from None
    if "ERROR" in result:
        client.forget(url, params)
        raise BadInputError(label, None, f"esearch error: {result['ERROR']}")
    return result


def fetch(
    client: CachedClient,
    base: str,
    pmids: list[str],
    page_size: int,
    common: dict[str, Any],
    ledger: Ledger,
) -> Iterator[Paper]:
    """efetch XML for `pmids` in batches, parsed like a local efetch file."""
    url = f"{base}/efetch.fcgi"
    with tqdm(total=len(pmids), unit="paper", desc=KIND, disable=None) as bar:
        for start in range(0, len(pmids), page_size):
            batch = pmids[start : start + page_size]
            params = {**common, "id": ",".join(batch), "retmode": "xml"}
            label = f"{url} (PMIDs {batch[0]}..{batch[-1]})"
            before = ledger.records_in
            try:
                yield from parse_pubmed_xml(client.get(url, params), label, ledger, source=KIND)
            except BadInputError:
                client.forget(url, params)
                raise
            missing = len(batch) - (ledger.records_in - before)
            if missing > 0:
                log.warning("%s: efetch returned %d fewer records than asked for", label, missing)
            bar.update(len(batch))
