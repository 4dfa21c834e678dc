"""Sleep consolidation pieces: response-only targets, the distillation KL, the EWC penalty and
Fisher, and the adapter-norm signal, on the tiny model."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model

from bioreasoner.modeling.generation import render_prompt
from bioreasoner.modeling.models import load_model, load_tokenizer
from bioreasoner.training import sleep


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
