"""The held-out split is by paper: the official PubMedQA test PMIDs are the test papers."""

from __future__ import annotations

from pathlib import Path

from bioreasoner.core.io import BadInputError, read_json


def read_test_pmids(path: str | Path) -> set[str]:
    """PMIDs from `test_ground_truth.json` ({pmid: decision}) or a JSON list of PMIDs."""
    data = read_json(path)
    pmids = list(data) if isinstance(data, dict | list) else None
    if not pmids or not all(isinstance(p, str | int) and str(p).isdigit() for p in pmids):
        raise BadInputError(path, None, "expected a non-empty JSON object keyed by PMID or a list of PMIDs")
    return {str(p) for p in pmids}


def assert_no_leakage(train_tasks, test_pmids: set[str]) -> None:
    """No train task may show a test paper among its sources."""
    for task in train_tasks:
        leaked = set(task.source_pmids) & test_pmids
        if leaked:
            raise AssertionError(f"train task {task.id} uses test paper(s) {sorted(leaked)}")
