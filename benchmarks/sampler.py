"""Benchmark: batched seeded sampling against one prompt at a time (goal >= 8x items/s).

    python benchmarks/sampler.py [--model models/pretrained] [--n 64] [--batch-size 64]
    # SmolLM2 (after `make repro PRESET=smollm2-cpu`, or its base stage, in the preset's worktree):
    python benchmarks/sampler.py --params .cache/presets/smollm2-cpu/params.yaml \
        --model .cache/presets/smollm2-cpu/models/base --n 32 --batch-size 32

Both runs sample the same test prompts with the same per-item seeds and settings as eval
(params.yaml `eval.generation`, max_new_tokens capped by --max-new-tokens), one after the other
in this process, and the script prints items/s of each and their ratio. It also prints how many
items came out identical in both runs: the sampler's guarantee is that a row's sample does not
depend on its batch (up to float noise from padding, which can flip a near-tie).

A third run samples the batched way with eval's `dtype` and `workers` (bf16 copy, one process
per core: [D18]) and prints its ratio to the fp32, one-process batched run.
"""

from __future__ import annotations

import argparse
import time

import torch
import yaml

from bioreasoner.core.io import iter_jsonl
from bioreasoner.core.records import Task
from bioreasoner.modeling.generation import SamplingParams, item_seed, sample
from bioreasoner.modeling.models import load_model, load_tokenizer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="models/pretrained")
    ap.add_argument("--params", default="params.yaml", help="eval.generation is read from here")
    ap.add_argument("--tasks", default="data/tasks/test.jsonl")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    args = ap.parse_args()

    with open(args.params, encoding="utf-8") as f:
        gen = yaml.safe_load(f)["eval"]["generation"]
    tasks = list(iter_jsonl(args.tasks, Task))[: args.n]
    prompts = [[m.model_dump() for m in t.messages] for t in tasks]
    seeds = [item_seed(0, "bench", t.id) for t in tasks]
    model, tok = load_model(args.model), load_tokenizer(args.model)
    common = dict(temperature=gen["temperature"], top_p=gen["top_p"], max_new_tokens=args.max_new_tokens)
    results = {}
    for name, bs in (("batched", args.batch_size), ("one at a time", 1)):
        torch.manual_seed(0)
        start = time.perf_counter()
        results[name] = sample(model, tok, prompts, seeds, SamplingParams(batch_size=bs, **common), desc=name)
        elapsed = time.perf_counter() - start
        new = sum(len(tok(r, add_special_tokens=False)["input_ids"]) for r in results[name])
        print(
            f"{name:>14}: {len(tasks) / elapsed:7.2f} items/s, {new / elapsed:6.1f} new tokens/s "
            f"({elapsed:.1f}s for {len(tasks)} items)"
        )
        results[name + "_s"] = elapsed
    same = sum(a == b for a, b in zip(results["batched"], results["one at a time"], strict=True))
    print(f"speed-up batched / one at a time: {results['one at a time_s'] / results['batched_s']:.1f}x (goal >= 8x)")
    print(f"identical samples in both runs: {same} / {len(tasks)}")

    dtype, workers = gen.get("dtype", "auto"), gen.get("workers", 1)
    start = time.perf_counter()
    sample(
        model,
        tok,
        prompts,
        seeds,
        SamplingParams(batch_size=args.batch_size, dtype=dtype, workers=workers, **common),
        desc=f"{dtype}, {workers} process(es)",
    )
    elapsed = time.perf_counter() - start
    print(f"batched, dtype {dtype}, workers {workers}: {len(tasks) / elapsed:7.2f} items/s ({elapsed:.1f}s)")
    print(f"speed-up over fp32 in one process: {results['batched_s'] / elapsed:.2f}x (process start-up included)")


if __name__ == "__main__":
    main()
