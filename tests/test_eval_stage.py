"""eval@V end to end on a tiny model: one readable row per test task with every score, qa rows
with pmid/gold/decision, metrics from those rows, seeded (a re-run is identical), a second
judge's agreement reported, and a stratified subset by `max_tasks_per_type`."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest
import yaml

from bioreasoner.core.records import Paper, Source, Task
from bioreasoner.scoring.eval_metrics import aggregate
from tests.conftest import loopback, run_stage, send
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
    params["judges"] = [
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
        assert {"hallucinated", "fabricated", "think_closed", "logic", "novelty", "passed", "seed"} <= row.keys()
        assert row["judges"]["openai:m"] == {"logic": 4.0, "novelty": 4.0, "error": None}
        if task.type == "qa":
            assert row["pmid"] == task.source_pmids[0] and row["gold"] == "yes"
            assert row["decision"] in ("yes", "no", "maybe", None)
        else:
            assert "gold" not in row and "decision" not in row

    metrics = json.loads((project / "metrics/eval/t.json").read_text())
    assert metrics["version"] == "t"
    assert {k: v for k, v in metrics.items() if k not in ("version", "judge_agreement")} == aggregate(rows)
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
