"""Stage `cls_sleep`: consolidate the GRPO adapter into a fresh one by "sleep" [D8].

    dvc repro cls_sleep
    python stages/cls_sleep.py --parent models/merged/v2_1 --grpo models/adapters/grpo \
        --grpo-prompts data/grpo/prompts.jsonl --rounds-dir data/rounds \
        --out models/adapters/cls --metrics metrics/cls.json

Teacher = parent + GRPO adapter (fast learner); student = parent + a fresh adapter. Sleep trains
the student to match the teacher's token distributions (KL at `cls.temperature`) on a shuffled
mix: replay (sft references, and chosen responses from every round in `rounds:`, read from
`<rounds-dir>/<R>/pairs.jsonl`), the prompts grpo trained on (its out, not a redraw) answered
by the teacher, and pseudo-rehearsal (teacher samples on replay prompts) at `cls.pseudo_ratio`;
an EWC penalty (diagonal Fisher on the mix, under the parent) keeps weights that matter for
earlier tasks near the parent. A sleep-pressure scheduler picks the step count from
saturation, novelty and forgetting. The task matrix A (token accuracy; L: token loss) on
held-out references of each task type is measured at parent, after grpo and after sleep.
`cls.enabled: false` copies the GRPO adapter through unchanged (the no-sleep ablation).
"""

from __future__ import annotations

import argparse
import logging
import random
import shutil
from pathlib import Path

import torch
from peft import PeftModel

from bioreasoner.core import config, lineage
from bioreasoner.core.config import CLSCfg, StageParams
from bioreasoner.core.io import read_jsonl, run_stage
from bioreasoner.core.records import TASK_TYPES, Pair, Task
from bioreasoner.modeling.generation import SamplingParams, item_seed, sample
from bioreasoner.modeling.models import load_for_training, load_tokenizer
from bioreasoner.training import continual, sleep
from bioreasoner.training.data import prompt_messages, read_task_ids, read_tasks
from bioreasoner.training.lifecycle import TrainingRun, lora_config
from bioreasoner.training.rounds import select_prompts

log = logging.getLogger("cls_sleep")

SECTIONS = ("seed", "model", "cls", "rounds", "merge")  # = this stage's `params:` in dvc.yaml
BOUNDARIES = ("parent", "grpo", "sleep")


def held_out(tasks: list[Task], per_type: int) -> dict[str, list[sleep.Row]]:
    """The first `per_type` test tasks of each type, as (prompt, reference) rows."""
    return {ty: [(prompt_messages(t), t.reference) for t in tasks if t.type == ty][:per_type] for ty in TASK_TYPES}


def matrix_row(model, tok, evals: dict[str, list[sleep.Row]], cfg: CLSCfg) -> tuple[list[float], list[float]]:
    stats = [sleep.token_stats(model, tok, evals[ty], cfg.batch_size, cfg.max_length) for ty in TASK_TYPES]
    return [acc for acc, _ in stats], [loss for _, loss in stats]


def replay_rows(
    p: StageParams, train: list[Task], pair_files: list[Path], rng: random.Random, seed: int
) -> list[sleep.Row]:
    """sft references (a seeded draw) and `replay_chosen_per_round` chosen responses of each round."""
    cfg = p.cls
    rows = [(prompt_messages(t), t.reference) for t in select_prompts(train, cfg.replay_sft, seed, "cls-replay")]
    for path in pair_files:
        chosen = [([m.model_dump() for m in x.prompt], x.chosen[-1].content) for x in read_jsonl(path, Pair)]
        rows += rng.sample(chosen, min(cfg.replay_chosen_per_round, len(chosen)))
    return rows


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--parent", default=None, help="default: merge.versions.v3_0.parent (grpo's policy)")
    ap.add_argument("--grpo", default="models/adapters/grpo", help="the GRPO adapter (teacher)")
    ap.add_argument("--grpo-prompts", default="data/grpo/prompts.jsonl", help="task ids grpo trained on")
    ap.add_argument("--train", default="data/tasks/train.jsonl", help="the tasks grpo's prompt ids name")
    ap.add_argument("--sft-tasks", default="data/teacher/train.jsonl", help="what sft learned: replayed references")
    ap.add_argument("--test", default="data/tasks/test.jsonl")
    ap.add_argument("--rounds-dir", default="data/rounds", help="holds <round>/pairs.jsonl for every round")
    ap.add_argument("--out", default="models/adapters/cls")
    ap.add_argument("--metrics", default="metrics/cls.json")
    return ap.parse_args()


def main() -> None:
    args = parse_args()

    # -- 1. params: validated before any model or data is touched
    p = config.load(args.params, sections=SECTIONS)
    cfg, parent = p.cls, args.parent or p.grpo_policy
    seed = cfg.seed if cfg.seed is not None else p.seed
    torch.manual_seed(seed)
    rng = random.Random(item_seed(seed, "cls"))

    # -- 2. data, all read and checked before the models load
    train = read_tasks(args.train)
    evals = held_out(read_tasks(args.test, what="test tasks"), cfg.eval_per_type)
    grpo_tasks = read_task_ids(args.grpo_prompts, train)
    pair_files = [Path(args.rounds_dir) / name / "pairs.jsonl" for name in p.rounds]
    sft_tasks = read_tasks(args.sft_tasks, what="sft tasks (the teacher's references)")
    replay = replay_rows(p, sft_tasks, pair_files, rng, seed) if cfg.enabled else []
    inputs = [parent, args.grpo, args.train, args.sft_tasks, args.test, args.grpo_prompts, *pair_files]
    run = TrainingRun("cls_sleep", p.used(), inputs, out=args.out, metrics=args.metrics)

    # -- 3. models: one parent, two adapters (teacher = GRPO, student = fresh); A at parent and grpo
    tok = load_tokenizer(parent, trust_remote_code=p.model.trust_remote_code)
    model = PeftModel.from_pretrained(load_for_training(parent, p.model), args.grpo, adapter_name="teacher")
    with model.disable_adapter():
        acc_parent, loss_parent = matrix_row(model, tok, evals, cfg)
    model.set_adapter("teacher")
    acc_grpo, loss_grpo = matrix_row(model, tok, evals, cfg)

    if not cfg.enabled:  # ablation: no sleep, the GRPO adapter goes straight to merge
        teacher_4bit = bool((lineage.read(args.grpo) or {}).get("loaded_in_4bit", False))
        with run.saving(note="disabled: grpo adapter passed through", loaded_in_4bit=teacher_4bit) as tmp:
            shutil.copytree(args.grpo, tmp, dirs_exist_ok=True)
        cl = continual.cl_metrics(
            [acc_parent, acc_grpo], L=[loss_parent, loss_grpo], boundaries=BOUNDARIES[:2], tasks=TASK_TYPES
        )
        run.finish({"enabled": False, **cl})
        return

    # -- 4. the mix: replay, grpo's prompts and pseudo-rehearsal, answered by the teacher
    grpo_prompts = [prompt_messages(t) for t in grpo_tasks]
    n_pseudo = round(cfg.pseudo_ratio / (1 - cfg.pseudo_ratio) * len(replay))
    pseudo_prompts = [m for m, _ in rng.sample(replay, min(n_pseudo, len(replay)))]
    asks = grpo_prompts + pseudo_prompts
    gen = SamplingParams(**cfg.generation.model_dump())
    answers = sample(
        model, tok, asks, [item_seed(seed, "cls", i) for i in range(len(asks))], gen, desc="teacher samples"
    )
    wake = list(zip(grpo_prompts, answers[: len(grpo_prompts)], strict=True))
    pseudo = list(zip(pseudo_prompts, answers[len(grpo_prompts) :], strict=True))
    mix = replay + wake + pseudo
    rng.shuffle(mix)

    # -- 5. signals and the sleep-pressure scheduler
    with model.disable_adapter():
        parent_acc, _ = sleep.token_stats(model, tok, replay, cfg.batch_size, cfg.max_length)
    teacher_acc, _ = sleep.token_stats(model, tok, replay, cfg.batch_size, cfg.max_length)
    signals = {
        "saturation": sleep.adapter_norm(model, "teacher"),  # how far the fast learner moved
        "novelty": sleep.adapter_kl(model, tok, replay, cfg.batch_size, cfg.max_length),  # teacher-vs-parent KL
        "forgetting": max(0.0, parent_acc - teacher_acc),  # drop in replay token accuracy
    }
    scheduler = continual.SleepPressureParams.from_dict(cfg.scheduler.model_dump())
    steps, pressure, _ = continual.sleep_steps(signals, scheduler)

    # -- 6. student adapter, Fisher under the parent (student = 0 update), then sleep
    model.add_adapter("student", lora_config(cfg.lora))
    model.set_adapter("student")
    anchor = {n: w.detach().clone() for n, w in sleep.trainable(model).items()}
    fisher_rows = rng.sample(mix, min(cfg.fisher_samples, len(mix)))
    fisher = sleep.fisher_diagonal(model, tok, fisher_rows, cfg.max_length)
    result = sleep.consolidate(
        model,
        tok,
        mix,
        steps=steps,
        batch_size=cfg.batch_size,
        max_length=cfg.max_length,
        temperature=cfg.temperature,
        learning_rate=cfg.learning_rate,
        ewc_lambda=cfg.ewc_lambda,
        fisher=fisher,
        anchor=anchor,
    )
    acc_sleep, loss_sleep = matrix_row(model, tok, evals, cfg)

    # -- 7. save the student adapter, then metrics
    run.save(model, tok, adapter="student")
    A, L = [acc_parent, acc_grpo, acc_sleep], [loss_parent, loss_grpo, loss_sleep]
    run.finish(
        {
            "enabled": True,
            **continual.cl_metrics(A, L=L, boundaries=BOUNDARIES, tasks=TASK_TYPES),
            "signals": {k: round(v, 4) for k, v in signals.items()},
            "sleep_pressure": round(pressure, 4),
            "sleep_steps": steps,
            "final_kl": round(result.kls[-1], 4) if result.kls else None,
            "non_finite_step_count": result.non_finite,
            "mix": {"replay": len(replay), "grpo_prompts": len(wake), "pseudo": len(pseudo)},
            **continual.sleep_batch_metrics(
                replay_batch_size=round(cfg.batch_size * len(replay) / len(mix)),
                pseudo_batch_size=round(cfg.batch_size * len(pseudo) / len(mix)),
                fisher_replay_samples=sum(r in replay for r in fisher_rows),
                fisher_pseudo_samples=sum(r in pseudo for r in fisher_rows),
            ),
        }
    )


if __name__ == "__main__":
    run_stage(main)
