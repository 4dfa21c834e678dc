"""merge@V: the merged folder is a loadable safetensors model equal to parent + adapter, with
tokenizer, generation config, lineage and card; a model that produces no tokens fails the
stage and leaves no output."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from peft import LoraConfig, PeftModel, get_peft_model

from bioreasoner.core import lineage
from bioreasoner.modeling.models import load_model, load_tokenizer
from tests.conftest import run_stage


def make_adapter(model_dir, out, *, zero_head: bool = False, loaded_in_4bit: bool | None = None):
    """A LoRA adapter with random (non-zero) weights, as if trained; `zero_head` collapses the
    output layer so every logit is 0 and greedy decoding emits token 0, <|endoftext|>, a stop token.
    `loaded_in_4bit` is what its lineage says about the parent it was trained over."""
    model = load_model(model_dir)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    cfg.modules_to_save = ["lm_head"]
    peft_model = get_peft_model(model, cfg)
    if zero_head:
        head = peft_model.base_model.model.lm_head.modules_to_save["default"]
        torch.nn.init.zeros_(head.weight)
    peft_model.save_pretrained(out)
    load_tokenizer(model_dir).save_pretrained(out)
    record = lineage.record("sft", {"sft": {"learning_rate": 0.1}}, [])
    if loaded_in_4bit is not None:
        record["loaded_in_4bit"] = loaded_in_4bit
    lineage.write(out, record)
    return out


def merge(project, parent, adapter, quantization="none"):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["model"]["quantization"] = quantization
    if quantization == "4bit":
        params["model"]["dtype"] = "bfloat16"  # QLoRA computes in bf16/fp16 (float32 is refused)
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    return run_stage(
        project,
        "merge.py",
        "--version",
        "t",
        "--parent",
        str(parent),
        "--adapter",
        str(adapter),
        "--out",
        "models/merged/t",
    )


@pytest.mark.slow
def test_merged_folder_reloads_equal_to_parent_plus_adapter(project, tiny_base, tmp_path):
    parent, tasks = tiny_base
    adapter = make_adapter(parent, tmp_path / "adapter")
    res = merge(project, parent, adapter)
    assert res.returncode == 0, res.stderr[-3000:]
    out = project / "models/merged/t"
    names = {p.name for p in out.iterdir()}
    assert {
        "model.safetensors",
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "README.md",
        "lineage.json",
    } <= names
    assert not any(n.endswith((".bin", ".pt", ".pth")) for n in names)  # safetensors only

    # The test's own check, independent of the stage's: logits on a real prompt are equal.
    tok = load_tokenizer(out)
    ids = tok.apply_chat_template(
        [m.model_dump() for m in tasks[0].messages], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        expected = PeftModel.from_pretrained(load_model(parent), adapter)(**ids).logits
        got = load_model(out)(**ids).logits
        plain = load_model(parent)(**ids).logits
    assert torch.allclose(got, expected, atol=1e-4)
    assert not torch.allclose(got, plain, atol=1e-2)  # the adapter did change the model

    # Lineage: parent and adapter with their DVC hashes, the adapter's own record nested.
    record = json.loads((out / "lineage.json").read_text())
    assert record["inputs"] == {str(parent): lineage.dvc_md5(parent), str(adapter): lineage.dvc_md5(adapter)}
    assert [s["stage"] for s in lineage.chain(record)] == ["sft", "merge"]
    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: transformers" in card
    assert lineage.dvc_md5(adapter) in card and "learning_rate: 0.1" in card
    assert "metrics/eval/t.json" in card
    assert "QLoRA" not in card
    assert "reload check" in res.stderr


@pytest.mark.slow
def test_model_that_produces_no_tokens_fails_the_stage(project, tiny_base, tmp_path):
    parent, _ = tiny_base
    adapter = make_adapter(parent, tmp_path / "collapsed", zero_head=True)
    res = merge(project, parent, adapter)
    assert res.returncode != 0
    assert "produced no tokens" in res.stderr
    assert not (project / "models/merged/t").exists()  # no partial output
    assert not list((project / "models/merged").glob(".t.*"))  # nor a leftover temp folder


@pytest.mark.slow
def test_card_says_qlora_only_when_the_adapter_was_trained_over_a_4bit_parent(project, tiny_base, tmp_path):
    parent, _ = tiny_base
    # trained over a 4-bit parent (its lineage says so), merged with today's params (none)
    res = merge(project, parent, make_adapter(parent, tmp_path / "qlora", loaded_in_4bit=True))
    assert res.returncode == 0, res.stderr[-3000:]
    card = (project / "models/merged/t/README.md").read_text()
    assert "QLoRA" in card and "float32 weights" in card
    # params now say 4bit, but this adapter was trained in full precision: no QLoRA claim
    res = merge(project, parent, make_adapter(parent, tmp_path / "full", loaded_in_4bit=False), quantization="4bit")
    assert res.returncode == 0, res.stderr[-3000:]
    card = (project / "models/merged/t/README.md").read_text()
    assert "QLoRA" not in card and "4-bit" not in card
