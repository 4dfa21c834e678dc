"""What a prompt shows of a paper: a balanced excerpt under a character budget.

Cutting an abstract at N characters keeps the background and loses the results, which
sit at the end. Instead we take sentences round-robin across the labelled sections
(the first of each, then the second of each, ...) until the budget is spent, and print
them in reading order. The teacher reasons only from this excerpt, so it stays grounded
in what the model is shown.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from bioreasoner.core.records import Paper
from bioreasoner.core.text import sentences

_METHOD = re.compile(r"METHOD|DESIGN|SETTING|PATIENT|SUBJECT|PARTICIPANT|MATERIAL|PROCEDURE|INTERVENTION", re.I)
_RESULT = re.compile(r"RESULT|FINDING|OUTCOME|MEASURE", re.I)


@dataclass(frozen=True)
class Excerpt:
    text: str
    aim: str  # the first shown sentence
    method: str  # first shown sentence of a methods-like section (else the middle one)
    finding: str  # first shown sentence of a results-like section (else the last one)


def excerpt(paper: Paper, max_chars: int) -> Excerpt:
    parts = [(s.label, sentences(s.text)) for s in paper.sections] or [("", sentences(paper.abstract))]
    chosen: list[list[str]] = [[] for _ in parts]
    # Round `depth` visits only the sections that still have a sentence at that depth, so the
    # work is O(sentences), not O(sections x longest section) (50k empty sections + one long one).
    live = [i for i, (_, sents) in enumerate(parts) if sents]
    used, depth, added = 0, 0, True
    while added:
        added = False
        for i in live:
            sents = parts[i][1]
            if used == 0 or used + len(sents[depth]) + 1 <= max_chars:
                chosen[i].append(sents[depth])
                used += len(sents[depth]) + 1
                added = True
        depth += 1
        live = [i for i in live if depth < len(parts[i][1])]
    flat = [s for c in chosen for s in c]
    if not flat:  # a single sentence longer than the budget: show it whole
        flat = chosen[0] = sentences(paper.abstract)[:1] or [paper.title]

    def first(pattern: re.Pattern[str], fallback: str) -> str:
        hits = [c[0] for (label, _), c in zip(parts, chosen, strict=True) if c and pattern.search(label)]
        return hits[0] if hits else fallback

    return Excerpt(
        text=" ".join(flat),
        aim=flat[0],
        method=first(_METHOD, flat[len(flat) // 2]),
        finding=first(_RESULT, flat[-1]),
    )
