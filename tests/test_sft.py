"""SFT: the batch the stage trains on supervises the response only (seeds/002), and
QLoRA without CUDA fails with a clear message."""

from __future__ import annotations

import pytest
import torch

from bioreasoner.training.common import check_quantization
from tests.conftest import ROOT
from tests.tiny import load_stage


def test_prompt_tokens_are_never_supervised(tiny_base, tmp_path):
    import yaml

    model_dir, tasks = tiny_base
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["sft"].update(batch_size=len(tasks), max_steps=1)
    trainer = load_stage("sft").build_trainer(params, tasks, str(model_dir), str(tmp_path / "ckpt"))
    tok = trainer.processing_class
    batch = next(iter(trainer.get_train_dataloader()))
    by_text = {t.reference: t for t in tasks}
    seen = 0
    for ids, labels, attn in zip(batch["input_ids"], batch["labels"], batch["attention_mask"], strict=True):
        ids, labels = ids[attn.bool()], labels[attn.bool()]  # drop padding (its labels are -100 too)
        supervised = labels != -100
        first = int(supervised.nonzero()[0])
        assert supervised[first:].all()  # one contiguous supervised span: the response
        assert torch.equal(labels[supervised], ids[supervised])
        text = tok.decode(ids[first:])
        reference = next(r for r in by_text if text.startswith(r + "<|im_end|>"))
        task = by_text[reference]
        prompt = tok.apply_chat_template(
            [m.model_dump() for m in task.messages], tokenize=False, add_generation_prompt=True
        )
        assert tok.decode(ids[:first]) == prompt  # everything before the response is prompt, all -100
        seen += 1
    assert seen == len(tasks)
    assert (batch["labels"] == -100).sum() > (batch["labels"] != -100).sum() / 10  # masks exist at all


def test_supervised_fraction_is_logged_and_below_one(tiny_base, tmp_path):
    import yaml

    model_dir, tasks = tiny_base
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["sft"].update(batch_size=3, max_steps=2, logging_steps=1, warmup_steps=0)
    trainer = load_stage("sft").build_trainer(params, tasks, str(model_dir), str(tmp_path / "ckpt"))
    trainer.train()
    fractions = [h["supervised_token_fraction"] for h in trainer.state.log_history if "loss" in h]
    assert len(fractions) == 2 and all(0 < f < 1 for f in fractions)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error")
def test_qlora_without_cuda_says_so():
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        check_quantization("4bit")
    with pytest.raises(ValueError, match="'none' or '4bit'"):
        check_quantization("8bit")
    check_quantization("none")  # the CPU default passes
