"""Stage `grpo`: GRPO with grounded-citation rewards, a new LoRA adapter over the merged policy.

    dvc repro grpo
    python stages/grpo.py --policy models/merged/v2_1 --tasks data/tasks/train.jsonl \
        --out models/adapters/grpo --prompts-out data/grpo/prompts.jsonl \
        --metrics metrics/grpo.json --live-dir dvclive/grpo

TRL `GRPOTrainer` ([D1], reward [D6]) over v3.0's parent (`merge.versions.v3_0.parent`, the
default `--policy`): `grpo.prompts` train tasks (a seeded draw from `grpo.task_types`, by type
and gold decision with `stratify: gold`), `num_generations` completions per prompt, rewards
from `bioreasoner.scoring.rewards` named in `grpo.rewards` with their weights (grounding,
format, quality, correctness). The drawn prompts are an out (`data/grpo/prompts.jsonl`, task
ids): cls_sleep replays exactly these instead of redrawing.
DVCLive logs the total and per-term reward, KL, completion length and the clipped share;
`metrics/grpo.json` has each term's mean over the first and the last five logged steps, so a
reader sees which term moved. Resumable like sft (`checkpoints/grpo`).

Sampling: transformers by default; `grpo.use_vllm: true` uses TRL's vLLM, in this process
(`vllm_mode: colocate`) or on a `trl vllm-serve --model <policy>` server (`vllm_mode: server`,
`vllm_server_host` / `vllm_server_port` or `vllm_server_base_url`: TRL's own field names). Both
need vllm and CUDA here (TRL syncs weights to the server), checked before any model loads.
"""

from __future__ import annotations

import argparse
import logging
from collections import Counter
from typing import Any

from datasets import Dataset
from trl import GRPOConfig, GRPOTrainer

from bioreasoner.core import config
from bioreasoner.core.config import StageParams
from bioreasoner.core.io import BadInputError, run_stage
from bioreasoner.core.records import Task
from bioreasoner.modeling.generation import check_trl_vllm
from bioreasoner.modeling.models import load_for_training, load_tokenizer
from bioreasoner.scoring.rewards import build_rewards, to_grpo_row
from bioreasoner.training.data import read_tasks, write_task_ids
from bioreasoner.training.lifecycle import TrainingRun, final_log, first_last, lora_config
from bioreasoner.training.rounds import select_prompts, stratum

log = logging.getLogger("grpo")

SECTIONS = ("seed", "model", "grpo", "merge")  # = this stage's `params:` in dvc.yaml

CURVES = ("reward", "kl", "completions/mean_length", "completions/clipped_ratio", "clip_ratio/region_mean")


def prompts_per_step(p: StageParams) -> int:
    """Distinct prompts one generation batch samples: TRL drops a batch it cannot fill, so
    fewer prompts than this would train nothing (and exit 0)."""
    cfg = p.grpo
    return cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps // cfg.num_generations


def build_trainer(p: StageParams, tasks: list[Task], policy: str, run: TrainingRun) -> GRPOTrainer:
    cfg = p.grpo
    if cfg.use_vllm:  # TRL's GRPOConfig fields: use_vllm, vllm_mode, vllm_server_host / _port / _base_url
        check_trl_vllm(cfg.vllm_mode)
    tokenizer = load_tokenizer(policy, trust_remote_code=p.model.trust_remote_code)
    model = load_for_training(policy, p.model, gradient_checkpointing=cfg.gradient_checkpointing)
    funcs, weights = build_rewards(cfg.rewards)
    args = GRPOConfig(**run.trainer_args(cfg, seed=p.seed, model=p.model), reward_weights=weights)
    return GRPOTrainer(
        model=model,
        reward_funcs=funcs,
        args=args,
        train_dataset=Dataset.from_list([to_grpo_row(t) for t in tasks]),
        processing_class=tokenizer,
        peft_config=lora_config(cfg.lora),
    )


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--policy", default=None, help="default: merge.versions.v3_0.parent")
    ap.add_argument("--tasks", default="data/tasks/train.jsonl")
    ap.add_argument("--out", default="models/adapters/grpo")
    ap.add_argument("--prompts-out", default="data/grpo/prompts.jsonl", help="task ids of the prompts trained on")
    ap.add_argument("--metrics", default="metrics/grpo.json")
    ap.add_argument("--live-dir", default="dvclive/grpo")
    ap.add_argument("--checkpoints", default="checkpoints/grpo")
    return ap.parse_args()


def main() -> None:
    args = parse_args()

    # -- 1. params: validated before any model or data is touched
    p = config.load(args.params, sections=SECTIONS)
    policy = args.policy or p.grpo_policy

    # -- 2. data: the seeded draw of prompts (of `task_types`), enough to fill one generation batch
    pool = [t for t in read_tasks(args.tasks) if p.grpo.task_types is None or t.type in p.grpo.task_types]
    tasks = select_prompts(pool, p.grpo.prompts, p.seed, "grpo", p.grpo.stratify)
    if len(tasks) < prompts_per_step(p):
        raise BadInputError(
            args.tasks,
            None,
            f"{len(tasks)} prompt(s) (grpo.task_types: {p.grpo.task_types}), but one GRPO step samples "
            f"{prompts_per_step(p)} distinct prompts (per_device_train_batch_size x gradient_accumulation_steps "
            "/ num_generations)",
        )
    strata = Counter(f"{type_}:{label}" if label else type_ for type_, label in map(stratum, tasks))
    log.info("%d GRPO prompts x %d generations (%s)", len(tasks), p.grpo.num_generations, dict(sorted(strata.items())))

    # -- 3. model and trainer, over this run's checkpoint folder (resumed when one exists)
    run = TrainingRun(
        "grpo",
        p.used(),
        [args.tasks, policy],
        out=args.out,
        metrics=args.metrics,
        live_dir=args.live_dir,
        checkpoints=args.checkpoints,
    )
    trainer = build_trainer(p, tasks, policy, run)

    # -- 4. train
    history = run.train(trainer)

    # -- 5. save the adapter and the prompts trained on, then metrics and cleanup
    run.save(trainer.model, trainer.processing_class)
    run.on_main(write_task_ids, args.prompts_out, tasks)  # rank 0 only, like every out
    metrics: dict[str, Any] = {k.replace("/", "_"): final_log(history, k) for k in CURVES}
    metrics["reward_terms"] = {name: first_last(history, f"rewards/{name}/mean") for name in trainer.reward_func_names}
    metrics["prompts"] = len(tasks)
    metrics["prompt_strata"] = dict(sorted(strata.items()))  # qa by gold decision (qa:yes), other tasks by type
    run.finish(metrics)
    log.info("grpo: reward terms %s", metrics["reward_terms"])


if __name__ == "__main__":
    run_stage(main)
