"""Per-response scores and the aggregate eval metrics, with their exact definitions.

Per response (`score_response`), with `cited` the distinct PMIDs the response cites
(see `bioreasoner.core.parsing`):

- grounded = cited PMIDs that are among the task's sources; hallucinated = cited PMIDs
  that are not; fabricated = cited PMIDs absent from the whole corpus (a subset of
  hallucinated whenever every source is in the corpus).
- A response *hallucinates* when it cites any PMID not among the task's sources, and
  *fabricates* when it cites any PMID absent from the corpus.
- *Missing think*: no closed `<think>...</think>` block.
- *Pass*: the one pass rule (`judges.pass_rule`, `bioreasoner.scoring.filtering.fail_reasons`),
  the same the filter applies: a closed think block of at least `min_think_chars`, the
  judge's (logic + novelty) / 2 >= `min_score`, and (with `reject_hallucinated`) no
  hallucinated PMID. A judge error (no scores) fails the pass. `reasons` lists the clauses
  a row breaks ([] = passed), with the filter's reason names.
- qa only: `decision` is the parsed "Answer: yes|no|maybe" (None when unparseable);
  `correct` is decision == gold (None when the task has no gold label).

Aggregate (`aggregate`), over n responses:

- hallucination_rate, fabricated_rate, missing_think_rate, pass_rate, citing_rate: the
  share of responses that hallucinate / fabricate / miss the think block / pass / cite
  anything at all.
- citation_precision = sum over responses of |distinct grounded| / sum of |distinct
  cited|. Responses citing nothing add nothing to either sum; with no citations at all
  it is None (see citing_rate).
- mean_think_chars: mean length of the think text (0 without a block).
- mean_logic, mean_novelty: over responses with a verdict; judge_error_rate: share of
  responses whose judge failed.
- n_by_type: responses per task type.
- PubMedQA (qa responses with a gold label), as the official evaluation script
  (pubmedqa/pubmedqa evaluation.py: sklearn accuracy_score and f1_score(average="macro")):
  accuracy = share with decision == gold; macro-F1 = mean over the labels yes/no/maybe
  that occur in the gold labels or the predictions of per-label F1 = 2PR/(P+R), where a
  label with P + R = 0 (or no predictions / no gold instances) contributes 0. An
  unparseable (None) decision is a wrong prediction for its gold label (a false negative)
  and a prediction of no label (no false positive). When all three labels occur in gold,
  as in the PQA-L test set, this is the average over exactly yes/no/maybe.
  The majority baseline predicts the most frequent gold label among the evaluated rows
  (ties broken in the order yes, no, maybe) for every row.

All floats in `aggregate` are rounded to 4 decimals; a rate over zero rows is None.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from bioreasoner.core.config import PassRule
from bioreasoner.core.parsing import parse_response
from bioreasoner.core.records import Task
from bioreasoner.scoring.filtering import fail_reasons
from bioreasoner.scoring.judge import Verdict

LABELS = ("yes", "no", "maybe")


def score_response(
    task: Task, response: str, corpus_pmids: set[str], verdict: Verdict, rule: PassRule
) -> dict[str, Any]:
    p = parse_response(response)
    sources = task.source_pmids
    cited = list(p.citations)
    hallucinated = [c for c in cited if c not in sources]
    reasons = fail_reasons(p, sources, verdict, rule)
    judge_error = verdict.error if verdict.error is not None else (None if verdict.ok else "verdict has no scores")
    row: dict[str, Any] = {
        "task_id": task.id,
        "type": task.type,
        "source_pmids": list(sources),
        "response": response,
        "has_think": p.has_think,
        "think_closed": p.think_closed,
        "think_chars": len(p.think),
        "cited_pmids": cited,
        "grounded": [c for c in cited if c in sources],
        "hallucinated": hallucinated,
        "fabricated": [c for c in cited if c not in corpus_pmids],
        "judge": verdict.judge,
        "logic": verdict.logic if verdict.ok else None,
        "novelty": verdict.novelty if verdict.ok else None,
        "judge_error": judge_error,
        "passed": not reasons,
        "reasons": reasons,
    }
    if task.type == "qa":
        row["pmid"] = sources[0]
        row["gold"] = task.gold
        row["decision"] = p.decision
        row["correct"] = None if task.gold is None else p.decision == task.gold
    return row


def _share(flags: Sequence[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def accuracy(gold: Sequence[str], pred: Sequence[str | None]) -> float | None:
    if len(gold) != len(pred):
        raise ValueError("gold and predictions differ in length")
    return _share([g == p for g, p in zip(gold, pred, strict=True)])


def macro_f1(gold: Sequence[str], pred: Sequence[str | None]) -> float | None:
    """sklearn's f1_score(average="macro") over yes/no/maybe; None predicts no label (module docstring)."""
    if len(gold) != len(pred):
        raise ValueError("gold and predictions differ in length")
    if not gold:
        return None
    labels = [lab for lab in LABELS if lab in gold or lab in pred]
    f1s = []
    for lab in labels:
        tp = sum(g == lab and p == lab for g, p in zip(gold, pred, strict=True))
        fp = sum(g != lab and p == lab for g, p in zip(gold, pred, strict=True))
        fn = sum(g == lab and p != lab for g, p in zip(gold, pred, strict=True))
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1s.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    return sum(f1s) / len(f1s)


def majority_label(gold: Sequence[str]) -> str | None:
    counts = Counter(gold)
    return max(LABELS, key=lambda lab: (counts[lab], -LABELS.index(lab))) if gold else None


def _round(obj: Any) -> Any:
    if isinstance(obj, float):
        return round(obj, 4)
    if isinstance(obj, dict):
        return {k: _round(v) for k, v in obj.items()}
    return obj


def aggregate(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The eval metrics over `score_response` rows (definitions in the module docstring)."""
    citing = [r for r in rows if r["cited_pmids"]]
    n_cited = sum(len(r["cited_pmids"]) for r in citing)
    judged = [r for r in rows if r["logic"] is not None and r["novelty"] is not None]
    qa = [r for r in rows if r["type"] == "qa" and r.get("gold") is not None]
    gold = [r["gold"] for r in qa]
    pred = [r.get("decision") for r in qa]
    majority = majority_label(gold)
    baseline = [majority] * len(gold)
    out: dict[str, Any] = {
        "n": len(rows),
        "n_by_type": dict(sorted(Counter(r["type"] for r in rows).items())),
        "hallucination_rate": _share([bool(r["hallucinated"]) for r in rows]),
        "fabricated_rate": _share([bool(r["fabricated"]) for r in rows]),
        "citation_precision": sum(len(r["grounded"]) for r in citing) / n_cited if n_cited else None,
        "citing_rate": _share([bool(r["cited_pmids"]) for r in rows]),
        "missing_think_rate": _share([not r["think_closed"] for r in rows]),
        "mean_think_chars": _mean([float(r["think_chars"]) for r in rows]),
        "pass_rate": _share([bool(r["passed"]) for r in rows]),
        "mean_logic": _mean([float(r["logic"]) for r in judged]),
        "mean_novelty": _mean([float(r["novelty"]) for r in judged]),
        "judge_error_rate": _share([r["judge_error"] is not None for r in rows]),
        "pubmedqa_n": len(qa),
        "pubmedqa_accuracy": accuracy(gold, pred),
        "pubmedqa_macro_f1": macro_f1(gold, pred),
        "pubmedqa_no_decision_rate": _share([p is None for p in pred]),
        "pubmedqa_majority_label": majority,
        "pubmedqa_majority_accuracy": accuracy(gold, baseline),
        "pubmedqa_majority_macro_f1": macro_f1(gold, baseline),
    }
    return _round(out)
