"""Live OpenAlex: /works with cursor paging, each work through `paper_from_work`.

`mailto` puts requests in OpenAlex's "polite pool" (faster, more reliable). The first
page is asked for with cursor=*, later ones with the previous page's meta.next_cursor,
so with the on-disk cache a re-run replays the same pages without touching the network.
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
from bioreasoner.harvest.openalex import paper_from_work, work_label

log = logging.getLogger(__name__)

KIND = "openalex_api"
DEFAULTS: dict[str, Any] = {
    "search": None,
    "filter": None,
    "author_ids": [],
    "per_page": 200,
    "max_records": 100,
    "base_url": "https://api.openalex.org",
    "mailto": None,
    "api_key_env": "OPENALEX_API_KEY",
    "cache_dir": ".cache/harvest/openalex",
    "rate_limit_per_s": 10,
    "max_retries": 5,
    "backoff_s": 1.0,
    "timeout_s": 60.0,
}
PER_PAGE_MAX = 200


def build_filter(filter_: str | None, author_ids: list[str] | None) -> str | None:
    """Join a user filter with `author.id:A1|A2` built from author ids or URLs."""
    ids = [str(a).rstrip("/").rsplit("/", 1)[-1] for a in author_ids or [] if str(a).strip()]
    parts = [p for p in (str(filter_ or "").strip(), "author.id:" + "|".join(ids) if ids else "") if p]
    return ",".join(parts) or None


def read(spec: dict[str, Any], ledger: Ledger) -> Iterator[Paper]:
    cfg = {**DEFAULTS, **spec}
    filter_ = build_filter(cfg["filter"], cfg["author_ids"])
    search = str(cfg["search"] or "").strip() or None
    if not (search or filter_):
        raise BadInputError("params.yaml", f"source '{KIND}'", "needs 'search', 'filter' or 'author_ids'")
    api_key = os.environ.get(str(cfg["api_key_env"])) if cfg["api_key_env"] else None
    client = CachedClient(
        cfg["cache_dir"],
        min_interval_s=1.0 / float(cfg["rate_limit_per_s"]),
        max_retries=cfg["max_retries"],
        backoff_s=cfg["backoff_s"],
        timeout_s=cfg["timeout_s"],
        exclude_from_key={"api_key"},
    )
    url = str(cfg["base_url"]).rstrip("/") + "/works"
    max_records = int(cfg["max_records"])
    params: dict[str, Any] = {
        "search": search,
        "filter": filter_,
        "per-page": max(1, min(int(cfg["per_page"]), PER_PAGE_MAX)),
        "mailto": cfg["mailto"],
        "api_key": api_key,
    }
    yield from _pages(client, url, params, max_records, ledger)


def _pages(client: CachedClient, url: str, params: dict[str, Any], max_records: int, ledger: Ledger) -> Iterator[Paper]:
    n = 0
    cursor: str | None = "*"
    with tqdm(total=max_records, unit="paper", desc=KIND, disable=None) as bar:
        while cursor and n < max_records:
            page_params = {**params, "cursor": cursor}
            label = client.describe(url, {k: v for k, v in page_params.items() if v is not None})
            results, cursor = _page(client, url, page_params, label)
            if not results:
                break
            for work in results[: max_records - n]:
                n += 1
                ledger.seen()
                paper = paper_from_work(work, label, work_label(n, work), ledger, source=KIND)
                if paper is not None:
                    yield paper
                bar.update(1)
    log.info("%s: read %d works", KIND, n)


def _page(client: CachedClient, url: str, params: dict[str, Any], label: str) -> tuple[list[Any], str | None]:
    """One results page and the cursor for the next (None at the end)."""
    try:
        data = json.loads(client.get(url, params))
        results, meta = data["results"], data.get("meta") or {}
        if not isinstance(results, list) or not isinstance(meta, dict):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        client.forget(url, params)
        raise BadInputError(label, None, "not an OpenAlex results page") from None
    cursor = meta.get("next_cursor")
    return results, str(cursor) if cursor else None
