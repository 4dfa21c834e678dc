"""The extractive teacher: deterministic reference responses built from the papers.

It only restates what the prompt shows (each source's excerpt) plus, for `qa`, the
paper's own conclusion (PubMedQA's LONG_ANSWER), and it cites only the task's own
sources, so every reference is grounded by construction. The shape follows the lab
notebook: a <think> block that reasons from each source, then the answer; `qa` ends
with "Answer: <gold>". A user can swap in an LLM teacher later (DESIGN.md).
"""

from __future__ import annotations

from collections.abc import Sequence

from bioreasoner.tasks.excerpt import Excerpt
from bioreasoner.text import sentences


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


def qa_reference(
    pmid: str, ex: Excerpt, question: str, long_answer: str | None, gold: str, min_think_chars: int
) -> str:
    conclusion = sentences(long_answer or "") or [ex.finding]
    think = (
        f"The question is: {question} The evidence is one paper, {cite(pmid)}. "
        f"Its aim: {ex.aim} How it was studied: {ex.method} What it found: {ex.finding} "
        f"Weighing these findings against the question: {' '.join(conclusion)}"
    )
    think = _pad_think(think, min_think_chars, f"The answer must rest on {cite(pmid)} alone.")
    return f"<think>\n{think}\n</think>\n{conclusion[0]} {cite(pmid)}\n\nAnswer: {gold}"


def cross_reference(
    task_type: str,
    pmids: Sequence[str],
    titles: Sequence[str],
    exs: Sequence[Excerpt],
    shared: Sequence[str],
    min_think_chars: int,
) -> str:
    a, b, c = (cite(p) for p in pmids)
    ea, eb, ec = exs
    topic = "; ".join(shared[:3]) if shared else "related clinical questions"
    think = " ".join(
        f'{cite(p)} ("{t}") sets out: {e.aim} Its approach: {e.method} It reports: {e.finding}'
        for p, t, e in zip(pmids, titles, exs, strict=True)
    )
    think += f" The three papers meet on {topic}."
    think = _pad_think(think, min_think_chars, f"Only {a}, {b} and {c} may be cited.")
    if task_type == "critique_extend":
        answer = (
            f"Critique: {a} rests on one design and setting ({ea.method}) and reports: {ea.finding} "
            f"{b} and {c} study {topic} in other populations, so that result needs testing beyond "
            f"the sample of {a}.\n"
            f"Extension: repeat the analysis of {a} in the population of {b}, measuring the outcome "
            f"that {c} reports ({ec.finding})"
        )
    elif task_type == "method_bridge":
        answer = (
            f"Method: {a} used this approach: {ea.method}\n"
            f'Bridge: the question of {b} ("{titles[1]}") could be studied the same way. {b} reports: '
            f"{eb.finding} A design borrowed from {a} would test whether that holds under its "
            f"controls, and {c} gives the comparison point: {ec.finding}"
        )
    elif task_type == "gap_analysis":
        answer = (
            f"Gap: {a} reports: {ea.finding} {b} reports: {eb.finding} {c} reports: {ec.finding} "
            f"None of them links these findings on {topic} within one cohort.\n"
            f"Proposed study: one prospective cohort that measures the outcomes of {a} and {b} "
            f"together, using the approach of {b}: {eb.method}"
        )
    else:
        raise ValueError(f"unknown cross-paper task type {task_type!r}")
    return f"<think>\n{think}\n</think>\n{answer}"
