"""Stage `pretrain`: full-parameter causal-LM pre-training of the base on the training papers.

    dvc repro pretrain
    python stages/pretrain.py --tasks data/tasks/train.jsonl --model models/base \
        --out models/pretrained --metrics metrics/pretrain.json --live-dir dvclive/pretrain

The embedded default's base is a tiny Qwen2 with a copy circuit written in at init [D11]; this
stage teaches it the language of the papers and of the task format: TRL `SFTTrainer` on the
train tasks as whole chat texts (loss on every token), each pass with fresh random PMIDs so a
PMID can only be copied, never remembered. Every `validation_every`-th task is held out, and
`metrics/pretrain.json` reports the copy check on it before and after training (teacher-forced
PMID accuracy, response loss), which is what the settings in params.yaml were tuned on.

`models/pretrained` is committed to git (`cache: false` in dvc.yaml): a fresh clone restores it
instead of re-running this stage; `dvc repro -f pretrain` rebuilds it (README: the cost).
With a real base model set `pretrain.max_steps` small or skip it: continued pre-training of a
7B model on 720 tasks is not what it is for.
"""

from __future__ import annotations

import argparse
import logging

from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from bioreasoner.core import config
from bioreasoner.core.io import run_stage
from bioreasoner.modeling.models import load_for_training, load_tokenizer
from bioreasoner.training.data import read_tasks
from bioreasoner.training.lifecycle import TrainingRun, final_log
from bioreasoner.training.pretrain import copy_check, pretraining_rows, split_validation

log = logging.getLogger("pretrain")

SECTIONS = ("seed", "model", "pretrain")  # = this stage's `params:` in dvc.yaml


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--tasks", default="data/tasks/train.jsonl")
    ap.add_argument("--model", default="models/base")
    ap.add_argument("--out", default="models/pretrained")
    ap.add_argument("--metrics", default="metrics/pretrain.json")
    ap.add_argument("--live-dir", default="dvclive/pretrain")
    ap.add_argument("--checkpoints", default="checkpoints/pretrain")
    return ap.parse_args()


def main() -> None:
    args = parse_args()

    # -- 1. params, then data: the held-out validation tasks first
    p = config.load(args.params, sections=SECTIONS)
    cfg = p.pretrain
    train, val = split_validation(read_tasks(args.tasks), cfg.validation_every)
    val = val[: cfg.validation_max_tasks]
    steps = cfg.max_steps if cfg.max_steps > 0 else None
    per_step = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps
    n_rows = steps * per_step if steps else int(cfg.num_train_epochs * len(train))
    rows = pretraining_rows(train, n_rows, p.seed)
    log.info("%d pre-training texts from %d tasks (%d held out)", len(rows), len(train), len(val))

    # -- 2. model and trainer (full parameters: no adapter)
    run = TrainingRun(
        "pretrain",
        p.used(),
        [args.tasks, args.model],
        out=args.out,
        metrics=args.metrics,
        live_dir=args.live_dir,
        checkpoints=args.checkpoints,
    )
    tokenizer = load_tokenizer(args.model, trust_remote_code=p.model.trust_remote_code)
    model = load_for_training(args.model, p.model, gradient_checkpointing=cfg.gradient_checkpointing)
    before = copy_check(model, tokenizer, val, p.seed)
    log.info("copy check before: %s", before)
    trainer = SFTTrainer(
        model=model,
        # one pass over the rows: each already is a fresh draw, so steps = rows / batch
        args=SFTConfig(
            **{**run.trainer_args(cfg, seed=p.seed, model=p.model), "num_train_epochs": 1, "max_steps": -1},
            dataset_text_field="text",
            completion_only_loss=False,  # language modelling: every token of the paper text counts
            dataset_num_proc=None,
        ),
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
    )

    # -- 3. train
    history = run.train(trainer)

    # -- 4. the copy check after, then save and publish
    after = copy_check(trainer.model, tokenizer, val, p.seed)
    log.info("copy check after: %s", after)
    run.save(trainer.model, tokenizer)
    run.finish(
        {
            "final_loss": final_log(history, "loss"),
            "texts": len(rows),
            "validation_before": before,
            "validation": after,
        }
    )


if __name__ == "__main__":
    run_stage(main)
