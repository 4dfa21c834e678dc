"""Record schemas (DESIGN.md, "Records"): every JSONL reader validates against these."""

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
