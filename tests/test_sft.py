"""SFT: the batch the stage trains on supervises the response only (seeds/002), and
QLoRA without CUDA fails with a clear message."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from bioreasoner.records import Message, Source, Task
from bioreasoner.tiny_model import build_model, train_tokenizer
from bioreasoner.training import check_quantization
from tests.conftest import ROOT

ARCH = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=1,
    num_attention_heads=2,
    num_key_value_heads=1,
    max_position_embeddings=512,
    tie_word_embeddings=False,
)


def load_stage(name: str):
    spec = importlib.util.spec_from_file_location(f"stage_{name}", ROOT / "stages" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_task(i: int) -> Task:
    src = Source(pmid=str(1000 + i), title=f"Title {i}", text=f"Background sentence {i}. Result sentence {i}.")
    return Task(
        id=f"qa-{i}",
        type="qa",
        sources=[src],
        gold="yes",
        messages=[
            Message(role="system", content="Think first."),
            Message(role="user", content=f"Paper [PMID:{src.pmid}] says things. Question {i}?"),
        ],
        reference=f"<think>\nPaper [PMID:{src.pmid}] reports result {i}, so yes.\n</think>\nIt does. "
        f"[PMID:{src.pmid}]\n\nAnswer: yes" + " more" * i,  # varied lengths: padding happens
    )


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    tasks = [make_task(i) for i in range(6)]
    texts = [m.content for t in tasks for m in t.messages] + [t.reference for t in tasks]
    tok = train_tokenizer(texts * 20, vocab_size=400, min_frequency=1)
    out = tmp_path_factory.mktemp("tiny")
    build_model(tok, ARCH, seed=0).save_pretrained(out)
    tok.save_pretrained(out)
    return out, tasks


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
