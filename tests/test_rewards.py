"""GRPO reward terms on literal strings: grounding (and its guards against repeated and many
citations), format, quality with the rubric and a failing judge, correctness, conversational
completions, ignored kwargs, and the params registry (typed `RewardsCfg`, whose fields are the
registry's names); the quality term on the judges' 1-5 scale that the pass rule thresholds."""

from __future__ import annotations

import pickle

import pytest
import yaml

from bioreasoner.core import config
from bioreasoner.core.config import PassRule, RewardsCfg
from bioreasoner.core.parsing import parse_response
from bioreasoner.core.records import Task
from bioreasoner.scoring.filtering import fail_reasons
from bioreasoner.scoring.judge import Verdict
from bioreasoner.scoring.rewards import (
    REWARDS,
    build_rewards,
    completion_text,
    correctness_reward,
    format_reward,
    grounding_reward,
    quality_factory,
    quality_reward,
)
from tests.conftest import ROOT
from tests.tiny import make_task

SOURCES = ["1000", "1001", "1002", "1003", "1004"]
THINK = "<think>\nThe trial [PMID:1000] reports a lower rate, so the effect is real.\n</think>\n"

# (response, expected grounding reward with cap 3 and sources SOURCES)
GROUNDING_CASES = [
    ("No citations at all.", 0.0),  # nothing cited: 0
    ("It works [PMID:1000].", 1.0),  # one grounded source: +1
    ("It works [PMID:1000]. " * 20, 1.0),  # the same source twenty times: still +1
    ("[PMID: 1000, 1001] agree.", 2.0),  # two distinct grounded: +2
    ("[PMID:1000] [PMID:1001] [PMID:1002]", 3.0),  # three grounded: exactly the cap
    ("[PMID: 1000, 1001, 1002, 1003, 1004]", 3.0),  # five grounded: capped at 3
    ("It works [PMID:999999].", -2.0),  # one invented PMID: -2
    ("[PMID:999999] [PMID:999999] [PMID:999999]", -2.0),  # the same invented PMID thrice: -2 once
    ("[PMID:1000] and [PMID:999999].", -1.0),  # +1 grounded -2 invented
    ("[PMID: 1000, 1001, 1002, 1003, 1004] [PMID:999999]", 1.0),  # a hallucination is never free: 3 - 2
    ("[PMID: 11, 12, 13, 14, 15, 16]", -12.0),  # six invented: no floor
    ("<think>\nsee [PMID:1001]\n</think>\nDone.", 1.0),  # citations in the think block count too
    ("in 2019, 1000 patients", 0.0),  # a bare number is not a citation
]


@pytest.mark.parametrize(("text", "expected"), GROUNDING_CASES)
def test_grounding_table(text, expected):
    assert grounding_reward([text], source_pmids=[SOURCES]) == [expected]


def test_repeated_citations_score_as_one():
    once = "The trial shows it [PMID:1000]."
    twenty = "The trial shows it " + "[PMID:1000] " * 20
    assert grounding_reward([once, twenty], source_pmids=[SOURCES, SOURCES]) == [1.0, 1.0]


@pytest.mark.parametrize(
    ("cap", "expected"),
    [
        (3.0, 3.0),  # the default: five distinct sources earn 3
        (5.0, 5.0),  # a cap at the source count does not bind
        (0.0, 0.0),  # cap 0: citations earn nothing, hallucinations still cost
        (1, 1.0),  # an int cap is fine
    ],
)
def test_grounding_cap_bounds_many_distinct_sources(cap, expected):
    text = "[PMID: 1000, 1001, 1002, 1003, 1004]"
    assert grounding_reward([text], source_pmids=[SOURCES], cap=cap) == [expected]


def test_grounding_sources_are_per_row():
    texts = ["[PMID:1000]", "[PMID:1000]"]
    assert grounding_reward(texts, source_pmids=[["1000"], ["2000"]]) == [1.0, -2.0]


# (response, expected format reward)
FORMAT_CASES = [
    (THINK + "Answer: yes", 0.5),  # closed block: +0.5
    ("<THINK>x</ Think > y", 0.5),  # tags in other case and with spaces
    ("<think>\nstill reasoning", -1.0),  # opened, never closed: -1
    ("Answer: yes", -1.0),  # no block: -1
    ("reasoning </think> final", -1.0),  # a stray closing tag is not a block
    ("", -1.0),  # empty completion
]


@pytest.mark.parametrize(("text", "expected"), FORMAT_CASES)
def test_format_table(text, expected):
    assert format_reward([text]) == [expected]


# (response, task_type, gold, expected correctness reward)
CORRECTNESS_CASES = [
    (THINK + "It does.\n\nAnswer: yes", "qa", "yes", 1.0),  # right decision
    (THINK + "It does not.\n\nAnswer: no", "qa", "yes", 0.0),  # wrong decision
    (THINK + "**Answer:** Maybe.", "qa", "maybe", 1.0),  # markdown and capitals parse
    ("<think>\nAnswer: yes\n</think>\nNo decision here.", "qa", "yes", 0.0),  # a decision inside think does not count
    (THINK + "Answer: no then Answer: yes", "qa", "yes", 1.0),  # the last decision counts
    (THINK + "Answer: yes", "qa", None, 0.0),  # qa without gold: 0
    (THINK + "Answer: yes", "gap_analysis", "yes", 0.0),  # not qa: 0 whatever the gold
    (THINK + "We propose a trial.", "critique_extend", None, 0.0),  # a cross-paper task: 0
]


@pytest.mark.parametrize(("text", "task_type", "gold", "expected"), CORRECTNESS_CASES)
def test_correctness_table(text, task_type, gold, expected):
    assert correctness_reward([text], task_type=[task_type], gold=[gold]) == [expected]


# (completion, the text that is scored)
COMPLETION_CASES = [
    ("plain text", "plain text"),  # a standard-format completion is its own text
    ([{"role": "assistant", "content": "from a message"}], "from a message"),  # TRL conversational
    (
        [
            {"role": "assistant", "content": "first"},
            {"role": "user", "content": "u"},
            {"role": "assistant", "content": "last"},
        ],
        "last",
    ),  # the last assistant message
    ([{"role": "assistant", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}], "ab"),  # parts
    ([{"role": "user", "content": "no assistant"}], ""),  # no assistant message: empty
    ([], ""),  # empty conversation
]


@pytest.mark.parametrize(("completion", "text"), COMPLETION_CASES)
def test_completion_text(completion, text):
    assert completion_text(completion) == text


def test_conversational_completions_score_like_strings():
    text = THINK + "It does [PMID:1000].\n\nAnswer: yes"
    conv = [{"role": "assistant", "content": text}]
    cols = dict(source_pmids=[SOURCES], task_type=["qa"], gold=["yes"])
    for fn in (grounding_reward, format_reward, correctness_reward):
        assert fn([conv], **cols) == fn([text], **cols)
    assert grounding_reward([conv], **cols) == [1.0]
    assert format_reward([conv]) == [0.5]
    assert correctness_reward([conv], **cols) == [1.0]


def test_unknown_kwargs_are_ignored():
    task = make_task(0)
    trl_extras = dict(
        prompts=[[{"role": "user", "content": "q"}]],
        completion_ids=[[1, 2, 3]],
        trainer_state=object(),
        log_extra=lambda *a, **k: None,
        log_metric=lambda *a, **k: None,
        some_other_column=["x"],
    )
    cols = dict(source_pmids=[["1000"]], task_type=["qa"], gold=["yes"], task=[task.model_dump_json()])
    funcs, _ = build_rewards({"grounding": {}, "format": {}, "quality": {}, "correctness": {}})
    scores = {f.__name__: f([task.reference], **cols, **trl_extras) for f in funcs}
    assert scores["grounding"] == [1.0]
    assert scores["format"] == [0.5]
    assert scores["correctness"] == [1.0]
    assert 0.4 <= scores["quality"][0] <= 2.0


def test_a_missing_column_is_a_clear_error():
    with pytest.raises(ValueError, match="source_pmids"):
        grounding_reward(["[PMID:1]"])
    with pytest.raises(ValueError, match="2 rows for 1 completions"):
        correctness_reward(["Answer: yes"], task_type=["qa", "qa"], gold=["yes", "yes"])


# (response, description) for the rubric judge: every one lands in [0.4, 2.0]
QUALITY_CASES = [
    ("", "empty"),  # the rubric's floor: logic 1, novelty 1
    ("Answer: yes", "bare answer"),  # no block, no citation
    (make_task(0).reference, "the reference"),  # a grounded, closed, decided response
    ("<think>\n" + "word " * 300 + "\n</think>\n" + "[PMID:5] " * 20, "degenerate"),  # repetition and an invented PMID
]


@pytest.mark.parametrize(("text", "what"), QUALITY_CASES)
def test_quality_with_rubric_is_in_range(text, what):
    task = make_task(0)
    reward = quality_factory({"kind": "rubric"})
    [value] = reward([text], task=[task.model_dump_json()])
    assert 0.4 <= value <= 2.0, what


def test_quality_is_logic_and_novelty_over_five():
    class FixedJudge:
        name = "fixed"

        def score(self, task: Task, response: str) -> Verdict:
            return Verdict(logic=4.0, novelty=3.0, error=None, judge=self.name)

    task = make_task(1)
    assert quality_reward(["x"], task=[task.model_dump_json()], judge=FixedJudge()) == [pytest.approx(1.4)]
    # the task column may also hold a dict or a Task
    assert quality_reward(["x", "y"], task=[task.model_dump(), task], judge=FixedJudge()) == [
        pytest.approx(1.4),
        pytest.approx(1.4),
    ]


def test_quality_of_a_failing_judge_is_zero():
    class FailingJudge:
        name = "failing"

        def score(self, task: Task, response: str) -> Verdict:
            return Verdict(logic=None, novelty=None, error="HTTP 500", judge=self.name)

    task = make_task(0)
    assert quality_reward([task.reference], task=[task.model_dump_json()], judge=FailingJudge()) == [0.0]


def test_build_rewards_names_and_weights():
    cfg = {
        "grounding": {"weight": 1.0, "cap": 3.0},
        "format": {"weight": 0.5},
        "quality": {"weight": 2, "judge": {"kind": "rubric"}},
        "correctness": {"weight": 0.0},  # weight 0: kept, logged, not trained on
    }
    funcs, weights = build_rewards(cfg)
    assert [f.__name__ for f in funcs] == ["grounding", "format", "quality", "correctness"]
    assert weights == [1.0, 0.5, 2.0, 0.0]
    assert funcs[0].options == {"cap": 3.0}
    assert set(REWARDS) == set(cfg)


def test_build_rewards_defaults_and_order():
    funcs, weights = build_rewards({"format": None, "grounding": {"cap": 1}})
    assert [f.__name__ for f in funcs] == ["grounding", "format"]  # RewardsCfg's field order
    assert weights == [1.0, 1.0]  # weight defaults to 1.0
    assert funcs[0](["[PMID: 1, 2, 3]"], source_pmids=[["1", "2", "3"]]) == [1.0]  # the cap option reached it


def test_trl_reads_the_names():
    from trl.trainer.utils import get_callable_name

    funcs, _ = build_rewards({"grounding": {}, "format": {}, "quality": {}, "correctness": {}})
    assert [get_callable_name(f) for f in funcs] == ["grounding", "format", "quality", "correctness"]


def test_rewards_pickle():
    funcs, _ = build_rewards({"grounding": {"cap": 2.0}, "format": {}, "quality": {}, "correctness": {}})
    restored = pickle.loads(pickle.dumps(funcs))
    assert [f.__name__ for f in restored] == ["grounding", "format", "quality", "correctness"]
    assert restored[0](["[PMID: 1, 2, 3]"], source_pmids=[["1", "2", "3"]]) == [2.0]


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"grounding": {}, "citations": {}}, "unknown reward terms \\['citations'\\]"),  # a misspelt term name
        ({"grounding": {"capp": 3}}, "grounding.capp: unknown option"),  # a misspelt option
        ({"format": {"cap": 3}}, "format.cap: unknown option"),  # an option of another term
        ({"grounding": {"cap": -1}}, "grounding.cap: Input should be greater than 0"),  # a negative cap
        ({"format": {"weight": "high"}}, "format.weight: Input should be a valid number"),  # not a number
        ({"format": {"weight": float("inf")}}, "weight must be a finite number"),  # not finite
        ({"quality": {"judge": {"kind": "oracle"}}}, "unknown judge kind 'oracle'"),  # the judge config is checked
        ({"quality": {"judge": {"kind": "openai", "model": "m"}}}, "quality.judge.base_url"),  # and its fields
        ({}, "no reward terms"),  # nothing to train on
    ],
)
def test_build_rewards_rejects_bad_config(cfg, message):
    with pytest.raises(ValueError, match=message):
        build_rewards(cfg)


def test_registry_names_are_the_typed_config_fields():
    assert set(REWARDS) == set(RewardsCfg.model_fields)
    assert list(REWARDS) == list(RewardsCfg.model_fields)  # and in the same order


def test_build_rewards_takes_the_typed_grpo_section():
    params = config.validate(yaml.safe_load((ROOT / "params.yaml").read_text()))
    funcs, weights = build_rewards(params.grpo.rewards)  # what stages/grpo.py passes
    set_terms = [k for k in RewardsCfg.model_fields if getattr(params.grpo.rewards, k) is not None]
    assert [f.__name__ for f in funcs] == set_terms and len(weights) == len(funcs)
    typed = RewardsCfg(format={"weight": 0.5}, quality={"judge": {"kind": "rubric", "name": "r"}})
    funcs, weights = build_rewards(typed)
    assert [f.__name__ for f in funcs] == ["format", "quality"] and weights == [0.5, 1.0]
    assert funcs[1].options["judge"].name == "r"


class MeanJudge:
    """Logic and novelty both equal to `mean`."""

    name = "mean"

    def __init__(self, mean: float):
        self.mean = mean

    def score(self, task: Task, response: str) -> Verdict:
        return Verdict(logic=self.mean, novelty=self.mean, error=None, judge=self.name)


@pytest.mark.parametrize(
    ("mean", "passes_score_clause"),
    [
        (1.0, False),  # the scale's floor: quality 0.4
        (2.49, False),  # just under the default min_score 2.5
        (2.5, True),  # exactly min_score: quality 1.0
        (4.0, True),  # quality 1.6
        (5.0, True),  # the scale's top: quality 2.0
    ],
)
def test_quality_is_on_the_pass_rules_scale(mean, passes_score_clause):
    rule = PassRule()
    task = make_task(0)
    [value] = quality_reward(["x"], task=[task], judge=MeanJudge(mean))
    assert value == pytest.approx(2 * mean / 5)  # = logic/5 + novelty/5
    # the quality reward clears 2 x min_score / 5 exactly when the pass rule's score clause holds
    reasons = fail_reasons(parse_response("x"), ["1000"], MeanJudge(mean).score(task, "x"), rule)
    assert ("low_score" not in reasons) is passes_score_clause
    assert (value >= 2 * rule.min_score / 5 - 1e-12) is passes_score_clause
