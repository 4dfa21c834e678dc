"""The default judge: a deterministic rubric over the task and the response alone.

It is cheap (regexes and n-gram sets, no model), reproducible, and rewards what the
output contract asks for while punishing the failures a tiny model actually shows
(invented PMIDs, loops of repeated words, copying the abstract). Both scores start at
1.0, move by the terms below, are clamped to [1, 5] and rounded to 2 decimals.

Logic:

| term                                                                      | effect                            |
|---------------------------------------------------------------------------|-----------------------------------|
| closed `<think>...</think>` block                                         | +0.5                              |
| think substance: block length x fluency                                   | +0.5 at >= 200 chars, +1.0 at >= 600 |
| grounded share: distinct cited PMIDs that are sources / distinct cited    | +1.0 x share (0 if nothing cited) |
| reasoning connectives (because, therefore, however, suggests, compared with, ...) | +0.25 each distinct, max +0.75 |
| an answer follows the closed block (>= 40 chars x fluency)                | +0.5                              |
| qa: a parseable "Answer: yes/no/maybe"; other types: answer cites >= 2 sources | +0.5                         |
| hallucinated PMIDs (cited, not among the task's sources)                  | -1.0 each, max -3.0               |
| degenerate repetition r (see below)                                       | -3.0 x clamp((r - 0.3) / 0.4)     |
| empty answer                                                              | -1.0                              |

Novelty:

| term                                                                      | effect                            |
|---------------------------------------------------------------------------|-----------------------------------|
| proposal cues in the answer (`PROPOSAL_CUES`: propose, hypothes*, extend, | +0.4 each distinct, max +1.2      |
|   test whether, future, gap, predict, prospective, new study/trial/cohort) |                                   |
| linking sources: distinct task sources cited                              | +0.5 for 2, +1.0 for >= 3         |
| new content: share of answer word 3-grams absent from sources and prompt, x fluency | +1.5 x share            |
| verbatim copying: >= 80% of the answer's 3-grams (at least 5) in the sources | -1.0                           |
| degenerate repetition r                                                   | -3.0 x clamp((r - 0.3) / 0.4)     |
| empty answer                                                              | novelty is 1.0                    |

Definitions: words are lower-cased alphanumeric tokens. Repetition r is the larger, over
the think block and the answer, of 1 - distinct/total word 3-grams (citations kept as
words, so citing one PMID twenty times in a row is repetition; parts with fewer than 4
3-grams count as 0). Fluency is min(1, function-word share / 0.2): English prose is
about 40% function words (the, of, and, ...), letter salad none, so gibberish earns no
length or new-content credit. Citation markers are removed before the copy/new-content
n-grams are taken.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from bioreasoner.core.parsing import CITATION_RE, Parsed, parse_response
from bioreasoner.core.records import Task
from bioreasoner.scoring.judge import Verdict

_WORD = re.compile(r"[a-z0-9]+")
_TAG = re.compile(r"<\s*+/?\s*+think\s*+>", re.I)  # possessive: "<" + a long space run stays linear

_FUNCTION_WORDS_TEXT = (
    "a an the of in on at to for from by with without and or but nor not no so as than that this these those "
    "it its is are was were be been being has have had do does did can could may might must should would will "
    "which who whom whose what when where why how if then there their they them we our us he she his her i you "
    "into onto over under between among within about after before during while also only more most less both "
    "each all any some such other same one two three"
)
_FUNCTION_WORDS = frozenset(_FUNCTION_WORDS_TEXT.split())

CONNECTIVES: tuple[str, ...] = (
    r"because",
    r"since",
    r"therefore",
    r"thus",
    r"hence",
    r"consequently",
    r"as a result",
    r"so that",
    r"however",
    r"although",
    r"whereas",
    r"in contrast",
    r"despite",
    r"suggest(?:s|ed|ing)?",
    r"indicat(?:es|ed|ing)",
    r"impl(?:y|ies|ied)",
    r"compared (?:with|to)",
    r"relative to",
    r"versus",
    r"consistent with",
    r"which means",
    r"unless",
)
PROPOSAL_CUES: tuple[str, ...] = (
    r"propos(?:e|es|ed|ing|al)",
    r"hypothes\w*",
    r"extend(?:s|ed|ing)?|extension",
    r"test(?:s|ing)? whether",
    r"future",
    r"gaps?",
    r"predict(?:s|ed|ion)?",
    r"prospective",
    r"new (?:study|trial|cohort|experiment)",
)
_CONNECTIVE_RES = tuple(re.compile(rf"\b{p}\b", re.I) for p in CONNECTIVES)
_CUE_RES = tuple(re.compile(rf"\b{p}\b", re.I) for p in PROPOSAL_CUES)


def words(text: str, keep_citations: bool = True) -> list[str]:
    if not keep_citations:
        text = CITATION_RE.sub(" ", text)
    return _WORD.findall(_TAG.sub(" ", text).lower())


def ngrams(tokens: list[str], n: int = 3) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def repetition(text: str) -> float:
    """1 - distinct/total word 3-grams; 0 for fewer than 4 of them."""
    grams = ngrams(words(text))
    return 0.0 if len(grams) < 4 else 1 - len(set(grams)) / len(grams)


def fluency(text: str) -> float:
    tokens = words(text, keep_citations=False)
    if not tokens:
        return 0.0
    share = sum(t in _FUNCTION_WORDS for t in tokens) / len(tokens)
    return min(1.0, share / 0.2)


def _count(patterns: Iterable[re.Pattern[str]], text: str) -> int:
    return sum(1 for p in patterns if p.search(text))


def _clamp(x: float, lo: float = 0.0, hi: float = 1.0) -> float:
    return max(lo, min(hi, x))


def _final(score: float) -> float:
    return round(_clamp(score, 1.0, 5.0), 2)


def logic_terms(task: Task, p: Parsed, rep_penalty: float) -> dict[str, float]:
    sources = set(task.source_pmids)
    grounded = [c for c in p.citations if c in sources]
    hallucinated = len(p.citations) - len(grounded)
    answer_cites = {c for c in parse_response(p.answer).citations if c in sources}
    think_len = len(p.think) * fluency(p.think)
    terms = {
        "closed_think": 0.5 if p.think_closed else 0.0,
        "think_substance": 1.0 if think_len >= 600 else 0.5 if think_len >= 200 else 0.0,
        "grounded_share": len(grounded) / len(p.citations) if p.citations else 0.0,
        "connectives": min(0.75, 0.25 * _count(_CONNECTIVE_RES, p.think + "\n" + p.answer)),
        "answer_follows": 0.5 if p.think_closed and len(p.answer) * fluency(p.answer) >= 40 else 0.0,
        "task_form": 0.5 if (p.decision is not None if task.type == "qa" else len(answer_cites) >= 2) else 0.0,
        "hallucinated": -min(3.0, 1.0 * hallucinated),
        "repetition": -rep_penalty,
        "empty_answer": -1.0 if not p.answer.strip() else 0.0,
    }
    return terms


def novelty_terms(task: Task, p: Parsed, rep_penalty: float) -> dict[str, float]:
    if not p.answer.strip():
        return {"empty_answer": 0.0}
    sources = set(task.source_pmids)
    linked = sum(c in sources for c in p.citations)
    seen_text = " ".join([*(f"{s.title} {s.text}" for s in task.sources), *(m.content for m in task.messages)])
    seen = set(ngrams(words(seen_text, keep_citations=False)))
    grams = ngrams(words(p.answer, keep_citations=False))
    new_share = sum(g not in seen for g in grams) / len(grams) if grams else 0.0
    return {
        "proposals": min(1.2, 0.4 * _count(_CUE_RES, p.answer)),
        "linked_sources": 1.0 if linked >= 3 else 0.5 if linked == 2 else 0.0,
        "new_content": 1.5 * new_share * fluency(p.answer),
        "copying": -1.0 if len(grams) >= 5 and new_share <= 0.2 else 0.0,
        "repetition": -rep_penalty,
    }


def rubric_scores(task: Task, response: str) -> tuple[float, float, dict[str, float]]:
    """(logic, novelty, the terms that produced them, prefixed 'logic.'/'novelty.')."""
    p = parse_response(response)
    r = max(repetition(p.think), repetition(p.answer))
    rep_penalty = 3.0 * _clamp((r - 0.3) / 0.4)
    lt, nt = logic_terms(task, p, rep_penalty), novelty_terms(task, p, rep_penalty)
    logic = _final(1.0 + sum(lt.values()))
    novelty = _final(1.0 + sum(nt.values()))
    terms = {f"logic.{k}": round(v, 3) for k, v in lt.items()} | {f"novelty.{k}": round(v, 3) for k, v in nt.items()}
    return logic, novelty, terms


class RubricJudge:
    """The deterministic rubric of this module's docstring, as a `Judge`."""

    name = "rubric"

    def score(self, task: Task, response: str) -> Verdict:
        logic, novelty, terms = rubric_scores(task, response)
        rationale = ", ".join(f"{k} {v:+g}" for k, v in terms.items() if v)
        return Verdict(logic=logic, novelty=novelty, error=None, judge=self.name, rationale=rationale)
