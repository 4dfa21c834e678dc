"""Per-example transforms from task records to the rows TRL trainers take (typed dict -> dict)."""

from __future__ import annotations

from typing import Any

from bioreasoner.records import Task


def prompt_messages(task: Task) -> list[dict[str, str]]:
    return [m.model_dump() for m in task.messages]


def to_sft_row(task: Task) -> dict[str, Any]:
    """Conversational prompt-completion: TRL masks the prompt (completion_only_loss)."""
    return {
        "prompt": prompt_messages(task),
        "completion": [{"role": "assistant", "content": task.reference}],
        "task_id": task.id,
    }
