"""The pieces of sleep consolidation ("CLS", [D8]): teacher-forced token statistics,
distillation KL, the diagonal Fisher and its EWC penalty, and the adapter-norm signal.

Here the fast learner ("hippocampus") is the GRPO LoRA adapter and the slow weights
("neocortex") are the merged parent. One `PeftModel` holds the parent with two adapters,
`teacher` (GRPO) and `student` (fresh); the parent alone is the model with adapters disabled.
So no second copy of the weights is ever in memory.

A *row* is a (prompt messages, response text) pair; statistics and losses cover the response
tokens only (the prompt is context, never a target: [D4]). `consolidate` is the sleep
itself: the student adapter distils the teacher on a mix of rows under an EWC penalty.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from bioreasoner.modeling.generation import render_prompt

log = logging.getLogger(__name__)

Row = tuple[list[dict[str, str]], str]


@dataclass
class Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    target: torch.Tensor  # bool, True where the next token is a response token (shifted: position t predicts t+1)


def encode(tokenizer: PreTrainedTokenizerBase, rows: Sequence[Row], max_length: int) -> Batch:
    """Right-padded prompt + response ids, with a mask of the positions whose next token is part
    of the response (what accuracy, loss and KL are measured on). Over `max_length`, the prompt
    loses its start (the response is what is measured), then the response its end."""
    ids, targets = [], []
    for messages, response in rows:
        p = tokenizer(render_prompt(tokenizer, messages), add_special_tokens=False)["input_ids"]
        r = tokenizer(response + (tokenizer.eos_token or ""), add_special_tokens=False)["input_ids"]
        p = p[-max(1, max_length - len(r)) :]
        seq = (p + r)[:max_length]
        tgt = [False] * (len(p) - 1) + [True] * len(r)
        ids.append(seq)
        targets.append(tgt[: len(seq) - 1] + [False])
    width = max(len(s) for s in ids)
    pad = tokenizer.pad_token_id or 0
    return Batch(
        input_ids=torch.tensor([s + [pad] * (width - len(s)) for s in ids]),
        attention_mask=torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in ids]),
        target=torch.tensor([t + [False] * (width - len(t)) for t in targets]),
    )


def batches(tokenizer: PreTrainedTokenizerBase, rows: Sequence[Row], size: int, max_length: int) -> Iterator[Batch]:
    for i in range(0, len(rows), size):
        yield encode(tokenizer, rows[i : i + size], max_length)


def logits(model: PreTrainedModel, b: Batch) -> torch.Tensor:
    dev = model.device
    return model(input_ids=b.input_ids.to(dev), attention_mask=b.attention_mask.to(dev)).logits.float()


@torch.no_grad()
def token_stats(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, rows: Sequence[Row], batch_size: int, max_length: int
) -> tuple[float, float]:
    """(token accuracy, mean token loss in nats) of `model` on the rows' response tokens, teacher-forced."""
    correct = total = 0
    loss = 0.0
    for b in batches(tokenizer, rows, batch_size, max_length):
        lg = logits(model, b)[:, :-1].cpu()
        nxt = b.input_ids[:, 1:]
        m = b.target[:, :-1]
        correct += int(((lg.argmax(-1) == nxt) & m).sum())
        loss += float(F.cross_entropy(lg[m], nxt[m], reduction="sum"))
        total += int(m.sum())
    if not total:
        raise ValueError(f"no response tokens within max_length={max_length}: raise it (the prompts fill it)")
    return correct / total, loss / total


def distill_kl(teacher: torch.Tensor, student: torch.Tensor, mask: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean over masked positions of KL(teacher_T || student_T) x T^2 (Hinton et al., 2015)."""
    t = F.log_softmax(teacher[mask] / temperature, -1)
    s = F.log_softmax(student[mask] / temperature, -1)
    return (t.exp() * (t - s)).sum(-1).mean() * temperature**2


@torch.no_grad()
def adapter_kl(
    model, tokenizer: PreTrainedTokenizerBase, rows: Sequence[Row], batch_size: int, max_length: int
) -> float:
    """Mean KL(active adapter || parent) per response token: how much the adapter changed the
    model's predictions on `rows` (the novelty signal)."""
    total, n = 0.0, 0
    for b in batches(tokenizer, rows, batch_size, max_length):
        with_adapter = logits(model, b)
        with model.disable_adapter():
            parent = logits(model, b)
        m = b.target.to(with_adapter.device)
        total += float(distill_kl(with_adapter, parent, m, 1.0)) * int(m.sum())
        n += int(m.sum())
    return total / n if n else 0.0


def trainable(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def fisher_diagonal(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, rows: Sequence[Row], max_length: int
) -> dict[str, torch.Tensor]:
    """Diagonal empirical Fisher of the trainable parameters: the mean over rows of the squared
    gradient of the row's response log-likelihood (one row at a time, as EWC defines it)."""
    params = trainable(model)
    fisher = {n: torch.zeros_like(p) for n, p in params.items()}
    for row in rows:
        b = encode(tokenizer, [row], max_length)
        lg = logits(model, b)[:, :-1]
        m = b.target[:, :-1].to(lg.device)
        nll = F.cross_entropy(lg[m], b.input_ids[:, 1:].to(lg.device)[m], reduction="mean")
        model.zero_grad(set_to_none=True)
        nll.backward()
        for n, p in params.items():
            if p.grad is not None:
                fisher[n] += p.grad.detach() ** 2 / len(rows)
    model.zero_grad(set_to_none=True)
    return fisher


def ewc_penalty(
    model: torch.nn.Module, fisher: dict[str, torch.Tensor], anchor: dict[str, torch.Tensor]
) -> torch.Tensor:
    """sum_i F_i (theta_i - theta*_i)^2 over the trainable parameters (Kirkpatrick et al., 2017);
    the stage multiplies it by lambda / 2."""
    total = torch.zeros(())
    for n, p in trainable(model).items():
        total = total + (fisher[n].to(p.device) * (p - anchor[n].to(p.device)) ** 2).sum().cpu()
    return total


def adapter_norm(model: torch.nn.Module, adapter: str) -> float:
    """Frobenius norm of the adapter's weight update, sqrt(sum over layers of ||B A||^2) x scaling:
    how far the fast learner has moved the slow weights (the saturation signal)."""
    total = 0.0
    for module in model.modules():
        if hasattr(module, "lora_A") and adapter in getattr(module, "lora_A", {}):
            a = module.lora_A[adapter].weight.detach()
            b = module.lora_B[adapter].weight.detach()
            total += float(((b @ a) * module.scaling[adapter]).pow(2).sum())
    return total**0.5


@dataclass
class SleepResult:
    kls: list[float]  # distillation KL of each step that updated the student
    non_finite: int  # steps skipped because the loss was NaN or infinite


def consolidate(
    model,
    tokenizer: PreTrainedTokenizerBase,
    mix: Sequence[Row],
    *,
    steps: int,
    batch_size: int,
    max_length: int,
    temperature: float,
    learning_rate: float,
    ewc_lambda: float,
    fisher: dict[str, torch.Tensor],
    anchor: dict[str, torch.Tensor],
) -> SleepResult:
    """`steps` AdamW steps of the `student` adapter toward the `teacher` adapter's token
    distributions on `mix` (cycled in order), loss = KL x T^2 + lambda / 2 x EWC. A step whose
    loss is not finite is skipped and counted rather than allowed to poison the adapter."""
    opt = torch.optim.AdamW(trainable(model).values(), lr=learning_rate)
    out = SleepResult(kls=[], non_finite=0)
    for step in tqdm(range(steps), desc="sleep", unit="step"):
        rows = [mix[(step * batch_size + k) % len(mix)] for k in range(batch_size)]
        b = encode(tokenizer, rows, max_length)
        with torch.no_grad():
            model.set_adapter("teacher")
            t = logits(model, b)
        model.set_adapter("student")
        s = logits(model, b)
        kl = distill_kl(t, s, b.target.to(s.device), temperature)
        loss = kl + ewc_lambda / 2 * ewc_penalty(model, fisher, anchor).to(kl.device)
        opt.zero_grad(set_to_none=True)
        if not torch.isfinite(loss):
            out.non_finite += 1
            continue
        loss.backward()
        opt.step()
        out.kls.append(kl.item())
    return out
