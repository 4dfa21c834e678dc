"""Stage `build_pairs@R`: DPO preference pairs from round R's scored candidates.

    dvc repro build_pairs@v2_1
    python stages/build_pairs.py --round v2_1 --candidates-dir data/rounds/v2_1 \
        --out data/rounds/v2_1/pairs.jsonl --metrics metrics/rounds/v2_1/pairs.json

`rounds.R.mode`: `distill` pairs the task's reference (chosen, scored by the primary judge of
`judges.panel` like the candidates) with a student sample (rejected); the references are the
teacher stage's (`--references`), and a task the teacher dropped (`teacher.on_reject: drop`)
makes no distillation pair (counted as `prompts_without_reference`); `best_of_n` pairs the
best passed candidate with the worst (see `bioreasoner.training.pairs`). When there are fewer
pairs than `dpo.min_pairs` (with round R's `dpo:` overrides) the stage still runs, warns loudly
and records `underpowered: true` (the notebook's v2.2: 35 pairs, margin 0.027, worse than
v2.1); no pairs at all is an empty `pairs.jsonl`, not an error.

No scored candidates (passed.jsonl and rejected.jsonl both empty), an empty tasks file, a
repeated task id or (task_id, sample), or a candidate of an unknown task is one error line and
exit 1; so is a judge that fails on too many of the first references.
"""

from __future__ import annotations

import argparse
import logging
from collections import defaultdict
from pathlib import Path

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
from bioreasoner.core.records import Candidate, Pair, Task
from bioreasoner.scoring.judge import build_judges, score_all
from bioreasoner.training.pairs import best_of_n_pairs, distill_pair, pair_metrics

log = logging.getLogger("build_pairs")

SECTIONS = ("judges", "dpo", "rounds")  # dvc.yaml's `params:` for build_pairs@R


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--round", required=True)
    ap.add_argument("--candidates-dir", required=True, help="folder with passed.jsonl and rejected.jsonl")
    ap.add_argument("--tasks", default="data/tasks/train.jsonl", help="the tasks the candidates answer")
    ap.add_argument("--references", default="data/teacher/train.jsonl", help="the teacher stage's tasks (distill)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--metrics", required=True)
    args = ap.parse_args()

    # -- params
    p = config.load(args.params, sections=SECTIONS)
    if args.round not in p.rounds:
        raise BadInputError(args.params, "rounds", f"no round {args.round!r} (have {sorted(p.rounds)})")
    rnd = p.rounds[args.round]
    min_pairs = p.round_dpo(args.round).min_pairs

    # -- data: scored candidates grouped by prompt, in task-file order
    folder = Path(args.candidates_dir)
    candidates: list[Candidate] = []
    seen: dict[tuple[str, int], str] = {}
    for name in ("passed.jsonl", "rejected.jsonl"):
        rows = read_jsonl(folder / name, Candidate)
        for key in unique_ids(folder / name, rows, lambda c: (c.task_id, c.sample), "(task_id, sample)"):
            if key in seen:
                raise BadInputError(folder / name, None, f"(task_id, sample) {key!r} is in {seen[key]} too")
            seen[key] = name
        candidates += rows
    if not candidates:
        raise BadInputError(folder, None, "no scored candidates: passed.jsonl and rejected.jsonl are both empty")
    all_tasks = require_nonempty(args.tasks, read_jsonl(args.tasks, Task), "tasks")
    by_id = unique_ids(args.tasks, all_tasks, lambda t: t.id)
    by_task: dict[str, list[Candidate]] = defaultdict(list)
    for c in sorted(candidates, key=lambda c: (c.task_id, c.sample)):
        if c.task_id not in by_id:
            raise BadInputError(folder, None, f"candidate task_id {c.task_id!r} is not in {args.tasks}")
        by_task[c.task_id].append(c)
    tasks = [t for t in all_tasks if t.id in by_task]

    # -- pairs
    pairs: list[Pair] = []
    dropped = 0
    if rnd.mode == "distill":
        taught = unique_ids(args.references, read_jsonl(args.references, Task), lambda t: t.id)
        dropped = sum(t.id not in taught for t in tasks)
        tasks = [taught[t.id] for t in tasks if t.id in taught]
        # the reference is scored like the candidates: by the primary judge
        [verdicts] = score_all(
            build_judges(p.judges.panel[:1], retry_budget=p.judges.retry_budget),
            tasks,
            [t.reference for t in tasks],
            fail_fast_after=p.judges.fail_fast_after,
            max_error_rate=p.judges.max_error_rate,
        )
        for t, v in zip(tasks, verdicts, strict=True):
            pair = distill_pair(t, by_task[t.id], None if v.mean is None else v.logic + v.novelty)
            pairs += [pair] if pair else []
    else:
        for t in tasks:
            pairs += best_of_n_pairs(t, by_task[t.id], rnd.pairs.min_delta, rnd.pairs.pairs_per_prompt)

    # -- write pairs and metrics
    write_jsonl(args.out, pairs)
    metrics = pair_metrics(pairs, prompts=len(tasks), min_pairs=min_pairs)
    if dropped:
        metrics["prompts_without_reference"] = dropped
    write_json(args.metrics, metrics)
    if metrics["underpowered"]:
        log.warning(
            "UNDERPOWERED: %s has %d DPO pairs, fewer than dpo.min_pairs = %d. DPO on so few pairs is "
            "noise-dominated (notebook v2.2: 35 pairs, margin 0.027, worse than v2.1). Add prompts or "
            "samples, or lower pairs.min_delta.",
            args.round,
            len(pairs),
            min_pairs,
        )
    log.info("%s: %d pairs from %d prompts (mean delta %s)", args.round, len(pairs), len(tasks), metrics["mean_delta"])


if __name__ == "__main__":
    run_stage(main)
