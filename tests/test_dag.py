"""The whole DAG on a micro config in a temp repo: `dvc repro` runs harvest through eval@v3_0,
`dvc metrics show` has the lineage, and `dvc exp run -S grpo.beta=0.05` re-runs grpo and only
what depends on it (read from which stages ran)."""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.conftest import DVC
from tests.micro_dag import copy

pytestmark = pytest.mark.slow

DOWNSTREAM_OF_GRPO = {"grpo", "cls_sleep", "merge@v3_0", "eval@v3_0", "report"}


def dvc(cwd, *args):
    res = subprocess.run([DVC, *args], cwd=cwd, capture_output=True, text=True, timeout=1200)
    assert res.returncode == 0, f"dvc {' '.join(args)}:\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}"
    return res.stdout


def ran(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


@pytest.fixture(scope="module")
def repo(micro_dag, tmp_path_factory):
    built, out = micro_dag
    return copy(built, tmp_path_factory.mktemp("dag") / "proj"), out


def test_repro_runs_the_whole_dag(repo):
    proj, out = repo
    stages = ran(out)
    assert {"harvest", "sft", "dpo@v2_0", "dpo@v2_1", "grpo", "cls_sleep", "eval@v3_0", "report"} <= stages
    shown = dvc(proj, "metrics", "show", "--json")
    for version in ("base", "sft", "v2_0", "v2_1", "v3_0"):
        assert f"metrics/eval/{version}.json" in shown
    assert "metrics/lineage.json" in shown and (proj / "reports" / "lineage.svg").is_file()
    assert "Data and pipelines are up to date" in dvc(proj, "status")


def test_grpo_beta_reruns_only_grpo_and_its_dependents(repo):
    proj, _ = repo
    out = dvc(proj, "exp", "run", "-S", "grpo.beta=0.05")
    assert ran(out) == DOWNSTREAM_OF_GRPO, out[-3000:]


def test_a_mistyped_param_fails_fast_and_leaves_the_lock(repo):
    """A typo beside the real key: DVC's own `-S grpo.betta=...` refuses a key that is not in
    params.yaml, and `-S +grpo.betta=...` (append) is refused by the first stage that reads it,
    with one line naming the key and the nearest valid one; dvc.lock is untouched."""
    proj, _ = repo
    before = (proj / "dvc.lock").read_text()
    res = subprocess.run([DVC, "exp", "run", "-S", "grpo.betta=0.05"], cwd=proj, capture_output=True, text=True)
    assert res.returncode != 0 and "Could not override 'grpo.betta'" in res.stderr
    res = subprocess.run([DVC, "exp", "run", "-S", "+grpo.betta=0.05"], cwd=proj, capture_output=True, text=True)
    out = res.stdout + res.stderr
    assert res.returncode != 0
    assert "error: params.yaml: grpo.betta: unknown key (did you mean 'beta'?)" in out
    assert "Traceback" not in out
    assert (proj / "dvc.lock").read_text() == before
