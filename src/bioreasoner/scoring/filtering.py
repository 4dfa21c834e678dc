"""The one pass rule (`judges.pass_rule`, [D5]): filter, eval and the judges' agreement all
call `fail_reasons`, so "passed" means the same thing in `passed.jsonl`, in eval's
`pass_rate` and in a judge-agreement table.

A response fails for every clause it breaks, and each reason is recorded:

| reason           | clause of `PassRule`                                                      |
|------------------|---------------------------------------------------------------------------|
| `missing_think`  | no `<think>` tag at all (what a forced `<think>` prefix rules out)         |
| `unclosed_think` | `<think>` opened but never closed: no separate answer                      |
| `short_think`    | think block (stripped) shorter than `min_think_chars` characters           |
| `low_score`      | the judge's (logic + novelty) / 2, on its 1-5 scale, below `min_score`     |
| `judge_error`    | the judge gave no verdict: it cannot pass a score threshold                |
| `hallucinated`   | with `reject_hallucinated`: cites a PMID that is not among the task's sources |

So a response passes when it has a closed think block of at least `min_think_chars`
characters, the judge's mean score is at least `min_score`, and (with
`reject_hallucinated`) every PMID it cites, think block included, is one of the task's
sources. `unclosed_think` and `short_think` are checked only when a block exists, so a
response without one fails once, as `missing_think`. The mean is compared unrounded:
(2.5 + 2.5) / 2 = 2.5 passes `min_score: 2.5`; 2.49 does not.

The verdict decides the score clauses: filter and eval use the primary judge's, and each
other judge's own pass/fail (for agreement) is the same rule with that judge's verdict.
"""

from __future__ import annotations

from collections.abc import Sequence

from bioreasoner.core.config import PassRule
from bioreasoner.core.parsing import Parsed
from bioreasoner.scoring.judge import Verdict

REASONS = ("missing_think", "unclosed_think", "short_think", "low_score", "judge_error", "hallucinated")

__all__ = ["REASONS", "PassRule", "fail_reasons", "pass_calls"]


def fail_reasons(parsed: Parsed, sources: Sequence[str], verdict: Verdict, rule: PassRule) -> list[str]:
    """Every clause of `rule` the parsed response breaks, in `REASONS` order; [] means it passes."""
    reasons = []
    if not parsed.has_think:
        reasons.append("missing_think")
    else:
        if not parsed.think_closed:
            reasons.append("unclosed_think")
        if len(parsed.think.strip()) < rule.min_think_chars:
            reasons.append("short_think")
    mean = verdict.mean
    if mean is None:
        reasons.append("judge_error")
    elif mean < rule.min_score:
        reasons.append("low_score")
    if rule.reject_hallucinated:
        allowed = set(sources)
        if any(c not in allowed for c in parsed.citations):
            reasons.append("hallucinated")
    return reasons


def pass_calls(
    parsed: Sequence[Parsed], sources: Sequence[Sequence[str]], verdicts: Sequence[Verdict], rule: PassRule
) -> list[bool]:
    """One judge's pass/fail per item under `rule` (its verdicts, the same responses)."""
    if not len(parsed) == len(sources) == len(verdicts):
        raise ValueError(f"pass_calls needs aligned items, got {len(parsed)}, {len(sources)} and {len(verdicts)}")
    return [not fail_reasons(p, s, v, rule) for p, s, v in zip(parsed, sources, verdicts, strict=True)]
