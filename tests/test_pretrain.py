"""Pre-training the tiny base: fresh PMIDs in every pass (copied, never remembered), a held-out
validation split, and the stage end to end on a micro config."""

from __future__ import annotations

import json
import random

import pytest
import yaml

from bioreasoner.training.pretrain import (
    PMID_TAG,
    fresh_pmid,
    pretraining_rows,
    split_validation,
    with_fresh_pmids,
)
from tests.conftest import copy_project, run_stage
from tests.tiny import make_task


def test_fresh_pmids_are_consistent_within_a_text_and_new_in_every_pass():
    texts = ["Paper [PMID:123]: a. Paper [PMID:456]: b.", "<think>[PMID:456] and [PMID:123], [PMID:123]</think>"]
    once = with_fresh_pmids(texts, random.Random(0))
    first = PMID_TAG.findall(once[0])
    assert len(set(first)) == 2 and not {"123", "456"} & set(first)  # the real ids are gone
    assert PMID_TAG.findall(once[1]) == [first[1], first[0], first[0]]  # same id, same stand-in
    again = with_fresh_pmids(texts, random.Random(1))
    assert PMID_TAG.findall(again[0]) != first  # another pass, other numbers


@pytest.mark.parametrize("seed", range(20))
def test_fresh_pmid_looks_like_a_pubmed_id(seed):
    p = fresh_pmid(random.Random(seed))
    assert p.isdigit() and len(p) in (7, 8) and p[0] in "123"


def test_validation_split_is_disjoint_and_every_nth_task():
    tasks = [make_task(i) for i in range(25)]
    train, val = split_validation(tasks, 10)
    assert [t.id for t in val] == ["qa-0", "qa-10", "qa-20"]
    assert not {t.id for t in train} & {t.id for t in val} and len(train) + len(val) == 25


def test_rows_are_seeded_and_cover_the_tasks():
    tasks = [make_task(i) for i in range(5)]
    a, b = pretraining_rows(tasks, 12, seed=3), pretraining_rows(tasks, 12, seed=3)
    assert a == b and len(a) == 12
    assert pretraining_rows(tasks, 12, seed=4) != a
    for i in range(5):  # every task is in the first pass, with its own words and a fresh PMID
        assert any(f"Question {i}?" in r["text"] and f"[PMID:{1000 + i}]" not in r["text"] for r in a[:5])


@pytest.mark.slow
def test_stage_trains_and_reports_the_copy_check_before_and_after(tmp_path):
    proj = copy_project(tmp_path / "proj")
    params = yaml.safe_load((proj / "params.yaml").read_text())
    params["pretrain"].update(
        max_steps=2, per_device_train_batch_size=2, logging_steps=1, warmup_steps=0, validation_max_tasks=3
    )
    (proj / "params.yaml").write_text(yaml.safe_dump(params))
    for script in ("harvest.py", "build_triplets.py", "base.py", "pretrain.py"):
        res = run_stage(proj, script)
        assert res.returncode == 0, f"{script}: {res.stderr[-2000:]}"
    metrics = json.loads((proj / "metrics/pretrain.json").read_text())
    assert metrics["global_step"] == 2 and metrics["texts"] == 4
    for key in ("validation_before", "validation"):
        assert metrics[key]["tasks"] == 3 and metrics[key]["pmids"] > 0
    # the circuit copies before any training: later PMID tokens are predicted from the context
    assert metrics["validation_before"]["pmid_continuation_accuracy"] > 0.9
    out = proj / "models/pretrained"
    assert (out / "model.safetensors").is_file() and (out / "lineage.json").is_file()
    assert (proj / "dvclive/pretrain").is_dir()
