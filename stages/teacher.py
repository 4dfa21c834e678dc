"""Stage `teacher`: the reference responses that SFT and DPO's distillation pairs learn from.

    dvc repro teacher
    python stages/teacher.py --tasks data/tasks/train.jsonl --out data/teacher/train.jsonl \
        --metrics metrics/teacher.json

`teacher.kind: extractive` (the embedded default) passes build_triplets' train tasks through
unchanged: their deterministic, grounded-by-construction references. `teacher.kind: openai`
asks an OpenAI-compatible chat endpoint (a local `vllm serve`, a hosted API) for each task's
reference and keeps a response only when it passes the filter's rules (one closed think block
of at least `min_think_chars`, only the task's own PMIDs cited, a parseable answer, for qa the
gold decision); a task without an accepted response after `max_attempts` keeps its extractive
reference (`on_reject: fallback`) or is dropped (`drop`). See `bioreasoner.tasks.llm_teacher`.

It is its own stage so that changing the teacher re-runs only the references and what learns
from them (sft, build_pairs, cls_sleep's replay, and what follows), never harvest, grouping
(build_triplets) or the tiny base. Replies are cached by content hash under `teacher.cache_dir`
as they arrive: a second run, or a run resumed after kill -9, asks only for what is missing.
Metrics: requests, cache hits, tokens, accepted / rejected by reason / fallback / dropped, and
an estimated cost when prices are set.

An endpoint that fails on more than `max_reject_rate` of the first `fail_fast_after` tasks, a
spent `retry_budget` or `budget_s`, an empty or repeated-id tasks file: one error line, exit 1,
and no out written. The API key is read from the variable named by `api_key_env` only.
"""

from __future__ import annotations

import argparse
import logging
import time

from bioreasoner.core import config
from bioreasoner.core.config import OpenAITeacherCfg
from bioreasoner.core.io import read_jsonl, require_nonempty, run_stage, unique_ids, write_json, write_jsonl
from bioreasoner.core.records import Task
from bioreasoner.tasks.llm_teacher import OpenAITeacher, teach_all, teacher_metrics

log = logging.getLogger("teacher")

SECTIONS = ("seed", "teacher")  # dvc.yaml's `params:` for teacher


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--tasks", default="data/tasks/train.jsonl")
    ap.add_argument("--out", default="data/teacher/train.jsonl")
    ap.add_argument("--metrics", default="metrics/teacher.json")
    args = ap.parse_args()

    # -- 1. params: validated before any data is read or request sent
    p = config.load(args.params, sections=SECTIONS)
    cfg = p.teacher

    # -- 2. data: the train tasks with their extractive references
    tasks = require_nonempty(args.tasks, read_jsonl(args.tasks, Task), "train tasks")
    unique_ids(args.tasks, tasks, lambda t: t.id)

    # -- 3. extractive: the tasks as they are (the committed pipeline's SFT data, byte for byte)
    if not isinstance(cfg, OpenAITeacherCfg):
        write_jsonl(args.out, tasks)
        write_json(args.metrics, {"kind": "extractive", "tasks": len(tasks), "written": len(tasks)})
        log.info("extractive teacher: %d tasks passed through", len(tasks))
        return

    # -- 4. openai: ask, check, retry; every reply is cached as it arrives
    teacher = OpenAITeacher(cfg, p.seed)
    log.info(
        "teacher %s at %s: %d tasks, %d in flight, up to %d attempts each",
        cfg.model,
        teacher.http.base_url,
        len(tasks),
        cfg.max_concurrency,
        cfg.max_attempts,
    )
    started = time.monotonic()
    outcomes = teach_all(teacher, tasks)  # TeacherFailure (one line, exit 1) before anything is written

    # -- 5. references: accepted, else the extractive one (fallback) or none (drop)
    out: list[Task] = []
    for task, o in zip(tasks, outcomes, strict=True):
        if o.reference is not None:
            out.append(task.model_copy(update={"reference": o.reference}))
        elif cfg.on_reject == "fallback":
            out.append(task)

    # -- 6. write the tasks and the metrics
    metrics = teacher_metrics(cfg, outcomes, len(out), teacher.http.network_requests)
    metrics["seconds"] = round(time.monotonic() - started, 1)
    write_jsonl(args.out, out)
    write_json(args.metrics, metrics)
    log.info(
        "teacher: %d accepted, %d fallback, %d dropped of %d; %d requests, %d cache hits; rejected %s",
        metrics["accepted"],
        metrics["fallback"],
        metrics["dropped"],
        metrics["tasks"],
        metrics["requests"],
        metrics["cache_hits"],
        {k: v for k, v in metrics["rejected"].items() if v},
    )


if __name__ == "__main__":
    run_stage(main)
