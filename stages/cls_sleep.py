"""Stage `cls_sleep`: consolidate the GRPO adapter into a fresh one by "sleep" (seeds/001).

    dvc repro cls_sleep
    python stages/cls_sleep.py --parent models/merged/v2_1 --grpo models/adapters/grpo \
        --out models/adapters/cls --metrics metrics/cls.json

Teacher = parent + GRPO adapter (fast learner); student = parent + a fresh adapter. Sleep trains
the student to match the teacher's token distributions (KL at `cls.temperature`) on a shuffled
mix: replay (sft references, the rounds' chosen responses), GRPO prompts answered by the teacher,
and pseudo-rehearsal (teacher samples on replay prompts) at `cls.pseudo_ratio`; an EWC penalty
(diagonal Fisher on the mix, under the parent) keeps weights that matter for earlier tasks near
the parent. A sleep-pressure scheduler picks the step count from saturation, novelty and
forgetting. The task matrix A (token accuracy; L: token loss) on held-out references of each
task type is measured at parent, after grpo and after sleep. `cls.enabled: false` copies the
GRPO adapter through unchanged (the no-sleep ablation).
"""

from __future__ import annotations

import argparse
import logging
import random
import shutil
from typing import Any

import torch
from peft import PeftModel

from bioreasoner.core import lineage
from bioreasoner.core.io import atomic_path, load_params, read_jsonl, run_stage, write_json
from bioreasoner.core.records import TASK_TYPES, Pair, Task
from bioreasoner.modeling.generation import SamplingParams, item_seed, sample
from bioreasoner.modeling.models import load_model, load_tokenizer
from bioreasoner.training import continual, sleep
from bioreasoner.training.common import lora_config
from bioreasoner.training.data import prompt_messages
from bioreasoner.training.rounds import select_prompts

log = logging.getLogger("cls_sleep")
BOUNDARIES = ("parent", "grpo", "sleep")


def held_out(tasks: list[Task], per_type: int) -> dict[str, list[sleep.Row]]:
    """The first `per_type` test tasks of each type, as (prompt, reference) rows."""
    return {ty: [(prompt_messages(t), t.reference) for t in tasks if t.type == ty][:per_type] for ty in TASK_TYPES}


def matrix_row(model, tok, evals: dict[str, list[sleep.Row]], cfg: dict[str, Any]) -> tuple[list[float], list[float]]:
    stats = [sleep.token_stats(model, tok, evals[ty], cfg["batch_size"], cfg["max_length"]) for ty in TASK_TYPES]
    return [acc for acc, _ in stats], [loss for _, loss in stats]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--parent", required=True)
    ap.add_argument("--grpo", required=True, help="the GRPO adapter (teacher)")
    ap.add_argument("--train", default="data/tasks/train.jsonl")
    ap.add_argument("--test", default="data/tasks/test.jsonl")
    ap.add_argument(
        "--pairs", nargs="*", default=[], help="earlier rounds' pairs.jsonl (chosen responses are replayed)"
    )
    ap.add_argument("--out", default="models/adapters/cls")
    ap.add_argument("--metrics", default="metrics/cls.json")
    args = ap.parse_args()

    # -- params
    params = load_params(args.params)
    cfg, mcfg, seed = params["cls"], params["model"], params["seed"]
    used = {"seed": seed, "model": mcfg, "cls": cfg, "grpo.prompts": params["grpo"]["prompts"]}
    torch.manual_seed(seed)
    rng = random.Random(item_seed(seed, "cls"))

    # -- models: one parent, two adapters (teacher = GRPO, student = fresh)
    trust = bool(mcfg["trust_remote_code"])
    tok = load_tokenizer(args.parent, trust_remote_code=trust)
    model = PeftModel.from_pretrained(
        load_model(args.parent, trust_remote_code=trust, dtype=mcfg["dtype"]), args.grpo, adapter_name="teacher"
    )
    evals = held_out(read_jsonl(args.test, Task), cfg["eval_per_type"])
    with model.disable_adapter():
        acc_parent, loss_parent = matrix_row(model, tok, evals, cfg)
    model.set_adapter("teacher")
    acc_grpo, loss_grpo = matrix_row(model, tok, evals, cfg)

    if not cfg["enabled"]:  # ablation: no sleep, the GRPO adapter goes straight to merge
        with atomic_path(args.out, directory=True) as tmp:
            shutil.copytree(args.grpo, tmp, dirs_exist_ok=True)
            lineage.write(tmp, lineage.record("cls_sleep (disabled: grpo adapter passed through)", used, [args.grpo]))
        A, L = [acc_parent, acc_grpo], [loss_parent, loss_grpo]
        cl = continual.cl_metrics(A, L=L, boundaries=BOUNDARIES[:2], tasks=TASK_TYPES)
        write_json(args.metrics, {"enabled": False, **cl})
        return

    # -- data: replay (references, chosen responses), GRPO prompts and pseudo-rehearsal, all answered
    train = read_jsonl(args.train, Task)
    replay: list[sleep.Row] = [
        (prompt_messages(t), t.reference) for t in select_prompts(train, cfg["replay_sft"], seed, "cls-replay")
    ]
    for path in args.pairs:
        chosen = [(([m.model_dump() for m in p.prompt]), p.chosen[-1].content) for p in read_jsonl(path, Pair)]
        replay += rng.sample(chosen, min(cfg["replay_chosen_per_round"], len(chosen)))
    grpo_prompts = [prompt_messages(t) for t in select_prompts(train, params["grpo"]["prompts"], seed, "grpo")]
    n_pseudo = (
        round(cfg["pseudo_ratio"] / (1 - cfg["pseudo_ratio"]) * len(replay)) if cfg["pseudo_ratio"] < 1 else len(replay)
    )
    pseudo_prompts = [m for m, _ in rng.sample(replay, min(n_pseudo, len(replay)))]
    asks = grpo_prompts + pseudo_prompts
    gen = SamplingParams(**cfg["generation"])
    answers = sample(
        model, tok, asks, [item_seed(seed, "cls", i) for i in range(len(asks))], gen, desc="teacher samples"
    )
    wake = list(zip(grpo_prompts, answers[: len(grpo_prompts)], strict=True))
    pseudo = list(zip(pseudo_prompts, answers[len(grpo_prompts) :], strict=True))
    mix = replay + wake + pseudo
    rng.shuffle(mix)

    # -- signals and the sleep-pressure scheduler
    with model.disable_adapter():
        parent_acc, _ = sleep.token_stats(model, tok, replay, cfg["batch_size"], cfg["max_length"])
    teacher_acc, _ = sleep.token_stats(model, tok, replay, cfg["batch_size"], cfg["max_length"])
    novelty = sleep.adapter_kl(model, tok, replay, cfg["batch_size"], cfg["max_length"])
    signals = {
        "saturation": sleep.adapter_norm(model, "teacher"),  # how far the fast learner moved
        "novelty": novelty,  # teacher-vs-parent KL on replay
        "forgetting": max(0.0, parent_acc - teacher_acc),  # drop in replay token accuracy
    }
    steps, pressure, detail = continual.sleep_steps(signals, continual.SleepPressureParams.from_dict(cfg["scheduler"]))
    log.info("sleep pressure %.3f from %s -> %d steps", pressure, signals, steps)

    # -- student adapter, Fisher under the parent, then sleep
    model.add_adapter("student", lora_config(cfg["lora"]))
    model.set_adapter("student")
    anchor = {n: p.detach().clone() for n, p in sleep.trainable(model).items()}
    fisher_rows = rng.sample(mix, min(cfg["fisher_samples"], len(mix)))
    fisher = sleep.fisher_diagonal(model, tok, fisher_rows, cfg["max_length"])  # student = 0 update: the parent
    opt = torch.optim.AdamW(sleep.trainable(model).values(), lr=cfg["learning_rate"])
    non_finite, kls = 0, []
    for step in range(steps):
        rows = [mix[(step * cfg["batch_size"] + k) % len(mix)] for k in range(cfg["batch_size"])]
        b = sleep.encode(tok, rows, cfg["max_length"])
        with torch.no_grad():
            model.set_adapter("teacher")
            t = sleep.logits(model, b)
        model.set_adapter("student")
        s = sleep.logits(model, b)
        kl = sleep.distill_kl(t, s, b.target.to(s.device), cfg["temperature"])
        loss = kl + cfg["ewc_lambda"] / 2 * sleep.ewc_penalty(model, fisher, anchor).to(kl.device)
        if not torch.isfinite(loss):
            non_finite += 1
            opt.zero_grad(set_to_none=True)
            continue
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        kls.append(kl.item())
    acc_sleep, loss_sleep = matrix_row(model, tok, evals, cfg)

    # -- save the student adapter (safetensors) and lineage
    with atomic_path(args.out, directory=True) as tmp:
        model.save_pretrained(str(tmp), selected_adapters=["student"], safe_serialization=True)
        student = tmp / "student"  # peft saves non-default adapters in a subfolder
        if student.is_dir():
            for f in student.iterdir():
                f.rename(tmp / f.name)
            student.rmdir()
        tok.save_pretrained(str(tmp))
        lineage.write(
            tmp, lineage.record("cls_sleep", used, [args.parent, args.grpo, args.train, args.test, *args.pairs])
        )

    # -- metrics
    A, L = [acc_parent, acc_grpo, acc_sleep], [loss_parent, loss_grpo, loss_sleep]
    metrics = {
        "enabled": True,
        **continual.cl_metrics(A, L=L, boundaries=BOUNDARIES, tasks=TASK_TYPES),
        "signals": {k: round(v, 4) for k, v in signals.items()},
        "sleep_pressure": round(pressure, 4),
        "sleep_steps": steps,
        "final_kl": round(kls[-1], 4) if kls else None,
        "non_finite_step_count": non_finite,
        "mix": {"replay": len(replay), "grpo_prompts": len(wake), "pseudo": len(pseudo)},
        **continual.sleep_batch_metrics(
            replay_batch_size=round(cfg["batch_size"] * len(replay) / len(mix)),
            pseudo_batch_size=round(cfg["batch_size"] * len(pseudo) / len(mix)),
            fisher_replay_samples=sum(r in replay for r in fisher_rows),
            fisher_pseudo_samples=sum(r in pseudo for r in fisher_rows),
        ),
    }
    write_json(args.metrics, metrics)


if __name__ == "__main__":
    run_stage(main)
