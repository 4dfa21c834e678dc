"""Stage `build_pairs@R`: DPO preference pairs from round R's scored candidates.

    dvc repro build_pairs@v2_1
    python stages/build_pairs.py --round v2_1 --candidates-dir data/rounds/v2_1 \
        --out data/rounds/v2_1/pairs.jsonl --metrics metrics/rounds/v2_1/pairs.json

`rounds.R.mode`: `distill` pairs the task's reference (chosen) with a student sample
(rejected); `best_of_n` pairs the best passed candidate with the worst (see
`bioreasoner.training.pairs`). When there are fewer pairs than `dpo.min_pairs` the stage still runs,
warns loudly and records `underpowered: true` (the notebook's v2.2: 35 pairs, margin 0.027,
worse than v2.1).
"""

from __future__ import annotations

import argparse
import logging
from collections import defaultdict
from pathlib import Path

from bioreasoner.core.io import load_params, read_jsonl, run_stage, write_json, write_jsonl
from bioreasoner.core.records import Candidate, Pair, Task
from bioreasoner.scoring.judge import build_judges
from bioreasoner.training.pairs import best_of_n_pairs, distill_pair, pair_metrics
from bioreasoner.training.rounds import dpo_config, round_config

log = logging.getLogger("build_pairs")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--round", required=True)
    ap.add_argument("--candidates-dir", required=True, help="folder with passed.jsonl and rejected.jsonl")
    ap.add_argument("--tasks", default="data/tasks/train.jsonl")
    ap.add_argument("--out", required=True)
    ap.add_argument("--metrics", required=True)
    args = ap.parse_args()

    # -- params
    params = load_params(args.params)
    cfg = round_config(params, args.round)
    min_pairs = dpo_config(params, args.round)["min_pairs"]

    # -- data: scored candidates grouped by prompt, in task-file order
    folder = Path(args.candidates_dir)
    candidates = read_jsonl(folder / "passed.jsonl", Candidate) + read_jsonl(folder / "rejected.jsonl", Candidate)
    by_task: dict[str, list[Candidate]] = defaultdict(list)
    for c in sorted(candidates, key=lambda c: (c.task_id, c.sample)):
        by_task[c.task_id].append(c)
    tasks = [t for t in read_jsonl(args.tasks, Task) if t.id in by_task]

    # -- pairs
    pairs: list[Pair] = []
    if cfg["mode"] == "distill":
        judge = build_judges(params["judges"])[0]  # the reference is scored like the candidates
        for t in tasks:
            v = judge.score(t, t.reference)
            pair = distill_pair(t, by_task[t.id], None if v.mean is None else v.logic + v.novelty)
            pairs += [pair] if pair else []
    else:
        for t in tasks:
            pairs += best_of_n_pairs(t, by_task[t.id], cfg["pairs"]["min_delta"], cfg["pairs"]["pairs_per_prompt"])

    # -- write pairs and metrics
    write_jsonl(args.out, pairs)
    metrics = pair_metrics(pairs, prompts=len(tasks), min_pairs=min_pairs)
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
