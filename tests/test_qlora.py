"""QLoRA (`model.quantization: 4bit`) on a CPU-only machine: the loading call gets QLoRA's
bitsandbytes config and the model is prepared for k-bit training before LoRA; without CUDA or
bitsandbytes the error says which is missing; every training stage loads through this path."""

from __future__ import annotations

import sys
import types

import pytest
import torch
from transformers import BitsAndBytesConfig

from bioreasoner.core.config import ModelCfg
from bioreasoner.modeling import models
from tests.params_edit import stage_params, tmp_run
from tests.tiny import load_stage

QLORA = ModelCfg(base="tiny", dtype="bfloat16", quantization="4bit")


@pytest.fixture
def fake_cuda_and_bnb(monkeypatch):
    """CUDA 'available' and an importable bitsandbytes, as on a GPU machine."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(sys.modules, "bitsandbytes", types.ModuleType("bitsandbytes"))


def test_4bit_loads_nf4_double_quant_and_prepares_for_kbit_training(fake_cuda_and_bnb, monkeypatch, tiny_base):
    model_dir, _ = tiny_base
    calls: dict = {}
    real = models.AutoModelForCausalLM.from_pretrained

    def from_pretrained(name, **kwargs):
        calls["load"] = kwargs
        model = real(name, **{k: v for k, v in kwargs.items() if k != "quantization_config"})
        model.is_loaded_in_4bit = True  # what bitsandbytes loading marks
        return model

    def prepare(model, **kwargs):
        calls["prepare"] = kwargs
        return model

    monkeypatch.setattr(models.AutoModelForCausalLM, "from_pretrained", from_pretrained)
    monkeypatch.setattr("peft.prepare_model_for_kbit_training", prepare)

    model = models.load_for_training(model_dir, QLORA, gradient_checkpointing=True)

    q = calls["load"]["quantization_config"]
    assert isinstance(q, BitsAndBytesConfig)
    assert q.load_in_4bit and not q.load_in_8bit
    assert q.bnb_4bit_quant_type == "nf4" and q.bnb_4bit_use_double_quant
    assert q.bnb_4bit_compute_dtype == torch.bfloat16  # model.dtype
    assert calls["load"]["dtype"] == torch.bfloat16 and calls["load"]["use_safetensors"] is True
    assert calls["prepare"] == {
        "use_gradient_checkpointing": True,
        "gradient_checkpointing_kwargs": {"use_reentrant": False},
    }
    assert models.is_4bit(model)


def test_full_precision_load_has_no_quantization(monkeypatch, tiny_base):
    model_dir, _ = tiny_base
    calls: dict = {}
    real = models.AutoModelForCausalLM.from_pretrained
    monkeypatch.setattr(
        models.AutoModelForCausalLM, "from_pretrained", lambda name, **kw: calls.update(kw) or real(name, **kw)
    )
    model = models.load_for_training(model_dir, ModelCfg(base="tiny"))
    assert "quantization_config" not in calls and not models.is_4bit(model)


def test_qlora_without_cuda_or_bitsandbytes_says_which(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        models.check_quantization("4bit")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import fails
    with pytest.raises(RuntimeError, match="needs bitsandbytes"):
        models.check_quantization("4bit")
    with pytest.raises(RuntimeError, match="needs bitsandbytes"):
        models.load_model("unused", dtype="bfloat16", quantization="4bit")  # checked before any loading
    with pytest.raises(ValueError, match="'none' or '4bit'"):
        models.check_quantization("8bit")
    models.check_quantization("none")


class Loaded(Exception):
    """Stops a stage right after it asked for its model."""


@pytest.mark.parametrize("stage", ["sft", "dpo", "grpo"])
def test_training_stages_load_their_parent_through_the_qlora_path(stage, monkeypatch, tmp_path, tiny_base):
    model_dir, tasks = tiny_base
    module = load_stage(stage)
    p = stage_params(module, lambda d: d["model"].update(dtype="bfloat16", quantization="4bit"))
    seen = {}

    def load_for_training(name, cfg, *, gradient_checkpointing=False):
        seen.update(name=name, cfg=cfg, gc=gradient_checkpointing)
        raise Loaded

    monkeypatch.setattr(module, "load_for_training", load_for_training)
    with pytest.raises(Loaded):
        if stage == "dpo":
            module.build_trainer(p, p.round_dpo("v2_0"), [], str(model_dir), tmp_run(tmp_path))
        else:
            module.build_trainer(p, tasks, str(model_dir), tmp_run(tmp_path))
    assert seen["name"] == str(model_dir) and seen["cfg"].quantization == "4bit"
