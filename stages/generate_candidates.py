"""Stage `generate_candidates@R`: sample N responses per prompt from round R's policy.

    dvc repro generate_candidates@v2_1
    python stages/generate_candidates.py --round v2_1 --policy models/merged/v2_0 \
        --out data/rounds/v2_1/candidates.jsonl

Prompts are `rounds.R.prompts` train tasks (seeded draw); each (task, sample) has its own seed
(`sha256(seed, R, task_id, sample)`), so one row can be regenerated alone. With
`rounds.R.force_think` every response starts with "<think>\\n" and that prefix is part of the
text that is scored and paired (the notebook's entry 4 fix for missing think blocks).

Resumable: each finished batch is appended to `checkpoints/rounds/R/<fingerprint>/` (outside
the outs, which DVC deletes before a run); a re-run after a kill skips finished batches, and the
batches are planned from the inputs alone, so the final file equals an uninterrupted run's.

Backends (`rounds.R.backend`): `hf` samples in this process; `vllm` with vLLM's in-process
engine (CUDA); `openai` sends each item, with its seed, to the completions endpoint of a server
that the user started on the policy folder (`vllm serve models/merged/v2_0`, params
`rounds.R.server`). Prompts are rendered here from the policy folder's chat template in every
case; the server must list the folder's name in `/models` or the stage stops before sampling.
DVC tracks the folder, not what the server loaded: serve the folder this stage declares.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
from pathlib import Path

import torch

from bioreasoner.core import config
from bioreasoner.core.io import BadInputError, read_jsonl, run_stage, write_jsonl
from bioreasoner.core.records import Candidate, Task
from bioreasoner.endpoints.completions import ServedSampler
from bioreasoner.modeling.generation import SamplingParams, check_backend, item_seed, render_prompt, sample, sample_vllm
from bioreasoner.modeling.models import load_model, load_tokenizer
from bioreasoner.training.common import checkpoint_dir, fingerprint
from bioreasoner.training.data import prompt_messages
from bioreasoner.training.rounds import select_prompts

log = logging.getLogger("generate_candidates")
SECTIONS = ("seed", "model", "rounds")  # the params this stage declares in dvc.yaml
THINK_PREFIX = "<think>\n"


def read_partial(path: Path) -> dict[tuple[str, int], str]:
    """Rows a killed run already appended; a torn last line is ignored (it is regenerated)."""
    done: dict[tuple[str, int], str] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            done[(row["task_id"], row["sample"])] = row["text"]
    return done


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--round", required=True)
    ap.add_argument("--policy", required=True, help="merged parent model folder")
    ap.add_argument("--tasks", default="data/tasks/train.jsonl")
    ap.add_argument("--out", required=True)
    ap.add_argument("--checkpoints", default=None, help="default checkpoints/rounds/<round>")
    args = ap.parse_args()

    # -- params
    p = config.load(args.params, sections=SECTIONS)
    if args.round not in p.rounds:
        raise BadInputError(args.params, "rounds", f"no round {args.round!r} (have {sorted(p.rounds)})")
    cfg, mcfg, seed = p.rounds[args.round], p.model, p.seed
    gen = SamplingParams(**cfg.generation.model_dump(), prefix=THINK_PREFIX if cfg.force_think else "")
    check_backend(cfg.backend)

    # -- data: prompts x samples, one seed each
    tasks = select_prompts(read_jsonl(args.tasks, Task), cfg.prompts, seed, args.round)
    if not tasks:
        raise BadInputError(args.tasks, None, "no train tasks to sample from")
    items = [(t, s) for t in tasks for s in range(cfg.samples_per_prompt)]
    seeds = [item_seed(seed, args.round, t.id, s) for t, s in items]
    log.info("%s: %d prompts x %d samples = %d candidates", args.round, len(tasks), cfg.samples_per_prompt, len(items))

    # -- model
    trust = mcfg.trust_remote_code
    tokenizer = load_tokenizer(args.policy, trust_remote_code=trust)
    prompts = [prompt_messages(t) for t, _ in items]

    # -- generate, appending finished batches to a partial file outside the outs
    used = {"seed": seed, "model": mcfg.model_dump(), "round": cfg.model_dump()}
    ckpt, _ = checkpoint_dir(
        args.checkpoints or f"checkpoints/rounds/{args.round}", fingerprint(used, [args.tasks, args.policy])
    )
    partial = ckpt / "candidates.partial.jsonl"
    previous = read_partial(partial)
    done = {i: previous[(t.id, s)] for i, (t, s) in enumerate(items) if (t.id, s) in previous}
    if done and cfg.backend != "vllm":
        log.info("resuming: %d of %d candidates already generated", len(done), len(items))

    def append(idx: list[int], texts: list[str]) -> None:
        with open(partial, "a", encoding="utf-8") as f:
            f.write(
                "".join(
                    json.dumps({"task_id": items[i][0].id, "sample": items[i][1], "text": t}) + "\n"
                    for i, t in zip(idx, texts, strict=True)
                )
            )
            f.flush()
            os.fsync(f.fileno())

    desc = f"candidates {args.round}"
    if cfg.backend == "vllm":
        texts = sample_vllm(args.policy, [render_prompt(tokenizer, m, gen.prefix) for m in prompts], seeds, gen)
    elif cfg.backend == "openai":  # a served copy of --policy; see ServerCfg and README (Serving)
        sampler = ServedSampler(cfg.server, model=args.policy, name=desc)
        sampler.check_model()
        texts = sampler.sample(
            [render_prompt(tokenizer, m, gen.prefix) for m in prompts],
            seeds,
            gen,
            keys=[f"{t.id} sample {s}" for t, s in items],
            desc=desc,
            done=done,
            on_item=lambda i, text: append([i], [text]),
        )
    else:
        model = load_model(args.policy, trust_remote_code=trust, dtype=mcfg.dtype)
        if torch.cuda.is_available():
            model.to("cuda")
        texts = sample(model, tokenizer, prompts, seeds, gen, desc=desc, done=done, on_batch=append)

    # -- write (atomically) and drop the partial file
    rows = [
        Candidate(task_id=t.id, sample=s, seed=sd, text=x) for (t, s), sd, x in zip(items, seeds, texts, strict=True)
    ]
    write_jsonl(args.out, rows)
    shutil.rmtree(ckpt, ignore_errors=True)
    log.info("wrote %d candidates to %s", len(rows), args.out)


if __name__ == "__main__":
    run_stage(main)
