"""Test helpers: the project's params.yaml with edits, validated as a stage would load it, and a
`TrainingRun` rooted in a temp folder (for tests that build a stage's trainer themselves)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

from bioreasoner.core import config
from bioreasoner.training.lifecycle import TrainingRun
from tests.conftest import ROOT

Edit = Callable[[dict[str, Any]], None]
_BASE = yaml.safe_load((ROOT / "params.yaml").read_text())


def params_data(edit: Edit | None = None) -> dict[str, Any]:
    """params.yaml as data, after `edit` (which changes the dict in place)."""
    data = copy.deepcopy(_BASE)
    if edit is not None:
        edit(data)
    return data


def write_params(path: Path, edit: Edit | None = None) -> Path:
    path.write_text(yaml.safe_dump(params_data(edit)))
    return path


def stage_params(stage: ModuleType, edit: Edit | None = None) -> config.StageParams:
    """What `config.load(..., sections=stage.SECTIONS)` gives the stage, for edited params."""
    return config.StageParams(config.validate(params_data(edit)), stage.SECTIONS)


def tmp_run(tmp_path: Path, name: str = "t", **kwargs: Any) -> TrainingRun:
    return TrainingRun(
        name, {}, [], out=tmp_path / "out", metrics=tmp_path / "metrics.json", checkpoints=tmp_path / "ckpt", **kwargs
    )
