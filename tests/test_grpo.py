"""GRPO: on a task built so the policy can learn it, the grounding reward rises; the stage's
trainer carries the registry's reward names, so DVCLive gets one curve per term."""

from __future__ import annotations

import json

import pytest

from tests.params_edit import stage_params, tmp_run, write_params
from tests.tiny import ARCH, load_stage, make_task

GOOD, BAD, FILLER = "[PMID:1000]", "[PMID:4242]", " so"


@pytest.fixture(scope="module")
def citing_policy(tmp_path_factory, tiny_base):
    """The tiny model with two single-token citations: the task's source and an invented one.
    Sampling is restricted to {good, bad, filler, eos}, so a random policy finds both citations
    often and GRPO has a signal to learn from."""
    from transformers import AutoTokenizer

    from bioreasoner.modeling.tiny_model import build_model

    model_dir, _ = tiny_base
    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.add_tokens([GOOD, BAD])
    out = tmp_path_factory.mktemp("citing")
    build_model(tok, ARCH, seed=1).save_pretrained(out)
    tok.save_pretrained(out)
    keep = {tok.convert_tokens_to_ids(GOOD), tok.convert_tokens_to_ids(BAD), tok.convert_tokens_to_ids(tok.eos_token)}
    keep |= set(tok(FILLER, add_special_tokens=False)["input_ids"])
    suppress = [i for i in range(len(tok)) if i not in keep]
    return out, suppress


def micro_edit(suppress: list[int], **changes):
    """params.yaml's grpo section cut down to a 30-step run on the citing task."""

    def edit(params: dict) -> None:
        params["grpo"].update(
            max_steps=30,
            per_device_train_batch_size=8,
            num_generations=4,
            max_completion_length=4,
            learning_rate=0.05,
            beta=0.0,
            temperature=1.0,
            logging_steps=1,
            save_steps=1000,
            rewards={"grounding": {"weight": 1.0, "cap": 3.0}},
            generation_kwargs={"suppress_tokens": suppress},
            mask_truncated_completions=False,  # every 4-token completion is cut: masked, none would train
            task_types=["qa"],  # the citing task's rows
        )
        params["grpo"].update(changes)
        params["grpo"]["lora"]["modules_to_save"] = ["lm_head"]  # let the head move fast in 30 steps

    return edit


@pytest.mark.slow
def test_grounding_reward_rises_on_a_learnable_task(citing_policy, tmp_path):
    policy, suppress = citing_policy
    tasks = [make_task(0), make_task(0).model_copy(update={"id": "qa-0b"})]  # source PMID 1000 in both
    grpo = load_stage("grpo")
    p = stage_params(grpo, micro_edit(suppress))
    trainer = grpo.build_trainer(p, tasks, str(policy), tmp_run(tmp_path))
    assert trainer.reward_func_names == ["grounding"]
    trainer.train()
    curve = [h["rewards/grounding/mean"] for h in trainer.state.log_history if "rewards/grounding/mean" in h]
    assert len(curve) == 30
    first, last = sum(curve[:5]) / 5, sum(curve[-5:]) / 5
    print("grounding curve", [round(c, 2) for c in curve])
    assert last > first + 0.3, curve  # the policy learns to cite its source and not the invented PMID


@pytest.mark.slow
def test_stage_writes_the_prompts_it_trained_on_and_step_keyed_curves(citing_policy, tmp_path, monkeypatch):
    """The stage end to end (3 steps): adapter, the drawn prompts as an out, metrics with the
    whole run's train_loss, and DVCLive rows keyed by the trainer's step."""
    from bioreasoner.training.data import TaskRef

    policy, suppress = citing_policy
    tasks = [make_task(i) for i in range(5)]
    other = [make_task(10 + i, "gap_analysis") for i in range(3)]  # not in grpo.task_types: never drawn
    (tmp_path / "train.jsonl").write_text("".join(t.model_dump_json() + "\n" for t in tasks + other))
    write_params(tmp_path / "params.yaml", micro_edit(suppress, max_steps=3, prompts=3))
    args = ["--params", "params.yaml", "--policy", str(policy), "--tasks", "train.jsonl", "--out", "adapter"]
    args += ["--prompts-out", "prompts.jsonl", "--metrics", "grpo.json", "--live-dir", "live", "--checkpoints", "ckpt"]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["grpo.py", *args])
    grpo = load_stage("grpo")
    grpo.main()

    ids = [TaskRef.model_validate_json(line).task_id for line in (tmp_path / "prompts.jsonl").read_text().splitlines()]
    p = grpo.config.load("params.yaml", sections=grpo.SECTIONS)
    drawn = grpo.select_prompts(tasks, 3, p.seed, "grpo", p.grpo.stratify)
    assert ids == [t.id for t in drawn] and len(ids) == 3 and all(i.startswith("qa-") for i in ids)
    metrics = json.loads((tmp_path / "grpo.json").read_text())
    assert metrics["global_step"] == 3 and metrics["prompts"] == 3 and metrics["train_loss"] is not None
    assert sum(metrics["prompt_strata"].values()) == 3
    assert set(metrics["reward_terms"]) == {"grounding"}
    rows = (tmp_path / "live/plots/metrics/reward.tsv").read_text().splitlines()
    assert [r.split("\t")[0] for r in rows] == ["step", "1", "2", "3"]
    assert (tmp_path / "adapter/adapter_model.safetensors").is_file()
    assert not list((tmp_path / "ckpt").iterdir())  # finished: checkpoints removed
