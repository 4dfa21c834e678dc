"""A tiny model and hand-made tasks for tests that train, merge or generate: it builds in a
second, so tests exercise the stages' real code paths without the pipeline's base model."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from bioreasoner.core.records import Message, Source, Task
from bioreasoner.modeling.tiny_model import build_model, train_tokenizer
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


def load_stage(name: str) -> ModuleType:
    """Import `stages/<name>.py` as a module (stages are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"stage_{name}", ROOT / "stages" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_task(i: int, type_: str = "qa") -> Task:
    src = Source(pmid=str(1000 + i), title=f"Title {i}", text=f"Background sentence {i}. Result sentence {i}.")
    return Task(
        id=f"{type_}-{i}",
        type=type_,
        sources=[src],
        gold="yes" if type_ == "qa" else None,
        messages=[
            Message(role="system", content="Think first."),
            Message(role="user", content=f"Paper [PMID:{src.pmid}] says things. Question {i}?"),
        ],
        reference=f"<think>\nPaper [PMID:{src.pmid}] reports result {i}, so yes.\n</think>\nIt does. "
        f"[PMID:{src.pmid}]\n\nAnswer: yes" + " more" * i,  # varied lengths: padding happens
    )


def build_tiny(out: Path, tasks: list[Task]) -> Path:
    """Tokenizer trained on the tasks' text and a seeded 1-layer Qwen2, saved to `out`."""
    texts = [m.content for t in tasks for m in t.messages] + [t.reference for t in tasks]
    tok = train_tokenizer(texts * 20, vocab_size=400, min_frequency=1)
    build_model(tok, ARCH, seed=0).save_pretrained(out)
    tok.save_pretrained(out)
    return out
