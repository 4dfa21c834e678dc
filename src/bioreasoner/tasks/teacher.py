"""The extractive teacher: deterministic reference responses built from the papers.

It only restates what the prompt shows (each source's excerpt) plus, for `qa`, the
paper's own conclusion (PubMedQA's LONG_ANSWER), and it cites only the task's own
sources, so every reference is grounded by construction. The shape follows the lab
notebook: a <think> block that reasons from each source, then the answer; `qa` ends
with "Answer: <gold>". An LLM teacher behind an endpoint is a later params switch.

Paper text is data: every string the teacher copies (excerpt sentences, question,
conclusion, MeSH topic) goes through `core.safety.neutralise` first, so a `</think>` or a
"[PMID:12345678]" inside an abstract never reaches a reference. The only citations in a
reference are the ones `cite` builds for the task's own sources; `reference_problems`
checks that, with the same parser the filter and the rewards use.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from bioreasoner.core.parsing import parse_response, think_tags
from bioreasoner.core.safety import neutralise
from bioreasoner.core.text import sentences
from bioreasoner.tasks.excerpt import Excerpt


def cite(pmid: str) -> str:
    return f"[PMID:{pmid}]"


def _pad_think(think: str, min_chars: int, filler: str) -> str:
    # A very short abstract can leave a thin think block; restate the constraint rather
    # than invent content, so the reference still clears the notebook's 200-char floor.
    while len(think) < min_chars:
        think += " " + filler
    return think


def think_text(reference: str) -> str:
    """The inside of a reference's <think> block (references always close it)."""
    return reference.split("</think>", 1)[0].removeprefix("<think>").strip()


def _safe(ex: Excerpt) -> Excerpt:
    # Idempotent: an excerpt of an already neutralised paper passes through unchanged.
    return replace(
        ex,
        text=neutralise(ex.text),
        aim=neutralise(ex.aim),
        method=neutralise(ex.method),
        finding=neutralise(ex.finding),
    )


def reference_problems(reference: str, source_pmids: Sequence[str], min_think_chars: int) -> list[str]:
    """How `reference` breaks the teacher's contract ([] = it holds): one closed think block
    of at least `min_think_chars`, and citations of the task's own sources only."""
    problems = []
    tags = think_tags(reference)
    if tags != (1, 1):
        problems.append(f"think tags (open, close) = {tags}, want (1, 1)")
    if len(think_text(reference)) < min_think_chars:
        problems.append(f"think block under {min_think_chars} chars")
    cited = parse_response(reference).citations
    foreign = [c for c in cited if c not in source_pmids]
    if foreign:
        problems.append(f"cites PMIDs that are not its sources: {foreign[:5]}")
    if not cited:
        problems.append("cites none of its sources")
    return problems


def qa_reference(
    pmid: str, ex: Excerpt, question: str, long_answer: str | None, gold: str, min_think_chars: int
) -> str:
    ex, question = _safe(ex), neutralise(question)
    conclusion = (sentences(neutralise(long_answer or "")) or [ex.finding])[0]
    method = f" How it was studied: {ex.method}" if ex.method not in (ex.aim, ex.finding) else ""
    think = (
        f"The question is: {question} The evidence is one paper, {cite(pmid)}. "
        f"Its aim: {ex.aim}{method} What it found: {ex.finding}"
    )
    think = _pad_think(think, min_think_chars, f"The answer must rest on {cite(pmid)} alone.")
    return f"<think>\n{think}\n</think>\n{conclusion} {cite(pmid)}\n\nAnswer: {gold}"


def cross_reference(
    task_type: str,
    pmids: Sequence[str],
    exs: Sequence[Excerpt],
    shared: Sequence[str],
    min_think_chars: int,
) -> str:
    a, b, c = (cite(p) for p in pmids)
    exs = [_safe(e) for e in exs]
    topic = "; ".join(neutralise(s) for s in shared[:3]) if shared else "related clinical questions"
    think = " ".join(f"{cite(p)} sets out: {e.aim} It reports: {e.finding}" for p, e in zip(pmids, exs, strict=True))
    think += f" The three papers meet on {topic}."
    think = _pad_think(think, min_think_chars, f"Only {a}, {b} and {c} may be cited.")
    if task_type == "critique_extend":
        answer = (
            f"Critique: {a} rests on a single design and setting; {b} and {c} study {topic} in other "
            f"populations, so its result needs testing beyond its own sample.\n"
            f"Extension: repeat the analysis of {a} in the population of {b}, measuring the outcome {c} reports."
        )
    elif task_type == "method_bridge":
        answer = (
            f"Method: the approach of {a} ({exs[0].method})\n"
            f"Bridge: apply it to the question of {b}, to test whether its finding holds under the "
            f"controls of {a}, with {c} as the comparison point."
        )
    elif task_type == "gap_analysis":
        answer = (
            f"Gap: {a}, {b} and {c} each study {topic}, but none links these findings within one cohort.\n"
            f"Proposed study: one prospective cohort that measures the outcomes of {a} and {b} together, "
            f"using the approach of {b}."
        )
    else:
        raise ValueError(f"unknown cross-paper task type {task_type!r}")
    return f"<think>\n{think}\n</think>\n{answer}"
