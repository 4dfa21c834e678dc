"""eval@V end to end on a tiny model: one readable row per test task with every score, qa rows
with pmid/gold/decision, metrics from those rows, seeded (a re-run is identical), a second
judge's agreement reported, and a stratified subset by `max_tasks_per_type`. And, fast: bad
params or degenerate inputs are one error line before any model is loaded."""

from __future__ import annotations

import json
import subprocess
import sys
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest
import yaml

from bioreasoner.core.records import Paper, Source, Task
from bioreasoner.scoring.eval_metrics import aggregate
from tests.conftest import ROOT, loopback, run_stage, send
from tests.tiny import make_task


def cross_task(i: int) -> Task:
    sources = [Source(pmid=str(2000 + 3 * i + k), title=f"T{k}", text=f"Finding {k}.") for k in range(3)]
    return make_task(i).model_copy(
        update={"id": f"gap_analysis-{i}", "type": "gap_analysis", "gold": None, "sources": sources}
    )


def write_inputs(project, model_dir, judge_url, per_type=0):
    tasks = [make_task(i) for i in range(4)] + [cross_task(i) for i in range(2)]
    (project / "data/tasks").mkdir(parents=True)
    (project / "data/tasks/test.jsonl").write_text("".join(t.model_dump_json() + "\n" for t in tasks))
    pmids = sorted({p for t in tasks for p in t.source_pmids})
    papers = [Paper(pmid=p, title="t", abstract="a.", source="test") for p in pmids]
    (project / "data/corpus.jsonl").write_text("".join(p.model_dump_json() + "\n" for p in papers))
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["eval"]["generation"].update(max_new_tokens=16, batch_size=4)
    params["eval"]["max_tasks_per_type"] = per_type
    params["judges"]["panel"] = [
        {"kind": "rubric"},
        {"kind": "openai", "base_url": judge_url, "model": "m", "cache_dir": str(project / "cache")},
    ]
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    return tasks


def judge_handler() -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            self.rfile.read(int(self.headers["Content-Length"]))
            verdict = json.dumps({"logic": 4, "novelty": 4, "rationale": "fine"})
            body = {"choices": [{"index": 0, "message": {"role": "assistant", "content": verdict}}]}
            send(self, 200, {"Content-Type": "application/json"}, json.dumps(body).encode())

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


def run_eval(project, model_dir):
    return run_stage(project, "eval.py", "--version", "t", "--model", str(model_dir))


@pytest.mark.slow
def test_eval_rows_metrics_and_determinism(project, tiny_base):
    model_dir, _ = tiny_base
    with loopback(judge_handler()) as url:
        tasks = write_inputs(project, model_dir, url)
        res = run_eval(project, model_dir)
        assert res.returncode == 0, res.stderr[-3000:]
        first = (project / "data/eval/t.jsonl").read_text()
        assert run_eval(project, model_dir).returncode == 0
    assert (project / "data/eval/t.jsonl").read_text() == first  # seeded: a re-run is identical

    rows = [json.loads(line) for line in first.splitlines()]
    assert [r["task_id"] for r in rows] == [t.id for t in tasks]
    for row, task in zip(rows, tasks, strict=True):
        assert row["source_pmids"] == task.source_pmids and isinstance(row["response"], str)
        assert {
            "hallucinated",
            "fabricated",
            "think_closed",
            "logic",
            "novelty",
            "passed",
            "reasons",
            "seed",
        } <= row.keys()
        assert row["passed"] is (row["reasons"] == [])
        assert row["judges"]["openai:m"] == {"logic": 4.0, "novelty": 4.0, "error": None}
        if task.type == "qa":
            assert row["pmid"] == task.source_pmids[0] and row["gold"] == "yes"
            assert row["decision"] in ("yes", "no", "maybe", None)
        else:
            assert "gold" not in row and "decision" not in row

    metrics = json.loads((project / "metrics/eval/t.json").read_text())
    assert metrics["version"] == "t"
    assert {k: v for k, v in metrics.items() if k not in ("version", "judge_agreement", "intervals")} == aggregate(
        rows
    )
    # every rate carries its Wilson interval around the value, over the rows it counts
    hall = metrics["intervals"]["hallucination_rate"]
    assert hall["n"] == 6 and hall["lo"] <= metrics["hallucination_rate"] <= hall["hi"]
    assert metrics["n_by_type"] == {"gap_analysis": 2, "qa": 4} and metrics["pubmedqa_n"] == 4
    agree = metrics["judge_agreement"]["openai:m"]
    assert agree["n"] == 6 and 0 <= agree["agreement"] <= 1


@pytest.mark.slow
def test_max_tasks_per_type_takes_a_stratified_subset(project, tiny_base):
    model_dir, _ = tiny_base
    with loopback(judge_handler()) as url:
        write_inputs(project, model_dir, url, per_type=1)
        assert run_eval(project, model_dir).returncode == 0
    metrics = json.loads((project / "metrics/eval/t.json").read_text())
    assert metrics["n_by_type"] == {"gap_analysis": 1, "qa": 1}


# ----------------------------------------------------------------------------- bad input, before any model


def run_eval_fast(tmp_path, tasks, papers, edit=None):
    """eval.py against a model folder that does not exist: every error here must come first."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    if edit:
        edit(params)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    if tasks is not None:
        (tmp_path / "test.jsonl").write_text("".join(t.model_dump_json() + "\n" for t in tasks))
    (tmp_path / "corpus.jsonl").write_text("".join(p.model_dump_json() + "\n" for p in papers))
    args = ["--params", "params.yaml", "--version", "t", "--model", "no-such-model", "--tasks", "test.jsonl"]
    args += ["--corpus", "corpus.jsonl", "--out", "out/t.jsonl", "--metrics", "out/t.json"]
    return subprocess.run(
        [sys.executable, str(ROOT / "stages/eval.py"), *args], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )


TASKS = [make_task(i) for i in range(2)]
PAPERS = [Paper(pmid=p, title="t", abstract="a.", source="test") for t in TASKS for p in t.source_pmids]


@pytest.mark.parametrize(
    ("tasks", "papers", "edit", "message"),
    [
        # no test tasks
        ([], PAPERS, None, "test.jsonl: no test tasks: the file is empty"),
        # no test-tasks file
        (None, PAPERS, None, "test.jsonl: file does not exist"),
        # a task id twice
        ([TASKS[0], TASKS[1], TASKS[0]], PAPERS, None, "test.jsonl: record 3: duplicate id 'qa-0' (first at record 1)"),
        # an empty corpus: every citation would count as fabricated
        (TASKS, [], None, "corpus.jsonl: no papers: the file is empty"),
        # the old eval.pass_threshold: one pass rule now, in judges.pass_rule
        (TASKS, PAPERS, lambda p: p["eval"].update(pass_threshold=3.0), "eval.pass_threshold: unknown key"),
        # a pass rule off the judges' 1-5 scale
        (TASKS, PAPERS, lambda p: p["judges"]["pass_rule"].update(min_score=7), "judges.pass_rule.min_score"),
    ],
)
def test_eval_refuses_bad_input_before_loading_a_model(tmp_path, tasks, papers, edit, message):
    res = run_eval_fast(tmp_path, tasks, papers, edit)
    assert res.returncode == 1, res.stderr[-2000:]
    errors = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in res.stderr and message in errors[0], res.stderr[-2000:]
    assert "no-such-model" not in res.stderr  # the model was never looked at
    assert not (tmp_path / "out").exists()
