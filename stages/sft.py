"""Stage `sft`: LoRA supervised fine-tuning on the train tasks' reference responses.

    dvc repro sft
    python stages/sft.py --tasks data/tasks/train.jsonl --model models/base \
        --out models/adapters/sft --metrics metrics/sft.json --live-dir dvclive/sft

TRL `SFTTrainer` on conversational prompt-completion rows (`messages` -> `reference`), so the
loss covers the response only: every prompt token's label is -100 ([D4]: a model trained on
its prompts learns to copy them); the supervised share of tokens is logged every step.
Checkpoints, resume, DVCLive, saving and cleanup are `bioreasoner.training.lifecycle`'s:
a re-run after a crash resumes from `checkpoints/sft/<fingerprint>/` and reports the same
metrics and curves as a run that never stopped.
"""

from __future__ import annotations

import argparse
import logging

from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from bioreasoner.core import config
from bioreasoner.core.config import StageParams
from bioreasoner.core.io import run_stage
from bioreasoner.core.records import Task
from bioreasoner.modeling.models import load_for_training, load_tokenizer
from bioreasoner.training.data import LogSupervisedFraction, SupervisedFraction, read_tasks, to_sft_row
from bioreasoner.training.lifecycle import TrainingRun, final_log, lora_config

log = logging.getLogger("sft")

SECTIONS = ("seed", "model", "sft")  # = this stage's `params:` in dvc.yaml


def build_trainer(p: StageParams, tasks: list[Task], model_dir: str, run: TrainingRun) -> SFTTrainer:
    """The trainer exactly as the stage runs it (tests build batches from this too)."""
    cfg = p.sft
    tokenizer = load_tokenizer(model_dir, trust_remote_code=p.model.trust_remote_code)
    model = load_for_training(model_dir, p.model, gradient_checkpointing=cfg.gradient_checkpointing)
    args = SFTConfig(
        **run.trainer_args(cfg, seed=p.seed, model=p.model),
        completion_only_loss=True,  # prompt labels are -100; never train on the prompt
        dataset_num_proc=None,
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list([to_sft_row(t) for t in tasks]),
        processing_class=tokenizer,
        peft_config=lora_config(cfg.lora),
    )
    counter = SupervisedFraction(trainer.data_collator)
    trainer.data_collator = counter
    trainer.add_callback(LogSupervisedFraction(counter))
    return trainer


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--tasks", default="data/tasks/train.jsonl")
    ap.add_argument("--model", default="models/base")
    ap.add_argument("--out", default="models/adapters/sft")
    ap.add_argument("--metrics", default="metrics/sft.json")
    ap.add_argument("--live-dir", default="dvclive/sft")
    ap.add_argument("--checkpoints", default="checkpoints/sft")
    return ap.parse_args()


def main() -> None:
    args = parse_args()

    # -- 1. params: validated before any model or data is touched
    p = config.load(args.params, sections=SECTIONS)

    # -- 2. data: at least one task, ids unique
    tasks = read_tasks(args.tasks)
    log.info("%d train tasks", len(tasks))

    # -- 3. model and trainer, over this run's checkpoint folder (resumed when one exists)
    run = TrainingRun(
        "sft",
        p.used(),
        [args.tasks, args.model],
        out=args.out,
        metrics=args.metrics,
        live_dir=args.live_dir,
        checkpoints=args.checkpoints,
    )
    trainer = build_trainer(p, tasks, args.model, run)

    # -- 4. train
    history = run.train(trainer)

    # -- 5. save the adapter, then metrics and cleanup
    run.save(trainer.model, trainer.processing_class)
    run.finish(
        {
            "final_loss": final_log(history, "loss"),
            "final_mean_token_accuracy": final_log(history, "mean_token_accuracy"),
            "supervised_token_fraction": final_log(history, "supervised_token_fraction"),
            "train_tasks": len(tasks),
        }
    )


if __name__ == "__main__":
    run_stage(main)
