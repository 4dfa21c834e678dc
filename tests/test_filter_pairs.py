"""The one pass rule and pair building on hand-made candidates: each clause with its reason,
filter and eval agreeing on every case, both pair modes, the min-delta cut, the underpowered
flag; and the filter and build_pairs stages on degenerate inputs and a failing judge (one
error line, exit 1, nothing written)."""

from __future__ import annotations

import json
import subprocess
import sys
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
import yaml

from bioreasoner.core.config import PassRule
from bioreasoner.core.parsing import parse_response
from bioreasoner.core.records import Candidate
from bioreasoner.scoring.eval_metrics import score_response
from bioreasoner.scoring.filtering import REASONS, fail_reasons, pass_calls
from bioreasoner.scoring.judge import Verdict
from bioreasoner.training.pairs import best_of_n_pairs, distill_pair, pair_metrics
from tests.conftest import ROOT, loopback, send
from tests.tiny import make_task

THINK = "<think>\n" + "Paper [PMID:1000] reports the result, so the answer follows from it. " * 4 + "\n</think>\n"
RULE = PassRule(min_think_chars=200, min_score=2.5)  # the params.yaml default


def verdict(mean: float | None) -> Verdict:
    if mean is None:
        return Verdict(logic=None, novelty=None, error="HTTP 500", judge="j")
    return Verdict(logic=mean, novelty=mean, error=None, judge="j")


def reasons_of(text: str, v: Verdict, rule: PassRule = RULE, sources: tuple[str, ...] = ("1000",)) -> list[str]:
    return fail_reasons(parse_response(text), list(sources), v, rule)


# (response, judge mean, expected reasons) under RULE
PASS_RULE_CASES = [
    (THINK + "It does. [PMID:1000]\n\nAnswer: yes", 3.0, []),  # clean: passes
    (THINK + "It does.", 2.5, []),  # mean exactly min_score passes (>=)
    (THINK + "It does.", 2.49, ["low_score"]),  # just under min_score fails
    ("It does. [PMID:1000]\n\nAnswer: yes", 3.0, ["missing_think"]),  # no block: one reason, not three
    ("<think>\n" + "x " * 150, 3.0, ["unclosed_think"]),  # opened, never closed (300 chars inside)
    ("<think>\nShort.\n</think>\nIt does.", 3.0, ["short_think"]),  # under 200 chars
    ("<think>" + "y" * 200 + "</think>x", 3.0, []),  # exactly 200 chars of think passes
    ("<think>" + "y" * 199 + "</think>x", 3.0, ["short_think"]),  # 199 does not
    ("<think>\n  " + "y" * 199 + "  \n</think>x", 3.0, ["short_think"]),  # whitespace around does not count
    (THINK + "It does.", 2.0, ["low_score"]),  # judge mean under 2.5
    (THINK + "It does.", None, ["judge_error"]),  # no verdict cannot pass a threshold
    (THINK + "It does. [PMID:999999]", 3.0, ["hallucinated"]),  # a PMID not among the sources
    ("<think>\n[PMID:5] " + "z" * 200 + "\n</think>\nIt does.", 3.0, ["hallucinated"]),  # inside think counts too
    ("<think>\nShort [PMID:5].", 1.0, ["unclosed_think", "short_think", "low_score", "hallucinated"]),  # all at once
]


@pytest.mark.parametrize(("text", "mean", "reasons"), PASS_RULE_CASES)
def test_pass_rule_table(text, mean, reasons):
    assert reasons_of(text, verdict(mean)) == reasons
    assert all(r in REASONS for r in reasons)


@pytest.mark.parametrize(("text", "mean", "reasons"), PASS_RULE_CASES)
def test_eval_and_filter_apply_the_same_rule(text, mean, reasons):
    task = make_task(0)  # its one source is PMID 1000
    row = score_response(task, text, {"1000"}, verdict(mean), RULE)
    assert row["passed"] is (reasons == []) and row["reasons"] == reasons
    assert pass_calls([parse_response(text)], [["1000"]], [verdict(mean)], RULE) == [reasons == []]


@pytest.mark.parametrize(
    ("rule", "text", "mean", "reasons"),
    [
        # reject_hallucinated off: an invented PMID is allowed
        (PassRule(reject_hallucinated=False), THINK + "It does. [PMID:999999]", 3.0, []),
        # min_think_chars 0: any closed block will do, but it must still be closed
        (PassRule(min_think_chars=0), "<think></think>It does.", 3.0, []),
        (PassRule(min_think_chars=0), "<think>x", 3.0, ["unclosed_think"]),
        # a stricter min_score: 3.5 fails a 3.0 mean
        (PassRule(min_score=3.5), THINK + "It does.", 3.0, ["low_score"]),
        # the scale's top: only 5/5 passes
        (PassRule(min_score=5), THINK + "It does.", 4.99, ["low_score"]),
    ],
)
def test_pass_rule_settings(rule, text, mean, reasons):
    assert reasons_of(text, verdict(mean), rule) == reasons


def test_pass_rule_uses_the_unrounded_mean_of_both_scores():
    # (3 + 2) / 2 = 2.5 passes 2.5; (3 + 1.99) / 2 = 2.495 does not
    assert reasons_of(THINK, Verdict(3.0, 2.0, None, "j")) == []
    assert reasons_of(THINK, Verdict(3.0, 1.99, None, "j")) == ["low_score"]
    # a verdict with one score missing is a judge error, not a low score
    assert reasons_of(THINK, Verdict(5.0, None, None, "j")) == ["judge_error"]


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


# ----------------------------------------------------------------------------- the stages on bad input


def write_params(path: Path, panel: list[dict[str, Any]] | None = None) -> Path:
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    if panel is not None:
        data["judges"]["panel"] = panel
    path.write_text(yaml.safe_dump(data))
    return path


def jsonl(path: Path, rows: list[Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else r.model_dump_json()) + "\n" for r in rows))
    return path


def stage(script: str, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "stages" / script), *args], cwd=cwd, capture_output=True, text=True, timeout=60
    )


def one_error(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode == 1, res.stderr[-2000:]
    errors = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in res.stderr, res.stderr[-2000:]
    return errors[0]


TASKS = [make_task(i) for i in range(3)]
CANDS = [Candidate(task_id=t.id, sample=s, seed=s, text=t.reference) for t in TASKS for s in range(2)]


def run_filter(tmp_path: Path, tasks: list[Any] | None, cands: list[Any], panel=None):
    if tasks is not None:
        jsonl(tmp_path / "train.jsonl", tasks)
    jsonl(tmp_path / "candidates.jsonl", cands)
    res = stage(
        "filter.py",
        tmp_path,
        *("--params", str(write_params(tmp_path / "params.yaml", panel)), "--round", "v2_1"),
        *("--candidates", "candidates.jsonl", "--tasks", "train.jsonl", "--out-dir", "out"),
        *("--metrics", "out/filter.json"),
    )
    return res


def nothing_written(folder: Path) -> bool:
    return not folder.exists() or not list(folder.iterdir())


@pytest.mark.parametrize(
    ("tasks", "cands", "message"),
    [
        # an empty candidates file: generate_candidates wrote nothing
        (TASKS, [], "candidates.jsonl: no candidates: the file is empty"),
        # blank lines only are empty too
        (TASKS, ["", "  "], "candidates.jsonl: no candidates: the file is empty"),
        # an empty train-tasks file
        ([], CANDS, "train.jsonl: no tasks: the file is empty"),
        # no train-tasks file at all
        (None, CANDS, "train.jsonl: file does not exist"),
        # a task id twice
        ([TASKS[0], TASKS[0]], CANDS[:1], "train.jsonl: record 2: duplicate id 'qa-0' (first at record 1)"),
        # a (task_id, sample) twice
        (TASKS, [CANDS[0], CANDS[1], CANDS[0]], "record 3: duplicate (task_id, sample) ('qa-0', 0)"),
        # a candidate of a task that is not in the tasks file
        (TASKS, [CANDS[0].model_copy(update={"task_id": "qa-9"})], "record 1: task_id 'qa-9' is not in train.jsonl"),
    ],
)
def test_filter_refuses_degenerate_inputs(tmp_path, tasks, cands, message):
    assert message in one_error(run_filter(tmp_path, tasks, cands))
    assert nothing_written(tmp_path / "out")


def test_filter_writes_the_pass_rule_reasons(tmp_path):
    res = run_filter(tmp_path, TASKS, CANDS)
    assert res.returncode == 0, res.stderr[-2000:]
    rejected = [Candidate.model_validate_json(x) for x in (tmp_path / "out/rejected.jsonl").read_text().splitlines()]
    passed = (tmp_path / "out/passed.jsonl").read_text().splitlines()
    metrics = json.loads((tmp_path / "out/filter.json").read_text())
    assert metrics["candidates"] == 6 and metrics["passed"] == len(passed) and metrics["judge_error_rate"] == 0.0
    for c in rejected:  # the tiny references' think blocks are under 200 chars
        t = TASKS[int(c.task_id.split("-")[1])]
        verdict = Verdict(c.logic, c.novelty, None, "rubric")
        assert c.reasons == fail_reasons(parse_response(c.text), t.source_pmids, verdict, RULE)
        assert "short_think" in c.reasons


def failing_judge() -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        calls = 0

        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            type(self).calls += 1
            send(self, 500, {}, b"down")

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


def test_filter_stops_when_the_judge_fails_everywhere(tmp_path):
    handler = failing_judge()
    cands = [Candidate(task_id=t.id, sample=s, seed=s, text=t.reference) for t in TASKS for s in range(4)]
    with loopback(handler) as url:
        panel = [{"kind": "openai", "base_url": url, "model": "m", "max_retries": 0, "cache_dir": str(tmp_path / "c")}]
        error = one_error(run_filter(tmp_path, TASKS, cands, panel))
    # 12 items, window min(20, 12) = 12: the 7th error is more than half of them
    assert error.startswith("error: judge openai:m: 7 of the first 7 items got no verdict")
    assert "judges.max_error_rate = 0.5" in error and "HTTP 500" in error
    # the 7th error stops it; up to judges.max_concurrency (8) requests were in flight by then
    assert 7 <= handler.calls <= 7 + 8
    assert nothing_written(tmp_path / "out")


def run_pairs(tmp_path: Path, passed: list[Any], rejected: list[Any], tasks=TASKS, rnd="v2_1", panel=None):
    jsonl(tmp_path / "train.jsonl", tasks)
    jsonl(tmp_path / "r/passed.jsonl", passed)
    jsonl(tmp_path / "r/rejected.jsonl", rejected)
    return stage(
        "build_pairs.py",
        tmp_path,
        *("--params", str(write_params(tmp_path / "params.yaml", panel)), "--round", rnd),
        *("--candidates-dir", "r", "--tasks", "train.jsonl", "--out", "out/pairs.jsonl"),
        *("--references", "train.jsonl", "--metrics", "out/pairs.json"),  # the extractive teacher's
    )


SCORED = [c.model_copy(update={"score": 4.0 + c.sample}) for c in CANDS]
FAILED = [c.model_copy(update={"reasons": ["short_think"]}) for c in SCORED]


@pytest.mark.parametrize(
    ("passed", "rejected", "tasks", "rnd", "message"),
    [
        # filter scored nothing: both files empty
        ([], [], TASKS, "v2_1", "no scored candidates: passed.jsonl and rejected.jsonl are both empty"),
        # the same (task_id, sample) passed and rejected
        (SCORED[:1], FAILED[:1], TASKS, "v2_1", "rejected.jsonl: (task_id, sample) ('qa-0', 0) is in passed.jsonl"),
        # twice in one file
        (SCORED[:1] * 2, [], TASKS, "v2_1", "passed.jsonl: record 2: duplicate (task_id, sample) ('qa-0', 0)"),
        # an empty train-tasks file
        (SCORED, [], [], "v2_1", "train.jsonl: no tasks: the file is empty"),
        # a task id twice
        (SCORED, [], [TASKS[0]] * 2, "v2_1", "train.jsonl: record 2: duplicate id 'qa-0'"),
        # a candidate of an unknown task
        (SCORED, [], TASKS[:1], "v2_1", "candidate task_id 'qa-1' is not in train.jsonl"),
        # a round params.yaml does not have
        (SCORED, [], TASKS, "nope", "params.yaml: rounds: no round 'nope'"),
    ],
)
def test_build_pairs_refuses_degenerate_inputs(tmp_path, passed, rejected, tasks, rnd, message):
    assert message in one_error(run_pairs(tmp_path, passed, rejected, tasks, rnd))
    assert nothing_written(tmp_path / "out")


def test_build_pairs_without_pairs_is_an_empty_file_not_an_error(tmp_path):
    res = run_pairs(tmp_path, [], FAILED)  # best_of_n: nothing passed, so no pair
    assert res.returncode == 0, res.stderr[-2000:]
    assert (tmp_path / "out/pairs.jsonl").read_text() == ""
    metrics = json.loads((tmp_path / "out/pairs.json").read_text())
    assert metrics["pairs"] == 0 and metrics["underpowered"] is True and "UNDERPOWERED" in res.stderr


def test_build_pairs_distill_stops_when_the_judge_fails(tmp_path):
    handler = failing_judge()
    with loopback(handler) as url:
        panel = [{"kind": "openai", "base_url": url, "model": "m", "max_retries": 0, "cache_dir": str(tmp_path / "c")}]
        error = one_error(run_pairs(tmp_path, SCORED, [], rnd="v2_0", panel=panel))
    assert "judge openai:m: 2 of the first 2 items got no verdict" in error  # 3 references: 2 > 1.5
    assert nothing_written(tmp_path / "out")


def test_build_pairs_distill_uses_the_teachers_references_and_skips_dropped_tasks(tmp_path):
    """`--references` (the teacher stage's tasks) is the chosen side; a task the teacher dropped
    makes no pair and is counted."""
    taught = [t.model_copy(update={"reference": THINK + f"Taught [PMID:{t.source_pmids[0]}]"}) for t in TASKS[:2]]
    jsonl(tmp_path / "taught.jsonl", taught)
    jsonl(tmp_path / "train.jsonl", TASKS)
    jsonl(tmp_path / "r/passed.jsonl", [])
    jsonl(tmp_path / "r/rejected.jsonl", SCORED)
    res = stage(
        "build_pairs.py",
        tmp_path,
        *("--params", str(write_params(tmp_path / "params.yaml")), "--round", "v2_0"),
        *("--candidates-dir", "r", "--tasks", "train.jsonl", "--references", "taught.jsonl"),
        *("--out", "out/pairs.jsonl", "--metrics", "out/pairs.json"),
    )
    assert res.returncode == 0, res.stderr[-2000:]
    pairs = [json.loads(x) for x in (tmp_path / "out/pairs.jsonl").read_text().splitlines()]
    assert [p["task_id"] for p in pairs] == [t.id for t in taught]
    assert [p["chosen"][-1]["content"] for p in pairs] == [t.reference for t in taught]
    assert json.loads((tmp_path / "out/pairs.json").read_text())["prompts_without_reference"] == 1
