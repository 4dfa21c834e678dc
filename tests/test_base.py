"""The tiny base model: a loadable HF directory, seeded, with a working chat format."""

from __future__ import annotations

import hashlib

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.conftest import copy_project, run_stage


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    proj = copy_project(tmp_path_factory.mktemp("base"))
    assert run_stage(proj, "harvest.py").returncode == 0
    for out in ("models/base", "models/base2"):
        res = run_stage(proj, "base.py", "--out", out)
        assert res.returncode == 0, res.stderr
    return proj / "models"


def test_saved_as_safetensors_and_loads_with_auto_classes(base_dir):
    files = {p.name for p in (base_dir / "base").iterdir()}
    assert "model.safetensors" in files and not any(f.endswith((".bin", ".pt")) for f in files)
    model = AutoModelForCausalLM.from_pretrained(base_dir / "base")
    tok = AutoTokenizer.from_pretrained(base_dir / "base")
    assert model.config.model_type == "qwen2"
    assert model.config.vocab_size == len(tok)
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "Is it [PMID:123]?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] == ids["input_ids"].shape[1] + 5


def test_same_seed_same_weights(base_dir):
    def digest(d):
        return hashlib.md5((d / "model.safetensors").read_bytes()).hexdigest()

    assert digest(base_dir / "base") == digest(base_dir / "base2")
    a = (base_dir / "base" / "tokenizer.json").read_bytes()
    assert a == (base_dir / "base2" / "tokenizer.json").read_bytes()


def test_think_tags_are_single_tokens_that_survive_decoding(base_dir):
    tok = AutoTokenizer.from_pretrained(base_dir / "base")
    text = "<think>\nreasoning [PMID:21645374]\n</think>\nAnswer: yes"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.convert_tokens_to_ids("<think>") in ids and tok.convert_tokens_to_ids("</think>") in ids
    assert tok.decode(ids, skip_special_tokens=True) == text  # round trip, tags kept


def test_chat_template_round_trips(base_dir):
    tok = AutoTokenizer.from_pretrained(base_dir / "base")
    messages = [
        {"role": "system", "content": "Be careful."},
        {"role": "user", "content": "Question?"},
        {"role": "assistant", "content": "<think>\nwhy\n</think>\nAnswer: no"},
    ]
    text = tok.apply_chat_template(messages, tokenize=False)
    assert text == (
        "<|im_start|>system\nBe careful.<|im_end|>\n<|im_start|>user\nQuestion?<|im_end|>\n"
        "<|im_start|>assistant\n<think>\nwhy\n</think>\nAnswer: no<|im_end|>\n"
    )
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    prompt = tok.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    assert text.startswith(prompt)  # prompt + completion == full conversation (masking relies on it)
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|pad|>" and tok.padding_side == "left"
    assert torch.tensor(tok(prompt)["input_ids"]).ndim == 1
