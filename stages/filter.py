"""Stage `filter@R`: score round R's candidates and apply the notebook's rules.

    dvc repro filter@v2_1
    python stages/filter.py --round v2_1 --candidates data/rounds/v2_1/candidates.jsonl \
        --out-dir data/rounds/v2_1 --metrics metrics/rounds/v2_1/filter.json

Every judge in `judges` scores every candidate (the first is primary: its logic + novelty is
the candidate's `score`); the rules in `bioreasoner.scoring.filtering` (thresholds in
`rounds.R.filter`) give each rejected row its reasons. Metrics count passes and each reason,
the share of candidates without a think block, and with several judges their pass/fail
agreement and Cohen's kappa (the notebook's dual-judge table).
"""

from __future__ import annotations

import argparse
import logging
from collections import Counter
from pathlib import Path
from typing import Any

from bioreasoner.core.io import BadInputError, load_params, read_jsonl, run_stage, write_json, write_jsonl
from bioreasoner.core.records import Candidate, Task
from bioreasoner.scoring.filtering import REASONS, FilterRules, reject_reasons
from bioreasoner.scoring.judge import agreement, build_judges, score_all
from bioreasoner.scoring.parsing import parse_response
from bioreasoner.training.rounds import round_config

log = logging.getLogger("filter")


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
    params = load_params(args.params)
    rules = FilterRules.from_params(round_config(params, args.round)["filter"])
    judges = build_judges(params["judges"])

    # -- data
    by_id = {t.id: t for t in read_jsonl(args.tasks, Task)}
    candidates = read_jsonl(args.candidates, Candidate)
    for n, c in enumerate(candidates, 1):
        if c.task_id not in by_id:
            raise BadInputError(args.candidates, f"line {n}", f"task_id {c.task_id!r} is not in {args.tasks}")
    tasks = [by_id[c.task_id] for c in candidates]
    items = list(zip(candidates, tasks, strict=True))

    # -- score and filter
    verdicts = score_all(judges, tasks, [c.text for c in candidates])
    scored: list[Candidate] = []
    for i, (c, t) in enumerate(items):
        v = verdicts[0][i]
        scored.append(
            c.model_copy(
                update={
                    "logic": v.logic,
                    "novelty": v.novelty,
                    "score": None if v.mean is None else round(v.logic + v.novelty, 4),
                    "reasons": reject_reasons(c.text, t.source_pmids, v, rules),
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
    write_jsonl(out / "passed.jsonl", passed)
    write_jsonl(out / "rejected.jsonl", rejected)
    reasons = Counter(r for c in rejected for r in c.reasons)
    parsed = [parse_response(c.text) for c in candidates]
    n = len(candidates)
    scores = [c.score for c in scored if c.score is not None]
    metrics: dict[str, Any] = {
        "candidates": n,
        "passed": len(passed),
        "rejected": len(rejected),
        "pass_rate": round(len(passed) / n, 4) if n else None,
        "reasons": {r: reasons[r] for r in REASONS},
        "missing_think_rate": round(sum(not p.has_think for p in parsed) / n, 4) if n else None,
        "unclosed_think_rate": round(sum(p.has_think and not p.think_closed for p in parsed) / n, 4) if n else None,
        "mean_score": round(sum(scores) / len(scores), 4) if scores else None,
    }
    # each judge's own pass/fail (the same rules, that judge's scores) against the primary's
    calls = [
        [not reject_reasons(c.text, t.source_pmids, vs[i], rules) for i, (c, t) in enumerate(items)] for vs in verdicts
    ]
    for j, other in zip(judges[1:], calls[1:], strict=True):
        metrics.setdefault("judge_agreement", {})[j.name] = agreement(calls[0], other)
    write_json(args.metrics, metrics)
    log.info("%s: %d of %d candidates passed; reasons %s", args.round, len(passed), n, dict(reasons))


if __name__ == "__main__":
    run_stage(main)
