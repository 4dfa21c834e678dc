"""Pre-training the tiny base on the training papers, and the check that it copies [D11].

- The corpus is the train tasks as whole chat texts (papers, question, reference), a causal-LM
  loss on every token. In every pass each PMID is replaced, consistently within the text, by a
  fresh random number: a PMID is then predictable only by copying it from the papers in the
  context, never by remembering which number goes with which paper (remembered numbers are
  exactly what the model would invent on a test paper).
- Every `validation_every`-th train task is held out of pre-training; the copy check reads
  those, with fresh PMIDs too, so it measures copying, not recall.
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Sequence
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from bioreasoner.core.records import Task
from bioreasoner.modeling.tiny_model import render_chat

log = logging.getLogger(__name__)

PMID_TAG = re.compile(r"\[PMID:(\d{1,10})\]")  # the form prompts and extractive references use


def fresh_pmid(rng: random.Random) -> str:
    """A PubMed-like id: 7 or 8 digits, first digit 1-3 (the range PubMed ids have)."""
    n = rng.choice((7, 8, 8, 8))
    return str(rng.randint(1, 3)) + "".join(rng.choice("0123456789") for _ in range(n - 1))


def with_fresh_pmids(texts: Sequence[str], rng: random.Random) -> list[str]:
    """`texts` with every `[PMID:n]` replaced by a fresh id, the same n by the same id in all of them."""
    mapping: dict[str, str] = {}

    def swap(m: re.Match[str]) -> str:
        if m.group(1) not in mapping:
            mapping[m.group(1)] = fresh_pmid(rng)
        return f"[PMID:{mapping[m.group(1)]}]"

    return [PMID_TAG.sub(swap, t) for t in texts]


def split_validation(tasks: Sequence[Task], every: int) -> tuple[list[Task], list[Task]]:
    """(pre-training tasks, held-out validation tasks): every `every`-th task, in file order."""
    return [t for i, t in enumerate(tasks) if i % every], [t for i, t in enumerate(tasks) if i % every == 0]


def prompt_and_response(task: Task) -> tuple[str, str]:
    """The chat text up to the assistant's turn, and the reference that follows it."""
    prompt = render_chat([m.model_dump() for m in task.messages]) + "<|im_start|>assistant\n"
    return prompt, task.reference + "<|im_end|>\n"


def pretraining_rows(tasks: Sequence[Task], n_rows: int, seed: int) -> list[dict[str, str]]:
    """`n_rows` texts: passes over `tasks` in a seeded order, each text with fresh PMIDs."""
    rng = random.Random(seed)
    rows: list[dict[str, str]] = []
    while len(rows) < n_rows:
        order = list(range(len(tasks)))
        rng.shuffle(order)
        for i in order[: n_rows - len(rows)]:
            prompt, response = with_fresh_pmids(prompt_and_response(tasks[i]), rng)
            rows.append({"text": prompt + response})
    return rows


def _pmid_token_spans(tokenizer: PreTrainedTokenizerBase, text: str, offset: int) -> list[list[int]]:
    """Token positions (offset by `offset`) of the digits of each `[PMID:n]` in `text`."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    spans = []
    for m in PMID_TAG.finditer(text):
        a, b = m.span(1)
        spans.append([offset + i for i, (s, e) in enumerate(enc["offset_mapping"]) if s < b and e > a])
    return [s for s in spans if s]


@torch.no_grad()
def copy_check(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, tasks: Sequence[Task], seed: int
) -> dict[str, Any]:
    """Teacher-forced on each task's reference (fresh PMIDs): the response's mean token loss,
    the share of PMID digit tokens predicted right, and of whole PMIDs whose every token is
    (= a greedy decoder copies the number once it has started it), plus the same for the
    numbers' later tokens alone (the first names which paper; the rest is pure copying)."""
    rng = random.Random(seed)
    model.eval()
    loss_sum = n_tok = ok_tok = all_tok = exact = n_pmid = rest_ok = rest_all = 0
    for task in tasks:
        prompt, response = with_fresh_pmids(prompt_and_response(task), rng)
        p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        r_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([p_ids + r_ids], device=model.device)
        logits = model(input_ids=ids).logits[0].float()
        pred = logits.argmax(-1)
        target = ids[0, len(p_ids) :]
        loss_sum += float(torch.nn.functional.cross_entropy(logits[len(p_ids) - 1 : -1], target, reduction="sum"))
        n_tok += len(r_ids)
        for span in _pmid_token_spans(tokenizer, response, len(p_ids)):
            hits = [int(pred[t - 1]) == int(ids[0, t]) for t in span]
            ok_tok += sum(hits)
            all_tok += len(hits)
            rest_ok += sum(hits[1:])
            rest_all += len(hits) - 1
            exact += all(hits)
            n_pmid += 1
    model.train()
    return {
        "tasks": len(tasks),
        "response_loss": round(loss_sum / max(n_tok, 1), 4),
        "pmid_token_accuracy": round(ok_tok / max(all_tok, 1), 4),
        "pmid_continuation_accuracy": round(rest_ok / max(rest_all, 1), 4),
        "pmid_exact": round(exact / max(n_pmid, 1), 4),
        "pmids": n_pmid,
    }
