"""Continual-learning metrics and the sleep-pressure scheduler of the cls_sleep stage.

Pure functions on plain lists (no torch). Definitions follow the continual-learning MVP [D8]
(its "Continual Metrics Definitions (Task-Boundary Metrics)") wherever it gives one; where it
is silent the choice is stated below.

Task matrix (the MVP)
---------------------
``A[i][j]`` is the token accuracy, and ``L[i][j]`` the token loss, on the held-out
references of task j measured after boundary i. Rows are boundaries in time order (in this
pipeline ``parent``, ``grpo``, ``sleep``), columns are task types (``qa``,
``critique_extend``, ``method_bridge``, ``gap_analysis``). Every cell must be finite: a task
with no supervised eval tokens at some boundary has no meaningful accuracy there and must be
dropped from the matrix, not filled with 0.

What "seen" means (generalisation, our choice)
----------------------------------------------
The MVP trains one new task per boundary, so task j is learned at boundary j and its
formulas range over ``j <= i`` (seen) and ``j < i`` (prior). We generalise with
``learned_at[j]``, the boundary index at which task j was first learned:

- seen at boundary i:  S_i = {j : learned_at[j] <= i}
- prior at boundary i: P_i = {j : learned_at[j] <  i}   (learned strictly before i)

``learned_at = [0, 1, 2, ...]`` reproduces the MVP exactly. The default is
``learned_at[j] = 0`` for every j, because in this pipeline every task type was trained in
SFT, i.e. before the parent checkpoint (boundary 0): all tasks are seen at every boundary,
boundary 0 has no prior tasks, and at every later boundary all tasks are prior. At least one
task must have ``learned_at == 0`` so that S_i is never empty; a ``learned_at`` beyond the
last row is allowed (that task is not seen yet).

Per-boundary metrics
--------------------
- ``seen_acc_avg_i  = mean(A[i][j] for j in S_i)``                        (the MVP, j <= i -> S_i)
- ``seen_loss_avg_i = mean(L[i][j] for j in S_i)``                        (the MVP, j <= i -> S_i)
- ``forgetting_i = mean(max_{k <= i-1} A[k][j] - A[i][j] for j in P_i)``  (the MVP, j < i -> P_i)
  The max runs over every earlier boundary k = 0..i-1, as the MVP writes it, which is also
  Chaudhry et al. 2018 (RWalk, "Riemannian Walk for Incremental Learning", eq. for f_j^k).
  A term is negative when the task is now better than ever before; terms are not clipped.
- ``bwt_i = mean(A[i][j] - A[learned_at[j]][j] for j in P_i)``           (the MVP, A[j][j] -> A[learned_at[j]][j])
  Backward transfer as in Lopez-Paz & Ranzato 2017 (GEM), BWT = 1/(T-1) sum_{i<T} R_{T,i} - R_{i,i}:
  the change since the boundary at which the task was learned. With the default learned_at
  this is the mean change of every task relative to the parent.
- When P_i is empty (always at i = 0), forgetting_i = bwt_i = 0 (the MVP: "first boundary
  has no prior tasks, so forgetting/BWT are defined as 0").

Summary metrics
---------------
- ``final_seen_acc_avg``, ``final_seen_loss_avg``, ``final_forgetting``, ``final_bwt``: the
  value at the last boundary (the MVP).
- ``seen_acc_auc`` (the MVP): trapezoidal area under the seen_acc_avg trajectory over
  boundary indices 0..n-1, divided by the number of intervals n-1:
  ``sum_{i=0}^{n-2} (y_i + y_{i+1}) / 2 / (n - 1)``. With a single boundary (no interval; the
  MVP is silent) it is ``y_0``, the area-normalised value of a constant trajectory.
- ``non_finite_step_count`` (the MVP): the number of distinct training steps whose tracked
  scalar metrics contained NaN or +-Inf; ``first_non_finite_step`` is the first such step or
  -1 (the MVP).
- Sleep batches (the MVP): ``pseudo_batch_size``, ``replay_batch_size_sleep``,
  ``sleep_mix_ratio_pseudo = pseudo / (replay + pseudo)``, ``fisher_replay_samples``,
  ``fisher_pseudo_samples``, ``fisher_source_mode`` = ``mixed_replay_pseudo`` when Fisher saw
  pseudo samples, else ``replay_only``.

Sleep-pressure scheduler (the MVP names the signals but gives no formula; our choice)
-------------------------------------------------------------------------------------
Signals: saturation s (norm of the GRPO adapter), novelty v (teacher-vs-parent KL on replay)
and forgetting f (drop in replay token accuracy, before minus after). Each is normalised by
its reference scale and clipped to [0, 1]:

    s' = clip(s / saturation_ref), v' = clip(v / novelty_ref), f' = clip(f / forgetting_ref)
    pressure = (w_s s' + w_v v' + w_f f') / (w_s + w_v + w_f)
    steps = floor(min_sleep_steps + pressure * (max_sleep_steps - min_sleep_steps) + 0.5)

so a negative signal (e.g. replay accuracy went up) counts as 0, a signal at or above its
reference counts as 1, and steps rounds half up (not Python's round-half-to-even). The
result always lies in [min_sleep_steps, max_sleep_steps]. Non-finite signals are rejected.

References: the continual-learning MVP [D8]; D. Lopez-Paz and M. Ranzato, "Gradient Episodic
Memory for Continual Learning", NeurIPS 2017; A. Chaudhry et al., "Riemannian Walk for
Incremental Learning: Understanding Forgetting and Intransigence", ECCV 2018.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

log = logging.getLogger(__name__)

Matrix = Sequence[Sequence[float]]
DIGITS = 4


# ----------------------------------------------------------------------------- validation


def _check_matrix(m: Matrix, name: str = "A") -> list[list[float]]:
    """Return `m` as a list of float rows after checking it is a non-empty, rectangular, finite matrix."""
    rows = [list(r) for r in m]
    if not rows:
        raise ValueError(f"{name} has no rows (boundaries)")
    width = len(rows[0])
    if width == 0:
        raise ValueError(f"{name} has no columns (tasks)")
    for i, row in enumerate(rows):
        if len(row) != width:
            raise ValueError(f"{name} is not rectangular: row {i} has {len(row)} columns, row 0 has {width}")
        for j, v in enumerate(row):
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise ValueError(f"{name}[{i}][{j}] is not a number: {v!r}")
            if not math.isfinite(v):
                raise ValueError(f"{name}[{i}][{j}] is not finite: {v!r}")
    return [[float(v) for v in row] for row in rows]


def _check_learned_at(learned_at: Sequence[int] | None, n_tasks: int) -> list[int]:
    if learned_at is None:
        return [0] * n_tasks
    out = list(learned_at)
    if len(out) != n_tasks:
        raise ValueError(f"learned_at has {len(out)} entries for {n_tasks} tasks")
    for j, b in enumerate(out):
        if isinstance(b, bool) or not isinstance(b, int) or b < 0:
            raise ValueError(f"learned_at[{j}] must be a non-negative int, got {b!r}")
    if min(out) != 0:
        raise ValueError(
            "at least one task must be learned at boundary 0 (learned_at == 0), else nothing is seen there"
        )
    return out


def _boundary_index(boundary: int, n_boundaries: int) -> int:
    if not -n_boundaries <= boundary < n_boundaries:
        raise ValueError(f"boundary {boundary} out of range for {n_boundaries} boundaries")
    return boundary % n_boundaries


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs)


# ----------------------------------------------------------------------------- per-boundary metrics


def seen_tasks(learned_at: Sequence[int], boundary: int) -> list[int]:
    """S_i: the columns j with learned_at[j] <= boundary."""
    return [j for j, b in enumerate(learned_at) if b <= boundary]


def prior_tasks(learned_at: Sequence[int], boundary: int) -> list[int]:
    """P_i: the columns j with learned_at[j] < boundary."""
    return [j for j, b in enumerate(learned_at) if b < boundary]


def seen_acc_avg(A: Matrix, learned_at: Sequence[int] | None = None, boundary: int = -1) -> float:
    """seen_acc_avg_i = mean(A[i][j] for j in S_i) at `boundary` (default: the last). The MVP's."""
    a = _check_matrix(A)
    la = _check_learned_at(learned_at, len(a[0]))
    i = _boundary_index(boundary, len(a))
    return _mean([a[i][j] for j in seen_tasks(la, i)])


def seen_loss_avg(L: Matrix, learned_at: Sequence[int] | None = None, boundary: int = -1) -> float:
    """seen_loss_avg_i = mean(L[i][j] for j in S_i) at `boundary` (default: the last). The MVP's."""
    m = _check_matrix(L, "L")
    la = _check_learned_at(learned_at, len(m[0]))
    i = _boundary_index(boundary, len(m))
    return _mean([m[i][j] for j in seen_tasks(la, i)])


def forgetting(A: Matrix, learned_at: Sequence[int] | None = None, boundary: int = -1) -> float:
    """forgetting_i = mean(max_{k<=i-1} A[k][j] - A[i][j] for j in P_i); 0 when P_i is empty.

    The MVP's definition (with j < i generalised to P_i), identical to Chaudhry et al. 2018.
    Higher is worse; a negative value means the prior tasks are better now than ever before.
    """
    a = _check_matrix(A)
    la = _check_learned_at(learned_at, len(a[0]))
    i = _boundary_index(boundary, len(a))
    prior = prior_tasks(la, i)
    if not prior:
        return 0.0
    return _mean([max(a[k][j] for k in range(i)) - a[i][j] for j in prior])


def bwt(A: Matrix, learned_at: Sequence[int] | None = None, boundary: int = -1) -> float:
    """bwt_i = mean(A[i][j] - A[learned_at[j]][j] for j in P_i); 0 when P_i is empty.

    The MVP's definition (A[j][j] generalised to A[learned_at[j]][j]), i.e. GEM's backward
    transfer (Lopez-Paz & Ranzato 2017). Positive: old tasks improved; negative: they degraded.
    """
    a = _check_matrix(A)
    la = _check_learned_at(learned_at, len(a[0]))
    i = _boundary_index(boundary, len(a))
    prior = prior_tasks(la, i)
    if not prior:
        return 0.0
    return _mean([a[i][j] - a[la[j]][j] for j in prior])


def trajectory_auc(ys: Sequence[float]) -> float:
    """Trapezoidal area under ys over x = 0..n-1, divided by n-1; ys[0] when n == 1."""
    ys = [float(y) for y in ys]
    if not ys:
        raise ValueError("empty trajectory")
    if any(not math.isfinite(y) for y in ys):
        raise ValueError(f"trajectory has a non-finite value: {ys}")
    if len(ys) == 1:
        return ys[0]
    return sum((ys[k] + ys[k + 1]) / 2 for k in range(len(ys) - 1)) / (len(ys) - 1)


def seen_acc_auc(A: Matrix, learned_at: Sequence[int] | None = None) -> float:
    """The MVP's seen_acc_auc: `trajectory_auc` of seen_acc_avg_i over all boundaries i."""
    a = _check_matrix(A)
    return trajectory_auc([seen_acc_avg(a, learned_at, i) for i in range(len(a))])


# ----------------------------------------------------------------------------- JSON summaries


def _r(x: float) -> float:
    return round(float(x), DIGITS)


def cl_metrics(
    A: Matrix,
    *,
    boundaries: Sequence[str],
    tasks: Sequence[str],
    L: Matrix | None = None,
    learned_at: Sequence[int] | None = None,
) -> dict[str, Any]:
    """All task-matrix metrics as a JSON-ready dict, floats rounded to 4 decimals.

    Keys: ``boundaries``, ``tasks``, ``learned_at`` ({task: boundary name}), ``acc_matrix``
    ({boundary: {task: A[i][j]}}), ``seen_acc_avg`` / ``forgetting`` / ``bwt`` ({boundary: value}),
    ``final_seen_acc_avg``, ``final_forgetting``, ``final_bwt``, ``seen_acc_auc``; with `L` also
    ``loss_matrix``, ``seen_loss_avg`` and ``final_seen_loss_avg``. Rounding happens only here,
    after every metric is computed from the unrounded matrix.
    """
    a = _check_matrix(A)
    n_b, n_t = len(a), len(a[0])
    boundaries, tasks = [str(b) for b in boundaries], [str(t) for t in tasks]
    if len(boundaries) != n_b:
        raise ValueError(f"{len(boundaries)} boundary names for {n_b} rows of A")
    if len(tasks) != n_t:
        raise ValueError(f"{len(tasks)} task names for {n_t} columns of A")
    if len(set(boundaries)) != n_b:
        raise ValueError(f"duplicate boundary names: {boundaries}")
    if len(set(tasks)) != n_t:
        raise ValueError(f"duplicate task names: {tasks}")
    la = _check_learned_at(learned_at, n_t)
    idx = range(n_b)

    out: dict[str, Any] = {
        "boundaries": boundaries,
        "tasks": tasks,
        "learned_at": {t: (boundaries[b] if b < n_b else None) for t, b in zip(tasks, la, strict=True)},
        "acc_matrix": {boundaries[i]: {t: _r(a[i][j]) for j, t in enumerate(tasks)} for i in idx},
        "seen_acc_avg": {boundaries[i]: _r(seen_acc_avg(a, la, i)) for i in idx},
        "forgetting": {boundaries[i]: _r(forgetting(a, la, i)) for i in idx},
        "bwt": {boundaries[i]: _r(bwt(a, la, i)) for i in idx},
        "final_seen_acc_avg": _r(seen_acc_avg(a, la)),
        "final_forgetting": _r(forgetting(a, la)),
        "final_bwt": _r(bwt(a, la)),
        "seen_acc_auc": _r(seen_acc_auc(a, la)),
    }
    if L is not None:
        m = _check_matrix(L, "L")
        if len(m) != n_b or len(m[0]) != n_t:
            raise ValueError(f"L has shape {len(m)}x{len(m[0])}, A has shape {n_b}x{n_t}")
        out["loss_matrix"] = {boundaries[i]: {t: _r(m[i][j]) for j, t in enumerate(tasks)} for i in idx}
        out["seen_loss_avg"] = {boundaries[i]: _r(seen_loss_avg(m, la, i)) for i in idx}
        out["final_seen_loss_avg"] = _r(seen_loss_avg(m, la))
    return out


def non_finite_steps(history: Iterable[Mapping[str, Any]], step_key: str = "step") -> dict[str, int]:
    """``non_finite_step_count`` and ``first_non_finite_step`` (the MVP) over a log history.

    `history` is a sequence of per-step metric dicts (e.g. a trainer's log history), each with
    an int `step_key`. A step counts when any of its numeric (int/float, not bool) values is
    NaN or +-Inf; non-numeric values are ignored, and a step logged in several dicts counts once.
    """
    bad: set[int] = set()
    for n, row in enumerate(history):
        if step_key not in row:
            raise ValueError(f"history entry {n} has no {step_key!r}: {dict(row)}")
        step = row[step_key]
        if isinstance(step, bool) or not isinstance(step, int):
            raise ValueError(f"history entry {n}: {step_key!r} must be an int, got {step!r}")
        for k, v in row.items():
            if k != step_key and not isinstance(v, bool) and isinstance(v, int | float) and not math.isfinite(v):
                bad.add(step)
                break
    return {"non_finite_step_count": len(bad), "first_non_finite_step": min(bad) if bad else -1}


def sleep_batch_metrics(
    *, replay_batch_size: int, pseudo_batch_size: int, fisher_replay_samples: int, fisher_pseudo_samples: int
) -> dict[str, Any]:
    """The MVP's sleep-stage batch and Fisher observability metrics.

    ``sleep_mix_ratio_pseudo = pseudo / (replay + pseudo)``; ``fisher_source_mode`` is
    ``mixed_replay_pseudo`` when Fisher used pseudo samples, else ``replay_only``.
    """
    counts = {
        "replay_batch_size": replay_batch_size,
        "pseudo_batch_size": pseudo_batch_size,
        "fisher_replay_samples": fisher_replay_samples,
        "fisher_pseudo_samples": fisher_pseudo_samples,
    }
    for k, v in counts.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{k} must be a non-negative int, got {v!r}")
    if replay_batch_size + pseudo_batch_size == 0:
        raise ValueError("a sleep distillation batch needs at least one replay or pseudo example")
    return {
        "replay_batch_size_sleep": replay_batch_size,
        "pseudo_batch_size": pseudo_batch_size,
        "sleep_mix_ratio_pseudo": _r(pseudo_batch_size / (replay_batch_size + pseudo_batch_size)),
        "fisher_replay_samples": fisher_replay_samples,
        "fisher_pseudo_samples": fisher_pseudo_samples,
        "fisher_source_mode": "mixed_replay_pseudo" if fisher_pseudo_samples > 0 else "replay_only",
    }


# ----------------------------------------------------------------------------- sleep-pressure scheduler

SIGNALS = ("saturation", "novelty", "forgetting")


@dataclass(frozen=True)
class SleepSignals:
    """The scheduler's raw inputs, in their own units.

    saturation: norm of the GRPO adapter; novelty: teacher-vs-parent KL on replay (nats per
    token); forgetting: replay token accuracy before minus after (negative = it improved).
    """

    saturation: float
    novelty: float
    forgetting: float


@dataclass(frozen=True, kw_only=True)
class SleepPressureParams:
    """Scheduler parameters; a signal equal to its ``*_ref`` counts as full pressure."""

    min_sleep_steps: int
    max_sleep_steps: int
    saturation_ref: float
    novelty_ref: float
    forgetting_ref: float
    saturation_weight: float = 1.0
    novelty_weight: float = 1.0
    forgetting_weight: float = 1.0

    def __post_init__(self) -> None:
        for k in ("min_sleep_steps", "max_sleep_steps"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{k} must be a non-negative int, got {v!r}")
        if self.min_sleep_steps > self.max_sleep_steps:
            raise ValueError(f"min_sleep_steps {self.min_sleep_steps} > max_sleep_steps {self.max_sleep_steps}")
        for s in SIGNALS:
            ref, w = getattr(self, f"{s}_ref"), getattr(self, f"{s}_weight")
            if not (isinstance(ref, int | float) and math.isfinite(ref) and ref > 0):
                raise ValueError(f"{s}_ref must be a finite number > 0, got {ref!r}")
            if not (isinstance(w, int | float) and math.isfinite(w) and w >= 0):
                raise ValueError(f"{s}_weight must be a finite number >= 0, got {w!r}")
        if sum(getattr(self, f"{s}_weight") for s in SIGNALS) <= 0:
            raise ValueError("at least one scheduler weight must be > 0")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SleepPressureParams:
        """Build from a params.yaml mapping; unknown keys are an error (catches typos)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown sleep scheduler keys {unknown}; known: {sorted(known)}")
        return cls(**d)


def sleep_steps(
    signals: SleepSignals | Mapping[str, float], params: SleepPressureParams
) -> tuple[int, float, dict[str, Any]]:
    """Pick the number of sleep steps from the three signals (formula in the module docstring).

    Returns ``(steps, pressure, detail)``: `pressure` in [0, 1] unrounded; `detail` is a flat,
    JSON-ready dict for the metrics file with each raw signal, its normalised value
    (``*_norm``), ``sleep_pressure``, ``sleep_steps`` and the min/max bounds, floats rounded
    to 4 decimals.
    """
    if isinstance(signals, SleepSignals):
        raw = {s: getattr(signals, s) for s in SIGNALS}
    else:
        missing = [s for s in SIGNALS if s not in signals]
        extra = sorted(set(signals) - set(SIGNALS))
        if missing or extra:
            raise ValueError(f"signals need exactly {list(SIGNALS)}; missing {missing}, unknown {extra}")
        raw = {s: signals[s] for s in SIGNALS}
    for s, v in raw.items():
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise ValueError(f"sleep signal {s!r} must be a finite number, got {v!r}")

    norm = {s: min(1.0, max(0.0, float(raw[s]) / getattr(params, f"{s}_ref"))) for s in SIGNALS}
    weights = {s: float(getattr(params, f"{s}_weight")) for s in SIGNALS}
    pressure = sum(weights[s] * norm[s] for s in SIGNALS) / sum(weights.values())
    lo, hi = params.min_sleep_steps, params.max_sleep_steps
    steps = min(hi, max(lo, math.floor(lo + pressure * (hi - lo) + 0.5)))

    detail: dict[str, Any] = {}
    for s in SIGNALS:
        detail[s] = _r(raw[s])
        detail[f"{s}_norm"] = _r(norm[s])
    detail.update(sleep_pressure=_r(pressure), sleep_steps=steps, min_sleep_steps=lo, max_sleep_steps=hi)
    log.info(
        "sleep pressure %.4f (saturation %.4f, novelty %.4f, forgetting %.4f) -> %d sleep steps in [%d, %d]",
        pressure,
        norm["saturation"],
        norm["novelty"],
        norm["forgetting"],
        steps,
        lo,
        hi,
    )
    return steps, pressure, detail
