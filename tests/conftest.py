"""Shared fixtures. Tests never touch the network; servers they need bind 127.0.0.1."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the suite may download
os.environ.setdefault("DVC_NO_ANALYTICS", "1")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A throwaway copy of the project (tracked sources only) to run stages or dvc in."""
    dst = tmp_path / "proj"
    for name in ("dvc.yaml", "params.yaml", "stages", "src", "data/sources", ".dvcignore"):
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dst / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / name)
    return dst


def run_stage(project: Path, script: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run `python stages/<script>` inside `project` the way `dvc repro` does."""
    return subprocess.run(
        [sys.executable, f"stages/{script}", *args], cwd=project, capture_output=True, text=True, timeout=600
    )
