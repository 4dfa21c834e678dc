"""The tiny base model: a loadable HF directory, seeded, with a working chat format, a
tokenizer that loads as it was saved, and a copy circuit that copies PMIDs from its context."""

from __future__ import annotations

import hashlib
import random

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

from bioreasoner.modeling.models import load_tokenizer
from tests.conftest import copy_project, run_stage


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    proj = copy_project(tmp_path_factory.mktemp("base"))
    assert run_stage(proj, "harvest.py").returncode == 0
    res = run_stage(proj, "build_triplets.py")
    assert res.returncode == 0, res.stderr
    for out in ("models/base", "models/base2"):
        res = run_stage(proj, "base.py", "--out", out)
        assert res.returncode == 0, res.stderr
    # the same base without the circuit: a random model, which must fail the copy test
    params = yaml.safe_load((proj / "params.yaml").read_text())
    params["base"]["copy_circuit"] = None
    (proj / "params_random.yaml").write_text(yaml.safe_dump(params))
    res = run_stage(proj, "base.py", "--params", "params_random.yaml", "--out", "models/random")
    assert res.returncode == 0, res.stderr
    return proj / "models"


def test_saved_as_safetensors_and_loads_with_auto_classes(base_dir):
    files = {p.name for p in (base_dir / "base").iterdir()}
    assert "model.safetensors" in files and not any(f.endswith((".bin", ".pt")) for f in files)
    model = AutoModelForCausalLM.from_pretrained(base_dir / "base")
    tok = load_tokenizer(base_dir / "base")
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


def test_loaded_tokenizer_splits_digits_in_pairs_as_trained(base_dir):
    # AutoTokenizer on a qwen2 folder rebuilt Qwen2's pre-tokenizer: digits one by one
    tok = load_tokenizer(base_dir / "base")
    pieces = tok.convert_ids_to_tokens(tok("[PMID:24450673]", add_special_tokens=False)["input_ids"])
    assert pieces[-5:] == ["24", "45", "06", "73", "]"]
    assert tok.convert_ids_to_tokens(tok("assistant", add_special_tokens=False)["input_ids"]) == ["assistant"]


def test_think_tags_are_single_tokens_that_survive_decoding(base_dir):
    tok = load_tokenizer(base_dir / "base")
    text = "<think>\nreasoning [PMID:21645374]\n</think>\nAnswer: yes"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.convert_tokens_to_ids("<think>") in ids and tok.convert_tokens_to_ids("</think>") in ids
    assert tok.decode(ids, skip_special_tokens=True) == text  # round trip, tags kept


def test_chat_template_round_trips(base_dir):
    tok = load_tokenizer(base_dir / "base")
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


def copied_pmids(model_dir, n_prompts: int = 12) -> float:
    """Share of PMIDs a model completes exactly (greedy) once it is given their first digit
    pair, from prompts listing three papers with random PMIDs it cannot have seen."""
    tok = load_tokenizer(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    rng = random.Random(0)
    ok = 0
    for _ in range(n_prompts):
        pmids = [str(rng.randint(10_000_000, 39_999_999)) for _ in range(3)]
        papers = "\n\n".join(f"Paper {i + 1} [PMID:{p}]: a study of case {i}." for i, p in enumerate(pmids))
        target = rng.choice(pmids)
        text = tok.apply_chat_template(
            [{"role": "user", "content": papers + "\n\nWhich paper?"}], tokenize=False, add_generation_prompt=True
        )
        ids = tok(text + "<think>\nThe evidence is [PMID:" + target[:2], add_special_tokens=False, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=4, do_sample=False)
        ok += tok.decode(out[0, ids["input_ids"].shape[1] :]).startswith(target[2:] + "]")
    return ok / n_prompts


def test_base_copies_a_pmid_from_its_context_and_a_random_model_does_not(base_dir):
    assert copied_pmids(base_dir / "base") >= 0.9
    assert copied_pmids(base_dir / "random") <= 0.1
