"""The DVC pipeline's data stages end to end in a temp git repo: repro, a no-op second repro,
identical md5s across clean runs, and a failing stage that leaves dvc.lock alone. (Training
stages have their own tests; running them here twice would cost minutes.)"""

from __future__ import annotations

import subprocess

import pytest
import yaml

from bioreasoner.core import lineage
from tests.conftest import DVC, copy_project

pytestmark = pytest.mark.slow

DATA_OUTS = ("data/corpus.jsonl", "data/tasks/train.jsonl", "data/tasks/test.jsonl")
TARGETS = ("base", "build_triplets")


def sh(cwd, *cmd, check=True):
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=900)
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{res.stdout}\n{res.stderr}")
    return res


def init_repo(project):
    sh(project, "git", "init", "-q")
    sh(project, DVC, "init", "-q")
    sh(project, DVC, "config", "core.analytics", "false")


def lock_md5s(project) -> dict[str, str]:
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    return {o["path"]: o["md5"] for st in lock["stages"].values() for o in st.get("outs", [])}


@pytest.fixture(scope="module")
def repro_twice(tmp_path_factory):
    projects = []
    for i in range(2):
        proj = copy_project(tmp_path_factory.mktemp(f"pipe{i}"))
        init_repo(proj)
        sh(proj, DVC, "repro", *TARGETS)
        projects.append(proj)
    return projects


def test_second_repro_changes_nothing(repro_twice):
    res = sh(repro_twice[0], DVC, "repro", *TARGETS)
    assert "Data and pipelines are up to date" in res.stdout
    assert "Running stage" not in res.stdout


def test_clean_runs_give_identical_md5s(repro_twice):
    a, b = (lock_md5s(p) for p in repro_twice)
    for out in DATA_OUTS:
        assert a[out] == b[out], out
    assert a == b  # the base model too: seeded init, deterministic tokenizer training


def test_failed_stage_leaves_lock_unchanged(repro_twice):
    proj = repro_twice[1]
    before = (proj / "dvc.lock").read_text()
    (proj / "data/sources/pubmedqa/ori_pqal.json").write_text('{"1": {"QUESTION": "Q?"')
    res = sh(proj, DVC, "repro", *TARGETS, check=False)
    assert res.returncode != 0
    assert "ori_pqal.json: line 1: malformed JSON" in res.stderr + res.stdout
    assert (proj / "dvc.lock").read_text() == before


def test_lineage_hashes_are_the_dvc_lock_hashes(repro_twice):
    proj = repro_twice[0]
    lock = yaml.safe_load((proj / "dvc.lock").read_text())["stages"]
    base_lineage = lineage.read(proj / "models/base")
    corpus_md5 = next(d["md5"] for d in lock["base"]["deps"] if d["path"] == "data/corpus.jsonl")
    assert base_lineage["inputs"]["data/corpus.jsonl"] == corpus_md5
    assert lineage.dvc_md5(proj / "models/base") == lock_md5s(proj)["models/base"]  # a folder's .dir hash
