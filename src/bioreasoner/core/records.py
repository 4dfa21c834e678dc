"""Record schemas (README, "Where outputs land"): every JSONL reader validates against these."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Decision = Literal["yes", "no", "maybe"]
TASK_TYPES = ("qa", "critique_extend", "method_bridge", "gap_analysis")
TaskType = Literal["qa", "critique_extend", "method_bridge", "gap_analysis"]


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Section(_Record):
    label: str
    text: str


class Paper(_Record):
    """One corpus line. `question`/`long_answer`/`decision` are set for PubMedQA papers."""

    pmid: str = Field(pattern=r"^[1-9][0-9]{0,9}$")
    title: str
    abstract: str = Field(min_length=1)
    sections: list[Section] = []
    mesh: list[str] = []
    year: int | None = None
    authors: list[str] = []
    journal: str | None = None
    doi: str | None = None
    source: str
    question: str | None = None
    long_answer: str | None = None
    decision: Decision | None = None

    @field_validator("abstract")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("abstract is blank")
        return v

    def filled(self) -> int:
        """How many fields carry information (dedupe keeps the fullest record)."""
        return sum(1 for v in self.model_dump().values() if v not in (None, "", [], {}))


class Message(_Record):
    role: Literal["system", "user", "assistant"]
    content: str


class Source(_Record):
    pmid: str
    title: str
    text: str


class Task(_Record):
    id: str
    type: TaskType
    sources: list[Source] = Field(min_length=1)
    messages: list[Message] = Field(min_length=1)
    reference: str
    gold: Decision | None = None
    shared_mesh: list[str] = []

    @property
    def source_pmids(self) -> list[str]:
        return [s.pmid for s in self.sources]


class Candidate(_Record):
    """One sampled response of a round's policy (`generate_candidates`), scored by `filter`."""

    task_id: str
    sample: int  # 0..samples_per_prompt-1
    seed: int  # the item's own sampling seed: regenerate this one row alone
    text: str  # the whole response, forced prefix included
    # set by filter@R:
    logic: float | None = None
    novelty: float | None = None
    score: float | None = None  # logic + novelty (2-10); None when the judge failed
    reasons: list[str] = []  # why it was rejected; empty = passed
    judges: dict[str, dict[str, float | str | None]] = {}


class Pair(_Record):
    """One DPO preference pair (`build_pairs`), in TRL's conversational format."""

    task_id: str
    prompt: list[Message]
    chosen: list[Message]
    rejected: list[Message]
    chosen_score: float | None
    rejected_score: float | None
    score_delta: float | None
    rule: str  # which pairing rule made it (metrics report the share of each)
