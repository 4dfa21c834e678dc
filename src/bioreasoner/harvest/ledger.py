"""Counting what harvest saw, kept and dropped; deciding what a malformed record does."""

from __future__ import annotations

import glob
import logging
from collections import Counter
from pathlib import Path
from typing import Literal

from bioreasoner.core.io import BadInputError

log = logging.getLogger(__name__)

OnBad = Literal["error", "skip"]


class Ledger:
    """Per-source tallies. Normal gaps in real data are `drop`s; malformed records are `bad`."""

    def __init__(self, on_bad_record: OnBad = "error"):
        if on_bad_record not in ("error", "skip"):
            raise ValueError(f"harvest.on_bad_record must be 'error' or 'skip', got {on_bad_record!r}")
        self.on_bad_record = on_bad_record
        self.records_in = 0
        self.dropped: Counter[str] = Counter()

    def seen(self, n: int = 1) -> None:
        self.records_in += n

    def drop(self, reason: str) -> None:
        self.dropped[reason] += 1

    def bad(self, path: str | Path, where: str, problem: str) -> None:
        """A malformed record: stop the stage, or (on_bad_record: skip) drop and count it."""
        if self.on_bad_record == "error":
            raise BadInputError(path, where, problem)
        log.warning("skipping malformed record: %s: %s: %s", path, where, problem)
        self.dropped["malformed"] += 1


def expand_paths(pattern: str, kind: str) -> list[Path]:
    """Files matching a source's `path` glob, sorted; none is an error naming the glob."""
    paths = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
    if not paths:
        raise BadInputError(pattern, None, f"source '{kind}': no file matches this path")
    return paths
