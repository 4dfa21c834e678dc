"""Stage `dpo@R`: a new LoRA adapter trained with DPO on round R's pairs, over R's merged policy.

    dvc repro dpo@v2_1
    python stages/dpo.py --round v2_1 --policy models/merged/v2_0 --pairs data/rounds/v2_1/pairs.jsonl \
        --out models/adapters/v2_1 --metrics metrics/rounds/v2_1/dpo.json --live-dir dvclive/rounds/v2_1

TRL `DPOTrainer`, settings from the shared `dpo:` section with `rounds.R.dpo` overrides
([D3]: beta 0.1, a learning rate about 100x below SFT's, 100+ pairs). The reference model
is the policy itself with the adapter disabled (peft), not a second copy in memory. DVCLive logs
loss and rewards/{chosen,rejected,margins,accuracies} (the guide's "chosen preference");
final values go to `metrics/rounds/R/dpo.json`. Resumable like sft (`checkpoints/rounds/R/dpo`).

Fewer than `dpo.min_pairs` pairs trains anyway, with a loud warning and `underpowered: true`.
No pairs at all is a deliberate no-op, not an error: an underpowered round saves the fresh
(zero) adapter, so its merged model equals its policy and the chain of rounds goes on.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from datasets import Dataset
from peft import get_peft_model
from transformers import set_seed
from trl import DPOConfig, DPOTrainer

from bioreasoner.core import config
from bioreasoner.core.config import DPOCfg, StageParams
from bioreasoner.core.io import BadInputError, read_jsonl, run_stage
from bioreasoner.core.records import Pair
from bioreasoner.modeling.models import load_for_training, load_tokenizer
from bioreasoner.training.data import to_dpo_row
from bioreasoner.training.lifecycle import TrainingRun, final_log, lora_config

log = logging.getLogger("dpo")

SECTIONS = ("seed", "model", "dpo", "rounds")  # = this stage's `params:` in dvc.yaml

LOGGED = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")


def build_trainer(p: StageParams, cfg: DPOCfg, pairs: list[Pair], policy: str, run: TrainingRun) -> DPOTrainer:
    tokenizer = load_tokenizer(policy, trust_remote_code=p.model.trust_remote_code)
    model = load_for_training(policy, p.model, gradient_checkpointing=cfg.gradient_checkpointing)
    return DPOTrainer(
        model=model,
        ref_model=None,  # with a peft adapter, TRL uses the policy with the adapter disabled
        args=DPOConfig(**run.trainer_args(cfg, seed=p.seed, model=p.model)),
        train_dataset=Dataset.from_list([to_dpo_row(pair) for pair in pairs]),
        processing_class=tokenizer,
        peft_config=lora_config(cfg.lora),
    )


def round_params(p: StageParams, name: str) -> dict[str, Any]:
    """What this round's run reads: the merged dpo settings and its own round entry only, so
    another round's edit neither invalidates these checkpoints nor shows in this lineage."""
    used = p.used()
    return used | {"dpo": p.round_dpo(name).model_dump(mode="json"), "rounds": {name: used["rounds"][name]}}


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--round", required=True)
    ap.add_argument("--policy", required=True)
    ap.add_argument("--pairs", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--metrics", required=True)
    ap.add_argument("--live-dir", required=True)
    ap.add_argument("--checkpoints", default=None, help="default checkpoints/rounds/<round>/dpo")
    return ap.parse_args()


def main() -> None:
    args = parse_args()

    # -- 1. params: validated before any model or data is touched
    p = config.load(args.params, sections=SECTIONS)
    if args.round not in p.rounds:
        raise BadInputError(args.params, "rounds", f"has no round {args.round!r} (have {sorted(p.rounds)})")
    cfg = p.round_dpo(args.round)

    # -- 2. data
    pairs = read_jsonl(args.pairs, Pair)
    if len(pairs) < cfg.min_pairs:
        log.warning("UNDERPOWERED: training on %d pairs (dpo.min_pairs = %d)", len(pairs), cfg.min_pairs)

    run = TrainingRun(
        f"dpo@{args.round}",
        round_params(p, args.round),
        [args.pairs, args.policy],
        out=args.out,
        metrics=args.metrics,
        live_dir=args.live_dir,
        checkpoints=args.checkpoints or f"checkpoints/rounds/{args.round}/dpo",
    )
    if not pairs:  # the documented no-op: see metrics/rounds/R/pairs.json for why there are none
        log.warning("NO PAIRS in %s: %s's adapter is left untrained (a no-op)", args.pairs, args.round)
        set_seed(p.seed)  # LoRA's A matrices start random: seeded, the no-op adapter is byte-stable
        model = get_peft_model(load_for_training(args.policy, p.model), lora_config(cfg.lora))
        run.save(
            model, load_tokenizer(args.policy, trust_remote_code=p.model.trust_remote_code), note="no pairs: untrained"
        )
        run.finish({"pairs": 0, "trained": False, "underpowered": True, "global_step": 0})  # curves: summary only
        return

    # -- 3. model and trainer, over this run's checkpoint folder (resumed when one exists)
    trainer = build_trainer(p, cfg, pairs, args.policy, run)

    # -- 4. train
    history = run.train(trainer)

    # -- 5. save the adapter, then metrics and cleanup
    run.save(trainer.model, trainer.processing_class)
    metrics = run.finish(
        {k.replace("/", "_"): final_log(history, k) for k in LOGGED}
        | {"pairs": len(pairs), "trained": True, "underpowered": len(pairs) < cfg.min_pairs}
    )
    log.info(
        "%s: margin %s, chosen preferred %s", args.round, metrics["rewards_margins"], metrics["rewards_accuracies"]
    )


if __name__ == "__main__":
    run_stage(main)
