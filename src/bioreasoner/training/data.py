"""What training stages read and the rows TRL trainers take.

- `read_tasks` / `read_task_ids`: a stage's input checked for what would otherwise train
  nothing or train twice: an empty file is one `BadInputError` line (not an untrained adapter
  with exit 0, nor a `StopIteration` deep in a dataloader), and a repeated task id is refused
  (the task would weigh double, and ids key the choices later stages read).
- Per-example transforms from records to rows (typed record -> dict).
- `SupervisedFraction`: the share of tokens a batch supervises, logged every step [D4].
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict
from transformers import TrainerCallback

from bioreasoner.core.io import BadInputError, iter_jsonl, read_text, write_jsonl
from bioreasoner.core.records import Pair, Task


class TaskRef(BaseModel):
    """One line of a task-id list (e.g. `data/grpo/prompts.jsonl`: the prompts grpo trained on)."""

    model_config = ConfigDict(extra="forbid")
    task_id: str


def _lines(path: str | Path) -> list[int]:
    """Line number of each record (`iter_jsonl` yields one per non-blank line)."""
    return [n for n, line in enumerate(read_text(path).split("\n"), start=1) if line.strip()]


def _unique(ids: Sequence[str], path: str | Path) -> None:
    first: dict[str, int] = {}
    for i, task_id in enumerate(ids):
        if task_id in first:
            lines = _lines(path)
            raise BadInputError(
                path, f"line {lines[i]}", f"duplicate task id {task_id!r} (first on line {lines[first[task_id]]})"
            )
        first[task_id] = i


def read_tasks(path: str | Path, *, what: str = "train tasks") -> list[Task]:
    """Tasks from a JSONL file: at least one, ids unique."""
    tasks = list(iter_jsonl(path, Task))
    if not tasks:
        raise BadInputError(path, None, f"no {what}: the file is empty, there is nothing to train on")
    _unique([t.id for t in tasks], path)
    return tasks


def write_task_ids(path: str | Path, tasks: Sequence[Task]) -> int:
    """The ids of `tasks`, in order: a choice made here that a later stage reads as a file."""
    return write_jsonl(path, (TaskRef(task_id=t.id) for t in tasks))


def read_task_ids(path: str | Path, tasks: Sequence[Task]) -> list[Task]:
    """The tasks named in an id list, in its order; ids must be unique and among `tasks`."""
    refs = list(iter_jsonl(path, TaskRef))
    if not refs:
        raise BadInputError(path, None, "no task ids: the file is empty")
    _unique([r.task_id for r in refs], path)
    by_id = {t.id: t for t in tasks}
    missing = next((i for i, r in enumerate(refs) if r.task_id not in by_id), None)
    if missing is not None:
        raise BadInputError(
            path, f"line {_lines(path)[missing]}", f"task id {refs[missing].task_id!r} is not a train task"
        )
    return [by_id[r.task_id] for r in refs]


def prompt_messages(task: Task) -> list[dict[str, str]]:
    return [m.model_dump() for m in task.messages]


def to_sft_row(task: Task) -> dict[str, Any]:
    """Conversational prompt-completion: TRL masks the prompt (completion_only_loss)."""
    return {
        "prompt": prompt_messages(task),
        "completion": [{"role": "assistant", "content": task.reference}],
        "task_id": task.id,
    }


def to_dpo_row(pair: Pair) -> dict[str, Any]:
    """Conversational preference row (prompt / chosen / rejected message lists) for TRL's DPOTrainer."""
    return {
        "prompt": [m.model_dump() for m in pair.prompt],
        "chosen": [m.model_dump() for m in pair.chosen],
        "rejected": [m.model_dump() for m in pair.rejected],
        "task_id": pair.task_id,
    }


class SupervisedFraction:
    """Wraps a collator and remembers the share of tokens that carry a label (not -100).

    A fraction near 1.0 means prompt tokens are being trained on: the bug of [D4].
    """

    def __init__(self, collator: Callable[[list[Any]], dict[str, Any]]):
        self.collator = collator
        self.supervised = 0
        self.total = 0
        self.last: float | None = None

    def __call__(self, examples: list[Any]) -> dict[str, Any]:
        batch = self.collator(examples)
        attn = batch.get("attention_mask")
        self.total += int(attn.sum()) if attn is not None else batch["labels"].numel()
        self.supervised += int((batch["labels"] != -100).sum())
        return batch

    def pop(self) -> float | None:
        """The fraction over batches collated since the last call. The dataloader collates one
        batch ahead, so a window can be empty: then the previous value stands."""
        if self.total:
            self.last = self.supervised / self.total
        self.supervised = self.total = 0
        return self.last


class LogSupervisedFraction(TrainerCallback):
    """Adds `supervised_token_fraction` to every log line (and so to DVCLive)."""

    def __init__(self, counter: SupervisedFraction):
        self.counter = counter

    def on_log(self, args, state, control, logs=None, **kwargs):
        frac = self.counter.pop()
        if logs is not None and frac is not None and "loss" in logs:
            logs["supervised_token_fraction"] = round(frac, 4)  # DVCLive's callback reads this dict
            state.log_history[-1]["supervised_token_fraction"] = logs["supervised_token_fraction"]
