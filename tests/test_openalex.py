"""OpenAlex works JSON: file shapes, the inverted-index abstract, drops and malformed works."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bioreasoner.core.io import BadInputError
from bioreasoner.harvest import openalex
from bioreasoner.harvest.ledger import Ledger

FIX = Path(__file__).parent / "fixtures" / "openalex"


def _read(name: str, ledger: Ledger | None = None) -> tuple[dict, Ledger]:
    ledger = ledger or Ledger()
    papers = {p.pmid: p for p in openalex.read({"path": str(FIX / name)}, ledger)}
    return papers, ledger


@pytest.mark.parametrize(
    ("name", "pmids", "seen", "dropped"),
    [
        # a single work object (what /works/W... returns)
        ("single_work.json", ["29456894"], 1, {}),
        # a bare list of works
        ("works_list.json", ["33500001", "35500002"], 2, {}),
        # an API results page, with a preprint (no PMID) and an editorial (no abstract)
        ("results_page.json", ["33500001", "35500002"], 4, {"no_pmid": 1, "no_abstract": 1}),
    ],
)
def test_file_shapes(name: str, pmids: list[str], seen: int, dropped: dict[str, int]) -> None:
    papers, ledger = _read(name)
    assert sorted(papers) == pmids
    assert ledger.records_in == seen
    assert dict(ledger.dropped) == dropped


def test_fields_of_a_full_work() -> None:
    p = _read("single_work.json")[0]["29456894"]
    assert p.title.startswith("The state of OA:")
    assert p.abstract.startswith("Despite growing interest in Open Access (OA) to scholarly")
    assert p.abstract.endswith("determines OA status for 67 million articles.")
    assert p.sections == []
    assert p.doi == "10.7717/peerj.4375"
    assert p.year == 2018
    assert p.authors == ["Heather Piwowar", "Jason Priem"]  # null author name left out
    assert p.journal == "PeerJ"
    assert p.mesh == ["Bibliometrics", "Open Access Publishing"]  # sorted, unique
    assert p.source == "openalex_json"


def test_null_primary_location_gives_no_journal() -> None:
    p = _read("works_list.json")[0]["35500002"]
    assert p.journal is None and p.doi is None


@pytest.mark.parametrize(
    ("index", "expected"),
    [
        # words put back by position, a repeated word in two places
        ({"the": [0, 3], "cat": [1], "saw": [2], "dog.": [4]}, "the cat saw the dog."),
        # gaps in positions are tolerated
        ({"b": [5], "a": [0]}, "a b"),
        # missing or empty index: no abstract
        (None, ""),
        ({}, ""),
    ],
)
def test_rebuild_abstract(index: Any, expected: str) -> None:
    assert openalex.rebuild_abstract(index) == expected


@pytest.mark.parametrize(
    "index",
    [
        {"a": ["0"]},  # positions as strings
        {"a": 0},  # not a list
        {"a": [True]},  # booleans are not positions
        {"a": [-1]},  # negative position
        ["a", "b"],  # not an object at all
    ],
)
def test_rebuild_abstract_rejects_malformed(index: Any) -> None:
    with pytest.raises(ValueError):
        openalex.rebuild_abstract(index)


def test_malformed_work_is_an_error_naming_the_work() -> None:
    with pytest.raises(BadInputError) as info:
        _read("malformed_works.json")
    assert info.value.path.endswith("malformed_works.json")
    assert info.value.where == "work #2"
    assert info.value.problem == "work is not an object but str"


def test_malformed_works_are_counted_when_skipping() -> None:
    papers, ledger = _read("malformed_works.json", Ledger("skip"))
    assert list(papers) == ["33500001"]
    assert ledger.records_in == 3
    assert ledger.dropped == {"malformed": 2}  # the string and the bad inverted index


def test_bad_inverted_index_names_work_id() -> None:
    ledger = Ledger()
    work = {
        "id": "https://openalex.org/W9",
        "ids": {"pmid": "123"},
        "abstract_inverted_index": {"x": ["1"]},
    }
    with pytest.raises(BadInputError, match=r"work #1 \(W9\): abstract_inverted_index"):
        openalex.paper_from_work(work, "f.json", openalex.work_label(1, work), ledger)


@pytest.mark.parametrize(
    ("pmid", "expected"),
    [
        ("https://pubmed.ncbi.nlm.nih.gov/12345678", "12345678"),  # the usual form
        ("https://pubmed.ncbi.nlm.nih.gov/12345678/", "12345678"),  # trailing slash
        ("12345678", "12345678"),  # bare number
    ],
)
def test_pmid_forms(pmid: str, expected: str) -> None:
    work = {
        "id": "W1",
        "title": "T",
        "ids": {"pmid": pmid},
        "abstract_inverted_index": {"Text.": [0]},
    }
    paper = openalex.paper_from_work(work, "f.json", "work #1", Ledger())
    assert paper is not None and paper.pmid == expected


def test_unparseable_pmid_is_bad() -> None:
    work = {
        "id": "W1",
        "ids": {"pmid": "https://pubmed.ncbi.nlm.nih.gov/abc"},
        "abstract_inverted_index": {"Text.": [0]},
    }
    with pytest.raises(BadInputError, match="is not a PubMed URL or number"):
        openalex.paper_from_work(work, "f.json", "work #1", Ledger())


def test_wrong_top_level_shape() -> None:
    with pytest.raises(BadInputError, match="top level"):
        _read("wrong_shape.json")
