"""Judges score a response's logic and novelty 1-5 (DESIGN.md, "Teacher, judge, rewards").

A judge is anything with a `name` and `score(task, response) -> Verdict`. The default is
the deterministic rubric (`judge.rubric`); `kind: openai` asks an OpenAI-compatible
endpoint (`judge.openai`). Several judges may run side by side, and `agreement` reports
how often two of them reach the same pass/fail call.

A verdict that could not be obtained (a malformed reply, an HTTP failure) is a `Verdict`
with `error` set and no scores: recorded, never a crash.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Protocol, runtime_checkable

from bioreasoner.core.records import Task


@dataclass(frozen=True)
class Verdict:
    logic: float | None
    novelty: float | None
    error: str | None
    judge: str
    rationale: str | None = None

    @property
    def ok(self) -> bool:
        """Both scores present and no error."""
        return self.error is None and self.logic is not None and self.novelty is not None

    @property
    def mean(self) -> float | None:
        """(logic + novelty) / 2, or None when the verdict is not ok."""
        if not self.ok:
            return None
        return (self.logic + self.novelty) / 2  # type: ignore[operator]


@runtime_checkable
class Judge(Protocol):
    name: str

    def score(self, task: Task, response: str) -> Verdict: ...


def build_judge(cfg: dict[str, Any]) -> Judge:
    """A judge from a params mapping: `{kind: rubric}` or `{kind: openai, base_url: ..., model: ...}`.

    Keys other than `kind` go to the judge's constructor, so a misspelt option is an error.
    """
    cfg = dict(cfg)
    kind = cfg.pop("kind", "rubric")
    if kind == "rubric":
        from bioreasoner.scoring.judge.rubric import RubricJudge

        if cfg:
            raise ValueError(f"judge kind 'rubric' takes no options, got {sorted(cfg)}")
        return RubricJudge()
    if kind == "openai":
        from bioreasoner.scoring.judge.openai import OpenAIJudge

        try:
            return OpenAIJudge(**cfg)
        except TypeError as err:
            raise ValueError(f"judge kind 'openai': {err}") from None
    raise ValueError(f"unknown judge kind {kind!r} (expected 'rubric' or 'openai')")


def build_judges(cfgs: list[dict[str, Any]]) -> list[Judge]:
    """Several judges; their names must differ, since results are keyed by name."""
    judges = [build_judge(c) for c in cfgs]
    names = [j.name for j in judges]
    if len(set(names)) != len(names):
        raise ValueError(f"judge names must be unique, got {names} (set `name:` to tell them apart)")
    return judges


def agreement(a: list[bool], b: list[bool]) -> dict[str, float | int | None]:
    """How often two judges' pass/fail calls agree: raw share and Cohen's kappa.

    kappa = (p_o - p_e) / (1 - p_e), with p_o the observed share of identical calls and
    p_e = P_a(true) * P_b(true) + P_a(false) * P_b(false) the agreement expected by chance.
    When p_e = 1 (both judges constant and equal) kappa is undefined; we define it as
    1.0 if p_o = 1 (always the case then) and 0.0 otherwise. Empty input gives None for
    both. Computed with exact fractions, rounded to 4 decimals.
    """
    if len(a) != len(b):
        raise ValueError(f"agreement needs paired calls, got {len(a)} and {len(b)}")
    n = len(a)
    if n == 0:
        return {"n": 0, "agreement": None, "cohens_kappa": None}
    p_o = Fraction(sum(x == y for x, y in zip(a, b, strict=True)), n)
    pa, pb = Fraction(sum(a), n), Fraction(sum(b), n)
    p_e = pa * pb + (1 - pa) * (1 - pb)
    kappa = (1.0 if p_o == 1 else 0.0) if p_e == 1 else (p_o - p_e) / (1 - p_e)
    return {"n": n, "agreement": round(float(p_o), 4), "cohens_kappa": round(float(kappa), 4)}


def score_all(judges: list[Judge], tasks: list[Task], responses: list[str]) -> list[list[Verdict]]:
    """Every judge's verdict on every (task, response): result[j][i] is judge j on item i."""
    from tqdm.auto import tqdm

    if len(tasks) != len(responses):
        raise ValueError(f"{len(tasks)} tasks but {len(responses)} responses")
    return [
        [
            j.score(t, r)
            for t, r in tqdm(zip(tasks, responses, strict=True), total=len(tasks), desc=f"judge {j.name}", disable=None)
        ]
        for j in judges
    ]


def pass_calls(verdicts: list[Verdict], threshold: float) -> list[bool]:
    """One judge's pass/fail per item: (logic + novelty) / 2 >= threshold; a failed verdict fails."""
    return [v.mean is not None and v.mean >= threshold for v in verdicts]
