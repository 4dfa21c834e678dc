"""The whole DAG on a micro config in a temp repo: `dvc repro` runs harvest through eval@v3_0,
`dvc metrics show` has the lineage, and `dvc exp run -S grpo.beta=0.05` re-runs grpo and only
what depends on it (read from which stages ran)."""

from __future__ import annotations

import re
import subprocess

import pytest
import yaml

from tests.conftest import DVC, copy_project

pytestmark = pytest.mark.slow

DOWNSTREAM_OF_GRPO = {"grpo", "cls_sleep", "merge@v3_0", "eval@v3_0", "report"}


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


def dvc(cwd, *args):
    res = subprocess.run([DVC, *args], cwd=cwd, capture_output=True, text=True, timeout=1200)
    assert res.returncode == 0, f"dvc {' '.join(args)}:\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}"
    return res.stdout


def ran(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    proj = copy_project(tmp_path_factory.mktemp("dag"))
    params = micro(yaml.safe_load((proj / "params.yaml").read_text()))
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for cmd in (["init", "-q"], ["config", "user.email", "t@t"], ["config", "user.name", "t"]):
        subprocess.run(["git", *cmd], cwd=proj, check=True)
    dvc(proj, "init", "-q")
    subprocess.run(["git", "add", "-A"], cwd=proj, check=True)
    subprocess.run(["git", "commit", "-qm", "micro"], cwd=proj, check=True)
    out = dvc(proj, "repro")
    subprocess.run(["git", "add", "-A"], cwd=proj, check=True)
    subprocess.run(["git", "commit", "-qm", "repro"], cwd=proj, check=True)
    return proj, out


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
