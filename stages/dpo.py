"""Stage `dpo@R`: a new LoRA adapter trained with DPO on round R's pairs, over R's merged policy.

    dvc repro dpo@v2_1
    python stages/dpo.py --round v2_1 --policy models/merged/v2_0 --pairs data/rounds/v2_1/pairs.jsonl \
        --out models/adapters/v2_1 --metrics metrics/rounds/v2_1/dpo.json --live-dir dvclive/rounds/v2_1

TRL `DPOTrainer`, settings from the shared `dpo:` section with `rounds.R.dpo` overrides
(seeds/003: beta 0.1, a learning rate about 100x below SFT's, 100+ pairs). The reference model
is the policy itself with the adapter disabled (peft), not a second copy in memory. DVCLive logs
loss and rewards/{chosen,rejected,margins,accuracies} (the guide's "chosen preference");
final values go to `metrics/rounds/R/dpo.json`. Resumable like sft (`checkpoints/rounds/R/dpo`).
"""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from peft import get_peft_model
from trl import DPOConfig, DPOTrainer

from bioreasoner.core import lineage
from bioreasoner.core.io import atomic_path, load_params, read_jsonl, run_stage, write_json
from bioreasoner.core.records import Pair
from bioreasoner.modeling.models import load_model, load_tokenizer
from bioreasoner.training.common import (
    check_quantization,
    checkpoint_dir,
    dvclive_callback,
    final_log,
    fingerprint,
    lora_config,
)
from bioreasoner.training.data import to_dpo_row
from bioreasoner.training.rounds import dpo_config

log = logging.getLogger("dpo")

LOGGED = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")


def build_trainer(
    params: dict[str, Any], cfg: dict[str, Any], pairs: list[Pair], policy: str, ckpt_dir: str
) -> DPOTrainer:
    mcfg = params["model"]
    check_quantization(mcfg["quantization"])
    trust = bool(mcfg["trust_remote_code"])
    tokenizer = load_tokenizer(policy, trust_remote_code=trust)
    model = load_model(policy, trust_remote_code=trust, dtype=mcfg["dtype"])
    args = DPOConfig(
        output_dir=ckpt_dir,
        seed=params["seed"],
        data_seed=params["seed"],
        beta=cfg["beta"],
        learning_rate=cfg["learning_rate"],
        lr_scheduler_type=cfg["lr_scheduler_type"],
        warmup_steps=cfg["warmup_steps"],
        num_train_epochs=cfg["num_train_epochs"],
        max_steps=cfg["max_steps"],
        per_device_train_batch_size=cfg["batch_size"],
        gradient_accumulation_steps=cfg["gradient_accumulation_steps"],
        max_length=cfg["max_length"],
        precompute_ref_log_probs=cfg["precompute_ref_log_probs"],
        gradient_checkpointing=cfg["gradient_checkpointing"],
        gradient_checkpointing_kwargs={"use_reentrant": False},  # seeds/004
        bf16=mcfg["dtype"] == "bfloat16",
        logging_steps=cfg["logging_steps"],
        save_steps=cfg["save_steps"],
        save_total_limit=2,
        report_to="none",  # DVCLive is attached by the stage, into its own folder
        use_cpu=not torch.cuda.is_available(),
    )
    return DPOTrainer(
        model=model,
        ref_model=None,  # with a peft adapter, TRL uses the policy with the adapter disabled
        args=args,
        train_dataset=Dataset.from_list([to_dpo_row(p) for p in pairs]),
        processing_class=tokenizer,
        peft_config=lora_config(cfg["lora"]),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--round", required=True)
    ap.add_argument("--policy", required=True)
    ap.add_argument("--pairs", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--metrics", required=True)
    ap.add_argument("--live-dir", required=True)
    ap.add_argument("--checkpoints", default=None, help="default checkpoints/rounds/<round>/dpo")
    args = ap.parse_args()

    # -- params
    params = load_params(args.params)
    cfg = dpo_config(params, args.round)
    used = {"seed": params["seed"], "model": params["model"], "dpo": cfg}

    # -- data
    pairs = read_jsonl(args.pairs, Pair)
    if len(pairs) < cfg["min_pairs"]:
        log.warning("UNDERPOWERED: training on %d pairs (dpo.min_pairs = %d)", len(pairs), cfg["min_pairs"])
    if not pairs:
        # Nothing to learn from: save the fresh (zero) adapter, so this round's model equals its
        # policy and the chain goes on; metrics say so. See metrics/rounds/R/pairs.json for why.
        log.warning("NO PAIRS in %s: %s's adapter is left untrained (a no-op)", args.pairs, args.round)
        model = get_peft_model(load_model(args.policy, dtype=params["model"]["dtype"]), lora_config(cfg["lora"]))
        with atomic_path(args.out, directory=True) as tmp:
            model.save_pretrained(str(tmp), safe_serialization=True)
            load_tokenizer(args.policy).save_pretrained(str(tmp))
            lineage.write(
                tmp, lineage.record(f"dpo@{args.round} (no pairs: untrained)", used, [args.pairs, args.policy])
            )
        write_json(args.metrics, {"pairs": 0, "trained": False, "underpowered": True, "global_step": 0})
        Path(args.live_dir).mkdir(parents=True, exist_ok=True)  # a declared out, empty: no curves
        return

    # -- model and trainer (resuming when a checkpoint of this exact run exists)
    root = args.checkpoints or f"checkpoints/rounds/{args.round}/dpo"
    ckpt, last = checkpoint_dir(root, fingerprint(used, [args.pairs, args.policy]))
    trainer = build_trainer(params, cfg, pairs, args.policy, str(ckpt))
    trainer.add_callback(dvclive_callback(args.live_dir, resume=last is not None))

    # -- train
    result = trainer.train(resume_from_checkpoint=last)

    # -- save the adapter (safetensors), tokenizer and lineage
    with atomic_path(args.out, directory=True) as tmp:
        trainer.model.save_pretrained(str(tmp), safe_serialization=True)
        trainer.processing_class.save_pretrained(str(tmp))
        lineage.write(tmp, lineage.record(f"dpo@{args.round}", used, [args.pairs, args.policy]))

    # -- metrics
    history = trainer.state.log_history
    metrics = {k.replace("/", "_"): final_log(history, k) for k in LOGGED}
    metrics |= {
        "train_loss": round(result.training_loss, 4),
        "global_step": trainer.state.global_step,
        "pairs": len(pairs),
        "trained": True,
        "underpowered": len(pairs) < cfg["min_pairs"],
    }
    write_json(args.metrics, metrics)
    shutil.rmtree(ckpt, ignore_errors=True)
    log.info(
        "%s: margin %s, chosen preferred %s", args.round, metrics["rewards_margins"], metrics["rewards_accuracies"]
    )


if __name__ == "__main__":
    run_stage(main)
