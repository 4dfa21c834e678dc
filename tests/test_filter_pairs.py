"""Filter rules and pair building on hand-made candidates: each rule with its reason, both pair
modes, the min-delta cut, and the underpowered flag."""

from __future__ import annotations

import pytest

from bioreasoner.core.records import Candidate
from bioreasoner.scoring.filtering import FilterRules, reject_reasons
from bioreasoner.scoring.judge import Verdict
from bioreasoner.training.pairs import best_of_n_pairs, distill_pair, pair_metrics
from tests.tiny import make_task

THINK = "<think>\n" + "Paper [PMID:1000] reports the result, so the answer follows from it. " * 4 + "\n</think>\n"
RULES = FilterRules(min_think_chars=200, min_score=2.5)


def verdict(mean: float | None) -> Verdict:
    if mean is None:
        return Verdict(logic=None, novelty=None, error="HTTP 500", judge="j")
    return Verdict(logic=mean, novelty=mean, error=None, judge="j")


# (response, judge mean, expected reasons)
FILTER_CASES = [
    (THINK + "It does. [PMID:1000]\n\nAnswer: yes", 3.0, []),  # clean: passes
    ("It does. [PMID:1000]\n\nAnswer: yes", 3.0, ["missing_think"]),  # no block: one reason, not three
    ("<think>\n" + "x " * 150, 3.0, ["unclosed_think"]),  # opened, never closed (300 chars inside)
    ("<think>\nShort.\n</think>\nIt does.", 3.0, ["short_think"]),  # under 200 chars
    (THINK + "It does.", 2.0, ["low_score"]),  # judge mean under 2.5
    (THINK + "It does.", None, ["judge_error"]),  # no verdict cannot pass a threshold
    (THINK + "It does. [PMID:999999]", 3.0, ["hallucinated"]),  # a PMID not among the sources
    ("<think>\nShort [PMID:5].", 1.0, ["unclosed_think", "short_think", "low_score", "hallucinated"]),  # all at once
]


@pytest.mark.parametrize(("text", "mean", "reasons"), FILTER_CASES)
def test_filter_rules_table(text, mean, reasons):
    assert reject_reasons(text, ["1000"], verdict(mean), RULES) == reasons


def test_hallucination_rule_can_be_switched_off():
    rules = FilterRules(min_think_chars=200, min_score=2.5, reject_hallucinated=False)
    assert reject_reasons(THINK + "It does. [PMID:999999]", ["1000"], verdict(3.0), rules) == []


def cand(sample: int, score: float | None, reasons=(), text: str | None = None) -> Candidate:
    return Candidate(
        task_id="qa-0",
        sample=sample,
        seed=sample,
        text=text or f"response {sample}",
        score=score,
        reasons=list(reasons),
    )


def test_distill_prefers_a_failing_sample_then_the_lowest():
    task = make_task(0)
    cands = [cand(0, 4.0), cand(1, 7.0, ["hallucinated"]), cand(2, 6.0, ["short_think"])]
    pair = distill_pair(task, cands, reference_score=8.0)
    assert pair.chosen[0].content == task.reference  # the teacher is chosen
    assert pair.rejected[0].content == "response 2"  # failing samples first, lowest of them
    assert (pair.rule, pair.score_delta) == ("reference_vs_failed", 2.0)
    clean = distill_pair(task, [cand(0, 5.0), cand(1, 3.0)], reference_score=8.0)
    assert (clean.rejected[0].content, clean.rule) == ("response 1", "reference_vs_lowest")
    assert distill_pair(task, [], 8.0) is None
    assert [m.role for m in pair.prompt] == ["system", "user"] and pair.chosen[0].role == "assistant"


def test_best_of_n_best_passed_vs_worst():
    task = make_task(0)
    cands = [cand(0, 6.0), cand(1, 9.0, ["hallucinated"]), cand(2, 7.5), cand(3, 3.0, ["low_score"])]
    [pair] = best_of_n_pairs(task, cands, min_delta=2.0)
    # a failing candidate is never chosen, however high its score
    assert (pair.chosen[0].content, pair.rejected[0].content) == ("response 2", "response 3")
    assert (pair.rule, pair.score_delta) == ("best_vs_worst", 4.5)


def test_best_of_n_prefers_a_missing_think_loser():
    task = make_task(0)
    cands = [cand(0, 8.0), cand(1, 4.0, ["missing_think"]), cand(2, 2.0, ["low_score"])]
    [pair] = best_of_n_pairs(task, cands, min_delta=2.0)
    assert (pair.rejected[0].content, pair.rule) == ("response 1", "best_vs_missing_think")


def test_best_of_n_min_delta_and_no_passed_candidate():
    task = make_task(0)
    assert best_of_n_pairs(task, [cand(0, 6.0), cand(1, 5.0)], min_delta=2.0) == []  # delta 1 < 2
    assert best_of_n_pairs(task, [cand(0, 6.0, ["short_think"]), cand(1, 2.0, ["low_score"])], 0.0) == []
    assert best_of_n_pairs(task, [cand(0, 6.0), cand(1, None, ["judge_error"])], 0.0) == []  # no score, no pair


def test_best_of_n_several_pairs_per_prompt_use_distinct_candidates():
    task = make_task(0)
    cands = [cand(0, 9.0), cand(1, 8.0), cand(2, 3.0, ["low_score"]), cand(3, 2.0, ["low_score"])]
    pairs = best_of_n_pairs(task, cands, min_delta=1.0, pairs_per_prompt=2)
    assert [(p.chosen[0].content, p.rejected[0].content) for p in pairs] == [
        ("response 0", "response 3"),
        ("response 1", "response 2"),
    ]


def test_pair_metrics_and_underpowered_flag():
    task = make_task(0)
    pairs = [distill_pair(task, [cand(0, 4.0, ["short_think"])], 8.0), distill_pair(task, [cand(0, 6.0)], 7.0)]
    m = pair_metrics(pairs, prompts=3, min_pairs=100)
    assert m["pairs"] == 2 and m["mean_delta"] == 2.5 and m["min_delta"] == 1.0
    assert m["share_by_rule"] == {"reference_vs_failed": 0.5, "reference_vs_lowest": 0.5}
    assert m["underpowered"] is True
    assert pair_metrics(pairs, prompts=3, min_pairs=2)["underpowered"] is False
