"""Dedupe by PMID, then DOI, keeping the record with the most fields."""

from __future__ import annotations

from bioreasoner.core.records import Paper
from bioreasoner.harvest.dedupe import dedupe


def paper(pmid: str, **kw) -> Paper:
    return Paper(pmid=pmid, title=kw.pop("title", "T"), abstract="A.", source=kw.pop("source", "s"), **kw)


def test_same_pmid_keeps_fullest():
    thin = paper("5", source="openalex_json")
    full = paper("5", source="pubmed_xml", mesh=["X"], year=2020, doi="10.1/a")
    kept, dupes = dedupe([thin, full])
    assert kept == [full] and dupes == 1


def test_same_doi_different_pmid_is_a_duplicate_case_insensitively():
    a = paper("7", doi="10.1/ABC", year=2001)
    b = paper("8", doi="10.1/abc")
    kept, dupes = dedupe([a, b])
    assert kept == [a] and dupes == 1


def test_ties_keep_first_seen_and_output_is_sorted_numerically():
    first, second = paper("9", title="first"), paper("9", title="second")
    kept, _ = dedupe([paper("100"), first, second, paper("20")])
    assert [p.pmid for p in kept] == ["9", "20", "100"]
    assert kept[0].title == "first"
