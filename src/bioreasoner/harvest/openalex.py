"""OpenAlex works JSON: a single work, a list of works, or an API results page.

OpenAlex ships abstracts only as an inverted index ({word: [positions]}) for licensing
reasons, so the text is rebuilt by position. Many works have no PMID or no abstract;
those are normal drops, not errors.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from bioreasoner.core.io import read_json, validation_problem
from bioreasoner.core.records import Paper
from bioreasoner.core.text import clean
from bioreasoner.harvest.ledger import Ledger, expand_paths

KIND = "openalex_json"
_PMID = re.compile(r"(?:^|/)([0-9]+)/?$")
_DOI_PREFIX = re.compile(r"^https?://(?:dx\.)?doi\.org/", re.IGNORECASE)


def read(spec: dict[str, Any], ledger: Ledger) -> Iterator[Paper]:
    for path in expand_paths(spec["path"], KIND):
        works = works_in(read_json(path))
        if works is None:
            ledger.bad(path, "top level", "expected a work, a list of works or {'results': [...]}")
            continue
        for i, work in enumerate(works, start=1):
            ledger.seen()
            paper = paper_from_work(work, path, work_label(i, work), ledger)
            if paper is not None:
                yield paper


def works_in(data: Any) -> list[Any] | None:
    """The works in a file's JSON, or None when the shape is none of the three known ones."""
    if isinstance(data, list):
        return data
    if isinstance(data, dict):
        if isinstance(data.get("results"), list):
            return data["results"]
        if "id" in data:
            return [data]
    return None


def work_label(i: int, work: Any) -> str:
    """'work #2 (W123)': the position, plus the OpenAlex id when there is one."""
    wid = work.get("id") if isinstance(work, dict) else None
    return f"work #{i} ({str(wid).rsplit('/', 1)[-1]})" if wid else f"work #{i}"


def paper_from_work(work: Any, path_label: str | Path, where: str, ledger: Ledger, source: str = KIND) -> Paper | None:
    """One work as a Paper, or None after telling the ledger why. The caller calls seen()."""
    if not isinstance(work, dict):
        ledger.bad(path_label, where, f"work is not an object but {type(work).__name__}")
        return None
    try:
        abstract = rebuild_abstract(work.get("abstract_inverted_index"))
    except ValueError as err:
        ledger.bad(path_label, where, f"abstract_inverted_index: {err}")
        return None
    ids = work.get("ids") if isinstance(work.get("ids"), dict) else {}
    raw_pmid = ids.get("pmid")
    if not raw_pmid:
        ledger.drop("no_pmid")
        return None
    m = _PMID.search(str(raw_pmid).strip())
    if not m:
        ledger.bad(path_label, where, f"ids.pmid {raw_pmid!r} is not a PubMed URL or number")
        return None
    if not abstract:
        ledger.drop("no_abstract")
        return None
    year = work.get("publication_year")
    try:
        return Paper(
            pmid=m.group(1),
            title=_s(work.get("title")) or _s(work.get("display_name")),
            abstract=abstract,
            sections=[],
            mesh=sorted({t for h in _dicts(work.get("mesh")) if (t := _s(h.get("descriptor_name")))}),
            year=year if isinstance(year, int) and not isinstance(year, bool) else None,
            authors=_authors(work),
            journal=_s(_get(work, "primary_location", "source", "display_name")) or None,
            doi=_DOI_PREFIX.sub("", _s(work.get("doi")) or _s(ids.get("doi"))) or None,
            source=source,
        )
    except ValidationError as err:
        ledger.bad(path_label, where, validation_problem(err))
        return None


def rebuild_abstract(index: Any) -> str:
    """Words placed at their positions; raises ValueError when the index is malformed."""
    if not index:
        return ""
    if not isinstance(index, dict):
        raise ValueError(f"expected an object, got {type(index).__name__}")
    placed: list[tuple[int, str]] = []
    for word, positions in index.items():
        if not isinstance(positions, list) or not all(
            isinstance(p, int) and not isinstance(p, bool) and p >= 0 for p in positions
        ):
            raise ValueError(f"positions of {word!r} are not a list of non-negative integers")
        placed.extend((p, word) for p in positions)
    placed.sort(key=lambda pw: pw[0])  # stable: ties keep index order
    return clean(" ".join(w for _, w in placed))


def _s(value: Any) -> str:
    """Cleaned text of a string field; anything else (null, numbers) counts as empty."""
    return clean(value) if isinstance(value, str) else ""


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _get(obj: Any, *keys: str) -> Any:
    """Nested lookup through objects that may be null (primary_location, source)."""
    for key in keys:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def _authors(work: dict[str, Any]) -> list[str]:
    names = (_s(_get(a, "author", "display_name")) for a in _dicts(work.get("authorships")))
    return [n for n in names if n]
