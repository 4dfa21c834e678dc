"""The whole DAG on a micro config, built once per test session and copied by the tests that
need a repo that has run (tests/test_dag.py, tests/test_storage.py): a full `dvc repro` costs
minutes on 2 cores, a copy of the result a second.

History of the built repo (what the storage tests clone):
    micro     sources and micro params, no dvc.lock
    pretrain  `dvc repro pretrain`: dvc.lock and the git-tracked outs up to pretrain, as the
              project ships them (models/pretrained is committed to git)
    repro     `dvc repro`: everything else
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

from tests.conftest import DVC, copy_project


def micro(params: dict) -> dict:
    """Every stage at its smallest: seconds, not minutes. Same code paths as the default."""
    gen = {"temperature": 0.7, "top_p": 0.95, "max_new_tokens": 8, "batch_size": 8}
    params["pretrain"].update(
        max_steps=2,
        per_device_train_batch_size=2,
        logging_steps=1,
        save_steps=100,
        warmup_steps=0,
        validation_max_tasks=2,
    )
    params["sft"].update(max_steps=2, per_device_train_batch_size=2, logging_steps=1, save_steps=100, warmup_steps=0)
    params["eval"].update(generation=gen, max_tasks_per_type=1)
    for r in params["rounds"].values():
        r.update(prompts=3, samples_per_prompt=2, generation=gen)
    params["dpo"].update(max_steps=2, per_device_train_batch_size=2, logging_steps=1)
    params["grpo"].update(
        prompts=2, max_steps=1, per_device_train_batch_size=2, num_generations=2, max_completion_length=8
    )
    params["cls"].update(
        replay_sft=2,
        replay_chosen_per_round=1,
        eval_per_type=1,
        fisher_samples=2,
        generation={**gen, "batch_size": 4},
    )
    params["cls"]["scheduler"].update(min_sleep_steps=1, max_sleep_steps=2)
    return params


def dvc(cwd: Path, *args: str) -> str:
    res = subprocess.run([DVC, *args], cwd=cwd, capture_output=True, text=True, timeout=1200)
    assert res.returncode == 0, f"dvc {' '.join(args)}:\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}"
    return res.stdout


def git(cwd: Path, *args: str) -> str:
    res = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, f"git {' '.join(args)}:\n{res.stdout}\n{res.stderr}"
    return res.stdout.strip()


def build(dst: Path) -> tuple[Path, str]:
    """(the repo, the output of both `dvc repro` runs)."""
    proj = copy_project(dst)
    params = micro(yaml.safe_load((proj / "params.yaml").read_text()))
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git(proj, "init", "-q", "-b", "main")
    for key, value in (
        ("user.email", "t@t"),
        ("user.name", "t"),
        ("commit.gpgsign", "false"),
        ("tag.gpgsign", "false"),
    ):
        git(proj, "config", key, value)
    dvc(proj, "init", "-q")
    git(proj, "add", "-A")
    git(proj, "commit", "-qm", "micro")
    out = dvc(proj, "repro", "pretrain")
    git(proj, "add", "-A")
    git(proj, "commit", "-qm", "pretrain")
    out += dvc(proj, "repro")
    git(proj, "add", "-A")
    git(proj, "commit", "-qm", "repro")
    return proj, out


def copy(built: Path, dst: Path) -> Path:
    """A private copy of the built repo (git history, workspace and DVC cache)."""
    return Path(shutil.copytree(built, dst, symlinks=True))
