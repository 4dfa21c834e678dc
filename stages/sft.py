"""Stage `sft`: LoRA supervised fine-tuning on the train tasks' reference responses.

    dvc repro sft
    python stages/sft.py --tasks data/tasks/train.jsonl --model models/base --out models/adapters/sft

TRL `SFTTrainer` on conversational prompt-completion rows (`messages` -> `reference`), so the
loss covers the response only: every prompt token's label is -100 (seeds/002: a model trained
on its prompts learns to copy them). Checkpoints go to `checkpoints/sft/<fingerprint>/`,
outside the outs, so a re-run after a crash resumes from the last one.
"""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from bioreasoner.core import lineage
from bioreasoner.core.io import atomic_path, load_params, read_jsonl, run_stage, write_json
from bioreasoner.core.records import Task
from bioreasoner.modeling.models import load_model, load_tokenizer
from bioreasoner.training.common import (
    LogSupervisedFraction,
    SupervisedFraction,
    check_quantization,
    checkpoint_dir,
    dvclive_callback,
    final_log,
    fingerprint,
    lora_config,
)
from bioreasoner.training.data import to_sft_row

log = logging.getLogger("sft")


def build_trainer(params: dict[str, Any], tasks: list[Task], model_dir: str, ckpt_dir: str) -> SFTTrainer:
    """The trainer exactly as the stage runs it (tests build batches from this too)."""
    cfg, mcfg = params["sft"], params["model"]
    check_quantization(mcfg.get("quantization", "none"))
    trust = bool(mcfg.get("trust_remote_code", False))
    tokenizer = load_tokenizer(model_dir, trust_remote_code=trust)
    model = load_model(model_dir, trust_remote_code=trust, dtype=mcfg["dtype"])
    args = SFTConfig(
        output_dir=ckpt_dir,
        seed=params["seed"],
        data_seed=params["seed"],
        learning_rate=cfg["learning_rate"],
        lr_scheduler_type=cfg["lr_scheduler_type"],
        warmup_steps=cfg["warmup_steps"],
        num_train_epochs=cfg["num_train_epochs"],
        max_steps=cfg["max_steps"],
        per_device_train_batch_size=cfg["batch_size"],
        train_sampling_strategy=cfg["sampling"],
        gradient_accumulation_steps=cfg["gradient_accumulation_steps"],
        max_length=cfg["max_length"],
        packing=cfg["packing"],
        padding_free=cfg["padding_free"],
        completion_only_loss=True,  # prompt labels are -100; never train on the prompt
        gradient_checkpointing=cfg["gradient_checkpointing"],
        gradient_checkpointing_kwargs={"use_reentrant": False},  # seeds/004: reentrant + LoRA loses grads
        bf16=mcfg["dtype"] == "bfloat16",
        logging_steps=cfg["logging_steps"],
        save_steps=cfg["save_steps"],
        save_total_limit=2,
        report_to="none",  # DVCLive is attached below, into this stage's own folder
        dataset_num_proc=None,
        use_cpu=not torch.cuda.is_available(),
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list([to_sft_row(t) for t in tasks]),
        processing_class=tokenizer,
        peft_config=lora_config(cfg["lora"]),
    )
    counter = SupervisedFraction(trainer.data_collator)
    trainer.data_collator = counter
    trainer.add_callback(LogSupervisedFraction(counter))
    return trainer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--tasks", default="data/tasks/train.jsonl")
    ap.add_argument("--model", default="models/base")
    ap.add_argument("--out", default="models/adapters/sft")
    ap.add_argument("--metrics", default="metrics/sft.json")
    ap.add_argument("--live-dir", default="dvclive/sft")
    ap.add_argument("--checkpoints", default="checkpoints/sft")
    args = ap.parse_args()

    # -- params
    params = load_params(args.params)
    used = {k: params[k] for k in ("seed", "model", "sft")}

    # -- data
    tasks = read_jsonl(args.tasks, Task)
    log.info("%d train tasks", len(tasks))

    # -- model and trainer (resuming when a checkpoint of this exact run exists)
    ckpt, last = checkpoint_dir(args.checkpoints, fingerprint(used, [args.tasks, args.model]))
    trainer = build_trainer(params, tasks, args.model, str(ckpt))
    trainer.add_callback(dvclive_callback(args.live_dir, resume=last is not None))

    # -- train
    result = trainer.train(resume_from_checkpoint=last)

    # -- save the adapter (safetensors) and tokenizer
    with atomic_path(args.out, directory=True) as tmp:
        trainer.model.save_pretrained(str(tmp), safe_serialization=True)
        trainer.processing_class.save_pretrained(str(tmp))
        lineage.write(tmp, lineage.record("sft", used, [args.tasks, args.model]))

    # -- metrics
    history = trainer.state.log_history
    write_json(
        args.metrics,
        {
            "train_loss": round(result.training_loss, 4),
            "final_loss": final_log(history, "loss"),
            "final_mean_token_accuracy": final_log(history, "mean_token_accuracy"),
            "supervised_token_fraction": final_log(history, "supervised_token_fraction"),
            "global_step": trainer.state.global_step,
            "train_tasks": len(tasks),
        },
    )
    shutil.rmtree(ckpt, ignore_errors=True)  # the run finished: its checkpoints are no longer needed
    log.info("adapter saved to %s", Path(args.out))


if __name__ == "__main__":
    run_stage(main)
