"""PubMed efetch XML: fields, the PMID and abstract traps, and refused/malformed documents."""

from __future__ import annotations

from pathlib import Path

import pytest

from bioreasoner.core.io import BadInputError
from bioreasoner.harvest import pubmed_xml
from bioreasoner.harvest.ledger import Ledger

FIX = Path(__file__).parent / "fixtures" / "pubmed"


def _read(name: str, ledger: Ledger | None = None) -> tuple[dict, Ledger]:
    ledger = ledger or Ledger()
    papers = {p.pmid: p for p in pubmed_xml.read({"path": str(FIX / name)}, ledger)}
    return papers, ledger


def test_efetch_file_with_real_doctype_parses_and_counts() -> None:
    papers, ledger = _read("efetch.xml")
    # Only the two articles with an abstract survive; cited/comment PMIDs never appear.
    assert sorted(papers) == ["28109011", "31452104"]
    assert ledger.records_in == 4  # 3 PubmedArticle + 1 PubmedBookArticle
    assert ledger.dropped == {"no_abstract": 1, "not_journal_article": 1}


def test_structured_abstract_with_markup_and_entities() -> None:
    p = _read("efetch.xml")[0]["31452104"]
    assert p.title == "TNF-α blockade with in vivo imaging of Ca2+ flux & signalling."
    assert [(s.label, s.text) for s in p.sections] == [
        ("BACKGROUND", "Tumour necrosis factor-α (TNF-α) drives inflammation in Mus musculus."),
        ("METHODS", "We measured Ca2+ influx in 42 mice <12 weeks old."),
        ("RESULTS", "Blockade reduced flux by 35% (p < 0.01)."),  # NlmCategory fallback
        ("CONCLUSIONS", "TNF-α blockade is effective."),
    ]
    assert p.abstract == " ".join(s.text for s in p.sections)
    assert "©" not in p.abstract  # CopyrightInformation is not abstract text
    assert p.mesh == ["Animals", "Calcium", "Tumor Necrosis Factor-alpha"]  # sorted, unique
    assert p.year == 2019
    assert p.authors == ["Zhang W", "Müller AK", "TNF Imaging Consortium"]
    assert p.journal == "The AAPS journal"
    assert p.doi == "10.1208/s12248-019-0367-8"
    assert p.source == "pubmed_xml"


def test_plain_abstract_and_reference_traps() -> None:
    p = _read("efetch.xml")[0]["28109011"]
    # PMID from MedlineCitation, not CommentsCorrections (28099829) or ReferenceList (21067804).
    assert p.pmid == "28109011"
    # DOI from the article's own ArticleIdList, not the reference's.
    assert p.doi == "10.1056/NEJMoa1600000"
    assert p.sections == []  # one unlabelled paragraph: no sections
    assert p.abstract.startswith("Statins lowered")
    assert p.year == 2017  # from MedlineDate "2017 Jan-Feb"
    assert p.authors == ["Smith J"]  # ValidYN="N" author left out


@pytest.mark.parametrize(
    ("name", "where", "problem"),
    [
        # billion laughs: entity declarations are refused before any expansion
        ("bomb.xml", "line 3", "refused XML: declares entity 'lol'"),
        # external entity pointing at a local file is refused, never read
        ("xxe.xml", "line 3", "refused XML: declares entity 'xxe'"),
        # file cut off mid-document: the error names the last line
        ("truncated.xml", "line 8", "malformed XML"),
        # closing tags in the wrong order
        ("mismatched.xml", "line 6", "malformed XML: mismatched tag"),
    ],
)
def test_refused_or_malformed_documents(name: str, where: str, problem: str) -> None:
    with pytest.raises(BadInputError) as info:
        _read(name)
    err = info.value
    assert err.path.endswith(name)
    assert err.where == where
    assert problem in err.problem
    assert "\n" not in str(err)
    assert "root:" not in str(err)  # /etc/passwd content never leaks into a message


def test_missing_pmid_is_an_error_by_default() -> None:
    with pytest.raises(BadInputError) as info:
        _read("missing_pmid.xml")
    assert info.value.where == "PubmedArticle #2"
    assert info.value.problem == "no MedlineCitation/PMID"


def test_missing_pmid_is_counted_when_skipping() -> None:
    papers, ledger = _read("missing_pmid.xml", Ledger("skip"))
    assert list(papers) == ["31452104"]  # the comment's PMID 28099829 is not taken
    assert ledger.records_in == 2
    assert ledger.dropped == {"malformed": 1}


@pytest.mark.parametrize(
    ("xml", "problem"),
    [
        # an efetch error page instead of articles
        (b"<eFetchResult><ERROR>Empty id list</ERROR></eFetchResult>", "Empty id list"),
        # some other XML document
        (b"<html><body/></html>", "got <html>"),
    ],
)
def test_wrong_root_element(xml: bytes, problem: str) -> None:
    with pytest.raises(BadInputError, match=problem):
        list(pubmed_xml.parse_pubmed_xml(xml, "download", Ledger()))


def test_blank_abstract_text_is_no_abstract() -> None:
    xml = (
        b"<PubmedArticleSet><PubmedArticle><MedlineCitation><PMID>5</PMID><Article>"
        b"<ArticleTitle>T</ArticleTitle><Abstract><AbstractText>  </AbstractText>"
        b"</Abstract></Article></MedlineCitation></PubmedArticle></PubmedArticleSet>"
    )
    ledger = Ledger()
    assert list(pubmed_xml.parse_pubmed_xml(xml, "x.xml", ledger)) == []
    assert ledger.dropped == {"no_abstract": 1}


def test_no_file_matches_glob(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="no file matches"):
        list(pubmed_xml.read({"path": str(tmp_path / "*.xml")}, Ledger()))
