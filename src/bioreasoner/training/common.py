"""Checkpoint bookkeeping shared by every resumable stage (training and generation alike):
a run's fingerprint, its checkpoint folder and the last checkpoint written in full.

Training stages use these through `bioreasoner.training.lifecycle.TrainingRun`; stages that
resume without a Trainer (generate_candidates) use them directly. Kept free of torch and
TRL imports so that such stages stay light.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from transformers.trainer_utils import get_last_checkpoint

log = logging.getLogger(__name__)

# What a checkpoint holds once the Trainer has finished writing it (trainer_state.json comes last).
CHECKPOINT_FILES = ("trainer_state.json", "optimizer.pt", "scheduler.pt")


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


def last_complete_checkpoint(folder: Path) -> str | None:
    """The newest checkpoint written in full. A kill mid-save leaves a partial folder that
    `Trainer` cannot load (measured in tests/test_sft_resume.py): drop it, use the one before."""
    while (last := get_last_checkpoint(str(folder))) is not None:
        if all((Path(last) / f).is_file() for f in CHECKPOINT_FILES):
            return last
        log.warning("removing incomplete checkpoint %s", last)
        shutil.rmtree(last)
    return None
