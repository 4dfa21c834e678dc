"""Stage `grpo`: GRPO with grounded-citation rewards, a new LoRA adapter over the merged policy.

    dvc repro grpo
    python stages/grpo.py --policy models/merged/v2_1 --tasks data/tasks/train.jsonl \
        --out models/adapters/grpo --metrics metrics/grpo.json --live-dir dvclive/grpo

TRL `GRPOTrainer` (notebook entry 7): `grpo.prompts` train tasks, `num_generations` completions
per prompt, rewards from `bioreasoner.scoring.rewards` named in `grpo.rewards` with their weights
(grounding, format, quality, correctness). DVCLive logs the total and per-term reward, KL,
completion length and the clipped share; `metrics/grpo.json` has each term's mean over the
first and the last five logged steps, so a reader sees which term moved. Resumable like sft (`checkpoints/grpo`).
"""

from __future__ import annotations

import argparse
import logging
import shutil
from typing import Any

import torch
from datasets import Dataset
from trl import GRPOConfig, GRPOTrainer

from bioreasoner.core import lineage
from bioreasoner.core.io import atomic_path, load_params, read_jsonl, run_stage, write_json
from bioreasoner.core.records import Task
from bioreasoner.modeling.generation import check_backend
from bioreasoner.modeling.models import load_model, load_tokenizer
from bioreasoner.scoring.rewards import build_rewards, to_grpo_row
from bioreasoner.training.common import (
    check_quantization,
    checkpoint_dir,
    dvclive_callback,
    final_log,
    fingerprint,
    lora_config,
)
from bioreasoner.training.rounds import select_prompts

log = logging.getLogger("grpo")

CURVES = ("reward", "kl", "completions/mean_length", "completions/clipped_ratio", "clip_ratio/region_mean")


def build_trainer(params: dict[str, Any], tasks: list[Task], policy: str, ckpt_dir: str) -> GRPOTrainer:
    cfg, mcfg = params["grpo"], params["model"]
    check_quantization(mcfg["quantization"])
    if cfg["use_vllm"]:
        check_backend("vllm")
    trust = bool(mcfg["trust_remote_code"])
    tokenizer = load_tokenizer(policy, trust_remote_code=trust)
    model = load_model(policy, trust_remote_code=trust, dtype=mcfg["dtype"])
    funcs, weights = build_rewards(cfg["rewards"])
    args = GRPOConfig(
        output_dir=ckpt_dir,
        seed=params["seed"],
        data_seed=params["seed"],
        learning_rate=cfg["learning_rate"],
        lr_scheduler_type=cfg["lr_scheduler_type"],
        warmup_steps=cfg["warmup_steps"],
        max_steps=cfg["max_steps"],
        per_device_train_batch_size=cfg["batch_size"],
        gradient_accumulation_steps=cfg["gradient_accumulation_steps"],
        beta=cfg["beta"],
        loss_type=cfg["loss_type"],
        num_generations=cfg["num_generations"],
        max_completion_length=cfg["max_completion_length"],
        temperature=cfg["temperature"],
        top_p=cfg["top_p"],
        generation_kwargs=cfg.get("generation_kwargs") or None,
        reward_weights=weights,
        use_vllm=cfg["use_vllm"],
        gradient_checkpointing=cfg["gradient_checkpointing"],
        gradient_checkpointing_kwargs={"use_reentrant": False},  # seeds/004
        bf16=mcfg["dtype"] == "bfloat16",
        logging_steps=cfg["logging_steps"],
        save_steps=cfg["save_steps"],
        save_total_limit=2,
        report_to="none",  # DVCLive is attached by the stage, into its own folder
        use_cpu=not torch.cuda.is_available(),
    )
    return GRPOTrainer(
        model=model,
        reward_funcs=funcs,
        args=args,
        train_dataset=Dataset.from_list([to_grpo_row(t) for t in tasks]),
        processing_class=tokenizer,
        peft_config=lora_config(cfg["lora"]),
    )


def first_last(history: list[dict[str, Any]], key: str, k: int = 5) -> dict[str, float | None]:
    """Mean of the first and of the last `k` logged values (single steps are noisy)."""
    values = [h[key] for h in history if key in h]
    if not values:
        return {"first": None, "last": None}
    return {"first": round(sum(values[:k]) / len(values[:k]), 4), "last": round(sum(values[-k:]) / len(values[-k:]), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--policy", required=True)
    ap.add_argument("--tasks", default="data/tasks/train.jsonl")
    ap.add_argument("--out", default="models/adapters/grpo")
    ap.add_argument("--metrics", default="metrics/grpo.json")
    ap.add_argument("--live-dir", default="dvclive/grpo")
    ap.add_argument("--checkpoints", default="checkpoints/grpo")
    args = ap.parse_args()

    # -- params
    params = load_params(args.params)
    cfg = params["grpo"]
    used = {k: params[k] for k in ("seed", "model", "judges", "grpo")}

    # -- data
    tasks = select_prompts(read_jsonl(args.tasks, Task), cfg["prompts"], params["seed"], "grpo")
    log.info("%d GRPO prompts x %d generations", len(tasks), cfg["num_generations"])

    # -- model and trainer (resuming when a checkpoint of this exact run exists)
    ckpt, last = checkpoint_dir(args.checkpoints, fingerprint(used, [args.tasks, args.policy]))
    trainer = build_trainer(params, tasks, args.policy, str(ckpt))
    trainer.add_callback(dvclive_callback(args.live_dir, resume=last is not None))

    # -- train
    result = trainer.train(resume_from_checkpoint=last)

    # -- save the adapter, tokenizer and lineage
    with atomic_path(args.out, directory=True) as tmp:
        trainer.model.save_pretrained(str(tmp), safe_serialization=True)
        trainer.processing_class.save_pretrained(str(tmp))
        lineage.write(tmp, lineage.record("grpo", used, [args.tasks, args.policy]))

    # -- metrics: final curves, and each reward term's first and last mean
    history = trainer.state.log_history
    metrics: dict[str, Any] = {k.replace("/", "_"): final_log(history, k) for k in CURVES}
    metrics["reward_terms"] = {name: first_last(history, f"rewards/{name}/mean") for name in trainer.reward_func_names}
    metrics |= {"train_loss": round(result.training_loss, 4), "global_step": trainer.state.global_step}
    write_json(args.metrics, metrics)
    shutil.rmtree(ckpt, ignore_errors=True)
    log.info("grpo: reward terms %s", metrics["reward_terms"])


if __name__ == "__main__":
    run_stage(main)
