"""DPO preference pairs from scored candidates [D1, D5], as pure functions.

Scores are `Candidate.score` = logic + novelty (2-10) from the primary judge.

- `distill` (v2.0): chosen = the task's reference (the teacher), rejected = a student sample:
  one that breaks a filter rule if any does (rule `reference_vs_failed`), else the
  lowest-scoring one (`reference_vs_lowest`). Lower score first, then lower sample index.
- `best_of_n` (v2.1): chosen = the highest-scoring candidate that passed the filter (so it is
  grounded and has a think block); rejected = a candidate without a `<think>` block if there is
  one (`best_vs_missing_think`), else the lowest-scoring (`best_vs_worst`). A pair is kept only
  when score_delta = chosen - rejected >= `min_delta`. With `pairs_per_prompt` > 1 the next-best
  and next-worst unused candidates form further pairs under the same rules.

A candidate whose judge failed (score None) is never chosen and never paired by score.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

from bioreasoner.core.records import Candidate, Message, Pair, Task

RULES = ("reference_vs_failed", "reference_vs_lowest", "best_vs_missing_think", "best_vs_worst")


def _pair(task: Task, chosen: str, rejected: str, cs: float | None, rs: float | None, rule: str) -> Pair:
    return Pair(
        task_id=task.id,
        prompt=task.messages,
        chosen=[Message(role="assistant", content=chosen)],
        rejected=[Message(role="assistant", content=rejected)],
        chosen_score=cs,
        rejected_score=rs,
        score_delta=None if cs is None or rs is None else round(cs - rs, 4),
        rule=rule,
    )


def _low_first(c: Candidate) -> tuple[float, int]:
    return (c.score if c.score is not None else math.inf, c.sample)


def distill_pair(task: Task, candidates: list[Candidate], reference_score: float | None) -> Pair | None:
    """Reference (chosen) vs the worst student sample (rejected); None without samples."""
    if not candidates:
        return None
    failing = [c for c in candidates if c.reasons]
    rejected = min(failing or candidates, key=_low_first)
    rule = "reference_vs_failed" if failing else "reference_vs_lowest"
    return _pair(task, task.reference, rejected.text, reference_score, rejected.score, rule)


def best_of_n_pairs(task: Task, candidates: list[Candidate], min_delta: float, pairs_per_prompt: int = 1) -> list[Pair]:
    """Best passed candidate vs worst (missing think first); only pairs with delta >= min_delta."""
    passed = sorted((c for c in candidates if not c.reasons and c.score is not None), key=_low_first, reverse=True)
    pairs: list[Pair] = []
    used: set[int] = set()
    for chosen in passed:
        if len(pairs) >= pairs_per_prompt:
            break
        if chosen.sample in used:
            continue
        pool = [c for c in candidates if c.sample not in used and c.sample != chosen.sample and c.score is not None]
        no_think = [c for c in pool if "missing_think" in c.reasons]
        if no_think:
            rejected, rule = min(no_think, key=_low_first), "best_vs_missing_think"
        elif pool:
            rejected, rule = min(pool, key=_low_first), "best_vs_worst"
        else:
            break
        if chosen.score - rejected.score < min_delta:  # type: ignore[operator]
            break  # the next-best chosen only narrows the gap
        pairs.append(_pair(task, chosen.text, rejected.text, chosen.score, rejected.score, rule))
        used |= {chosen.sample, rejected.sample}
    return pairs


def pair_metrics(pairs: list[Pair], prompts: int, min_pairs: int) -> dict[str, Any]:
    """Counts, deltas and the share of each rule; `underpowered` when pairs < min_pairs."""
    deltas = [p.score_delta for p in pairs if p.score_delta is not None]
    rules = Counter(p.rule for p in pairs)
    return {
        "pairs": len(pairs),
        "prompts": prompts,
        "prompts_with_pair": len({p.task_id for p in pairs}),
        "mean_delta": round(sum(deltas) / len(deltas), 4) if deltas else None,
        "min_delta": round(min(deltas), 4) if deltas else None,
        "share_by_rule": {r: round(rules[r] / len(pairs), 4) for r in RULES if rules[r]} if pairs else {},
        "min_pairs": min_pairs,
        "underpowered": len(pairs) < min_pairs,
    }
