"""Per-example transforms from task records to the rows TRL trainers take (typed dict -> dict)."""

from __future__ import annotations

from typing import Any

from bioreasoner.core.records import Pair, Task


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
