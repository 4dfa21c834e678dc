"""Eval metrics on hand-made rows, checked against numbers worked out by hand; `passed` comes
from the one pass rule (`judges.pass_rule`), the filter's."""

from __future__ import annotations

import pytest

from bioreasoner.core.config import PassRule
from bioreasoner.core.records import Message, Source, Task
from bioreasoner.scoring.eval_metrics import accuracy, aggregate, macro_f1, majority_label, score_response
from bioreasoner.scoring.judge import Verdict

CORPUS = {"100", "200", "300", "400"}
PROMPT = [Message(role="user", content="prompt")]


def qa_task(pmid: str, gold: str | None) -> Task:
    source = Source(pmid=pmid, title="t", text="x")
    return Task(id=f"qa-{pmid}", type="qa", sources=[source], messages=PROMPT, reference="", gold=gold)


CROSS = Task(
    id="gap_analysis-100-200-300",
    type="gap_analysis",
    sources=[Source(pmid=p, title="t", text="x") for p in ("100", "200", "300")],
    messages=PROMPT,
    reference="",
)


def ok(logic: float, novelty: float) -> Verdict:
    return Verdict(logic=logic, novelty=novelty, error=None, judge="j")


FAILED = Verdict(logic=None, novelty=None, error="HTTP 500", judge="j")
# The hand-made rows have think blocks of a few characters: this rule asks for a closed block of
# any length and a mean of 3.0, so the numbers below isolate the score and grounding clauses.
RULE = PassRule(min_score=3.0, min_think_chars=0, reject_hallucinated=True)

# ----------------------------------------------------------------------------- score_response


@pytest.mark.parametrize(
    ("response", "verdict", "expected"),
    [
        # grounded, closed think, judge mean 3.5 >= 3.0: passes
        (
            "<think>abc</think> yes [PMID:100]\nAnswer: yes",
            ok(4, 3),
            {"grounded": ["100"], "hallucinated": [], "fabricated": [], "passed": True, "decision": "yes"},
        ),
        # cites a corpus paper that is not a source: hallucinated, not fabricated, fails
        (
            "<think>abc</think> [PMID:100] [PMID:400]\nAnswer: no",
            ok(5, 5),
            {"grounded": ["100"], "hallucinated": ["400"], "fabricated": [], "passed": False, "decision": "no"},
        ),
        # cites a PMID outside the corpus: hallucinated and fabricated
        (
            "<think>abc</think> [PMID:987654]",
            ok(5, 5),
            {"hallucinated": ["987654"], "fabricated": ["987654"], "passed": False, "decision": None},
        ),
        # no closed think block: fails despite a good verdict
        ("<think>abc [PMID:100]\nAnswer: yes", ok(5, 5), {"think_closed": False, "passed": False}),
        # judge mean exactly at the threshold passes
        ("<think>abc</think> [PMID:100]", ok(3, 3), {"passed": True}),
        # judge mean just below the threshold fails
        ("<think>abc</think> [PMID:100]", ok(3, 2.99), {"passed": False}),
        # a judge error fails the pass and is recorded
        ("<think>abc</think> [PMID:100]", FAILED, {"passed": False, "logic": None, "judge_error": "HTTP 500"}),
        # a verdict without scores and without an error is still a judge error
        (
            "<think>abc</think> [PMID:100]",
            Verdict(4, None, None, "j"),
            {"passed": False, "judge_error": "verdict has no scores"},
        ),
        # the decision inside the think block does not count
        ("<think>Answer: yes</think> unsure", ok(4, 4), {"decision": None, "correct": False}),
    ],
)
def test_score_response_qa(response, verdict, expected):
    row = score_response(qa_task("100", "yes"), response, CORPUS, verdict, RULE)
    for key, value in expected.items():
        assert row[key] == value, key
    assert row["correct"] == (row["decision"] == "yes")
    assert (row["task_id"], row["type"], row["pmid"], row["gold"]) == ("qa-100", "qa", "100", "yes")


def test_score_response_cross_task_has_no_qa_keys():
    row = score_response(CROSS, "<think>x y</think> [PMID:300] [PMID:100] [PMID:300]", CORPUS, ok(4, 4), RULE)
    assert row["cited_pmids"] == ["300", "100"]
    assert row["grounded"] == ["300", "100"]
    assert row["source_pmids"] == ["100", "200", "300"]
    assert row["think_chars"] == 3
    assert not {"pmid", "gold", "decision", "correct"} & row.keys()


@pytest.mark.parametrize(
    ("response", "verdict", "reasons"),
    [
        # the default rule (min_think_chars 200, min_score 2.5): a 3-char think block is short
        ("<think>abc</think> [PMID:100]", ok(4, 4), ["short_think"]),
        # 200 chars of think and a mean of exactly 2.5: passes
        ("<think>" + "a" * 200 + "</think> [PMID:100]", ok(3, 2), []),
        # no block at all: missing_think, once
        ("[PMID:100] Answer: yes", ok(4, 4), ["missing_think"]),
        # hallucinated and low: both reasons, in the filter's order
        ("<think>" + "a" * 200 + "</think> [PMID:400]", ok(2, 2), ["low_score", "hallucinated"]),
        # a judge error
        ("<think>" + "a" * 200 + "</think>", FAILED, ["judge_error"]),
    ],
)
def test_score_response_default_rule_reasons(response, verdict, reasons):
    row = score_response(qa_task("100", "yes"), response, CORPUS, verdict, PassRule())
    assert row["reasons"] == reasons and row["passed"] is (not reasons)


def test_qa_task_without_gold_has_no_correctness():
    row = score_response(qa_task("100", None), "<think>a</think>Answer: yes", CORPUS, ok(4, 4), RULE)
    assert row["correct"] is None


# ----------------------------------------------------------------------------- aggregate

ROWS_IN = [
    # r1: grounded, think "a" (1 char), passes, qa yes -> yes
    (qa_task("100", "yes"), "<think>a</think> ok [PMID:100]\nAnswer: yes", ok(4, 4)),
    # r2: one grounded + one hallucinated (in corpus), think 2 chars, qa no -> yes
    (qa_task("200", "no"), "<think>bb</think> see [PMID:200] and [PMID:400]\nAnswer: yes", ok(3, 2)),
    # r3: no think, fabricated 999, judge error, qa maybe -> None
    (qa_task("300", "maybe"), "no think here [PMID:999]", FAILED),
    # r4: two grounded (one repeated), think 4 chars, judge mean 2 < 3
    (CROSS, "<think>cccc</think> [PMID:100] [PMID:200] [PMID:100]", ok(2, 2)),
    # r5: cites nothing, think 6 chars, passes
    (CROSS, "<think>dddddd</think> nothing cited", ok(5, 3)),
    # r6: unclosed think of 8 chars, qa yes -> None
    (qa_task("100", "yes"), "<think>unclosed", ok(1, 1)),
]


def test_aggregate_by_hand():
    rows = [score_response(t, r, CORPUS, v, RULE) for t, r, v in ROWS_IN]
    assert aggregate(rows) == {
        "n": 6,
        "n_by_type": {"gap_analysis": 2, "qa": 4},
        "hallucination_rate": 0.3333,  # r2, r3
        "fabricated_rate": 0.1667,  # r3
        "citation_precision": 0.6667,  # grounded 1+1+0+2 / cited 1+2+1+2
        "citing_rate": 0.6667,  # r1-r4
        "missing_think_rate": 0.3333,  # r3, r6
        "mean_think_chars": 3.5,  # (1+2+0+4+6+8)/6
        "pass_rate": 0.3333,  # r1, r5
        "mean_logic": 3.0,  # (4+3+2+5+1)/5, r3 has no verdict
        "mean_novelty": 2.4,  # (4+2+2+3+1)/5
        "judge_error_rate": 0.1667,  # r3
        "pubmedqa_n": 4,
        "pubmedqa_accuracy": 0.25,  # only r1
        # yes: tp1 fp1 (r2) fn1 (r6) -> F1 .5; no: tp0 -> 0; maybe: tp0 -> 0; (.5+0+0)/3
        "pubmedqa_macro_f1": 0.1667,
        "pubmedqa_no_decision_rate": 0.5,  # r3, r6
        "pubmedqa_majority_label": "yes",  # gold yes x2, no, maybe
        "pubmedqa_majority_accuracy": 0.5,
        # all "yes": yes P 2/4 R 1 -> F1 2/3; no, maybe 0 -> 2/9
        "pubmedqa_majority_macro_f1": 0.2222,
    }


def test_aggregate_of_nothing():
    out = aggregate([])
    assert out["n"] == 0 and out["pubmedqa_n"] == 0
    for key in ("hallucination_rate", "citation_precision", "pass_rate", "mean_logic", "pubmedqa_macro_f1"):
        assert out[key] is None, key


def test_citation_precision_is_none_without_citations():
    rows = [score_response(CROSS, "<think>x</think> no citations", CORPUS, ok(3, 3), RULE)]
    out = aggregate(rows)
    assert out["citation_precision"] is None
    assert out["citing_rate"] == 0.0


# ----------------------------------------------------------------------------- PubMedQA accuracy and macro-F1


@pytest.mark.parametrize(
    ("gold", "pred", "acc", "f1"),
    [
        # six rows, one None prediction:
        # yes: tp1 fp0 fn2 -> P1 R1/3 F1 .5; no: tp1 fp1 fn1 -> .5; maybe: tp1 fp1 fn0 -> P.5 R1 F1 2/3
        # macro = (.5 + .5 + 2/3) / 3 = 5/9
        (
            ["yes", "yes", "yes", "no", "no", "maybe"],
            ["yes", "no", None, "no", "maybe", "maybe"],
            0.5,
            0.5556,
        ),
        # all correct
        (["yes", "no", "maybe"], ["yes", "no", "maybe"], 1.0, 1.0),
        # every prediction unparseable: accuracy 0, every F1 0
        (["yes", "no", "maybe"], [None, None, None], 0.0, 0.0),
        # "maybe" in neither gold nor predictions: averaged over yes/no only, as sklearn does
        # yes: tp1 fp0 fn1 -> 2/3; no: tp1 fp1 fn1 -> .5; (2/3 + .5) / 2 = 7/12
        (["yes", "yes", "no", "no"], ["yes", "no", "no", None], 0.5, 0.5833),
        # "maybe" only predicted: it enters the average with F1 0
        # yes: tp1 fp0 fn1 -> 2/3; no: tp1 fp0 fn0 -> 1; maybe: 0; (2/3 + 1 + 0) / 3 = 5/9
        (["yes", "yes", "no"], ["yes", "maybe", "no"], 0.6667, 0.5556),
    ],
)
def test_accuracy_and_macro_f1(gold, pred, acc, f1):
    assert round(accuracy(gold, pred), 4) == acc
    assert round(macro_f1(gold, pred), 4) == f1


def test_majority_baseline_on_six_rows():
    gold = ["yes", "yes", "yes", "no", "no", "maybe"]
    assert majority_label(gold) == "yes"
    baseline = ["yes"] * 6
    assert accuracy(gold, baseline) == 0.5
    # yes: P 3/6, R 1 -> F1 2/3; no and maybe 0 -> 2/9
    assert round(macro_f1(gold, baseline), 4) == 0.2222


@pytest.mark.parametrize(
    ("gold", "label"),
    [
        # a clear majority
        (["no", "no", "yes"], "no"),
        # a tie is broken in the order yes, no, maybe
        (["maybe", "no"], "no"),
        # nothing to count
        ([], None),
    ],
)
def test_majority_label(gold, label):
    assert majority_label(gold) == label


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError):
        macro_f1(["yes"], [])
    with pytest.raises(ValueError):
        accuracy(["yes"], [])
