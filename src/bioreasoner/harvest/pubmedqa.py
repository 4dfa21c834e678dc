"""PubMedQA-L (`ori_pqal.json`): {pmid: {QUESTION, CONTEXTS, LABELS, MESHES, YEAR, ...}}.

PubMedQA has no titles; its questions are derived from the article titles (Jin et al.,
2019, sec. 3.1), so the question doubles as the title. CONTEXTS with their LABELS are the
abstract minus its conclusion; LONG_ANSWER is the conclusion and stays out of `abstract`
so a prompt built from the abstract does not give the answer away.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from bioreasoner.core.io import read_json
from bioreasoner.core.records import Paper, Section
from bioreasoner.core.text import clean
from bioreasoner.harvest.ledger import Ledger, expand_paths

DECISIONS = ("yes", "no", "maybe")


def read(spec: dict[str, Any], ledger: Ledger) -> Iterator[Paper]:
    for path in expand_paths(spec["path"], "pubmedqa"):
        data = read_json(path)
        if not isinstance(data, dict):
            ledger.bad(path, "top level", "expected an object keyed by PMID")
            continue
        for pmid, entry in data.items():
            ledger.seen()
            paper = _paper(pmid, entry, path, ledger)
            if paper is not None:
                yield paper


def _paper(pmid: str, entry: Any, path: Any, ledger: Ledger) -> Paper | None:
    where = f"record {pmid!r}"
    if not str(pmid).isdigit():
        ledger.bad(path, where, "key is not a PMID")
        return None
    if not isinstance(entry, dict):
        ledger.bad(path, where, "entry is not an object")
        return None
    contexts = entry.get("CONTEXTS")
    if not isinstance(contexts, list) or not any(isinstance(c, str) and c.strip() for c in contexts):
        ledger.bad(path, where, "no CONTEXTS")
        return None
    question = clean(entry.get("QUESTION"))
    if not question:
        ledger.bad(path, where, "no QUESTION")
        return None
    decision = entry.get("final_decision")
    if decision not in DECISIONS:
        ledger.bad(path, where, f"final_decision {decision!r} is not one of yes/no/maybe")
        return None
    labels = entry.get("LABELS") or []
    sections = [
        Section(label=clean(labels[i]) if i < len(labels) and labels[i] else "", text=clean(c))
        for i, c in enumerate(contexts)
        if isinstance(c, str) and c.strip()
    ]
    year = str(entry.get("YEAR") or "")
    return Paper(
        pmid=str(pmid),
        title=question,
        abstract=" ".join(s.text for s in sections),
        sections=sections,
        mesh=sorted({clean(m) for m in entry.get("MESHES") or [] if clean(m)}),
        year=int(year) if year.isdigit() else None,
        source="pubmedqa",
        question=question,
        long_answer=clean(entry.get("LONG_ANSWER")) or None,
        decision=decision,
    )
