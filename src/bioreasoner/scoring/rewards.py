"""GRPO reward terms [D6], as TRL reward functions.

The v3.0 plan: +1 per grounded cited PMID, -2 per hallucinated one, + logic/5 + novelty/5,
+0.5 with a <think> block, -1 without; plus answer correctness for qa, guarded against the
hacks the formula invites (citing the same PMID twenty times). Each term is its own
function, so TRL logs `rewards/<name>/mean` per term and sums them with `reward_weights`:

| name          | reward of one completion                                                      | range          |
|---------------|-------------------------------------------------------------------------------|----------------|
| `grounding`   | min(G, cap) - 2 * H, with G = distinct cited PMIDs among the row's sources    | [-2 * H, cap]  |
|               | and H = distinct cited PMIDs not among them (whole response, think included)  |                |
| `format`      | +0.5 with a closed `<think>...</think>` block, else -1.0 (none, or unclosed)  | {-1.0, +0.5}   |
| `quality`     | 2 x mean / 5 = logic / 5 + novelty / 5, from the judge; 0.0 without a verdict | [0.4, 2.0], 0  |
| `correctness` | qa rows with a gold decision: 1.0 when the parsed decision equals it, else 0; | {0.0, 1.0}     |
|               | every other row 0.0                                                           |                |

Guards, in `grounding`:

- Repeats count once: G and H count distinct PMIDs (`Parsed.citations`), so citing one source
  twenty times earns what citing it once does.
- The cap limits the positive side only: grounded credit is min(G, cap) (default cap 3.0), so
  citing every source of a large task is not a strategy either. The cap is applied to G, not to
  the total G - 2H, because capping the total would make a hallucination free once G >= cap + 2.
- The negative side has no floor: each distinct invented PMID costs 2, however many there are.
  No policy hacks a penalty, and a floor would make the 10th invention as cheap as no more.

One judge scale [D5]: `quality` reads the same `Verdict.mean` = (logic + novelty) / 2 on the
judges' 1-5 scale that the pass rule (`judges.pass_rule.min_score`, `scoring.filtering`)
thresholds, scaled by 2/5, so the quality of a response at the pass rule's `min_score` m is
2m / 5 (1.0 at the default 2.5) and the term is monotone in exactly what filter and eval
threshold. The pass rule's other clauses (a closed think block, no invented PMID) are not
repeated inside `quality`: they are the `format` and `grounding` terms, which give a graded
signal where a pass/fail gate would give none.

Everything a response contains is read by `parsing.parse_response`, the one parser shared
with eval and the filter. The text scored is the completion as given: a trainer that forces a
prefix (e.g. "<think>\\n") into the prompt must put it back before scoring, as `generation` does.

Calling convention (TRL's and open-r1's): `fn(completions, **columns) -> list[float]`, one value
per completion. A completion is a string, or a conversational completion (a list of message
dicts, scored on the last assistant message's content). The columns are lists aligned with the
completions: `source_pmids` (list[list[str]]), `task_type` (list[str]), `gold` (list[str |
None]) and `task` (`Task.model_dump_json()` strings, for the judge). Unknown keyword arguments
(the other dataset columns, `prompts`, `completion_ids`, `trainer_state`, ...) are ignored.

`build_rewards(cfg)` turns the typed `grpo.rewards` section (`core.config.RewardsCfg`, e.g.
`{grounding: {weight: 1.0, cap: 3.0}, format: {weight: 1.0}, quality: {weight: 1.0, judge:
{kind: rubric}}, correctness: {weight: 1.0}}`; a plain mapping is validated into one) into the
functions (each named after its key) and the weights for `GRPOConfig.reward_weights`, in
`RewardsCfg`'s field order (grounding, format, quality, correctness); a term left out is off.
`REWARDS`, the registry of factories, has exactly `RewardsCfg`'s fields as names. A term with
weight 0 is kept: it is logged but does not train (its cost is still paid, so remove a costly
judge instead of zeroing it).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from bioreasoner.core.config import OpenAIJudgeCfg, RewardsCfg, RubricJudgeCfg
from bioreasoner.core.parsing import parse_response
from bioreasoner.core.records import Task
from bioreasoner.scoring.judge import Judge, RetryBudget, build_judge

log = logging.getLogger(__name__)

RewardFunc = Callable[..., list[float]]

FORMAT_CLOSED_THINK = 0.5
FORMAT_NO_THINK = -1.0
GROUNDED_EACH = 1.0
HALLUCINATED_EACH = -2.0
DEFAULT_CAP = 3.0


def completion_text(completion: str | Sequence[dict[str, Any]]) -> str:
    """The text of a completion: a string as is, or the last assistant message's content."""
    if isinstance(completion, str):
        return completion
    for message in reversed(list(completion)):
        if message.get("role", "assistant") == "assistant":
            content = message.get("content")
            if isinstance(content, str):
                return content
            # content parts, e.g. [{"type": "text", "text": "..."}]: the text parts joined
            return "".join(p.get("text", "") for p in content or [] if isinstance(p, dict))
    return ""


def _column(name: str, values: Sequence[Any] | None, n: int) -> Sequence[Any]:
    if values is None:
        raise ValueError(f"reward needs the dataset column {name!r}, which was not passed")
    if len(values) != n:
        raise ValueError(f"column {name!r} has {len(values)} rows for {n} completions")
    return values


def grounding_reward(
    completions: Sequence[Any],
    source_pmids: Sequence[Sequence[str]] | None = None,
    cap: float = DEFAULT_CAP,
    **kwargs: Any,
) -> list[float]:
    """min(distinct grounded PMIDs, cap) - 2 x distinct hallucinated PMIDs (see the module docstring)."""
    sources = _column("source_pmids", source_pmids, len(completions))
    out = []
    for completion, pmids in zip(completions, sources, strict=True):
        cited = parse_response(completion_text(completion)).citations
        allowed = {str(p) for p in pmids}
        grounded = sum(c in allowed for c in cited)
        hallucinated = len(cited) - grounded
        out.append(min(GROUNDED_EACH * grounded, cap) + HALLUCINATED_EACH * hallucinated)
    return out


def format_reward(completions: Sequence[Any], **kwargs: Any) -> list[float]:
    """+0.5 with a closed `<think>...</think>` block, -1.0 otherwise."""
    return [
        FORMAT_CLOSED_THINK if parse_response(completion_text(c)).think_closed else FORMAT_NO_THINK for c in completions
    ]


def _as_task(value: str | dict[str, Any] | Task) -> Task:
    if isinstance(value, Task):
        return value
    if isinstance(value, str):
        return Task.model_validate_json(value)
    return Task.model_validate(value)


def quality_reward(
    completions: Sequence[Any],
    task: Sequence[str | dict[str, Any] | Task] | None = None,
    judge: Judge | None = None,
    max_concurrency: int = 1,
    **kwargs: Any,
) -> list[float]:
    """2 x mean / 5 (= logic / 5 + novelty / 5) from `judge` on (task, completion); 0.0 without a verdict.

    A judge behind an endpoint (`remote`) scores the batch `max_concurrency` completions at a
    time (a thread pool; the rewards keep the completions' order), not one request after another.
    """
    if judge is None:
        raise ValueError("quality reward needs a judge (build it with quality_factory or build_rewards)")
    tasks = _column("task", task, len(completions))
    items = [(_as_task(t), completion_text(c)) for c, t in zip(completions, tasks, strict=True)]
    if max_concurrency > 1 and len(items) > 1 and getattr(judge, "remote", False):
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(max_concurrency, len(items)), thread_name_prefix="reward") as pool:
            verdicts = list(pool.map(lambda item: judge.score(*item), items))
    else:
        verdicts = [judge.score(t, c) for t, c in items]
    out = []
    failed = 0
    for verdict in verdicts:
        if verdict.mean is not None:
            out.append(2 * verdict.mean / 5)  # the judges' 1-5 mean, as the pass rule reads it
        else:
            failed += 1
            out.append(0.0)
    if failed:
        log.warning("quality reward: judge %s gave no verdict for %d of %d completions", judge.name, failed, len(out))
    return out


def correctness_reward(
    completions: Sequence[Any],
    task_type: Sequence[str] | None = None,
    gold: Sequence[str | None] | None = None,
    **kwargs: Any,
) -> list[float]:
    """qa rows with a gold decision: 1.0 when the parsed "Answer: ..." equals it; other rows 0.0."""
    types = _column("task_type", task_type, len(completions))
    golds = _column("gold", gold, len(completions))
    out = []
    for completion, type_, g in zip(completions, types, golds, strict=True):
        if type_ != "qa" or g is None:
            out.append(0.0)
            continue
        decision = parse_response(completion_text(completion)).decision
        out.append(1.0 if decision == g else 0.0)
    return out


class NamedReward:
    """A reward function bound to its options, named for TRL's logs (`rewards/<__name__>/mean`).

    `functools.partial` has no `__name__`; this does, and it pickles when its options do.
    """

    def __init__(self, name: str, func: RewardFunc, **options: Any) -> None:
        self.__name__ = name
        self.__qualname__ = name
        self.func = func
        self.options = options

    def __call__(self, completions: Sequence[Any], **kwargs: Any) -> list[float]:
        return self.func(completions, **self.options, **kwargs)

    def __repr__(self) -> str:
        return f"NamedReward({self.__name__!r}, {self.func.__name__}, {self.options!r})"


def grounding_factory(cap: float = DEFAULT_CAP) -> NamedReward:
    if isinstance(cap, bool) or not isinstance(cap, int | float) or not math.isfinite(cap) or cap < 0:
        raise ValueError(f"grounding: cap must be a finite number >= 0, got {cap!r}")
    return NamedReward("grounding", grounding_reward, cap=float(cap))


def format_factory() -> NamedReward:
    return NamedReward("format", format_reward)


def quality_factory(
    judge: RubricJudgeCfg | OpenAIJudgeCfg | Mapping[str, Any] | None = None,
    *,
    budget: RetryBudget | None = None,
    max_concurrency: int = 8,
) -> NamedReward:
    """The quality term with a judge built from its typed entry or a mapping (default `{kind: rubric}`)."""
    if isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int) or max_concurrency < 1:
        raise ValueError(f"quality: max_concurrency must be an integer >= 1, got {max_concurrency!r}")
    judge_obj = build_judge(judge or {"kind": "rubric"}, budget=budget)
    if not getattr(judge_obj, "remote", False):  # the rubric runs inline: keep its repr as it was
        return NamedReward("quality", quality_reward, judge=judge_obj)
    return NamedReward("quality", quality_reward, judge=judge_obj, max_concurrency=max_concurrency)


def correctness_factory() -> NamedReward:
    return NamedReward("correctness", correctness_reward)


# a `RewardsCfg` field -> factory; the term's typed fields (less `weight`) are its keyword arguments.
REWARDS: dict[str, Callable[..., NamedReward]] = {
    "grounding": grounding_factory,
    "format": format_factory,
    "quality": quality_factory,
    "correctness": correctness_factory,
}


def rewards_config(cfg: RewardsCfg | Mapping[str, Any]) -> RewardsCfg:
    """`cfg` as a `RewardsCfg`; a plain mapping is validated, its problems one ValueError line."""
    if isinstance(cfg, RewardsCfg):
        return cfg
    if not cfg:
        raise ValueError(f"no reward terms configured (choose from {sorted(REWARDS)})")
    unknown = sorted(set(cfg) - set(REWARDS))
    if unknown:
        raise ValueError(f"unknown reward terms {unknown} (expected some of {sorted(REWARDS)})")
    try:
        return RewardsCfg.model_validate({k: {} if v is None else v for k, v in cfg.items()})
    except ValidationError as err:
        e = err.errors(include_url=False)[0]
        where = ".".join(str(p) for p in e["loc"] if p not in ("rubric", "openai"))
        if e["type"] == "extra_forbidden":
            raise ValueError(f"reward {where}: unknown option") from None
        if e["type"] == "union_tag_invalid" and isinstance(e["input"], Mapping):
            raise ValueError(f"reward {where}: unknown judge kind {e['input'].get('kind')!r}") from None
        raise ValueError(f"reward {where}: {e['msg']}, got {e['input']!r}") from None


def build_rewards(
    cfg: RewardsCfg | Mapping[str, Any], *, retry_budget: int | None = None
) -> tuple[list[NamedReward], list[float]]:
    """The reward functions of the terms set in `cfg` (`RewardsCfg` field order) and their weights.

    `retry_budget` caps the HTTP retries of the quality term's judge over the whole run (None:
    each item may retry `max_retries` times). Weight-0 terms are kept.
    """
    cfg = rewards_config(cfg)
    funcs, weights = [], []
    for name in RewardsCfg.model_fields:
        term = getattr(cfg, name)
        if term is None:
            continue
        options = {k: getattr(term, k) for k in type(term).model_fields if k != "weight"}
        if name == "quality":
            options["budget"] = RetryBudget(retry_budget)
        if not math.isfinite(term.weight):
            raise ValueError(f"reward {name!r}: weight must be a finite number, got {term.weight!r}")
        funcs.append(REWARDS[name](**options))
        weights.append(float(term.weight))
    log.info("rewards: %s", ", ".join(f"{f.__name__} x {w:g}" for f, w in zip(funcs, weights, strict=True)))
    return funcs, weights


def to_grpo_row(task: Task) -> dict[str, Any]:
    """A GRPO dataset row: the conversational prompt plus the columns the reward terms read."""
    return {
        "prompt": [m.model_dump() for m in task.messages],
        "source_pmids": task.source_pmids,
        "task_type": task.type,
        "gold": task.gold,
        "task": task.model_dump_json(),
    }
