"""PubMed efetch XML (`<PubmedArticleSet>`), from local files or from the API client.

Parsed with defusedxml: a DOCTYPE naming NLM's external DTD is fine (nothing is fetched),
but entity declarations (billion laughs) and external entities are refused, because
these files may come from anywhere. Only `MedlineCitation/PMID` identifies an article:
comments/corrections and reference lists carry other papers' PMIDs.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from xml.etree.ElementTree import Element, ParseError, TreeBuilder

from defusedxml import DefusedXmlException, EntitiesForbidden
from defusedxml.ElementTree import DefusedXMLParser
from pydantic import ValidationError

from bioreasoner.core.io import BadInputError, validation_problem
from bioreasoner.core.records import Paper, Section
from bioreasoner.core.text import clean
from bioreasoner.harvest.ledger import Ledger, expand_paths

log = logging.getLogger(__name__)

KIND = "pubmed_xml"
_YEAR = re.compile(r"\d{4}")


def read(spec: dict[str, Any], ledger: Ledger) -> Iterator[Paper]:
    for path in expand_paths(spec["path"], KIND):
        yield from parse_pubmed_xml(path.read_bytes(), str(path), ledger)


def parse_pubmed_xml(data: bytes, path_label: str | Path, ledger: Ledger, source: str = KIND) -> Iterator[Paper]:
    """Papers from one efetch document; `path_label` names it in every error message."""
    root = _parse(data, path_label)
    if root.tag != "PubmedArticleSet":
        problem = f"expected <PubmedArticleSet> as the root element, got <{root.tag}>"
        err = clean(root.findtext(".//ERROR"))
        raise BadInputError(path_label, None, f"{problem}: {err}" if err else problem)
    counts = {"PubmedArticle": 0, "PubmedBookArticle": 0}
    for elem in root:
        if elem.tag not in counts:
            # e.g. <DeleteCitation> in baseline update files: not a record.
            log.debug("%s: ignoring <%s>", path_label, elem.tag)
            continue
        counts[elem.tag] += 1
        ledger.seen()
        if elem.tag == "PubmedBookArticle":
            ledger.drop("not_journal_article")
            continue
        paper = _paper(elem, path_label, f"PubmedArticle #{counts[elem.tag]}", ledger, source)
        if paper is not None:
            yield paper


def _parse(data: bytes, path_label: str | Path) -> Element:
    """Parse with entity declarations and external references refused; errors name the line."""
    parser = DefusedXMLParser(target=TreeBuilder(), forbid_dtd=False, forbid_entities=True, forbid_external=True)
    try:
        parser.feed(data)
        return parser.close()
    except ParseError as err:
        line = err.position[0] if err.position else None
        msg = re.sub(r": line \d+, column \d+$", "", str(err))
        raise BadInputError(path_label, f"line {line}", f"malformed XML: {msg}") from None
    except DefusedXmlException as err:
        line = parser.parser.CurrentLineNumber
        if isinstance(err, EntitiesForbidden):
            problem = f"refused XML: declares entity '{err.name}' (entities are not allowed)"
        else:
            problem = f"refused XML: {type(err).__name__}"
        raise BadInputError(path_label, f"line {line}", problem) from None


def _text(elem: Element | None) -> str:
    """All text inside an element, inline markup (<i>, <sup>, ...) included."""
    return clean("".join(elem.itertext())) if elem is not None else ""


def _paper(art: Element, path: str | Path, where: str, ledger: Ledger, source: str) -> Paper | None:
    mc = art.find("MedlineCitation")
    pmid = (mc.findtext("PMID") or "").strip() if mc is not None else ""
    if not pmid:
        ledger.bad(path, where, "no MedlineCitation/PMID")
        return None
    where = f"{where} (PMID {pmid})"
    article = mc.find("Article")
    if article is None:
        ledger.bad(path, where, "no MedlineCitation/Article")
        return None
    parts = [
        Section(label=clean(p.get("Label") or p.get("NlmCategory")), text=_text(p))
        for p in article.findall("Abstract/AbstractText")
    ]
    parts = [p for p in parts if p.text]
    if not parts:
        ledger.drop("no_abstract")
        return None
    # A plain one-paragraph abstract has no sections worth keeping.
    sections = parts if len(parts) > 1 or parts[0].label else []
    try:
        return Paper(
            pmid=pmid,
            title=_text(article.find("ArticleTitle")) or _text(article.find("VernacularTitle")),
            abstract=" ".join(p.text for p in parts),
            sections=sections,
            mesh=sorted({t for d in mc.findall("MeshHeadingList/MeshHeading/DescriptorName") if (t := _text(d))}),
            year=_year(article),
            authors=_authors(article),
            journal=_text(article.find("Journal/Title")) or None,
            doi=_doi(art, article),
            source=source,
        )
    except ValidationError as err:
        ledger.bad(path, where, validation_problem(err))
        return None


def _year(article: Element) -> int | None:
    pub = article.find("Journal/JournalIssue/PubDate")
    candidates = [
        pub.findtext("Year") if pub is not None else None,
        pub.findtext("MedlineDate") if pub is not None else None,
        article.findtext("ArticleDate/Year"),
    ]
    for text in candidates:
        if text and (m := _YEAR.search(text)):
            return int(m.group())
    return None


def _authors(article: Element) -> list[str]:
    names = []
    for a in article.findall("AuthorList/Author"):
        if a.get("ValidYN") == "N":  # listed in error, corrected elsewhere
            continue
        last = _text(a.find("LastName"))
        initials = _text(a.find("Initials")) or _text(a.find("ForeName"))
        name = f"{last} {initials}".strip() if last else _text(a.find("CollectiveName"))
        if name:
            names.append(name)
    return names


def _doi(art: Element, article: Element) -> str | None:
    # Direct children only: ReferenceList/Reference/ArticleIdList holds cited papers' DOIs.
    for aid in art.findall("PubmedData/ArticleIdList/ArticleId"):
        if aid.get("IdType") == "doi" and (doi := _text(aid)):
            return doi
    for loc in article.findall("ELocationID"):
        if loc.get("EIdType") == "doi" and (doi := _text(loc)):
            return doi
    return None
