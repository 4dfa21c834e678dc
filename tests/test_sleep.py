"""Sleep consolidation pieces: response-only targets, the distillation KL, the EWC penalty and
Fisher, the adapter-norm signal and the sleep loop, on the tiny model; and the cls_sleep stage,
which replays every round in params and the prompts grpo wrote."""

from __future__ import annotations

import json

import pytest
import torch
from peft import LoraConfig, get_peft_model

from bioreasoner.core.records import TASK_TYPES, Candidate
from bioreasoner.modeling.generation import render_prompt
from bioreasoner.modeling.models import load_model, load_tokenizer
from bioreasoner.training import sleep
from bioreasoner.training.lifecycle import save_adapter
from bioreasoner.training.pairs import distill_pair
from tests.params_edit import write_params
from tests.tiny import load_stage, make_task


@pytest.fixture(scope="module")
def tiny(tiny_base):
    model_dir, tasks = tiny_base
    return load_model(model_dir), load_tokenizer(model_dir), tasks


def rows(tasks):
    return [([m.model_dump() for m in t.messages], t.reference) for t in tasks]


def test_targets_are_the_response_tokens_only(tiny):
    _, tok, tasks = tiny
    b = sleep.encode(tok, rows(tasks[:2]), max_length=512)
    for i, (messages, response) in enumerate(rows(tasks[:2])):
        n_prompt = len(tok(render_prompt(tok, messages), add_special_tokens=False)["input_ids"])
        # position t predicts token t+1: the first target predicts the first response token
        targets = b.target[i].nonzero().flatten()
        assert int(targets[0]) == n_prompt - 1
        predicted = b.input_ids[i][targets + 1]
        assert tok.decode(predicted) == response + tok.eos_token


def test_distill_kl_is_zero_for_equal_logits_and_positive_otherwise():
    torch.manual_seed(0)
    t = torch.randn(2, 5, 11)
    mask = torch.ones(2, 5, dtype=torch.bool)
    assert float(sleep.distill_kl(t, t.clone(), mask, 2.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(sleep.distill_kl(t, torch.randn(2, 5, 11), mask, 2.0)) > 0.0


def test_ewc_penalty_fisher_and_adapter_norm(tiny):
    model, tok, tasks = tiny
    peft_model = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    assert sleep.adapter_norm(peft_model, "default") == 0.0  # fresh LoRA: B = 0, no update yet
    anchor = {n: p.detach().clone() for n, p in sleep.trainable(peft_model).items()}
    fisher = sleep.fisher_diagonal(peft_model, tok, rows(tasks[:3]), max_length=512)
    assert set(fisher) == set(anchor) and all((f >= 0).all() for f in fisher.values())
    assert any(float(f.sum()) > 0 for f in fisher.values())
    assert float(sleep.ewc_penalty(peft_model, fisher, anchor)) == 0.0  # at the anchor
    with torch.no_grad():
        for p in sleep.trainable(peft_model).values():
            p.add_(0.1)
    assert float(sleep.ewc_penalty(peft_model, fisher, anchor)) > 0.0  # moved weights that matter
    assert sleep.adapter_norm(peft_model, "default") > 0.0
    peft_model.unload()


def test_consolidate_moves_the_student_toward_the_teacher(tiny):
    model, tok, tasks = tiny
    lora = dict(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"])
    peft_model = get_peft_model(model, LoraConfig(**lora, init_lora_weights=False), adapter_name="teacher")
    peft_model.add_adapter("student", LoraConfig(**lora))  # fresh: B = 0, the parent's predictions
    peft_model.set_adapter("student")
    anchor = {n: p.detach().clone() for n, p in sleep.trainable(peft_model).items()}
    fisher = {n: torch.zeros_like(p) for n, p in anchor.items()}
    kw = dict(batch_size=3, max_length=512, temperature=1.0, learning_rate=0.05, ewc_lambda=0.0)
    result = sleep.consolidate(peft_model, tok, rows(tasks), steps=12, fisher=fisher, anchor=anchor, **kw)
    assert len(result.kls) == 12 and result.non_finite == 0
    assert result.kls[-1] < result.kls[0] / 2  # distillation works: the student approaches the teacher
    peft_model.unload()


# -- the stage -----------------------------------------------------------------------------------


def sleep_edit(enabled: bool):
    def edit(params: dict) -> None:
        params["rounds"]["v2_2"] = {**params["rounds"]["v2_1"], "policy": "v2_1"}  # a third round: data only
        params["cls"].update(
            enabled=enabled,
            replay_sft=3,
            replay_chosen_per_round=2,
            eval_per_type=1,
            fisher_samples=2,
            batch_size=2,
            max_length=256,
            generation={"temperature": 0.7, "top_p": 1.0, "max_new_tokens": 8, "batch_size": 8},
            scheduler={"min_sleep_steps": 2, "max_sleep_steps": 3},
            lora={"r": 2, "alpha": 4, "target_modules": ["v_proj", "q_proj"]},
        )

    return edit


@pytest.mark.slow
@pytest.mark.parametrize("enabled", [True, False])
def test_stage_replays_every_round_and_the_prompts_grpo_trained_on(tiny_base, tmp_path, monkeypatch, enabled):
    parent, tasks = tiny_base
    grpo = tmp_path / "grpo"
    teacher = get_peft_model(
        load_model(parent), LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"], init_lora_weights=False)
    )
    save_adapter(teacher, grpo)
    (tmp_path / "train.jsonl").write_text("".join(t.model_dump_json() + "\n" for t in tasks))
    test = [make_task(10 + i, ty) for i, ty in enumerate(TASK_TYPES)]  # one held-out task of each type
    (tmp_path / "test.jsonl").write_text("".join(t.model_dump_json() + "\n" for t in test))
    (tmp_path / "prompts.jsonl").write_text('{"task_id": "qa-4"}\n{"task_id": "qa-1"}\n')
    for r in ("v2_0", "v2_1", "v2_2"):
        pairs = [distill_pair(t, [Candidate(task_id=t.id, sample=0, seed=0, text=r, score=2.0)], 8.0) for t in tasks]
        (tmp_path / "rounds" / r).mkdir(parents=True)
        (tmp_path / "rounds" / r / "pairs.jsonl").write_text("".join(x.model_dump_json() + "\n" for x in pairs))
    write_params(tmp_path / "params.yaml", sleep_edit(enabled))
    args = ["--params", "params.yaml", "--parent", str(parent), "--grpo", "grpo", "--grpo-prompts", "prompts.jsonl"]
    args += ["--train", "train.jsonl", "--sft-tasks", "train.jsonl", "--test", "test.jsonl"]
    args += ["--rounds-dir", "rounds", "--out", "cls"]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["cls_sleep.py", *args, "--metrics", "cls.json"])
    load_stage("cls_sleep").main()

    metrics = json.loads((tmp_path / "cls.json").read_text())
    record = json.loads((tmp_path / "cls/lineage.json").read_text())
    assert {f"rounds/{r}/pairs.jsonl" for r in ("v2_0", "v2_1", "v2_2")} <= set(record["inputs"])
    assert "prompts.jsonl" in record["inputs"] and set(record["params"]) == {"seed", "model", "cls", "rounds", "merge"}
    assert metrics["enabled"] is enabled
    if not enabled:  # the ablation: the grpo adapter passes through
        assert (tmp_path / "cls/adapter_model.safetensors").read_bytes() == (
            grpo / "adapter_model.safetensors"
        ).read_bytes()
        return
    assert metrics["mix"] == {"replay": 3 + 3 * 2, "grpo_prompts": 2, "pseudo": 3}  # 0.25 / 0.75 x 9
    assert 2 <= metrics["sleep_steps"] <= 3
    cfg = json.loads((tmp_path / "cls/adapter_config.json").read_text())
    assert cfg["target_modules"] == ["q_proj", "v_proj"]  # the student, saved flat and sorted
    assert not (tmp_path / "cls/student").exists()
