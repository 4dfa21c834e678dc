"""Benchmark: our SFT stage's trainer against a bare TRL `SFTTrainer` (goal >= 1.0x tokens/s).

    python benchmarks/sft.py [--model models/pretrained] [--steps 20]
    # SmolLM2, and the stage's trainer with bf16 autocast against fp32:
    python benchmarks/sft.py --params .cache/presets/smollm2-cpu/params.yaml \
        --tasks .cache/presets/smollm2-cpu/data/teacher/train.jsonl \
        --model .cache/presets/smollm2-cpu/models/base --steps 4 --repeats 1 --compare-bf16

Both train the same LoRA on the same rows, model, batch size and sampling strategy for the
same number of steps, alternating in this process (fastest of each counts); the stage's trainer comes from
`stages/sft.py`'s `build_trainer` (TrainingRun's arguments, the supervised-fraction collator and
callbacks, checkpointing, DVCLive), the bare one from SFTConfig with the same TRL fields and
nothing else. Same steps and rows, so tokens/s ratio = time ratio; the script prints both, and
the tokens/s of ours (tokens the trainer counted, `num_tokens`). `--compare-bf16` also runs the
stage's trainer with `bf16` flipped (autocast on CPU) and prints that ratio.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import tempfile
import time
from pathlib import Path

from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from bioreasoner.core import config
from bioreasoner.modeling.models import load_for_training, load_tokenizer
from bioreasoner.training.data import read_tasks, to_sft_row
from bioreasoner.training.lifecycle import TrainingRun, lora_config


def stage_module():
    spec = importlib.util.spec_from_file_location("stage_sft", Path("stages/sft.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--model", default="models/pretrained")
    ap.add_argument("--tasks", default="data/tasks/train.jsonl")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=2, help="runs of each, alternating; the fastest counts")
    ap.add_argument("--compare-bf16", action="store_true", help="also time the stage's trainer with bf16 flipped")
    args = ap.parse_args()

    p = config.load(args.params, sections=("seed", "model", "sft"))
    tokens: dict[str, float] = {}
    tasks = read_tasks(args.tasks)
    tmp = Path(tempfile.mkdtemp(prefix="bench-sft-"))
    try:

        def ours(i: int, bf16: bool | None = None) -> float:
            """Exactly the stage's trainer; only max_steps and the folders (and `bf16`) changed."""
            run = TrainingRun(
                "sft", p.used(), [args.tasks, args.model], out=tmp / "out", metrics=tmp / "m.json",
                live_dir=tmp / f"live{i}", checkpoints=tmp / f"ckpt{i}",
            )  # fmt: skip
            trainer = stage_module().build_trainer(p, tasks, args.model, run)
            trainer.args.max_steps = args.steps
            if bf16 is not None:
                trainer.args.bf16 = bf16
            start = time.perf_counter()
            run.train(trainer)  # the lifecycle's own train call (callbacks, staging, resume check)
            elapsed = time.perf_counter() - start
            # TRL logs `num_tokens`: the non-padding tokens trained on so far
            tokens[f"bf16={trainer.args.bf16}"] = max(float(h.get("num_tokens", 0)) for h in trainer.state.log_history)
            return elapsed

        def bare() -> float:
            """The same TRL fields, LoRA, rows and model, and nothing else."""
            cfg = p.sft
            trainer = SFTTrainer(
                model=load_for_training(args.model, p.model),
                args=SFTConfig(
                    **{
                        **cfg.trainer_kwargs(),
                        "output_dir": str(tmp / "bare"),
                        "seed": p.seed,
                        "data_seed": p.seed,
                        "max_steps": args.steps,
                        "report_to": "none",
                        "save_strategy": "no",
                        "use_cpu": True,
                    },
                    completion_only_loss=True,
                ),
                train_dataset=Dataset.from_list([to_sft_row(t) for t in tasks]),
                processing_class=load_tokenizer(args.model),
                peft_config=lora_config(cfg.lora),
            )
            start = time.perf_counter()
            trainer.train()
            return time.perf_counter() - start

        # each twice, alternating, so neither gains from going second (warm caches, allocator)
        t_ours, t_bare = [], []
        for i in range(args.repeats):
            t_ours.append(ours(i))  # a fresh checkpoint folder each time: never a resume
            t_bare.append(bare())
        t_ours, t_bare = min(t_ours), min(t_bare)
        t_flip = ours(args.repeats, bf16=not p.sft.bf16) if args.compare_bf16 else None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"our sft stage: {t_ours:.1f}s for {args.steps} steps (fastest of {args.repeats})")
    print(f"bare SFTTrainer: {t_bare:.1f}s for {args.steps} steps (fastest of {args.repeats})")
    print(f"tokens/s ratio ours / bare: {t_bare / t_ours:.2f}x (goal >= 1.0x: the wrapper costs nothing)")
    n = tokens.get(f"bf16={p.sft.bf16}", 0)
    if n:
        print(f"our sft stage, bf16={p.sft.bf16}: {n / t_ours:.1f} tokens/s ({n:.0f} tokens)")
    if t_flip is not None:
        print(f"our sft stage, bf16={not p.sft.bf16}: {t_flip:.1f}s for {args.steps} steps")
        print(f"time ratio bf16={p.sft.bf16} / bf16={not p.sft.bf16}: {t_ours / t_flip:.2f}x (same rows and steps)")


if __name__ == "__main__":
    main()
