"""SFT: the batch the stage trains on supervises the response only [D4], and the
supervised share is logged every step. (QLoRA loading: tests/test_qlora.py.)"""

from __future__ import annotations

import torch

from tests.params_edit import stage_params, tmp_run
from tests.tiny import load_stage


def sft_params(sft, **changes):
    return stage_params(sft, lambda d: d["sft"].update(changes))


def test_prompt_tokens_are_never_supervised(tiny_base, tmp_path):
    model_dir, tasks = tiny_base
    sft = load_stage("sft")
    p = sft_params(sft, per_device_train_batch_size=len(tasks), max_steps=1)
    trainer = sft.build_trainer(p, tasks, str(model_dir), tmp_run(tmp_path))
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
    model_dir, tasks = tiny_base
    sft = load_stage("sft")
    p = sft_params(sft, per_device_train_batch_size=3, max_steps=2, logging_steps=1, warmup_steps=0)
    trainer = sft.build_trainer(p, tasks, str(model_dir), tmp_run(tmp_path))
    trainer.train()
    fractions = [h["supervised_token_fraction"] for h in trainer.state.log_history if "loss" in h]
    assert len(fractions) == 2 and all(0 < f < 1 for f in fractions)
