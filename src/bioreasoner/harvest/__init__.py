"""Harvest sources. Each `kind` in `harvest.sources` maps to a reader module in `KINDS`.

A reader is `read(spec: dict, ledger: Ledger) -> Iterator[Paper]`: it yields valid papers,
and tells the ledger about every raw record it saw and every one it dropped, by reason.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import Any

from bioreasoner.core.records import Paper
from bioreasoner.harvest.ledger import Ledger

Reader = Callable[[dict[str, Any], Ledger], Iterator[Paper]]

KINDS = {
    "pubmedqa": "bioreasoner.harvest.pubmedqa",
    "pubmed_xml": "bioreasoner.harvest.pubmed_xml",
    "openalex_json": "bioreasoner.harvest.openalex",
    "pubmed_api": "bioreasoner.harvest.pubmed_api",
    "openalex_api": "bioreasoner.harvest.openalex_api",
}


def reader(kind: str) -> Reader:
    """The reader for `kind`, imported on first use (a stage loads only the parsers it needs)."""
    return importlib.import_module(KINDS[kind]).read
