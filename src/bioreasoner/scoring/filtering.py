"""The notebook's filter rules (seeds/000, entry 3), as one pure function per candidate.

A candidate is rejected for every rule it breaks, and each reason is recorded:

| reason           | rule                                                                   |
|------------------|------------------------------------------------------------------------|
| `missing_think`  | no `<think>` tag at all (what a forced `<think>` prefix rules out)      |
| `unclosed_think` | `<think>` opened but never closed: no separate answer                   |
| `short_think`    | think block shorter than `min_think_chars` characters (notebook: 200)   |
| `low_score`      | primary judge's (logic + novelty) / 2 below `min_score` (notebook: 2.5) |
| `judge_error`    | the primary judge gave no verdict: it cannot pass a score threshold     |
| `hallucinated`   | cites a PMID that is not among the task's sources                       |

`unclosed_think` and `short_think` are checked only when a block exists, so a response
without one is rejected once, as `missing_think`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bioreasoner.scoring.judge import Verdict
from bioreasoner.scoring.parsing import parse_response

REASONS = ("missing_think", "unclosed_think", "short_think", "low_score", "judge_error", "hallucinated")


@dataclass(frozen=True)
class FilterRules:
    min_think_chars: int = 200
    min_score: float = 2.5
    reject_hallucinated: bool = True

    @classmethod
    def from_params(cls, cfg: dict[str, Any]) -> FilterRules:
        return cls(**cfg)


def reject_reasons(text: str, sources: list[str], verdict: Verdict, rules: FilterRules) -> list[str]:
    """Every rule `text` breaks, in `REASONS` order; [] means it passes."""
    p = parse_response(text)
    reasons = []
    if not p.has_think:
        reasons.append("missing_think")
    else:
        if not p.think_closed:
            reasons.append("unclosed_think")
        if len(p.think.strip()) < rules.min_think_chars:
            reasons.append("short_think")
    if verdict.mean is None:
        reasons.append("judge_error")
    elif verdict.mean < rules.min_score:
        reasons.append("low_score")
    if rules.reject_hallucinated and any(c not in sources for c in p.citations):
        reasons.append("hallucinated")
    return reasons
