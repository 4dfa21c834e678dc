"""Batched, seeded sampling from a chat model: one helper for eval, candidates and checks.

Every item has its own seed and its own stream of uniforms (drawn up front from its own
`torch.Generator`), so an item's sample does not depend on which other items share its batch
or on the order they come in (up to float noise from padding). Decoding is our own KV-cached
loop (`decode`), which drops a row from the batch as soon as it emits a stop token; `generate`
would keep computing it until the batch's longest row ends. `PerRowSampler` is still a
transformers `LogitsProcessor`, so it plugs into `generate` as well.

A forced prefix (e.g. "<think>\\n") is appended to the rendered prompt and is part of the
returned response: the text that is scored, filtered and paired is exactly what the model
was conditioned on after the assistant tag. This is the only place prefixes are handled.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import logging
import multiprocessing
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import LogitsProcessor, PreTrainedModel, PreTrainedTokenizerBase

from bioreasoner.modeling.models import torch_dtype

log = logging.getLogger(__name__)

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.7  # 0 = greedy
    top_p: float = 1.0
    max_new_tokens: int = 256
    batch_size: int = 16
    prefix: str = ""  # forced start of every response, e.g. "<think>\n"
    dtype: str = "auto"  # sample from a copy in this dtype; auto = the model's own
    workers: int = 1  # CPU processes decoding batches in parallel (threads split between them)


def item_seed(seed: int, *keys: object) -> int:
    """A stable 63-bit seed for one item, from the run seed and the item's identity."""
    h = hashlib.sha256(":".join(str(k) for k in (seed, *keys)).encode()).digest()
    return int.from_bytes(h[:8], "big") >> 1


class PerRowSampler(LogitsProcessor):
    """Samples each row with its own generator (temperature, then nucleus), then leaves only
    the drawn token finite so greedy decoding picks it.

    Each row's uniforms for every step are drawn up front from that row's generator (one call
    per row per batch, not per token), so the per-token work is a few batched tensor ops; row
    i's t-th token uses its t-th uniform whatever else shares the batch."""

    TOP_K_FAST = 256

    def __init__(self, seeds: Sequence[int], temperature: float, top_p: float, max_new_tokens: int):
        self.uniforms = torch.stack(
            [torch.rand(max_new_tokens, generator=torch.Generator().manual_seed(s)) for s in seeds]
        )
        self.temperature = temperature
        self.top_p = top_p
        self.step = 0
        self.rows: torch.Tensor | None = None  # the input rows still in the batch (decode drops finished ones)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        probs = torch.softmax(scores.float() / self.temperature, dim=-1).cpu()
        if self.top_p < 1.0:
            probs = probs * (probs >= self._nucleus_floor(probs))
        # inverse-CDF draw, in vocabulary order, with this step's uniform of each row
        cdf = probs.cumsum(-1)
        uniforms = self.uniforms if self.rows is None else self.uniforms[self.rows]
        u = uniforms[:, self.step : self.step + 1] * cdf[:, -1:]
        self.step += 1
        picks = torch.searchsorted(cdf, u).clamp_(max=cdf.shape[-1] - 1)
        out = torch.full_like(scores, float("-inf"))
        out.scatter_(-1, picks.to(scores.device), 0.0)
        return out

    def _nucleus_floor(self, probs: torch.Tensor) -> torch.Tensor:
        """Per row, the smallest probability inside the nucleus (the fewest top tokens whose mass
        reaches top_p). Sorting the whole vocabulary is the slow part, so rows whose nucleus lies
        within the top 256 tokens use `topk`, and only the others are fully sorted."""
        k = min(probs.shape[-1], self.TOP_K_FAST)
        vals, _ = probs.topk(k, dim=-1)
        wide = (vals.sum(-1) < self.top_p).nonzero().flatten()
        floors = self._floor(vals)
        if len(wide):
            floors[wide] = self._floor(probs[wide].sort(dim=-1, descending=True).values)
        return floors.unsqueeze(-1)

    def _floor(self, sorted_p: torch.Tensor) -> torch.Tensor:
        inside = sorted_p.cumsum(-1) - sorted_p < self.top_p  # the top token is always inside
        return sorted_p.masked_fill(~inside, float("inf")).min(-1).values


def render_prompt(tokenizer: PreTrainedTokenizerBase, messages: Messages, prefix: str = "") -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + prefix


def plan_batches(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], batch_size: int) -> list[list[int]]:
    """Item indices grouped into batches of similar prompt length. The plan depends only on the
    inputs, so a resumed run regenerates exactly the batches an uninterrupted run would."""
    lengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    order = sorted(range(len(texts)), key=lambda i: (lengths[i], i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@torch.no_grad()
def sample(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Messages],
    seeds: Sequence[int],
    params: SamplingParams,
    *,
    desc: str = "generate",
    done: dict[int, str] | None = None,
    on_batch: Callable[[list[int], list[str]], None] | None = None,
) -> list[str]:
    """One response per prompt, in input order. Responses start with `params.prefix`.

    `done` holds responses already generated (by index, e.g. read back after a crash): batches
    whose items are all done are skipped. `on_batch(indices, responses)` is called after each
    generated batch, so a caller can append them to disk as they finish.
    """
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    texts = [render_prompt(tokenizer, m, params.prefix) for m in prompts]
    done = done or {}
    out: list[str] = [done.get(i, "") for i in range(len(texts))]
    tokenizer.padding_side = "left"
    todo = [b for b in plan_batches(tokenizer, texts, params.batch_size) if not all(i in done for i in b)]
    jobs = (_job(tokenizer, [texts[i] for i in idx], [seeds[i] for i in idx], params) for idx in todo)
    with (
        tqdm(total=len(texts), initial=len(texts) - sum(map(len, todo)), desc=desc, unit="item", disable=None) as bar,
        _Decoder(sampling_model(model, params.dtype), params.workers) as decoder,
    ):
        for idx, new in zip(todo, decoder.map(jobs), strict=True):
            responses = [params.prefix + tokenizer.decode(row, skip_special_tokens=True) for row in new]
            for i, r in zip(idx, responses, strict=True):
                out[i] = r
            if on_batch is not None:
                on_batch(idx, responses)
            bar.update(len(idx))
    return out


def sampling_model(model: PreTrainedModel, dtype: str) -> PreTrainedModel:
    """The model itself when `dtype` is `auto` or its own dtype; else a copy cast to `dtype`
    (the caller's model, which may be training, is left as it is)."""
    if dtype == "auto" or torch_dtype(dtype) == model.dtype:
        return model
    return copy.deepcopy(model).to(torch_dtype(dtype))


@dataclass(frozen=True)
class _Job:
    """One batch to decode: everything a worker process needs, no tokenizer."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    seeds: list[int]
    temperature: float
    top_p: float
    max_new_tokens: int

    def run(self, model: PreTrainedModel) -> list[list[int]]:
        sampler = None  # greedy
        if self.temperature > 0:
            sampler = PerRowSampler(self.seeds, self.temperature, self.top_p, self.max_new_tokens)
        ids, mask = self.input_ids.to(model.device), self.attention_mask.to(model.device)
        return decode(model, ids, mask, sampler, self.max_new_tokens)


def _job(tokenizer: PreTrainedTokenizerBase, texts: list[str], seeds: list[int], params: SamplingParams) -> _Job:
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    return _Job(enc["input_ids"], enc["attention_mask"], seeds, params.temperature, params.top_p, params.max_new_tokens)


class _Decoder:
    """Decodes jobs in this process (`workers` 1) or in a pool of spawned CPU processes, each
    holding a copy of the model and an equal share of this process's threads. Results come back
    in job order whichever process finished first, so callers (and files they append to) see
    the same sequence either way."""

    def __init__(self, model: PreTrainedModel, workers: int):
        if workers > 1 and model.device.type != "cpu":
            raise ValueError(f"generation.workers: {workers} is for CPU sampling; the model is on {model.device}")
        self.model, self.workers = model, workers
        self.pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> _Decoder:
        self.model.eval()
        if self.workers > 1:
            threads = max(1, torch.get_num_threads() // self.workers)
            self.pool = ProcessPoolExecutor(
                self.workers,
                mp_context=multiprocessing.get_context("spawn"),  # fork after OpenMP started can hang
                initializer=_init_worker,
                initargs=(self.model, threads),
            )
        return self

    def map(self, jobs: Iterable[_Job]) -> Iterator[list[list[int]]]:
        if self.pool is None:
            return (job.run(self.model) for job in jobs)
        return self.pool.map(_run_in_worker, jobs)

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)


_WORKER_MODEL: PreTrainedModel | None = None


def _init_worker(model: PreTrainedModel, threads: int) -> None:
    global _WORKER_MODEL
    torch.set_num_threads(threads)
    _WORKER_MODEL = model.eval()


def _run_in_worker(job: _Job) -> list[list[int]]:
    assert _WORKER_MODEL is not None, "worker not initialised"
    return job.run(_WORKER_MODEL)


def stop_ids(model: PreTrainedModel) -> list[int]:
    eos = model.generation_config.eos_token_id
    eos = eos if isinstance(eos, list) else [eos] if eos is not None else []
    return [int(e) for e in eos]


@torch.no_grad()
def decode(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    sampler: PerRowSampler | None,
    max_new_tokens: int,
) -> list[list[int]]:
    """The new tokens of each row (stop token included, as `generate` returns them), by a
    KV-cached decode loop that drops finished rows from the batch (cache and all) as they stop.

    `generate` keeps computing a row after its stop token until the batch's longest row ends;
    with responses of 100 to 400 tokens that is up to half the work of a batch. Positions follow
    the left padding (cumsum of the attention mask), as `generate` sets them. `sampler=None` is
    greedy; a sampler draws each row from its own uniforms, so dropping rows changes nothing
    for the others."""
    stops = torch.tensor(stop_ids(model), device=input_ids.device)
    cache = _buffered_cache(model, input_ids.shape[1] + max_new_tokens)
    mask = attention_mask
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
    out = model(
        input_ids=input_ids, attention_mask=mask, position_ids=positions, past_key_values=cache, logits_to_keep=1
    )
    logits = out.logits[:, -1]
    rows = torch.arange(input_ids.shape[0], device=input_ids.device)  # batch row -> input row
    result: list[list[int]] = [[] for _ in range(input_ids.shape[0])]
    for _ in range(max_new_tokens):
        if sampler is None:
            tokens = logits.argmax(-1)
        else:
            sampler.rows = rows.cpu()
            tokens = sampler(None, logits).argmax(-1)
        for r, t in zip(rows.tolist(), tokens.tolist(), strict=True):
            result[r].append(t)
        alive = ~torch.isin(tokens, stops)
        if not alive.all():
            keep = alive.nonzero().flatten()
            if keep.numel() == 0:
                break
            cache.batch_select_indices(keep)
            rows, tokens, mask, positions = rows[keep], tokens[keep], mask[keep], positions[keep]
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=-1)
        positions = positions[:, -1:] + 1
        out = model(input_ids=tokens[:, None], attention_mask=mask, position_ids=positions, past_key_values=cache)
        logits = out.logits[:, -1]
    return result


def _buffered_cache(model: PreTrainedModel, capacity: int):  # -> DynamicCache
    """A KV cache whose layers write into buffers of `capacity` positions allocated once.

    transformers' DynamicLayer grows by `torch.cat`, which copies the whole cache (and, past
    glibc's mmap threshold, page-faults a fresh allocation) at every token: on CPU that was
    two thirds of decoding time. Attention reads a view of the filled part, so the values are
    the ones a growing cache gives."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    class BufferLayer(DynamicLayer):
        def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
            self.dtype, self.device = key_states.dtype, key_states.device
            batch, heads, _, dim = key_states.shape
            self.k_buf = key_states.new_empty(batch, heads, capacity, dim)
            self.v_buf = value_states.new_empty(batch, heads, capacity, value_states.shape[-1])
            self.length = 0
            self.is_initialized = True

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            start, end = self.length, self.length + key_states.shape[-2]
            if end > capacity:
                raise RuntimeError(f"KV cache of {capacity} positions is full")
            self.k_buf[:, :, start:end].copy_(key_states)
            self.v_buf[:, :, start:end].copy_(value_states)
            self.length = end
            self.keys, self.values = self.k_buf[:, :, :end], self.v_buf[:, :, :end]
            return self.keys, self.values

        def get_seq_length(self) -> int:
            return self.length if self.is_initialized else 0

        def batch_select_indices(self, indices: torch.Tensor) -> None:
            if self.is_initialized:
                self.k_buf, self.v_buf = self.k_buf[indices], self.v_buf[indices]
                self.keys, self.values = self.k_buf[:, :, : self.length], self.v_buf[:, :, : self.length]

    cache = DynamicCache(config=model.config)
    cache.layers = [BufferLayer() for _ in cache.layers]
    return cache


def check_backend(name: str) -> None:
    """`hf` always works, `openai` needs only its server (checked by `ServedSampler.check_model`);
    `vllm` needs the package and a CUDA GPU, and says which is missing."""
    if name in ("hf", "openai"):
        return
    if name != "vllm":
        raise ValueError(f"generation backend must be 'hf' or 'vllm' (in-process) or 'openai' (served), got {name!r}")
    if importlib.util.find_spec("vllm") is None:
        raise RuntimeError(
            "backend: vllm needs the vllm package (pip install vllm, CUDA only); "
            "use backend: hf, or backend: openai against a `vllm serve` elsewhere"
        )
    if not torch.cuda.is_available():
        raise RuntimeError("backend: vllm needs a CUDA GPU; none is available. Use backend: hf, or backend: openai")


def check_trl_vllm(mode: str) -> None:
    """`grpo.use_vllm`: TRL needs the vllm package and CUDA on the training machine in both of
    its modes (`colocate` runs the engine in-process; `server` pushes weights to `trl vllm-serve`
    over NCCL), so say which is missing before any model is loaded."""
    fix = "set grpo.use_vllm: false (sampling through transformers)"
    if importlib.util.find_spec("vllm") is None:
        raise RuntimeError(
            f"grpo.use_vllm (vllm_mode {mode}) needs the vllm package on the training machine "
            f"(pip install -e '.[cuda]', CUDA only); {fix}"
        )
    if not torch.cuda.is_available():
        raise RuntimeError(f"grpo.use_vllm (vllm_mode {mode}) needs a CUDA GPU; none is available; {fix}")


def sample_vllm(model_dir: str, prompts: Sequence[str], seeds: Sequence[int], params: SamplingParams) -> list[str]:
    """The vLLM path (CUDA only): one request per item with the item's own seed. Prompts are
    rendered by `render_prompt` (prefix included) and the prefix is prepended to each output,
    exactly as `sample` does."""
    from vllm import LLM
    from vllm import SamplingParams as VllmParams

    llm = LLM(model=model_dir, seed=0, trust_remote_code=False)
    per_item = [
        VllmParams(temperature=params.temperature, top_p=params.top_p, max_tokens=params.max_new_tokens, seed=s)
        for s in seeds
    ]
    outs = llm.generate(list(prompts), per_item)
    return [params.prefix + o.outputs[0].text for o in outs]
