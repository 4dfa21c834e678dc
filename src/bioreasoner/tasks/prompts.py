"""Chat prompts for each task type. The system prompt states the output contract that the
parser, the judge and the rewards check: a <think> block, [PMID:n] citations of the given
papers only, and for `qa` a final "Answer: yes|no|maybe" line.

Titles, excerpts and questions are pasted in as they are: they arrive neutralised
(`core.safety.neutralise_paper`, applied once in build_triplets), so no chat token, think
tag or PMID in them can read as markup or as a citation."""

from __future__ import annotations

from collections.abc import Sequence

from bioreasoner.core.records import Message, Source

SYSTEM_PROMPT = (
    "You are BioReasoner, a careful biomedical research assistant. Think step by step inside "
    "<think> ... </think> before you answer. Cite papers only as [PMID:n], and only the PMIDs "
    "given to you; never invent a citation."
)

INSTRUCTIONS = {
    "critique_extend": (
        "Critique the study in Paper 1 in light of Papers 2 and 3, then propose one concrete "
        "extension that the other papers make possible."
    ),
    "method_bridge": (
        "Identify a method from one of these papers that could carry over to the question studied "
        "in another, and explain how the transfer would work and what it would test."
    ),
    "gap_analysis": (
        "Identify a research gap that none of the three papers closes, grounded in what each one "
        "reports, and propose a study that would close it."
    ),
}

QA_INSTRUCTION = 'Reason over the paper, then end with one line: "Answer: yes", "Answer: no" or "Answer: maybe".'


def _paper_block(i: int | None, src: Source) -> str:
    head = f"Paper {i} [PMID:{src.pmid}]" if i is not None else f"Paper [PMID:{src.pmid}]"
    return f"{head}: {src.title}\n{src.text}"


def qa_messages(src: Source, question: str) -> list[Message]:
    user = f"{_paper_block(None, src)}\n\nQuestion: {question}\n{QA_INSTRUCTION}"
    return [Message(role="system", content=SYSTEM_PROMPT), Message(role="user", content=user)]


def cross_messages(task_type: str, sources: Sequence[Source]) -> list[Message]:
    papers = "\n\n".join(_paper_block(i, s) for i, s in enumerate(sources, start=1))
    user = f"{papers}\n\nTask: {INSTRUCTIONS[task_type]}"
    return [Message(role="system", content=SYSTEM_PROMPT), Message(role="user", content=user)]
