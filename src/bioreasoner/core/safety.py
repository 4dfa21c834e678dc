"""Hostile text is data, never markup: one fold for readers, one neutraliser for writers.

Corpus text (titles, abstracts, questions, conclusions, MeSH terms) is untrusted. Pasted
into a prompt or a teacher reference, some shapes stop being data:

- chat special tokens (`<|im_start|>`, `<|endoftext|>`, any `<|name|>`) open turns of
  their own when the prompt is tokenised;
- think tags (`<think>`, `</ THINK >`) split the reference's think block (the build
  stage's contract check used to crash on them) and confuse the response parser;
- PMID-like strings (`[PMID:12345678]`, `PMID: 123`, `(PMID 1; PMID 2)`) are citations
  the teacher did not construct: copied into a reference they teach the model to cite
  papers it was never shown.

`fold` is the form every parser reads (core/parsing.py uses it): format characters
removed, NFKC, every decimal digit as ASCII, so a full-width `［ＰＭＩＤ：１２３］` or a
zero-width space inside `PMID` cannot hide a citation or a tag. `neutralise` finds the
shapes above in that folded view and replaces them in the original text, so everything
else (micro signs, superscripts, Greek) is left exactly as it was:

| shape (found case-insensitively, after `fold`)   | becomes                                 |
|--------------------------------------------------|-----------------------------------------|
| format characters (zero-width, soft hyphen, bidi, BOM, tag chars) | removed everywhere     |
| `<|name|>` (name: up to 64 chars, no space/pipe/angle/paren)  | `(name)`, e.g. `(im_start)` |
| `<think>`, `< think >`                           | `(think)`                               |
| `</think>`, `< / THINK >`                        | `(/think)`                              |
| `[PMID: 1, 2]`, `(PMID 1; PMID 2)` (closed)      | `(citation removed)`                    |
| `PMID 123`, `PMID:123`, `PMIDs #1`, `XPMID5`     | `(citation removed)`                    |

Parentheses are the replacement's markup on purpose: `<|think|>` -> `<think>` would create
the very tag we remove, and no tokenizer treats `(im_start)` as special. The result is
checked against `fold` once more (a chat token's name can hold "PMID5"), so
`neutralise(x)` never contains a shape above, and `neutralise(neutralise(x)) ==
neutralise(x)`. Not covered: homoglyphs NFKC keeps apart (Cyrillic "РМІD"), and citation
styles the parser does not read either ("PubMed ID 123", "PMC123").

Every pattern here is linear: possessive quantifiers, classes that do not overlap.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
import unicodedata
from collections.abc import Iterable

from bioreasoner.core.records import Paper, Section

log = logging.getLogger(__name__)

# Unicode format characters (category Cf) that can hide inside a word without showing:
# soft hyphen, Arabic letter mark, Mongolian vowel separator, zero-width space/non-joiner/
# joiner, LRM/RLM, bidi embeddings and isolates, word joiner and invisible operators, BOM,
# interlinear annotation marks, and the tag characters (used to smuggle ASCII).
INVISIBLE = re.compile(
    "[\u00ad\u061c\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb\U000e0000-\U000e007f]"
)
_NON_ASCII_DIGIT = re.compile(r"(?![0-9])\d")  # Arabic-Indic, Devanagari, ... digits

CITATION_REMOVED = "(citation removed)"  # what a PMID-like string in source text becomes
_SEP = r"[\s:#=\-]*+"  # between "PMID" and its number: "PMID 1", "PMID:1", "PMID #1", "PMID=1", "PMID-1"
_PMID_ITEM = rf"PMIDs?{_SEP}\d++"
HOSTILE = re.compile(
    r"(?P<chat><\|(?P<name>[^\s<>|()]{0,64})\|>)"
    r"|(?P<think><\s*+(?P<slash>/?)\s*+think\s*+>)"
    rf"|(?P<cites>[\[(]\s*+{_PMID_ITEM}(?:\s*+[,;]\s*+(?:PMIDs?{_SEP})?\d++)*+\s*+[\])])"
    rf"|(?P<pmid>{_PMID_ITEM})",
    re.I,
)
_MAX_PASSES = 4  # one pass suffices unless a replacement exposes a shape ("<|PMID5|>"): two


def _fold_digits(text: str) -> str:
    return _NON_ASCII_DIGIT.sub(lambda m: str(unicodedata.decimal(m.group())), text)


def fold(text: str) -> str:
    """What a reader sees: format characters removed, NFKC, decimal digits as ASCII."""
    if text.isascii():
        return text
    text = unicodedata.normalize("NFKC", INVISIBLE.sub("", text))
    return text if text.isascii() else _fold_digits(text)


@functools.lru_cache(maxsize=4096)
def _fold_char(ch: str) -> str:
    return _fold_digits(unicodedata.normalize("NFKC", ch))


def _folded_with_map(text: str) -> tuple[str, list[int]]:
    """`text` folded one character at a time, and for each folded index its source index.

    Per-character NFKC differs from whole-string NFKC only where a base letter and a
    combining mark compose; that never creates an ASCII character, so a hostile shape
    seen by `fold` is seen here too (and `neutralise` re-checks with `fold` regardless).
    """
    parts: list[str] = []
    starts: list[int] = []
    for i, ch in enumerate(text):
        f = ch if ch < "\x80" else _fold_char(ch)
        parts.append(f)
        starts.extend([i] * len(f))
    return "".join(parts), starts


def _replacement(m: re.Match[str]) -> str:
    if m.group("chat") is not None:
        return f"({m.group('name')})"
    if m.group("think") is not None:
        return f"({m.group('slash')}think)"
    return CITATION_REMOVED


def _replace_pass(text: str) -> str:
    """Replace every hostile shape found in the folded view, mapped back onto `text`."""
    folded, starts = _folded_with_map(text)
    out: list[str] = []
    pos = 0
    for m in HOSTILE.finditer(folded):
        begin, end = starts[m.start()], starts[m.end() - 1] + 1
        out.append(text[pos:begin])
        out.append(_replacement(m))
        pos = end
    out.append(text[pos:])
    return "".join(out)


def neutralise(text: str) -> str:
    """`text` with no chat token, think tag or PMID-like string left (module docstring)."""
    if not text:
        return text
    text = INVISIBLE.sub("", text)
    for _ in range(_MAX_PASSES):
        folded = fold(text)
        if HOSTILE.search(folded) is None:
            return text
        before = text
        text = _replace_pass(text)
        if text == before:  # the folded view disagrees with the per-character one: use it
            text = HOSTILE.sub(_replacement, folded)
    if HOSTILE.search(fold(text)) is None:
        return text
    log.warning("text still hostile after %d passes; dropped (%d chars)", _MAX_PASSES, len(text))
    return "(text removed)"


def _all(texts: Iterable[str]) -> list[str]:
    return [neutralise(t) for t in texts]


def neutralise_paper(paper: Paper) -> Paper:
    """A copy of `paper` whose every field that can reach a prompt or a reference is neutralised."""
    return paper.model_copy(
        update={
            "title": neutralise(paper.title),
            "abstract": neutralise(paper.abstract),
            "sections": [Section(label=neutralise(s.label), text=neutralise(s.text)) for s in paper.sections],
            "mesh": _all(paper.mesh),
            "question": neutralise(paper.question) if paper.question is not None else None,
            "long_answer": neutralise(paper.long_answer) if paper.long_answer is not None else None,
        }
    )


# ----------------------------------------------------------------------------- fences


def defang_fences(text: str) -> str:
    """`text` with every "<<" turned into "< <": the result never contains "<<<" (a run of
    k >= 2 '<' becomes pairs split by spaces), so it cannot write a fence line."""
    return text.replace("<<", "< <")


def fence(name: str, text: str) -> str:
    """Untrusted `text` as a data block that a prompt tells the model not to obey.

    The block starts with `<<<BEGIN NAME TAG>>>` and ends with `<<<END NAME TAG>>>`, TAG a hash
    of the fenced text; inside, no "<<<" can occur (`defang_fences`), so the text can neither
    close its block nor open another. The judges (scoring/judge/openai.py) and the LLM teacher
    (tasks/llm_teacher.py) fence papers and responses this way.
    """
    body = defang_fences(text)
    tag = hashlib.sha256(body.encode("utf-8")).hexdigest()[:16]
    return f"<<<BEGIN {name} {tag}>>>\n{body}\n<<<END {name} {tag}>>>"
