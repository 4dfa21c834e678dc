"""The tribunal: verdict rules, agreement (share and Cohen's kappa), judges scored concurrently
against a loopback server (127.0.0.1, started and stopped here), the quality reward's batch
scored concurrently, and filter's metrics and reasons under each verdict rule."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import yaml

from bioreasoner.core.config import PassRule
from bioreasoner.core.parsing import parse_response
from bioreasoner.core.records import Candidate
from bioreasoner.scoring.judge import JudgeFailureError, Verdict, score_all
from bioreasoner.scoring.judge.openai import OpenAIJudge
from bioreasoner.scoring.rewards import quality_reward
from bioreasoner.scoring.tribunal import agreement_report, combine, tribunal_reasons
from tests.conftest import send
from tests.test_filter_pairs import jsonl, stage, write_params
from tests.tiny import make_task

T, F = True, False


@pytest.mark.parametrize(
    ("calls", "rule", "passes"),
    [
        ([T, F, F], "primary", T),  # primary: the first judge decides, whatever the others say
        ([F, T, T], "primary", F),  # ... also when it is outvoted
        ([T, T, T], "unanimous", T),  # unanimous: every judge passes it
        ([T, T, F], "unanimous", F),  # ... one dissent fails it
        ([T, T, F], "majority", T),  # majority: 2 of 3 is more than half
        ([T, F, F], "majority", F),  # 1 of 3 is not
        ([T, F], "majority", F),  # a tie fails: with 2 judges majority means both
        ([T, T], "majority", T),
        ([T], "unanimous", T),  # one judge: every rule is that judge's call
        ([F], "majority", F),
    ],
)
def test_verdict_rules(calls, rule, passes):
    assert combine(calls, rule) is passes


def test_unknown_verdict_rule_is_refused():
    with pytest.raises(ValueError, match="unknown verdict rule 'mean'"):
        combine([T], "mean")


THINK = "<think>\n" + "Paper [PMID:1000] reports the result, so the answer follows from it. " * 4 + "\n</think>\n"
RULE = PassRule(min_think_chars=200, min_score=2.5)
GOOD, LOW, ERR = Verdict(4, 4, None, "a"), Verdict(1, 2, None, "b"), Verdict(None, None, "HTTP 500", "c")


@pytest.mark.parametrize(
    ("text", "verdicts", "rule", "reasons"),
    [
        # primary: exactly the single-judge pass rule with the first verdict
        (THINK + "Answer: yes", [GOOD, LOW], "primary", []),
        (THINK + "Answer: yes", [LOW, GOOD], "primary", ["low_score"]),
        # unanimous: the dissenting judge's reason
        (THINK + "Answer: yes", [GOOD, LOW], "unanimous", ["low_score"]),
        # majority passes with one dissent of three: no reasons at all
        (THINK + "Answer: yes", [GOOD, GOOD, LOW], "majority", []),
        # majority fails: the reasons of every failing judge, in REASONS order
        (THINK + "Answer: yes", [GOOD, ERR, LOW], "majority", ["low_score", "judge_error"]),
        # a rule-only failure (no think block) fails every judge: the verdict cannot pass it
        ("Answer: yes [PMID:1000]", [GOOD, GOOD, GOOD], "majority", ["missing_think"]),
        # an invented PMID fails every judge's call too
        (THINK + "See [PMID:5].", [GOOD, GOOD], "unanimous", ["hallucinated"]),
    ],
)
def test_tribunal_reasons(text, verdicts, rule, reasons):
    assert tribunal_reasons(parse_response(text), ["1000"], verdicts, RULE, rule) == reasons


def test_agreement_report_pairwise_and_vs_verdict():
    # a = [T,T,F,F], b = [T,F,F,F], c = [T,T,T,F]; majority = [T,T,F,F] (= a), unanimous = b.
    # a-b: p_o 3/4, p_e 1/2 x 1/4 + 1/2 x 3/4 = 1/2 -> kappa 0.5
    # a-c: p_o 3/4, p_e 1/2 x 3/4 + 1/2 x 1/4 = 1/2 -> 0.5
    # b-c: p_o 2/4, p_e 1/4 x 3/4 + 3/4 x 1/4 = 3/8 -> (1/2 - 3/8) / (5/8) = 0.2
    calls = [[T, T, F, F], [T, F, F, F], [T, T, T, F]]
    rep = agreement_report(["a", "b", "c"], calls, "majority")
    pair = {k: (v["agreement"], v["cohens_kappa"]) for k, v in rep["pairwise"].items()}
    assert pair == {"a vs b": (0.75, 0.5), "a vs c": (0.75, 0.5), "b vs c": (0.5, 0.2)}
    vs = {k: (v["agreement"], v["cohens_kappa"]) for k, v in rep["vs_verdict"].items()}
    assert vs == {"a": (1.0, 1.0), "b": (0.75, 0.5), "c": (0.75, 0.5)}  # a is the majority here
    assert rep["pass_rate"] == 0.5 and rep["verdict"] == "majority"
    unanimous = agreement_report(["a", "b", "c"], calls, "unanimous")
    assert unanimous["vs_verdict"]["b"]["cohens_kappa"] == 1.0 and unanimous["pass_rate"] == 0.25


# ----------------------------------------------------------------------------- concurrency


class Server:
    """A loopback judge that answers after `delay` seconds and records how many were in flight."""

    def __init__(self, delay: float, low_marker: str = "LOWSCORE", fail: bool = False):
        self.delay, self.low_marker, self.fail = delay, low_marker, fail
        self.in_flight = self.peak = self.calls = 0
        self.lock = threading.Lock()

    def reply(self, h: BaseHTTPRequestHandler) -> None:
        body = json.loads(h.rfile.read(int(h.headers["Content-Length"])))
        with self.lock:
            self.in_flight += 1
            self.calls += 1
            self.peak = max(self.peak, self.in_flight)
        time.sleep(self.delay)
        with self.lock:
            self.in_flight -= 1
        if self.fail:
            return send(h, 500, {}, b"down")
        score = 1 if self.low_marker in body["messages"][1]["content"] else 5
        verdict = json.dumps({"logic": score, "novelty": score})
        send(h, 200, {}, json.dumps({"choices": [{"message": {"content": verdict}}]}).encode())


@pytest.fixture
def judge_server() -> Iterator[Any]:
    started = []

    def start(**kw: Any) -> tuple[Server, str]:
        srv = Server(**kw)

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                srv.reply(self)

            def log_message(self, *args: Any) -> None:
                pass

        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        httpd.daemon_threads = True
        threading.Thread(target=httpd.serve_forever, args=(0.01,), daemon=True).start()
        started.append(httpd)
        return srv, f"http://127.0.0.1:{httpd.server_address[1]}/v1"

    yield start
    for httpd in started:
        httpd.shutdown()
        httpd.server_close()


def judge(url: str, tmp_path, name: str, **kw: Any) -> OpenAIJudge:
    return OpenAIJudge(url, "m", name=name, cache_dir=tmp_path / name, max_retries=0, deadline_s=10, **kw)


def test_score_all_runs_items_and_judges_concurrently_in_order(judge_server, tmp_path):
    srv, url = judge_server(delay=0.15)
    tasks = [make_task(i) for i in range(8)]
    responses = [f"answer {i}" + (" LOWSCORE" if i % 2 else "") for i in range(8)]
    judges = [judge(url, tmp_path, "lead"), judge(url, tmp_path, "second")]
    start = time.monotonic()
    verdicts = score_all(judges, tasks, responses, max_concurrency=8)
    took = time.monotonic() - start
    assert srv.calls == 16 and srv.peak >= 4  # one at a time would be a peak of 1 and 16 x 0.15 = 2.4 s
    assert took < 16 * 0.15 / 2
    for vs in verdicts:  # results in item order, whatever finished first
        assert [v.logic for v in vs] == [1.0 if i % 2 else 5.0 for i in range(8)]


def test_concurrent_fail_fast_stops_and_cancels(judge_server, tmp_path):
    srv, url = judge_server(delay=0.05, fail=True)
    n = 60
    with pytest.raises(JudgeFailureError, match="judge lead: .*judges.max_error_rate"):
        score_all([judge(url, tmp_path, "lead")], [make_task(0)] * n, ["r"] * n, fail_fast_after=4, max_concurrency=4)
    assert srv.calls < n  # the rest were cancelled


def test_quality_reward_scores_a_batch_concurrently(judge_server, tmp_path):
    srv, url = judge_server(delay=0.15)
    tasks = [make_task(i).model_dump_json() for i in range(8)]
    completions = [f"c{i}" + (" LOWSCORE" if i == 3 else "") for i in range(8)]
    rewards = quality_reward(completions, task=tasks, judge=judge(url, tmp_path, "q"), max_concurrency=8)
    assert srv.peak >= 4
    assert rewards == [2.0] * 3 + [0.4] + [2.0] * 4  # 2 x mean / 5, in the completions' order


# ----------------------------------------------------------------------------- the filter stage


@pytest.mark.parametrize(("rule", "passed"), [("primary", 4), ("unanimous", 2), ("majority", 6)])
def test_filter_applies_the_verdict_rule_and_reports_agreement(judge_server, tmp_path, rule, passed):
    """Three loopback judges; each scores 1 the responses with its marker, else 5. Per task:
    sample 0 has no marker, 1 has A (the lead's), 2 has B, 3 has A and B. Lead passes 0 and 2;
    all three pass only 0; a majority passes 0, 1 and 2."""
    urls = [judge_server(delay=0.0, low_marker=m)[1] for m in ("MARKA", "MARKB", "MARKC")]
    tasks = [make_task(i) for i in range(2)]
    think = "Paper [PMID:{p}] reports the result, and the design supports the claim it makes. " * 4
    marks = ["", " MARKA", " MARKB", " MARKA MARKB"]
    cands = [
        Candidate(
            task_id=t.id,
            sample=s,
            seed=s,
            text=f"<think>\n{think.format(p=t.source_pmids[0])}\n</think>\nIt does [PMID:{t.source_pmids[0]}]"
            + f"{marks[s]}\n\nAnswer: yes",
        )
        for t in tasks
        for s in range(4)
    ]
    panel = [
        {"kind": "openai", "base_url": u, "model": "m", "name": n, "cache_dir": str(tmp_path / n)}
        for n, u in zip(("lead", "second", "third"), urls, strict=True)
    ]
    jsonl(tmp_path / "train.jsonl", tasks)
    jsonl(tmp_path / "candidates.jsonl", cands)
    data = yaml.safe_load(write_params(tmp_path / "params.yaml", panel).read_text())
    data["judges"]["verdict"] = rule
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(data))
    res = stage(
        "filter.py",
        tmp_path,
        *("--params", "params.yaml", "--round", "v2_1", "--candidates", "candidates.jsonl"),
        *("--tasks", "train.jsonl", "--out-dir", "out", "--metrics", "out/filter.json"),
    )
    assert res.returncode == 0, res.stderr[-2000:]
    m = json.loads((tmp_path / "out/filter.json").read_text())
    assert m["passed"] == passed, m
    assert m["reasons"]["low_score"] == 8 - passed
    assert m["tribunal"]["verdict"] == rule and m["tribunal"]["pass_rate"] == passed / 8
    # lead passes [1,0,1,0], second [1,1,0,0], third always: lead vs second p_o 1/2, kappa 0
    assert m["tribunal"]["pairwise"]["lead vs second"] == {"n": 8, "agreement": 0.5, "cohens_kappa": 0.0}
    assert set(m["tribunal"]["pairwise"]) == {"lead vs second", "lead vs third", "second vs third"}
    assert set(m["judge_agreement"]) == {"second", "third"}  # each judge against the primary, as before
