"""The one parser of model responses, shared by eval, filtering and the GRPO rewards.

Every consumer must agree on what a response contains (the think block, the answer,
the citations, the qa decision), so the rules live here and nowhere else:

- think block: the first `<think>` and the first `</think>` after it (tags are matched
  case-insensitively). An unclosed block's `think` is everything after `<think>`.
- answer: the text after that `</think>`, with any later complete `<think>...</think>`
  blocks cut out. A stray `</think>` without an opening ends an (unmarked) think part:
  the answer is what follows it. Without any closing tag the answer is the whole text.
- citations: `[PMID:1]`, `[PMID: 1]`, `PMID 1`, `PMID:1`, `(PMID 12345678)`, `pmid:123`,
  and lists `[PMID: 1, 2]` / `[PMID:1; PMID:2]`. A PMID is 1-10 digits without a leading
  zero. Bare numbers, PMC ids and DOIs are not citations. Numbers after a comma count
  only inside brackets, so prose like "PMID 1, 20 patients" cites only 1.
- decision (qa): the last "Answer: yes|no|maybe" in the answer part (case-insensitive;
  "**Answer:** Yes." and "Final answer: no" count), never from inside the think block.
- normalisation first: every entry point reads `core.safety.fold(text)` (format characters
  such as zero-width spaces and soft hyphens removed, NFKC, decimal digits as ASCII), so a
  citation or tag in full-width characters, or split by a zero-width space, is still read:
  a fabricated PMID cannot pass the filter by hiding. `think` and `answer` are folded text.

Responses are untrusted (a policy under RL will find any slow path), so every pattern is
linear: possessive quantifiers (`*+`) where whitespace runs meet optional punctuation, and
think blocks are cut by a forward scan, not by a lazy `.*?` that rescans per opening tag.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from bioreasoner.core.safety import fold

# `\s*+` (possessive) never gives spaces back: "<" or "answer:" followed by 100k spaces is
# one linear attempt instead of a quadratic split of the run between two `\s*`.
_OPEN = re.compile(r"<\s*+think\s*+>", re.I)
_CLOSE = re.compile(r"<\s*+/\s*+think\s*+>", re.I)

_PMID_WORD = r"(?<![A-Za-z0-9_])PMID\s*+(?:[:#]\s*+)?"  # = PMID\s*[:#]?\s*, without the ambiguity
_ITEM = rf"(?:{_PMID_WORD})?\d++"
# A bracketed list (also a bracketed single citation), or a single "PMID n" anywhere.
CITATION_RE = re.compile(
    rf"(?P<list>[\[(]\s*+{_PMID_WORD}\d++(?:\s*+[,;]\s*+{_ITEM})*+\s*+[\])])"
    rf"|{_PMID_WORD}(?P<one>[1-9]\d{{0,9}})(?!\d)",
    re.I,
)
_NUMBER = re.compile(r"\d+")
_VALID_PMID = re.compile(r"[1-9]\d{0,9}")

_DECISION = re.compile(
    r"(?<![A-Za-z])(?:final\s++)?answer\s*+[*_]*+\s*+:\s*+[*_]*+\s*+(?P<d>yes|no|maybe)(?![A-Za-z])",
    re.I,
)


@dataclass(frozen=True)
class Parsed:
    has_think: bool  # a <think> opening is present
    think_closed: bool  # a </think> follows that opening
    think: str  # inside the block (to the end when unclosed); "" without an opening
    answer: str  # after the block (see module docstring)
    citations: tuple[str, ...]  # distinct PMIDs, first-seen order, whole response
    citation_mentions: int  # every cited PMID occurrence, repeats included
    decision: str | None  # "yes" / "no" / "maybe" from the answer part, else None


def pmid_mentions(text: str) -> list[str]:
    """Every cited PMID in order of appearance, repeats kept."""
    out: list[str] = []
    for m in CITATION_RE.finditer(fold(text)):
        if m.group("one"):
            out.append(m.group("one"))
        else:
            out.extend(n for n in _NUMBER.findall(m.group("list")) if _VALID_PMID.fullmatch(n))
    return out


def find_pmids(text: str) -> list[str]:
    """Distinct cited PMIDs in first-seen order (use this to count citations: repeats don't)."""
    return list(dict.fromkeys(pmid_mentions(text)))


def parse_decision(answer: str) -> str | None:
    """The last explicit "Answer: yes|no|maybe" in `answer`, lower-cased, or None."""
    hits = _DECISION.findall(fold(answer))
    return hits[-1].lower() if hits else None


def think_tags(text: str) -> tuple[int, int]:
    """(opening, closing) think tags in `text`, as the parser sees them (a reference has (1, 1))."""
    text = fold(text)
    return sum(1 for _ in _OPEN.finditer(text)), sum(1 for _ in _CLOSE.finditer(text))


def _cut_blocks(text: str) -> str:
    """`text` with every complete `<think>...</think>` block replaced by a space.

    Each block is the first opening at or after the cursor and the first closing after it
    (what a lazy `<think>.*?</think>` substitution matched), but found in one forward
    pass: the lazy pattern rescanned to the end of the text for every unclosed opening.
    """
    out: list[str] = []
    pos = 0
    while (opening := _OPEN.search(text, pos)) is not None:
        closing = _CLOSE.search(text, opening.end())
        if closing is None:
            break
        out += [text[pos : opening.start()], " "]
        pos = closing.end()
    out.append(text[pos:])
    return "".join(out)


def _split(text: str) -> tuple[bool, bool, str, str]:
    """(has_think, think_closed, think, answer) per the module docstring; `text` is folded."""
    opening = _OPEN.search(text)
    if opening is None:
        stray = _CLOSE.search(text)
        answer = text[stray.end() :] if stray else text
        return False, False, "", answer.strip()
    closing = _CLOSE.search(text, opening.end())
    if closing is None:
        return True, False, text[opening.end() :].strip(), text.strip()
    answer = _cut_blocks(text[closing.end() :])
    return True, True, text[opening.end() : closing.start()].strip(), answer.strip()


def parse_response(text: str) -> Parsed:
    text = fold(text)
    has_think, closed, think, answer = _split(text)
    mentions = pmid_mentions(text)
    return Parsed(
        has_think=has_think,
        think_closed=closed,
        think=think,
        answer=answer,
        citations=tuple(dict.fromkeys(mentions)),
        citation_mentions=len(mentions),
        decision=parse_decision(answer),
    )
