"""Preference rounds: rounds as data (a v2_2 is a params edit), generate_candidates (resume after
kill -9, forced think prefix), the vllm backend's error, the underpowered warning, and a micro
DPO run whose reference is the policy with the adapter disabled."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from bioreasoner.core import config
from bioreasoner.core.records import Candidate
from bioreasoner.modeling.generation import check_backend
from bioreasoner.training.rounds import select_prompts
from tests.conftest import DVC, ROOT, run_stage
from tests.params_edit import params_data, stage_params, tmp_run
from tests.tiny import load_stage, make_task


def test_round_dpo_overrides_merge_key_by_key():
    def edit(params):
        params["rounds"]["v2_1"]["dpo"] = {"lora": {"r": 32}, "beta": 0.2}

    p = config.validate(params_data(edit))
    merged = p.round_dpo("v2_1")
    assert merged.lora.r == 32 and merged.lora.alpha == p.dpo.lora.alpha  # nested keys merge one by one
    assert merged.beta == 0.2 and merged.learning_rate == p.dpo.learning_rate
    assert p.dpo.lora.r == 16 and p.dpo.beta == 0.1  # the shared section is untouched
    assert p.round_dpo("v2_0") == p.dpo  # no overrides: the shared settings


def test_select_prompts_is_seeded_per_round_and_keeps_file_order():
    tasks = [make_task(i) for i in range(20)]
    a = select_prompts(tasks, 5, seed=1, round_name="v2_0")
    assert a == select_prompts(tasks, 5, seed=1, round_name="v2_0")
    assert a != select_prompts(tasks, 5, seed=1, round_name="v2_1")
    assert [t.id for t in a] == sorted((t.id for t in a), key=lambda i: int(i.split("-")[1]))
    assert select_prompts(tasks, 0, 1, "r") == tasks


def _pool() -> list:
    """100 train-like tasks: 80 qa (48 yes, 24 no, 8 maybe, PubMedQA's skew) and 20 of another type."""
    golds = ["yes"] * 48 + ["no"] * 24 + ["maybe"] * 8
    qa = [make_task(i).model_copy(update={"gold": g}) for i, g in enumerate(golds)]
    return qa + [make_task(100 + i, "gap_analysis") for i in range(20)]


@pytest.mark.parametrize(
    ("n", "want"),
    [
        (
            20,
            {"maybe": 6, "no": 5, "yes": 5, "gap_analysis": 4},
        ),  # qa quota 16: 6/5/5, the remainder to "maybe" (sorted first)
        (
            40,
            {"maybe": 8, "no": 11, "yes": 10, "gap_analysis": 8},
        ),  # maybe's share is 11 but it has 8: all, no more, none moved to yes
        (10, {"maybe": 3, "no": 3, "yes": 2, "gap_analysis": 2}),  # types keep their 80/20 share
    ],
)
def test_select_prompts_gold_stratifies_qa_by_decision_and_types_by_share(n, want):
    from collections import Counter

    tasks = _pool()
    drawn = select_prompts(tasks, n, seed=3, round_name="grpo", stratify="gold")
    assert Counter(t.gold if t.type == "qa" else t.type for t in drawn) == want
    assert drawn == select_prompts(tasks, n, seed=3, round_name="grpo", stratify="gold")  # seeded
    assert drawn != select_prompts(tasks, n, seed=4, round_name="grpo", stratify="gold")
    assert [tasks.index(t) for t in drawn] == sorted(tasks.index(t) for t in drawn)  # file order


def test_select_prompts_gold_keeps_all_when_n_covers_them_and_refuses_unknown_modes():
    tasks = _pool()
    assert select_prompts(tasks, 0, 1, "grpo", "gold") == tasks
    assert select_prompts(tasks, 500, 1, "grpo", "gold") == tasks
    with pytest.raises(ValueError, match="stratify"):
        select_prompts(tasks, 5, 1, "grpo", "label")


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the CPU-only error")
def test_vllm_backend_without_cuda_says_so():
    with pytest.raises(RuntimeError, match="vllm"):
        check_backend("vllm")
    with pytest.raises(ValueError, match="'hf' or 'vllm'"):
        check_backend("tgi")
    check_backend("hf")


@pytest.mark.slow
def test_a_new_round_is_a_params_edit(project):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["rounds"]["v2_2"] = {**params["rounds"]["v2_1"], "policy": "v2_1"}
    params["merge"]["versions"]["v2_2"] = {"parent": "models/merged/v2_1", "adapter": "models/adapters/v2_2"}
    params["eval"]["models"]["v2_2"] = "models/merged/v2_2"
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    subprocess.run([DVC, "init", "-q"], cwd=project, check=True)
    dag = subprocess.run([DVC, "dag", "--dot"], cwd=project, capture_output=True, text=True, check=True).stdout
    for stage in ("generate_candidates", "filter", "build_pairs", "dpo", "merge", "eval"):
        assert f'"{stage}@v2_2"' in dag, stage
    # cls_sleep replays every round with no dvc.yaml edit, and reads grpo's prompts out
    for r in ("v2_0", "v2_1", "v2_2"):
        assert f'"build_pairs@{r}" -> "cls_sleep"' in dag, r
    assert '"grpo" -> "cls_sleep"' in dag
    # and its inputs are v2.1's merged model: the chain continues
    assert '"merge@v2_1" -> "generate_candidates@v2_2"' in dag
    assert '"dpo@v2_2" -> "merge@v2_2"' in dag


# -- generate_candidates on the tiny model -------------------------------------------------------


def write_round(tmp_path, tasks, **overrides):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    rnd = {**params["rounds"]["v2_1"], "prompts": 0, "samples_per_prompt": 2, **overrides}
    rnd["generation"] = {**rnd["generation"], "max_new_tokens": 24, "batch_size": 2, **overrides.get("generation", {})}
    params["rounds"] = {"t": rnd}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "train.jsonl").write_text("".join(t.model_dump_json() + "\n" for t in tasks))


def gen_cmd(tmp_path, policy, run):
    return [
        sys.executable,
        str(ROOT / "stages/generate_candidates.py"),
        "--params",
        str(tmp_path / "params.yaml"),
        "--round",
        "t",
        "--policy",
        str(policy),
        "--tasks",
        str(tmp_path / "train.jsonl"),
        "--out",
        str(tmp_path / run / "candidates.jsonl"),
        "--checkpoints",
        str(tmp_path / run / "ckpt"),
    ]


def run_ok(cmd):
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "TQDM_DISABLE": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    return res


@pytest.mark.slow
def test_generate_candidates_resumes_after_kill(tiny_base, tmp_path):
    policy, tasks = tiny_base
    # one item a batch and long responses: the run is slow enough to kill part-way
    write_round(tmp_path, tasks, generation={"batch_size": 1, "max_new_tokens": 200})
    run_ok(gen_cmd(tmp_path, policy, "straight"))

    proc = subprocess.Popen(gen_cmd(tmp_path, policy, "killed"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while True:
        partial = list((tmp_path / "killed" / "ckpt").glob("*/candidates.partial.jsonl"))
        if partial and len(partial[0].read_text().splitlines()) >= 3:
            break
        assert proc.poll() is None and time.time() < deadline, "run ended before it could be killed"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "candidates.jsonl").exists()
    with open(partial[0], "a") as f:
        f.write('{"task_id": "qa-5", "sam')  # a torn last line, as a kill mid-write leaves

    resumed = run_ok(gen_cmd(tmp_path, policy, "killed"))
    assert "resuming: " in resumed.stderr
    straight = (tmp_path / "straight" / "candidates.jsonl").read_text()
    assert (tmp_path / "killed" / "candidates.jsonl").read_text() == straight
    rows = [Candidate.model_validate_json(line) for line in straight.splitlines()]
    assert len(rows) == len(tasks) * 2 and len({r.seed for r in rows}) == len(rows)
    assert not list((tmp_path / "killed" / "ckpt").iterdir())  # the partial file is gone


def filter_metrics(tmp_path, run):
    cmd = [
        sys.executable,
        str(ROOT / "stages/filter.py"),
        "--params",
        str(tmp_path / "params.yaml"),
        "--round",
        "t",
        "--candidates",
        str(tmp_path / run / "candidates.jsonl"),
        "--tasks",
        str(tmp_path / "train.jsonl"),
        "--out-dir",
        str(tmp_path / run),
        "--metrics",
        str(tmp_path / run / "filter.json"),
    ]
    run_ok(cmd)
    return json.loads((tmp_path / run / "filter.json").read_text())


@pytest.mark.slow
def test_force_think_leaves_no_candidate_without_think(tiny_base, tmp_path):
    policy, tasks = tiny_base
    write_round(tmp_path, tasks, force_think=True)
    run_ok(gen_cmd(tmp_path, policy, "forced"))
    forced = filter_metrics(tmp_path, "forced")
    assert forced["candidates"] == 12 and forced["missing_think_rate"] == 0.0
    write_round(tmp_path, tasks, force_think=False)  # the untrained tiny model rarely opens a block itself
    run_ok(gen_cmd(tmp_path, policy, "free"))
    free = filter_metrics(tmp_path, "free")
    assert free["missing_think_rate"] > 0.5
    assert free["reasons"]["missing_think"] == round(free["missing_think_rate"] * 12)
    rejected = [json.loads(line) for line in (tmp_path / "free" / "rejected.jsonl").read_text().splitlines()]
    assert all(r["reasons"] for r in rejected) and all(r["score"] is not None for r in rejected)


@pytest.mark.slow
def test_too_few_pairs_warn_loudly_and_are_recorded(tmp_path, project):
    tasks = [make_task(i) for i in range(3)]
    (project / "data/tasks").mkdir(parents=True)
    (project / "data/tasks/train.jsonl").write_text("".join(t.model_dump_json() + "\n" for t in tasks))
    rnd = project / "data/rounds/v2_1"
    rnd.mkdir(parents=True)
    good = Candidate(task_id="qa-0", sample=0, seed=0, text="a", score=9.0)
    bad = Candidate(task_id="qa-0", sample=1, seed=1, text="b", score=2.0, reasons=["low_score"])
    (rnd / "passed.jsonl").write_text(good.model_dump_json() + "\n")
    (rnd / "rejected.jsonl").write_text(bad.model_dump_json() + "\n")
    res = run_stage(
        project,
        "build_pairs.py",
        "--round",
        "v2_1",
        "--candidates-dir",
        str(rnd),
        "--out",
        str(rnd / "pairs.jsonl"),
        "--metrics",
        "metrics/pairs.json",
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "UNDERPOWERED" in res.stderr and "dpo.min_pairs = 100" in res.stderr
    metrics = json.loads((project / "metrics/pairs.json").read_text())
    assert metrics["pairs"] == 1 and metrics["underpowered"] is True and metrics["mean_delta"] == 7.0


# -- DPO -----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_dpo_reference_is_the_policy_with_adapter_disabled(tiny_base, tmp_path):
    from peft import PeftModel

    from bioreasoner.training.pairs import distill_pair

    policy, tasks = tiny_base
    dpo = load_stage("dpo")
    p = stage_params(dpo)
    cfg = p.round_dpo("v2_0").model_copy(update={"max_steps": 2, "per_device_train_batch_size": 2, "logging_steps": 1})
    pairs = [
        distill_pair(t, [Candidate(task_id=t.id, sample=0, seed=0, text="no idea", score=2.0)], 8.0) for t in tasks
    ]
    trainer = dpo.build_trainer(p, cfg, pairs, str(policy), tmp_run(tmp_path))
    assert trainer.ref_model is None and isinstance(trainer.model, PeftModel)  # no second copy in memory
    trainer.train()
    logged = [h for h in trainer.state.log_history if "rewards/margins" in h]
    assert logged and all(k in logged[-1] for k in ("rewards/chosen", "rewards/rejected", "rewards/accuracies"))


@pytest.mark.slow
def test_dpo_without_pairs_is_a_recorded_no_op(tiny_base, tmp_path, monkeypatch):
    """No pairs (an underpowered round): an untrained adapter, so the round's model equals its
    policy, metrics that say so, and a curves folder with the summary only (no series; not empty,
    so git can hold it); the stage succeeds."""
    policy, _ = tiny_base
    (tmp_path / "pairs.jsonl").write_text("")
    (tmp_path / "live/plots").mkdir(parents=True)  # an earlier run's curves: this run trained nothing
    args = ["--round", "v2_0", "--policy", str(policy), "--pairs", "pairs.jsonl", "--out", "adapter"]
    args += [
        "--metrics",
        "dpo.json",
        "--live-dir",
        "live",
        "--checkpoints",
        "ckpt",
        "--params",
        str(ROOT / "params.yaml"),
    ]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["dpo.py", *args])
    load_stage("dpo").main()
    metrics = json.loads((tmp_path / "dpo.json").read_text())
    launch = metrics.pop("launch")  # how it ran: one plain python process
    assert (launch["launcher"], launch["world_size"]) == ("python", 1)
    assert metrics == {"pairs": 0, "trained": False, "underpowered": True, "global_step": 0}
    assert (tmp_path / "adapter/adapter_model.safetensors").is_file()
    record = json.loads((tmp_path / "adapter/lineage.json").read_text())
    assert record["stage"] == "dpo@v2_0 (no pairs: untrained)" and set(record["params"]["rounds"]) == {"v2_0"}
    assert [p.name for p in (tmp_path / "live").iterdir()] == ["metrics.json"]  # the earlier plots/ are gone
    assert json.loads((tmp_path / "live/metrics.json").read_text()) == {**metrics, "launch": launch}
    # seeded: a second run writes the same bytes (LoRA's A starts random), so dvc.lock is stable
    first = (tmp_path / "adapter/adapter_model.safetensors").read_bytes()
    load_stage("dpo").main()
    assert (tmp_path / "adapter/adapter_model.safetensors").read_bytes() == first
