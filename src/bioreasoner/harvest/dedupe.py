"""Deduplicate papers: by PMID, then by DOI, keeping the record with the most fields."""

from __future__ import annotations

from collections.abc import Iterable

from bioreasoner.core.records import Paper


def _keep_fullest(groups: dict[str, Paper], key: str, paper: Paper) -> bool:
    """Insert `paper` under `key`; True when it collided with one already there."""
    old = groups.get(key)
    if old is None:
        groups[key] = paper
        return False
    if paper.filled() > old.filled():  # ties keep the first seen: source order decides
        groups[key] = paper
    return True


def dedupe(papers: Iterable[Paper]) -> tuple[list[Paper], int]:
    """Return (papers sorted by numeric PMID, number of duplicates removed)."""
    by_pmid: dict[str, Paper] = {}
    dupes = sum(_keep_fullest(by_pmid, p.pmid, p) for p in papers)
    by_doi: dict[str, Paper] = {}
    kept: list[Paper] = []
    for paper in by_pmid.values():
        if paper.doi:
            dupes += _keep_fullest(by_doi, paper.doi.lower(), paper)
        else:
            kept.append(paper)
    kept.extend(by_doi.values())
    return sorted(kept, key=lambda p: int(p.pmid)), dupes
