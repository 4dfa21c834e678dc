"""Every eval metric of every version with its interval, and each version against its parent.

Input: each version's eval rows (`data/eval/V.jsonl`, the rows of
`bioreasoner.scoring.eval_metrics.score_response`). For each metric of `metrics/eval/V.json`
listed in `METRICS`, the per-row quantity is taken over exactly the rows `aggregate` counts
(all responses; PubMedQA metrics: qa rows with a gold label; judge means: rows the judge
scored), so the point estimate is `aggregate(rows)`'s value; `version_metrics` checks that it is
and raises if a definition drifted. Macro-F1 is `eval_metrics.macro_f1` itself.

- value: the point estimate (rounded to 4 decimals as in metrics/eval/V.json); n: the rows it is
  over (citation_precision: the responses that cite something).
- lo, hi: a (1 - alpha) interval: Wilson for per-response proportions (the `rate` metrics),
  the percentile bootstrap over rows for ratios (citation_precision), means and macro-F1 (none
  below `MIN_BOOTSTRAP_N` rows or pairs: too few to resample).
- Deltas, child - parent, on the tasks both versions answered (paired by task_id; for the judge
  means, tasks both were scored on): the interval is the paired bootstrap's; p is McNemar's
  exact test for the rates and the paired bootstrap's for the rest; `significant` is
  p < alpha and an interval excluding 0. A version's parent is the evaluated version whose model
  folder is its merge parent (`merge.versions.V.parent`); `base` and folders that are not
  merged versions have none.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from bioreasoner.reporting.stats import bootstrap_ci, mcnemar, paired_bootstrap, wilson
from bioreasoner.scoring.eval_metrics import aggregate, macro_f1

Row = dict[str, Any]
MERGED = "models/merged/"
# Below this many rows (or pairs) a percentile bootstrap has too few distinct resamples to mean
# anything (one pair: every resample is that pair, a zero-width "interval"): no bootstrap interval
# or p is given, so such a delta is never significant. Wilson intervals and McNemar need no floor.
MIN_BOOTSTRAP_N = 10


class EvalRow(BaseModel):
    """The fields of a `data/eval/V.jsonl` row the report reads (the rest are kept as they are)."""

    model_config = ConfigDict(extra="allow")
    task_id: str
    type: str
    cited_pmids: list[str]
    grounded: list[str]
    hallucinated: list[str]
    fabricated: list[str]
    think_closed: bool
    think_chars: int
    passed: bool
    logic: float | None
    novelty: float | None
    judge_error: str | None
    gold: str | None = None
    decision: str | None = None


# --------------------------------------------------------------------------- metric definitions


def _all(r: Row) -> bool:
    return True


def _qa(r: Row) -> bool:  # aggregate's `qa`: qa rows with a gold label
    return r["type"] == "qa" and r.get("gold") is not None


def _judged(r: Row) -> bool:  # aggregate's `judged`
    return r["logic"] is not None and r["novelty"] is not None


@dataclass(frozen=True)
class Metric:
    """One metric of metrics/eval/V.json as a per-row quantity over the rows it counts."""

    name: str
    kind: Literal["rate", "mean", "ratio", "f1"]
    counts: Callable[[Row], bool]  # the rows in aggregate's denominator (paired: in both versions)
    per_row: Callable[[Row], Any]  # rate: bool; mean: float; ratio: (numerator, denominator); f1: (gold, pred)


METRICS: tuple[Metric, ...] = (
    Metric("hallucination_rate", "rate", _all, lambda r: bool(r["hallucinated"])),
    Metric("fabricated_rate", "rate", _all, lambda r: bool(r["fabricated"])),
    Metric("citing_rate", "rate", _all, lambda r: bool(r["cited_pmids"])),
    Metric("missing_think_rate", "rate", _all, lambda r: not r["think_closed"]),
    Metric("pass_rate", "rate", _all, lambda r: bool(r["passed"])),
    Metric("judge_error_rate", "rate", _all, lambda r: r["judge_error"] is not None),
    Metric("pubmedqa_accuracy", "rate", _qa, lambda r: r.get("decision") == r["gold"]),
    Metric("pubmedqa_no_decision_rate", "rate", _qa, lambda r: r.get("decision") is None),
    # grounded / cited citations summed over responses; one citing nothing adds (0, 0)
    Metric(
        "citation_precision",
        "ratio",
        _all,
        lambda r: (len(r["grounded"]) if r["cited_pmids"] else 0, len(r["cited_pmids"])),
    ),
    Metric("mean_think_chars", "mean", _all, lambda r: float(r["think_chars"])),
    Metric("mean_logic", "mean", _judged, lambda r: float(r["logic"])),
    Metric("mean_novelty", "mean", _judged, lambda r: float(r["novelty"])),
    Metric("pubmedqa_macro_f1", "f1", _qa, lambda r: (r["gold"], r.get("decision"))),
)
BY_NAME = {m.name: m for m in METRICS}


def _array(metric: Metric, rows: Sequence[Row]) -> np.ndarray:
    """The per-row quantities: shape (n,) for rates (0/1) and means, (n, 2) for ratios and f1."""
    values = [metric.per_row(r) for r in rows]
    if metric.kind == "f1":  # labels, with None for "no decision": an object array
        out = np.empty((len(values), 2), dtype=object)
        for i, (gold, pred) in enumerate(values):
            out[i, 0], out[i, 1] = gold, pred
        return out
    if metric.kind == "ratio":
        return np.array(values, dtype=float).reshape(len(values), 2)
    return np.array(values, dtype=float)


def _mean(a: np.ndarray) -> float:
    return float(a.sum() / a.size)


def _ratio(a: np.ndarray) -> float | None:
    num, den = a.sum(axis=0)
    return float(num / den) if den else None


def _f1(a: np.ndarray) -> float | None:
    return macro_f1(list(a[:, 0]), list(a[:, 1]))


STATISTIC: dict[str, Callable[[np.ndarray], float | None]] = {"rate": _mean, "mean": _mean, "ratio": _ratio, "f1": _f1}


def point(metric: Metric, rows: Sequence[Row]) -> float | None:
    """The metric over the rows it counts, computed as `aggregate` does (sum / len), unrounded."""
    a = _array(metric, [r for r in rows if metric.counts(r)])
    if a.shape[0] == 0:
        return None
    if metric.kind in ("rate", "mean"):
        return sum(a.tolist()) / a.shape[0]  # Python's left-to-right sum, as aggregate's _share/_mean
    return STATISTIC[metric.kind](a)


# --------------------------------------------------------------------------- helpers


def sub_seed(seed: int, *parts: str) -> int:
    """A seed for one (purpose, version, metric): results do not depend on the order computed."""
    digest = hashlib.sha256("|".join([str(seed), *parts]).encode()).digest()
    return int.from_bytes(digest[:8], "big")


def z_of(alpha: float) -> float:
    return NormalDist().inv_cdf(1 - alpha / 2)


def _r(x: float | None, digits: int = 4) -> float | None:
    return None if x is None or not math.isfinite(x) else round(x, digits)


def _p(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(f"{x:.3g}")  # p spans 1 .. 1e-15


def parents(eval_models: Mapping[str, str], merge_parents: Mapping[str, str]) -> dict[str, str | None]:
    """version -> its parent version among `eval_models` (None: base, a user's folder, or a parent
    that is not evaluated). `merge_parents` is merge.versions' version -> parent folder."""
    version_of = {folder: v for v, folder in eval_models.items()}
    out: dict[str, str | None] = {}
    for v, folder in eval_models.items():
        parent_folder = merge_parents.get(v) if folder == MERGED + v else None
        out[v] = version_of.get(parent_folder) if parent_folder else None
    return out


# --------------------------------------------------------------------------- versions and deltas


def version_metrics(rows: Sequence[Row], n_boot: int, seed: int, alpha: float, version: str) -> dict[str, Any]:
    """{metric: {value, lo, hi, n}} for one version's rows."""
    agg = aggregate(list(rows))
    out: dict[str, Any] = {}
    for m in METRICS:
        counted = [r for r in rows if m.counts(r)]
        value = point(m, counted)
        if _r(value) != agg[m.name]:
            raise RuntimeError(
                f"{version}: {m.name} is {_r(value)} here but {agg[m.name]} in eval_metrics.aggregate: "
                "the per-row definition in reporting/lineage.py drifted from scoring/eval_metrics.py"
            )
        a = _array(m, counted)
        n = int((a[:, 1] > 0).sum()) if m.kind == "ratio" and len(counted) else len(counted)
        lo = hi = None
        if value is not None and m.kind == "rate":
            lo, hi = wilson(int(a.sum()), len(counted), z_of(alpha))
        elif value is not None and len(counted) >= MIN_BOOTSTRAP_N:
            lo, hi = bootstrap_ci(a, STATISTIC[m.kind], n_boot, sub_seed(seed, "ci", version, m.name), alpha)
        out[m.name] = {"value": _r(value), "lo": _r(lo), "hi": _r(hi), "n": n}
    return out


def delta_metrics(
    parent_rows: Sequence[Row], child_rows: Sequence[Row], n_boot: int, seed: int, alpha: float, version: str
) -> dict[str, Any]:
    """{metric: {diff, lo, hi, p, significant, n_pairs}}: child - parent on the shared tasks."""
    by_task = {r["task_id"]: r for r in parent_rows}
    shared = [(by_task[r["task_id"]], r) for r in child_rows if r["task_id"] in by_task]  # child's file order
    out: dict[str, Any] = {}
    for m in METRICS:
        pairs = [(a, b) for a, b in shared if m.counts(a) and m.counts(b)]
        entry: dict[str, Any] = {"diff": None, "lo": None, "hi": None, "p": None, "significant": False}
        if pairs:
            a = _array(m, [p for p, _ in pairs])
            b = _array(m, [c for _, c in pairs])
            if len(pairs) >= MIN_BOOTSTRAP_N:
                diff, lo, hi, p = paired_bootstrap(
                    a, b, STATISTIC[m.kind], n_boot, sub_seed(seed, "delta", version, m.name), alpha
                )
            else:  # too few pairs to resample: the difference alone
                stat = STATISTIC[m.kind]
                before, after = stat(a), stat(b)
                diff = math.nan if before is None or after is None else after - before
                lo = hi = p = math.nan
            if m.kind == "rate":  # McNemar on the discordant tasks: b = 1 -> 0, c = 0 -> 1
                p = mcnemar(int(((a == 1) & (b == 0)).sum()), int(((a == 0) & (b == 1)).sum()))
            entry = {"diff": _r(diff), "lo": _r(lo), "hi": _r(hi), "p": _p(p)}
            entry["significant"] = bool(
                entry["p"] is not None and entry["lo"] is not None and p < alpha and (lo > 0 or hi < 0)
            )
        out[m.name] = {**entry, "n_pairs": len(pairs)}
    return out


def lineage(
    rows_by_version: Mapping[str, Sequence[Row]],
    parent_of: Mapping[str, str | None],
    n_boot: int,
    seed: int,
    alpha: float,
) -> dict[str, Any]:
    """The content of metrics/lineage.json: {"versions": {V: ...}, "deltas": {V: {"parent": P, ...}}}."""
    versions = {v: version_metrics(rows, n_boot, seed, alpha, v) for v, rows in rows_by_version.items()}
    deltas: dict[str, Any] = {}
    for v, rows in rows_by_version.items():
        parent = parent_of.get(v)
        if parent is not None and parent in rows_by_version:
            deltas[v] = {"parent": parent, **delta_metrics(rows_by_version[parent], rows, n_boot, seed, alpha, v)}
    return {"versions": versions, "deltas": deltas}


# --------------------------------------------------------------------------- how each run trained

LAUNCH_FIELDS = ("launcher", "strategy", "world_size", "global_train_batch_size", "accelerator", "device")
log = logging.getLogger(__name__)


def training_runs(paths: Sequence[str | Path]) -> dict[str, Any]:
    """{metrics file: its run's launch provenance}: launcher, strategy, world size, global batch,
    accelerator and device, as `TrainingRun.finish` recorded them in each training stage's
    metrics (`launch`). Folders are searched for metrics files that have a `launch` record
    (metrics/rounds holds dpo.json beside filter and pairs metrics); a named file without one
    (written before runs recorded it) is listed as None."""
    out: dict[str, Any] = {}
    for path in map(Path, paths):
        files = sorted(path.rglob("*.json")) if path.is_dir() else [path]
        for f in files:
            if not f.is_file():
                log.warning("%s: no such metrics file, no launch record from it", f)
                continue
            data = json.loads(f.read_text(encoding="utf-8"))
            launch = data.get("launch") if isinstance(data, dict) else None
            if isinstance(launch, dict):
                out[f.as_posix()] = {k: launch.get(k) for k in LAUNCH_FIELDS}
            elif not path.is_dir():
                out[f.as_posix()] = None
    return out
