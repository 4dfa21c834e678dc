"""Stage `merge@V`: fold a LoRA adapter into its parent, making version V a plain model folder.

    dvc repro merge@sft
    python stages/merge.py --version sft --parent models/base --adapter models/adapters/sft \
        --out models/merged/sft

Loads parent + adapter, `merge_and_unload`s, and saves safetensors (sharded above
`merge.max_shard_size`), the tokenizer, the generation config, `lineage.json` and a model
card (README.md) with the lineage back to `base`. Before finishing it reloads the saved
folder, checks its logits match the unmerged model's and generates from one prompt: a
model that does not load or produces no tokens fails the stage ([D4]'s post-train
check). The parent is always loaded in `model.dtype`, never in 4 bits; when the adapter's
lineage says it was trained over a 4-bit (QLoRA) parent, the card says so, and that the merge
went into full-precision weights. A card says QLoRA only then, whatever params say now.
"""

from __future__ import annotations

import argparse
import logging

import torch
from peft import PeftModel

from bioreasoner.core import config, lineage
from bioreasoner.core.config import ModelCfg
from bioreasoner.core.io import atomic_path, run_stage
from bioreasoner.modeling.generation import SamplingParams, sample
from bioreasoner.modeling.models import load_model, load_tokenizer

log = logging.getLogger("merge")

SECTIONS = ("model", "merge")  # = this stage's `params:` in dvc.yaml (merge.versions is not read)

# Largest logit difference tolerated between the unmerged and the reloaded merged model.
TOLERANCE = {"float32": 1e-3, "bfloat16": 0.25, "float16": 0.05}


def check_reload(folder: str, prompt: str, expected: torch.Tensor, mcfg: ModelCfg, max_new_tokens: int) -> str:
    """Reload the saved folder, compare its logits on `prompt`, and generate greedily."""
    tokenizer = load_tokenizer(folder, trust_remote_code=mcfg.trust_remote_code)
    model = load_model(folder, trust_remote_code=mcfg.trust_remote_code, dtype=mcfg.dtype)
    got = prompt_logits(model, tokenizer, prompt)
    diff = float((got - expected).abs().max())
    if diff > TOLERANCE[mcfg.dtype]:
        raise RuntimeError(f"{folder}: reloaded model's logits differ from the unmerged model's by {diff:.3g}")
    messages = [{"role": "user", "content": prompt}]
    text = sample(model, tokenizer, [messages], [0], SamplingParams(temperature=0, max_new_tokens=max_new_tokens))[0]
    if not text.strip():
        raise RuntimeError(f"{folder}: the merged model produced no tokens for the check prompt")
    log.info("reload check: max logit diff %.2g; greedy sample: %r", diff, text[:120])
    return text


@torch.no_grad()
def prompt_logits(model, tokenizer, prompt: str) -> torch.Tensor:
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    return model(**ids.to(model.device)).logits[0, -1].float().cpu()


def qlora_note(adapter_lineage: dict | None, dtype: str) -> list[str]:
    """The card's note when, and only when, the adapter was trained over a 4-bit parent (its
    training stage records `loaded_in_4bit`; a sleep adapter is trained over the same parent)."""
    if not (adapter_lineage or {}).get("loaded_in_4bit"):
        return []
    return [
        "The adapter was trained with QLoRA, over a 4-bit (nf4) copy of the parent held in memory "
        f"only; it was merged into the parent's {dtype} weights (the parent on disk was never "
        f"quantized), so this folder holds {dtype} weights and may differ slightly from the 4-bit "
        "model the adapter was trained with."
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--version", required=True)
    ap.add_argument("--parent", required=True)
    ap.add_argument("--adapter", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    # -- 1. params: validated before any model or data is touched
    p = config.load(args.params, sections=SECTIONS)
    mcfg, cfg = p.model, p.merge

    # -- 2. load parent (in the compute dtype, never in 4 bits) + adapter
    parent = load_model(args.parent, trust_remote_code=mcfg.trust_remote_code, dtype=mcfg.dtype)
    model = PeftModel.from_pretrained(parent, args.adapter)
    tokenizer = load_tokenizer(args.adapter, trust_remote_code=mcfg.trust_remote_code)
    expected = prompt_logits(model, tokenizer, cfg.check_prompt)

    # -- 3. merge
    merged = model.merge_and_unload()
    notes = qlora_note(lineage.read(args.adapter), mcfg.dtype)

    # -- 4. save weights, tokenizer, generation config, lineage, card; then reload and check
    record = {
        "stage": "merge",
        "version": args.version,
        # merge.versions is left out: another version's entry is not this one's lineage
        "params": {"model": mcfg.model_dump(mode="json"), "merge": cfg.model_dump(mode="json", exclude={"versions"})},
        "inputs": {args.parent: lineage.dvc_md5(args.parent), args.adapter: lineage.dvc_md5(args.adapter)},
        "parent": {"path": args.parent, "lineage": lineage.read(args.parent)},
        "adapter": {"path": args.adapter, "lineage": lineage.read(args.adapter)},
    }
    with atomic_path(args.out, directory=True) as tmp:
        merged.save_pretrained(str(tmp), safe_serialization=True, max_shard_size=cfg.max_shard_size)
        tokenizer.save_pretrained(str(tmp))
        lineage.write(tmp, record)
        metrics_path = f"metrics/eval/{args.version}.json"
        card = lineage.model_card(args.version, record, eval_metrics_path=metrics_path, notes=notes)
        (tmp / "README.md").write_text(card, encoding="utf-8")
        check_reload(str(tmp), cfg.check_prompt, expected, mcfg, cfg.check_max_new_tokens)
    log.info("merged %s + %s -> %s", args.parent, args.adapter, args.out)


if __name__ == "__main__":
    run_stage(main)
