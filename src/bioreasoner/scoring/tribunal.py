"""The tribunal: several judges' pass/fail calls on one response, combined by `judges.verdict`.

Each judge's own call is the one pass rule (`scoring.filtering.fail_reasons`) with that
judge's verdict; the rule-only clauses (think block, hallucinated PMIDs) are the same for
every judge, so only `low_score` and `judge_error` can differ between them. The verdict rule:

| `judges.verdict` | the response passes when                                          |
|------------------|-------------------------------------------------------------------|
| `primary`        | the first judge of the panel passes it (the single-judge default)  |
| `unanimous`      | every judge passes it                                              |
| `majority`       | more than half of the judges pass it; a tie fails (2 judges: both) |

A judge without a verdict (`judge_error`) votes fail. A rejected response's reasons are
those of every judge that failed it (in `REASONS` order); a passed one has none, even when a
minority failed it. Scores (`logic`, `novelty`, the candidate's `score` that best-of-N pairs
rank by) stay the primary judge's, so references and candidates stay on one judge's scale.

`agreement_report` gives filter and eval the panel's agreement: the share of identical
calls and Cohen's kappa for every pair of judges and for each judge against the verdict.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations
from typing import Any, Literal

from bioreasoner.core.config import PassRule
from bioreasoner.core.parsing import Parsed
from bioreasoner.scoring.filtering import REASONS, fail_reasons
from bioreasoner.scoring.judge import Verdict, agreement

VerdictRule = Literal["primary", "unanimous", "majority"]
VERDICT_RULES: tuple[str, ...] = ("primary", "unanimous", "majority")


def combine(calls: Sequence[bool], rule: str) -> bool:
    """The tribunal's pass/fail from the judges' calls (primary first) under `rule`."""
    if not calls:
        raise ValueError("a tribunal needs at least one judge's call")
    if rule == "primary":
        return calls[0]
    if rule == "unanimous":
        return all(calls)
    if rule == "majority":
        return 2 * sum(calls) > len(calls)
    raise ValueError(f"unknown verdict rule {rule!r} (expected one of {VERDICT_RULES})")


def tribunal_reasons(
    parsed: Parsed, sources: Sequence[str], verdicts: Sequence[Verdict], rule: PassRule, verdict_rule: str
) -> list[str]:
    """Why the tribunal rejects the response ([] = it passes); see the module docstring."""
    per_judge = [fail_reasons(parsed, sources, v, rule) for v in verdicts]
    if verdict_rule == "primary":
        combine([not per_judge[0]], verdict_rule)  # validates the rule name the same way
        return per_judge[0]
    if combine([not r for r in per_judge], verdict_rule):
        return []
    seen = {r for reasons in per_judge for r in reasons}
    return [r for r in REASONS if r in seen]


def agreement_report(names: Sequence[str], calls: Sequence[Sequence[bool]], verdict_rule: str) -> dict[str, Any]:
    """Pairwise and judge-vs-verdict agreement (share and Cohen's kappa) of the panel's calls.

    `calls[j][i]` is judge j's pass/fail on item i (the same pass rule, judge j's verdict).
    """
    if len(names) != len(calls):
        raise ValueError(f"{len(names)} judges but {len(calls)} rows of calls")
    n = len(calls[0]) if calls else 0
    verdict = [combine([c[i] for c in calls], verdict_rule) for i in range(n)]
    return {
        "verdict": verdict_rule,
        "pass_rate": round(sum(verdict) / n, 4) if n else None,
        "pairwise": {
            f"{a} vs {b}": agreement(list(ca), list(cb))
            for (a, ca), (b, cb) in combinations(zip(names, calls, strict=True), 2)
        },
        "vs_verdict": {name: agreement(list(c), verdict) for name, c in zip(names, calls, strict=True)},
    }
