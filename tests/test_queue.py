"""Parallel experiments through DVC's queue on the micro DAG: two values of `sft.learning_rate`
queued with `dvc exp run --queue`, run by `dvc queue start -j 2` (two workers, each in its own
temp workspace, the cache shared), both succeed and give different results."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from tests.conftest import DVC
from tests.micro_dag import copy, dvc

pytestmark = pytest.mark.slow

GRID = {"lr-2e-3": "2e-3", "lr-4e-3": "4e-3"}  # neither is the committed value: both must train
WAIT_S = 600


def pending(repo, names) -> list[str]:
    lines = dvc(repo, "queue", "status").splitlines()
    return [ln for ln in lines if any(n in ln for n in names) and ("Running" in ln or "Queued" in ln)]


def sft_metrics(repo) -> dict[str, dict]:
    """Experiment name -> its metrics/sft.json, from `dvc exp show --json`."""
    out = {}
    for commit in json.loads(dvc(repo, "exp", "show", "--json")):
        for exp in commit.get("experiments") or []:
            for rev in exp.get("revs") or []:
                data = ((rev.get("data") or {}).get("metrics") or {}).get("metrics/sft.json") or {}
                if rev.get("name") in GRID and "data" in data:
                    out[rev["name"]] = data["data"]
    return out


def test_queue_runs_a_grid_with_two_workers(micro_dag, tmp_path):
    repo = copy(micro_dag[0], tmp_path / "proj")
    for name, lr in GRID.items():
        dvc(repo, "exp", "run", "sft", "--queue", "-n", name, "-S", f"sft.learning_rate={lr}")
    assert len(pending(repo, GRID)) == 2  # queued, nothing ran yet
    dvc(repo, "queue", "start", "-j", "2")
    try:
        deadline = time.monotonic() + WAIT_S
        while pending(repo, GRID) and time.monotonic() < deadline:
            time.sleep(2)
        status = dvc(repo, "queue", "status")
    finally:
        subprocess.run([DVC, "queue", "stop"], cwd=repo, capture_output=True, timeout=120)
    logs = {n: subprocess.run([DVC, "queue", "logs", n], cwd=repo, capture_output=True, text=True).stdout for n in GRID}
    for name in GRID:
        assert any(name in ln and "Success" in ln for ln in status.splitlines()), f"{status}\n{logs[name][-3000:]}"
        assert "Running stage 'sft'" in logs[name]  # trained, not restored from the run-cache
    metrics = sft_metrics(repo)
    assert set(metrics) == set(GRID), metrics
    losses = {n: m["train_loss"] for n, m in metrics.items()}
    assert losses["lr-2e-3"] != losses["lr-4e-3"], losses  # the learning rate changed the second step
