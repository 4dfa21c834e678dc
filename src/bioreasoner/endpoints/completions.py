"""Sampling from a served model (`backend: openai`): one request per item to an OpenAI-compatible
*completions* endpoint, e.g. the one `vllm serve models/merged/v2_0` exposes at
`http://127.0.0.1:8000/v1`.

    sampler = ServedSampler(cfg, model="models/merged/v2_0")   # cfg: config.ServerCfg
    sampler.check_model()          # <base_url>/models must list the served name, else one error line
    texts = sampler.sample(prompts, seeds, params, keys=ids)    # input order, prefix prepended

The caller renders each prompt locally (`generation.render_prompt`, the model folder's chat
template, the forced prefix included), exactly as the in-process backends do, so every backend
conditions the model on the same text; the completion is the response, and the prefix is put
in front of it as `generation.sample` does. Each item carries its own seed (`item_seed`), so an
item's sample does not depend on the others in flight (vLLM seeds each request's sampler).

Replies are untrusted: the HTTP layer (`EndpointClient`: key from the environment only, a total
deadline per item, retries inside the stage's `server.retry_budget`, a size cap) hands back at
most `max_response_bytes`, which is parsed with `json.loads` (linear time) and checked: one
choice, a string `text`, a known `finish_reason`, integer `usage`, and the served name in
`model`. The first item that fails stops the sampling with one `BadInputError` line naming the
endpoint and the item; nothing is returned, so the stage writes no out.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm

from bioreasoner.core.config import ServerCfg
from bioreasoner.core.io import BadInputError
from bioreasoner.endpoints.client import EndpointClient, EndpointError, RetryBudget

log = logging.getLogger(__name__)

FINISH_REASONS = frozenset({"stop", "length"})  # anything else (abort, error, ...) is not a sample


@dataclass
class Usage:
    """What the server reported, summed over items (for logs and metrics)."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finished: dict[str, int] = field(default_factory=dict)  # finish_reason -> items
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, prompt_tokens: int, completion_tokens: int, finish_reason: str) -> None:
        with self._lock:
            self.requests += 1
            self.prompt_tokens += prompt_tokens
            self.completion_tokens += completion_tokens
            self.finished[finish_reason] = self.finished.get(finish_reason, 0) + 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "finish_reasons": dict(sorted(self.finished.items())),
        }


class ReplyError(ValueError):
    """A 200 reply that is not a usable completion."""


def parse_completion(data: bytes, model: str) -> tuple[str, str, int, int]:
    """(text, finish_reason, prompt_tokens, completion_tokens) of one completions reply, or
    ReplyError saying what is wrong. Linear time: one `json.loads`, then field look-ups."""
    try:
        reply = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:  # RecursionError: [[[[...
        raise ReplyError(f"reply is not JSON ({type(err).__name__})") from None
    if not isinstance(reply, dict):
        raise ReplyError(f"reply is a JSON {type(reply).__name__}, not an object")
    if reply.get("model") != model:
        raise ReplyError(f"reply comes from model {_short(reply.get('model'))}, expected {model!r}")
    choices = reply.get("choices")
    if not isinstance(choices, list) or len(choices) != 1 or not isinstance(choices[0], dict):
        n = len(choices) if isinstance(choices, list) else "no"
        raise ReplyError(f"reply has {n} choices, expected exactly 1")
    choice = choices[0]
    text = choice.get("text")
    if not isinstance(text, str):
        raise ReplyError(f"choices[0].text is {_short(text)}, not a string")
    finish = choice.get("finish_reason")
    if finish not in FINISH_REASONS:
        raise ReplyError(f"choices[0].finish_reason is {_short(finish)}, expected one of {sorted(FINISH_REASONS)}")
    usage = reply.get("usage")
    counts = [usage.get(k) if isinstance(usage, dict) else None for k in ("prompt_tokens", "completion_tokens")]
    if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts):
        raise ReplyError("reply has no usable usage.prompt_tokens / usage.completion_tokens")
    return text, finish, counts[0], counts[1]


def served_names(data: bytes) -> list[str]:
    """The model ids in a `/models` reply (OpenAI's list format), or ReplyError."""
    try:
        reply = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise ReplyError("/models reply is not JSON") from None
    entries = reply.get("data") if isinstance(reply, dict) else None
    if not isinstance(entries, list):
        raise ReplyError("/models reply has no `data` list")
    return [e["id"] for e in entries if isinstance(e, dict) and isinstance(e.get("id"), str)]


def _short(value: Any, limit: int = 80) -> str:
    """A reply's value for an error line: repr, cut (an endpoint's text never fills a log)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


class ServedSampler:
    """Seeded sampling through `<base_url>/completions`; thread-safe, `max_concurrency` in flight."""

    def __init__(self, cfg: ServerCfg, *, model: str, budget: RetryBudget | None = None, name: str = "sampler"):
        self.cfg = cfg
        self.model = cfg.model or model  # the served name: vllm serve <folder> serves it as <folder>
        self.http = EndpointClient.from_config(
            cfg,
            budget=budget if budget is not None else RetryBudget(cfg.retry_budget, "server.retry_budget"),
            name=name,
        )
        self.usage = Usage()

    @property
    def where(self) -> str:
        return self.http.url("completions")

    def check_model(self) -> None:
        """The endpoint must be up and serve `self.model`: a server left running with another
        version (the most likely mistake, which DVC cannot see) is refused before any sampling."""
        try:
            names = served_names(self.http.get_json("models"))
        except (EndpointError, ReplyError) as err:
            raise BadInputError(self.http.url("models"), None, str(err)) from None
        if self.model not in names:
            raise BadInputError(
                self.http.url("models"),
                None,
                f"serves {sorted(names)[:5]}, not {self.model!r}: start `vllm serve {self.model}` "
                "(or set server.model to the name it serves the stage's model folder under)",
            )

    def body(self, prompt: str, seed: int, params: Any) -> dict[str, Any]:
        """The request for one item (`params`: generation.SamplingParams)."""
        body: dict[str, Any] = {
            "model": self.model,
            "prompt": prompt,
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,  # 0 = greedy, as in the hf backend
            "top_p": params.top_p,
            "seed": seed,
            "n": 1,
            "stream": False,
        }
        if self.cfg.add_special_tokens is not None:
            body["add_special_tokens"] = self.cfg.add_special_tokens  # the prompt already holds the template's
        return body

    def complete(self, prompt: str, seed: int, params: Any, key: str = "") -> str:
        """The completion of one rendered prompt (without the prefix); BadInputError on failure."""
        try:
            data = self.http.post_json("completions", self.body(prompt, seed, params))
            text, finish, prompt_tokens, completion_tokens = parse_completion(data, self.model)
        except (EndpointError, ReplyError) as err:
            raise BadInputError(self.where, f"item {key}" if key else None, self.http.redact(str(err))) from None
        self.usage.add(prompt_tokens, completion_tokens, finish)
        return text

    def sample(
        self,
        prompts: Sequence[str],
        seeds: Sequence[int],
        params: Any,
        *,
        keys: Sequence[str] | None = None,
        desc: str = "sample",
        done: dict[int, str] | None = None,
        on_item: Callable[[int, str], None] | None = None,
    ) -> list[str]:
        """One response per rendered prompt, in input order, each `params.prefix` + completion.

        `done` holds responses already sampled (by index, e.g. read back after a kill), which are
        not requested again; `on_item(index, response)` is called in the calling thread as each
        item finishes, so a caller can append it to disk. The first failure cancels what has not
        started and raises (requests already in flight finish, their results are dropped)."""
        if len(prompts) != len(seeds):
            raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
        keys = list(keys) if keys is not None else [str(i) for i in range(len(prompts))]
        done = done or {}
        out: list[str | None] = [done.get(i) for i in range(len(prompts))]
        todo = [i for i in range(len(prompts)) if out[i] is None]
        with (
            tqdm(total=len(prompts), initial=len(prompts) - len(todo), desc=desc, unit="item", disable=None) as bar,
            ThreadPoolExecutor(max_workers=self.cfg.max_concurrency, thread_name_prefix="sampler") as pool,
        ):
            futures: dict[Future[str], int] = {
                pool.submit(self.complete, prompts[i], seeds[i], params, keys[i]): i for i in todo
            }
            try:
                for fut in as_completed(futures):
                    i = futures[fut]
                    out[i] = params.prefix + fut.result()
                    if on_item is not None:
                        on_item(i, out[i])
                    bar.update(1)
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)  # nothing new starts; in-flight ones end by deadline
                raise
        log.info(
            "%s: %d requests, %d prompt + %d completion tokens, finish %s, %s retries",
            desc,
            self.usage.requests,
            self.usage.prompt_tokens,
            self.usage.completion_tokens,
            self.usage.finished,
            self.http.budget.used,
        )
        return [o if o is not None else "" for o in out]
