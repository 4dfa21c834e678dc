"""Pieces every training stage shares: LoRA config, resumable checkpoints, DVCLive logging,
the supervised-token guard and the quantization check. No wrapper around the trainers:
stages build TRL trainers themselves and use these helpers for what repeats."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig
from transformers import TrainerCallback
from transformers.trainer_utils import get_last_checkpoint

log = logging.getLogger(__name__)


def lora_config(cfg: dict[str, Any]) -> LoraConfig:
    return LoraConfig(
        r=cfg["r"],
        lora_alpha=cfg["alpha"],
        lora_dropout=cfg["dropout"],
        target_modules=list(cfg["target_modules"]),
        # The tiny base starts from random embeddings, which LoRA cannot move: train them in full.
        modules_to_save=list(cfg.get("modules_to_save") or []) or None,
        task_type="CAUSAL_LM",
    )


def check_quantization(mode: str) -> None:
    """QLoRA needs CUDA and bitsandbytes; say so plainly instead of failing deep in a kernel."""
    if mode == "none":
        return
    if mode != "4bit":
        raise ValueError(f"model.quantization must be 'none' or '4bit', got {mode!r}")
    if not torch.cuda.is_available():
        raise RuntimeError("model.quantization: 4bit (QLoRA) needs a CUDA GPU; none is available. Use 'none'.")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as err:
        raise RuntimeError("model.quantization: 4bit needs bitsandbytes: pip install -e '.[cuda]'") from err


def fingerprint(params: Any, files: Iterable[str | Path]) -> str:
    """Hash of the params and input files a run depends on: checkpoints of another run never resume this one."""
    h = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode())
    for f in sorted(str(p) for p in files):
        for path in sorted(Path(f).rglob("*")) if Path(f).is_dir() else [Path(f)]:
            if path.is_file():
                h.update(path.name.encode())
                h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()[:16]


def checkpoint_dir(root: str | Path, key: str) -> tuple[Path, str | None]:
    """(checkpoint folder for this run, last checkpoint to resume from or None).

    The folder lives outside the stage's outs (DVC deletes outs before a stage runs) and is
    keyed by `fingerprint`; folders of other fingerprints are stale and removed.
    """
    root = Path(root)
    if root.is_dir():
        for stale in root.iterdir():
            if stale.name != key:
                shutil.rmtree(stale, ignore_errors=True)
    out = root / key
    out.mkdir(parents=True, exist_ok=True)
    last = last_complete_checkpoint(out)
    if last:
        log.info("resuming from %s", last)
    return out, last


# What a checkpoint holds once the Trainer has finished writing it (trainer_state.json comes last).
CHECKPOINT_FILES = ("trainer_state.json", "optimizer.pt", "scheduler.pt")


def last_complete_checkpoint(folder: Path) -> str | None:
    """The newest checkpoint written in full. A kill mid-save leaves a partial folder that
    `Trainer` cannot load (measured in tests/test_sft_resume.py): drop it, use the one before."""
    while (last := get_last_checkpoint(str(folder))) is not None:
        if all((Path(last) / f).is_file() for f in CHECKPOINT_FILES):
            return last
        log.warning("removing incomplete checkpoint %s", last)
        shutil.rmtree(last)
    return None


class SupervisedFraction:
    """Wraps a collator and remembers the share of tokens that carry a label (not -100).

    A fraction near 1.0 means prompt tokens are being trained on: the seeds/002 bug.
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


def dvclive_callback(directory: str | Path, resume: bool) -> TrainerCallback:
    """DVCLive logging into `directory`; plots are declared in dvc.yaml, not written by DVCLive."""
    from dvclive import Live
    from transformers.integrations import DVCLiveCallback

    return DVCLiveCallback(live=Live(str(directory), resume=resume, dvcyaml=None, save_dvc_exp=False))


def final_log(log_history: list[dict[str, Any]], key: str) -> float | None:
    """The last value of `key` the trainer logged."""
    for entry in reversed(log_history):
        if key in entry:
            return entry[key]
    return None
