"""Stage `merge@V`: fold a LoRA adapter into its parent, making version V a plain model folder.

    dvc repro merge@sft
    python stages/merge.py --version sft --parent models/base --adapter models/adapters/sft \
        --out models/merged/sft

Loads parent + adapter, `merge_and_unload`s, and saves safetensors (sharded above
`merge.max_shard_size`), the tokenizer, the generation config, `lineage.json` and a model
card (README.md) with the lineage back to `base`. Before finishing it reloads the saved
folder, checks its logits match the unmerged model's and generates from one prompt: a
model that does not load or produces no tokens fails the stage (seeds/002's post-train
check). A 4-bit (QLoRA) parent is merged in the compute dtype, never in 4 bits.
"""

from __future__ import annotations

import argparse
import logging

import torch
from peft import PeftModel

from bioreasoner.core import lineage
from bioreasoner.core.io import atomic_path, load_params, run_stage
from bioreasoner.modeling.generation import SamplingParams, sample
from bioreasoner.modeling.models import load_model, load_tokenizer

log = logging.getLogger("merge")

# Largest logit difference tolerated between the unmerged and the reloaded merged model.
TOLERANCE = {"float32": 1e-3, "bfloat16": 0.25, "float16": 0.05}


def check_reload(folder: str, prompt: str, expected: torch.Tensor, mcfg: dict, max_new_tokens: int) -> str:
    """Reload the saved folder, compare its logits on `prompt`, and generate greedily."""
    trust = bool(mcfg["trust_remote_code"])
    tokenizer = load_tokenizer(folder, trust_remote_code=trust)
    model = load_model(folder, trust_remote_code=trust, dtype=mcfg["dtype"])
    got = prompt_logits(model, tokenizer, prompt)
    diff = float((got - expected).abs().max())
    if diff > TOLERANCE[mcfg["dtype"]]:
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--version", required=True)
    ap.add_argument("--parent", required=True)
    ap.add_argument("--adapter", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    # -- params
    params = load_params(args.params)
    mcfg = params["model"]
    cfg = {k: v for k, v in params["merge"].items() if k != "versions"}  # another version's entry is not ours
    trust = bool(mcfg["trust_remote_code"])

    # -- load parent (in the compute dtype, even when training used a 4-bit parent) + adapter
    parent = load_model(args.parent, trust_remote_code=trust, dtype=mcfg["dtype"])
    model = PeftModel.from_pretrained(parent, args.adapter)
    tokenizer = load_tokenizer(args.adapter, trust_remote_code=trust)
    expected = prompt_logits(model, tokenizer, cfg["check_prompt"])

    # -- merge
    merged = model.merge_and_unload()
    notes = []
    if mcfg["quantization"] == "4bit":
        notes.append(
            f"The adapter was trained against a 4-bit (QLoRA) parent; it was merged into the parent "
            f"dequantized to {mcfg['dtype']}, so this folder holds {mcfg['dtype']} weights."
        )

    # -- save weights, tokenizer, generation config, lineage, card; then reload and check
    record = {
        "stage": "merge",
        "version": args.version,
        "params": {"model": mcfg, "merge": cfg},
        "inputs": {args.parent: lineage.dvc_md5(args.parent), args.adapter: lineage.dvc_md5(args.adapter)},
        "parent": {"path": args.parent, "lineage": lineage.read(args.parent)},
        "adapter": {"path": args.adapter, "lineage": lineage.read(args.adapter)},
    }
    with atomic_path(args.out, directory=True) as tmp:
        merged.save_pretrained(str(tmp), safe_serialization=True, max_shard_size=cfg["max_shard_size"])
        tokenizer.save_pretrained(str(tmp))
        lineage.write(tmp, record)
        metrics_path = f"metrics/eval/{args.version}.json"
        card = lineage.model_card(args.version, record, eval_metrics_path=metrics_path, notes=notes)
        (tmp / "README.md").write_text(card, encoding="utf-8")
        check_reload(str(tmp), cfg["check_prompt"], expected, mcfg, cfg["check_max_new_tokens"])
    log.info("merged %s + %s -> %s", args.parent, args.adapter, args.out)


if __name__ == "__main__":
    run_stage(main)
