"""Judges score a response's logic and novelty on one 1-5 scale [D5].

A judge is anything with a `name` and `score(task, response) -> Verdict`. The default is
the deterministic rubric (`judge.rubric`); `kind: openai` asks an OpenAI-compatible
endpoint (`judge.openai`). Several judges may run side by side (`judges.panel`, the first
is primary), and `agreement` reports how often two of them reach the same pass/fail call
(the calls come from the one pass rule, `bioreasoner.scoring.filtering`).

A verdict that could not be obtained (a malformed reply, an HTTP failure) is a `Verdict`
with `error` set and no scores: recorded, never a crash for one item. A judge that fails
too often is a stage failure instead (`score_all`): over the first `judges.fail_fast_after`
items, an error share above `judges.max_error_rate` (or every item failing, whatever the
settings) raises `JudgeFailureError`, one line and exit 1 under `run_stage`, before any out
is written. HTTP retries come out of one `RetryBudget` per stage (`judges.retry_budget`),
shared by every judge and item.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Protocol, runtime_checkable

from pydantic import TypeAdapter, ValidationError

from bioreasoner.core.config import JudgeCfg, OpenAIJudgeCfg, RubricJudgeCfg
from bioreasoner.core.io import BadInputError
from bioreasoner.core.records import Task
from bioreasoner.endpoints.client import RetryBudget  # re-exported: judges share one per stage


@dataclass(frozen=True)
class Verdict:
    logic: float | None
    novelty: float | None
    error: str | None
    judge: str
    rationale: str | None = None

    @property
    def ok(self) -> bool:
        """Both scores present and no error."""
        return self.error is None and self.logic is not None and self.novelty is not None

    @property
    def mean(self) -> float | None:
        """(logic + novelty) / 2 on the 1-5 scale, or None when the verdict is not ok."""
        if not self.ok:
            return None
        return (self.logic + self.novelty) / 2  # type: ignore[operator]


@runtime_checkable
class Judge(Protocol):
    name: str

    def score(self, task: Task, response: str) -> Verdict: ...


class JudgeFailureError(BadInputError):
    """A judge failed on too many items: the stage stops, nothing is written.

    A `BadInputError`, so `run_stage` prints its one line and exits 1.
    """

    def __init__(self, judge: str, problem: str):
        super().__init__(f"judge {judge}", None, problem)


_JUDGE_CFG: TypeAdapter[Any] = TypeAdapter(JudgeCfg)


def judge_config(cfg: Mapping[str, Any]) -> RubricJudgeCfg | OpenAIJudgeCfg:
    """A plain judge mapping validated into its typed entry; problems are one ValueError line."""
    kind = cfg.get("kind")
    if kind not in ("rubric", "openai"):
        raise ValueError(f"unknown judge kind {kind!r} (expected 'rubric' or 'openai')")
    try:
        return _JUDGE_CFG.validate_python(dict(cfg))
    except ValidationError as err:
        e = err.errors(include_url=False)[0]
        field = ".".join(str(p) for p in e["loc"] if p != kind) or "judge"
        if e["type"] == "extra_forbidden":
            raise ValueError(f"judge kind {kind!r}: unknown option {field!r}") from None
        if e["type"] == "missing":
            raise ValueError(f"judge kind {kind!r}: option {field!r} is required") from None
        raise ValueError(f"judge kind {kind!r}: {field}: {e['msg']}") from None


def build_judge(
    cfg: RubricJudgeCfg | OpenAIJudgeCfg | Mapping[str, Any], *, budget: RetryBudget | None = None
) -> Judge:
    """A judge from its typed params entry (`JudgeCfg`), or from a plain mapping (validated the same way).

    `budget` is the stage's shared retry budget (an OpenAI judge without one may retry each
    item `max_retries` times).
    """
    if isinstance(cfg, Mapping):
        cfg = judge_config(cfg)
    if isinstance(cfg, RubricJudgeCfg):
        from bioreasoner.scoring.judge.rubric import RubricJudge

        judge = RubricJudge()
        if cfg.name:
            judge.name = cfg.name
        return judge
    if isinstance(cfg, OpenAIJudgeCfg):
        from bioreasoner.scoring.judge.openai import OpenAIJudge

        return OpenAIJudge.from_config(cfg, budget=budget)
    raise TypeError(f"not a judge config: {cfg!r}")


def build_judges(
    panel: Sequence[RubricJudgeCfg | OpenAIJudgeCfg | Mapping[str, Any]], *, retry_budget: int | None = None
) -> list[Judge]:
    """The judges of `judges.panel`, sharing one `RetryBudget(retry_budget)`; names must differ,
    since results are keyed by name."""
    budget = RetryBudget(retry_budget, param="judges.retry_budget")
    judges = [build_judge(c, budget=budget) for c in panel]
    names = [j.name for j in judges]
    if len(set(names)) != len(names):
        raise ValueError(f"judge names must be unique, got {names} (set `name:` to tell them apart)")
    return judges


def agreement(a: list[bool], b: list[bool]) -> dict[str, float | int | None]:
    """How often two judges' pass/fail calls agree: raw share and Cohen's kappa.

    kappa = (p_o - p_e) / (1 - p_e), with p_o the observed share of identical calls and
    p_e = P_a(true) * P_b(true) + P_a(false) * P_b(false) the agreement expected by chance.
    When p_e = 1 (both judges constant and equal) kappa is undefined; we define it as
    1.0 if p_o = 1 (always the case then) and 0.0 otherwise. Empty input gives None for
    both. Computed with exact fractions, rounded to 4 decimals.
    """
    if len(a) != len(b):
        raise ValueError(f"agreement needs paired calls, got {len(a)} and {len(b)}")
    n = len(a)
    if n == 0:
        return {"n": 0, "agreement": None, "cohens_kappa": None}
    p_o = Fraction(sum(x == y for x, y in zip(a, b, strict=True)), n)
    pa, pb = Fraction(sum(a), n), Fraction(sum(b), n)
    p_e = pa * pb + (1 - pa) * (1 - pb)
    kappa = (1.0 if p_o == 1 else 0.0) if p_e == 1 else (p_o - p_e) / (1 - p_e)
    return {"n": n, "agreement": round(float(p_o), 4), "cohens_kappa": round(float(kappa), 4)}


def check_error_rate(
    judge: str, errors: int, seen: int, total: int, fail_fast_after: int, max_error_rate: float, last: str | None
) -> None:
    """Raise `JudgeFailureError` once the judge's errors decide the fail-fast rule.

    The window is the first min(`fail_fast_after`, `total`) items: the stage stops as soon as
    the errors among them exceed `max_error_rate` x window (so it need not score the whole
    window to know), and always when every one of `total` items failed.
    """
    window = min(fail_fast_after, total)
    if seen <= window and errors > max_error_rate * window:
        raise JudgeFailureError(
            judge,
            f"{errors} of the first {seen} items got no verdict: more than judges.max_error_rate = "
            f"{max_error_rate:g} of the first {window} (judges.fail_fast_after = {fail_fast_after}); "
            f"nothing was written. Last error: {last}",
        )
    if seen == total and total and errors == total:
        raise JudgeFailureError(judge, f"all {total} items got no verdict; nothing was written. Last error: {last}")


def score_all(
    judges: Sequence[Judge],
    tasks: Sequence[Task],
    responses: Sequence[str],
    *,
    fail_fast_after: int = 20,
    max_error_rate: float = 0.5,
    max_concurrency: int = 1,
) -> list[list[Verdict]]:
    """Every judge's verdict on every (task, response): result[j][i] is judge j on item i.

    With `max_concurrency` > 1 and a judge behind an endpoint (`remote`), the (item, judge)
    requests run in a thread pool, item-major: an item's judges are asked side by side and up
    to `max_concurrency` requests are in flight. Verdicts are read back in item order, so the
    result and the fail-fast rule (`check_error_rate`, raising `JudgeFailureError`) are the
    same as one request at a time; on a failure the requests not yet started are cancelled.
    """
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    if len(tasks) != len(responses):
        raise ValueError(f"{len(tasks)} tasks but {len(responses)} responses")
    if max_concurrency <= 1 or not any(getattr(j, "remote", False) for j in judges):
        return [_score_one_judge(j, tasks, responses, fail_fast_after, max_error_rate) for j in judges]
    n = len(tasks)
    out: list[list[Verdict]] = [[] for _ in judges]
    errors = [0] * len(judges)
    names = ", ".join(j.name for j in judges)
    with ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="judge") as pool:
        futures = [[pool.submit(j.score, t, r) for j in judges] for t, r in zip(tasks, responses, strict=True)]
        try:
            for i, row in enumerate(tqdm(futures, desc=f"judges {names}", unit="item", disable=None)):
                for k, (j, fut) in enumerate(zip(judges, row, strict=True)):
                    v = fut.result()
                    out[k].append(v)
                    if not v.ok:
                        errors[k] += 1
                        last = v.error or "verdict has no scores"
                        check_error_rate(j.name, errors[k], i + 1, n, fail_fast_after, max_error_rate, last)
        except BaseException:
            for row in futures:
                for fut in row:
                    fut.cancel()
            raise
    return out


def _score_one_judge(
    j: Judge, tasks: Sequence[Task], responses: Sequence[str], fail_fast_after: int, max_error_rate: float
) -> list[Verdict]:
    from tqdm.auto import tqdm

    verdicts: list[Verdict] = []
    errors = 0
    for t, r in tqdm(zip(tasks, responses, strict=True), total=len(tasks), desc=f"judge {j.name}", disable=None):
        v = j.score(t, r)
        verdicts.append(v)
        if not v.ok:
            errors += 1
            last = v.error or "verdict has no scores"
            check_error_rate(j.name, errors, len(verdicts), len(tasks), fail_fast_after, max_error_rate, last)
    return verdicts
