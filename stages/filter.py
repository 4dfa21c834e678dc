"""Stage `filter@R`: score round R's candidates and apply the pass rule.

    dvc repro filter@v2_1
    python stages/filter.py --round v2_1 --candidates data/rounds/v2_1/candidates.jsonl \
        --out-dir data/rounds/v2_1 --metrics metrics/rounds/v2_1/filter.json

Every judge in `judges.panel` scores every candidate, `judges.max_concurrency` requests at a
time (the first is primary: its logic + novelty is the candidate's `score`); the one pass rule,
`judges.pass_rule` (`bioreasoner.scoring.filtering`, the rule eval applies too), gives each
judge's call and `judges.verdict` (`bioreasoner.scoring.tribunal`: primary, unanimous,
majority) combines them, with each rejected row's reasons. Metrics count passes and each
reason, the share of candidates without a think block, and with several judges their pass/fail
agreement and Cohen's kappa (each against the primary, every pair, each against the verdict).

An empty candidates or tasks file, a repeated task id, a repeated (task_id, sample) or a
candidate of an unknown task is one error line and exit 1, as is a judge that fails on too many
of the first items (`judges.fail_fast_after`, `judges.max_error_rate`); nothing is written then.
"""

from __future__ import annotations

import argparse
import logging
from collections import Counter
from pathlib import Path
from typing import Any

from bioreasoner.core import config
from bioreasoner.core.io import (
    BadInputError,
    read_jsonl,
    require_nonempty,
    run_stage,
    unique_ids,
    write_json,
    write_jsonl,
)
from bioreasoner.core.parsing import parse_response
from bioreasoner.core.records import Candidate, Task
from bioreasoner.scoring.filtering import REASONS, pass_calls
from bioreasoner.scoring.judge import agreement, build_judges, score_all
from bioreasoner.scoring.tribunal import agreement_report, tribunal_reasons

log = logging.getLogger("filter")

SECTIONS = ("judges",)  # dvc.yaml's `params:` for filter@R


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--round", required=True)
    ap.add_argument("--candidates", required=True)
    ap.add_argument("--tasks", default="data/tasks/train.jsonl")
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--metrics", required=True)
    args = ap.parse_args()

    # -- params
    p = config.load(args.params, sections=SECTIONS)
    rule = p.judges.pass_rule
    judges = build_judges(p.judges.panel, retry_budget=p.judges.retry_budget)

    # -- data
    by_id = unique_ids(args.tasks, require_nonempty(args.tasks, read_jsonl(args.tasks, Task), "tasks"), lambda t: t.id)
    candidates = require_nonempty(args.candidates, read_jsonl(args.candidates, Candidate), "candidates")
    unique_ids(args.candidates, candidates, lambda c: (c.task_id, c.sample), "(task_id, sample)")
    for n, c in enumerate(candidates, 1):
        if c.task_id not in by_id:
            raise BadInputError(args.candidates, f"record {n}", f"task_id {c.task_id!r} is not in {args.tasks}")
    tasks = [by_id[c.task_id] for c in candidates]
    parsed = [parse_response(c.text) for c in candidates]
    sources = [t.source_pmids for t in tasks]

    # -- score and filter (a failing judge stops here, before anything is written)
    verdicts = score_all(
        judges,
        tasks,
        [c.text for c in candidates],
        fail_fast_after=p.judges.fail_fast_after,
        max_error_rate=p.judges.max_error_rate,
        max_concurrency=p.judges.max_concurrency,
    )
    scored: list[Candidate] = []
    for i, c in enumerate(candidates):
        v = verdicts[0][i]
        scored.append(
            c.model_copy(
                update={
                    "logic": v.logic,
                    "novelty": v.novelty,
                    "score": None if v.mean is None else round(v.logic + v.novelty, 4),
                    "reasons": tribunal_reasons(
                        parsed[i], sources[i], [vs[i] for vs in verdicts], rule, p.judges.verdict
                    ),
                    "judges": {
                        j.name: {"logic": vs[i].logic, "novelty": vs[i].novelty, "error": vs[i].error}
                        for j, vs in zip(judges, verdicts, strict=True)
                    },
                }
            )
        )

    # -- write passed / rejected rows and metrics
    out = Path(args.out_dir)
    passed = [c for c in scored if not c.reasons]
    rejected = [c for c in scored if c.reasons]
    reasons = Counter(r for c in rejected for r in c.reasons)
    n = len(candidates)
    scores = [c.score for c in scored if c.score is not None]
    metrics: dict[str, Any] = {
        "candidates": n,
        "passed": len(passed),
        "rejected": len(rejected),
        "pass_rate": round(len(passed) / n, 4),
        "reasons": {r: reasons[r] for r in REASONS},
        "missing_think_rate": round(sum(not q.has_think for q in parsed) / n, 4),
        "unclosed_think_rate": round(sum(q.has_think and not q.think_closed for q in parsed) / n, 4),
        "mean_score": round(sum(scores) / len(scores), 4) if scores else None,
        "judge_error_rate": round(sum(not v.ok for v in verdicts[0]) / n, 4),
    }
    # each judge's own pass/fail (the same rule, that judge's verdicts) against the primary's
    calls = [pass_calls(parsed, sources, vs, rule) for vs in verdicts]
    for j, other in zip(judges[1:], calls[1:], strict=True):
        metrics.setdefault("judge_agreement", {})[j.name] = agreement(calls[0], other)
    if len(judges) > 1:
        metrics["tribunal"] = agreement_report([j.name for j in judges], calls, p.judges.verdict)
    write_jsonl(out / "passed.jsonl", passed)
    write_jsonl(out / "rejected.jsonl", rejected)
    write_json(args.metrics, metrics)
    log.info("%s: %d of %d candidates passed; reasons %s", args.round, len(passed), n, dict(reasons))


if __name__ == "__main__":
    run_stage(main)
