"""`backend: openai`: sampling from a served model through its completions endpoint, against a
fake vLLM server on 127.0.0.1 (started and stopped here) that answers deterministically from
(prompt, seed). Same rows for the same seeds, other rows for another seed, prompts rendered
exactly as the in-process path renders them, results in input order with several requests in
flight; bad replies are retried within the budget or are one error line with nothing written.
And GRPO's TRL vLLM server mode: typed, and a clear error where vllm is missing."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import shutil
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from bioreasoner.core.config import GRPOCfg, ServerCfg, validate
from bioreasoner.core.io import BadInputError
from bioreasoner.core.records import Paper
from bioreasoner.endpoints.completions import ServedSampler, parse_completion
from bioreasoner.modeling.generation import SamplingParams, item_seed, render_prompt
from bioreasoner.modeling.models import load_tokenizer
from bioreasoner.training.data import prompt_messages
from tests.conftest import run_stage, send
from tests.params_edit import params_data
from tests.tiny import make_task

SERVED = "models/merged/t"


def fake_text(prompt: str, seed: int, temperature: float) -> str:
    """What the fake server samples: a function of exactly what vLLM's sampling depends on."""
    h = hashlib.sha256(f"{prompt}\x00{seed}\x00{temperature}".encode()).hexdigest()
    return f"sampled {h[:12]}\n</think>\nIt does [PMID:1000].\n\nAnswer: {'yes' if int(h[0], 16) % 2 else 'no'}"


class FakeVLLM:
    """State of one fake server: what it serves, what it was asked, and how it misbehaves."""

    def __init__(self, served: str = SERVED, fail: str | None = None, delay: float = 0.0):
        self.served, self.fail, self.delay = served, fail, delay
        self.bodies: list[dict[str, Any]] = []
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()

    def reply(self, body: dict[str, Any]) -> tuple[int, bytes]:
        n = len(self.bodies)
        self.bodies.append(body)
        text = fake_text(body["prompt"], body["seed"], body["temperature"])
        reply: dict[str, Any] = {
            "id": f"cmpl-{n}",
            "object": "text_completion",
            "model": self.served,
            "choices": [{"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}],
            "usage": {"prompt_tokens": len(body["prompt"]), "completion_tokens": len(text)},
        }
        if self.fail == "500_once" and n == 0 or self.fail == "500_always":
            return 500, b'{"error": "overloaded"}'
        if self.fail == "non_json":
            return 200, b"<html>502 Bad Gateway</html>"
        if self.fail == "huge":
            reply["choices"][0]["text"] = "x" * 50_000
        if self.fail == "missing_text":
            del reply["choices"][0]["text"]
        if self.fail == "wrong_model":
            reply["model"] = "models/merged/other"
        if self.fail == "two_choices":
            reply["choices"].append(reply["choices"][0])
        if self.fail == "aborted":
            reply["choices"][0]["finish_reason"] = "abort"
        return 200, json.dumps(reply).encode()

    def handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                assert self.path == "/v1/models", self.path
                body = {"object": "list", "data": [{"id": fake.served, "object": "model", "root": fake.served}]}
                send(self, 200, {"Content-Type": "application/json"}, json.dumps(body).encode())

            def do_POST(self) -> None:  # noqa: N802
                assert self.path == "/v1/completions", self.path
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake.lock:
                    fake.in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                time.sleep(fake.delay)
                with fake.lock:
                    status, data = fake.reply(body)
                    fake.in_flight -= 1
                send(self, status, {"Content-Type": "application/json"}, data)

            def log_message(self, *args: Any) -> None:
                pass

        return Handler


@contextlib.contextmanager
def serving(fake: FakeVLLM) -> Iterator[str]:
    """`fake` on 127.0.0.1 (a free port, a thread per request, as vLLM takes concurrent
    requests); yields its OpenAI base URL."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), fake.handler())
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def server_cfg(url: str, **kw: Any) -> ServerCfg:
    return ServerCfg(base_url=url, backoff_s=0.0, **kw)


PARAMS = SamplingParams(temperature=0.7, top_p=0.95, max_new_tokens=32, prefix="<think>\n")

# ----------------------------------------------------------------------------- the sampler


def test_items_in_input_order_with_their_seeds_several_in_flight():
    fake = FakeVLLM(delay=0.05)
    prompts = [f"<|user|>question {i}<|assistant|>" for i in range(12)]
    seeds = [item_seed(7, "eval", i) for i in range(12)]
    seen: dict[int, str] = {}
    with serving(fake) as url:
        sampler = ServedSampler(server_cfg(url, max_concurrency=4), model=SERVED)
        sampler.check_model()
        out = sampler.sample(prompts, seeds, PARAMS, done={3: "kept"}, on_item=seen.__setitem__)
    # input order, prefix first, each the server's sample for (its prompt, its seed); done items not asked
    assert out == [
        "kept" if i == 3 else PARAMS.prefix + fake_text(p, s, 0.7)
        for i, (p, s) in enumerate(zip(prompts, seeds, strict=True))
    ]
    assert seen == {i: out[i] for i in range(12) if i != 3}
    assert len(fake.bodies) == 11 and 1 < fake.max_in_flight <= 4
    body = fake.bodies[0]
    assert body["model"] == SERVED and body["n"] == 1 and body["add_special_tokens"] is False
    assert (body["max_tokens"], body["top_p"], body["stream"]) == (32, 0.95, False)
    assert sampler.usage.requests == 11 and sampler.usage.finished == {"stop": 11}


def test_a_500_is_retried_within_the_budget():
    fake = FakeVLLM(fail="500_once")
    with serving(fake) as url:
        sampler = ServedSampler(server_cfg(url, retry_budget=1), model=SERVED)
        assert sampler.sample(["p"], [1], PARAMS) == [PARAMS.prefix + fake_text("p", 1, 0.7)]
    assert sampler.http.budget.used == 1 and len(fake.bodies) == 2


def test_a_spent_retry_budget_is_one_error_line():
    with serving(FakeVLLM(fail="500_always")) as url:
        sampler = ServedSampler(server_cfg(url, retry_budget=2, max_concurrency=1), model=SERVED)
        with pytest.raises(BadInputError, match=r"item a: .*HTTP 500.*retry budget \(server.retry_budget = 2\)"):
            sampler.sample(["a", "b", "c"], [1, 2, 3], PARAMS, keys=["a", "b", "c"])


@pytest.mark.parametrize(
    ("fail", "message"),
    [
        ("non_json", "reply is not JSON"),
        ("huge", "exceeds max_response_bytes = 2048"),
        ("missing_text", r"choices\[0\].text is None, not a string"),
        ("wrong_model", "reply comes from model 'models/merged/other', expected 'models/merged/t'"),
        ("two_choices", "reply has 2 choices, expected exactly 1"),
        ("aborted", "finish_reason is 'abort'"),
    ],
)
def test_a_bad_reply_is_one_error_line_naming_the_item(fail, message):
    with serving(FakeVLLM(fail=fail)) as url:
        sampler = ServedSampler(server_cfg(url, max_response_bytes=2048), model=SERVED)
        with pytest.raises(BadInputError, match=message) as err:
            sampler.sample(["p"], [1], PARAMS, keys=["qa-1"])
    assert str(err.value).startswith(f"{url}/completions: item qa-1: ") and "\n" not in str(err.value)


def test_a_server_on_another_model_is_refused_before_sampling():
    fake = FakeVLLM(served="models/merged/v2_0")
    with serving(fake) as url:
        with pytest.raises(BadInputError, match=r"serves \['models/merged/v2_0'\], not 'models/merged/t'.*vllm serve"):
            ServedSampler(server_cfg(url), model=SERVED).check_model()
        ServedSampler(server_cfg(url, model="models/merged/v2_0"), model=SERVED).check_model()  # named in params
    assert fake.bodies == []


def test_parse_completion_is_linear_on_a_hostile_body():
    hostile = b'{"model": "m", "choices": [{"text": "' + b"[" * 200_000 + b'"}]}'  # a string, not nesting
    start = time.perf_counter()
    with pytest.raises(ValueError, match="finish_reason"):
        parse_completion(hostile, "m")
    assert time.perf_counter() - start < 0.5
    with pytest.raises(ValueError, match="not JSON"):
        parse_completion(b"[" * 100_000, "m")  # nesting too deep for json: an error, not a hang


# ----------------------------------------------------------------------------- params


def test_backend_openai_needs_a_server_and_grpo_server_mode_needs_use_vllm():
    def openai_eval(d):
        d["eval"]["backend"] = "openai"

    with pytest.raises(BadInputError, match="eval: backend openai needs `server:`"):
        validate(params_data(openai_eval))
    with pytest.raises(BadInputError, match="rounds.v2_0.server.base_url"):
        validate(params_data(lambda d: d["rounds"]["v2_0"].update(backend="openai", server={"base_url": "ftp://x"})))
    grpo = params_data()["grpo"]
    with pytest.raises(ValueError, match="vllm_mode server needs use_vllm: true"):
        GRPOCfg.model_validate({**grpo, "vllm_mode": "server"})


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="checks the error without vllm")
def test_grpo_vllm_server_mode_without_vllm_says_so(tmp_path):
    from tests.params_edit import stage_params, tmp_run
    from tests.tiny import load_stage

    grpo = load_stage("grpo")
    p = stage_params(grpo, lambda d: d["grpo"].update(use_vllm=True, vllm_mode="server", vllm_server_port=8011))
    with pytest.raises(RuntimeError, match=r"grpo.use_vllm \(vllm_mode server\) needs the vllm package"):
        grpo.build_trainer(p, [make_task(0)], "no-such-policy", tmp_run(tmp_path))  # before any model loads


# ----------------------------------------------------------------------------- eval@V end to end


def eval_project(project: Path, model_dir: Path, url: str, seed: int = 42) -> list:
    """Test tasks, corpus and params for eval with backend openai; the model folder keeps its
    tokenizer and config only: the weights are the server's, nothing here may load them."""
    folder = project / SERVED
    shutil.copytree(model_dir, folder)
    for weights in folder.glob("*.safetensors"):
        weights.unlink()
    tasks = [make_task(i) for i in range(5)]
    (project / "data/tasks").mkdir(parents=True, exist_ok=True)
    (project / "data/tasks/test.jsonl").write_text("".join(t.model_dump_json() + "\n" for t in tasks))
    papers = [Paper(pmid=p, title="t", abstract="a.", source="test") for t in tasks for p in t.source_pmids]
    (project / "data/corpus.jsonl").write_text("".join(p.model_dump_json() + "\n" for p in papers))
    write_eval_params(project, url, seed)
    return tasks


def write_eval_params(project: Path, url: str, seed: int) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["seed"] = seed
    params["eval"].update(backend="openai", server={"base_url": url, "max_concurrency": 3, "backoff_s": 0})
    (project / "params.yaml").write_text(yaml.safe_dump(params))


def run_eval(project: Path):
    return run_stage(project, "eval.py", "--version", "t", "--model", SERVED)


@pytest.mark.slow
def test_eval_against_a_server_same_seeds_same_rows(project, tiny_base):
    model_dir, _ = tiny_base
    fake = FakeVLLM()
    with serving(fake) as url:
        tasks = eval_project(project, model_dir, url)
        res = run_eval(project)
        assert res.returncode == 0, res.stderr[-3000:]
        first = (project / "data/eval/t.jsonl").read_text()
        assert run_eval(project).returncode == 0
        again = (project / "data/eval/t.jsonl").read_text()
        write_eval_params(project, url, seed=7)
        assert run_eval(project).returncode == 0
        other = (project / "data/eval/t.jsonl").read_text()
    assert again == first  # the same seeds: the same rows
    rows, other_rows = ([json.loads(x) for x in t.splitlines()] for t in (first, other))
    assert [r["task_id"] for r in rows] == [t.id for t in tasks]
    assert all(a["response"] != b["response"] for a, b in zip(rows, other_rows, strict=True))  # another seed
    # each request: the prompt as the in-process path renders it, the task's own seed
    tok = load_tokenizer(model_dir)
    asked = {b["prompt"]: b["seed"] for b in fake.bodies[: len(tasks)]}
    assert asked == {render_prompt(tok, prompt_messages(t)): item_seed(42, "eval", t.id) for t in tasks}
    for row, task in zip(rows, tasks, strict=True):
        prompt = render_prompt(tok, prompt_messages(task))
        assert row["response"] == fake_text(prompt, item_seed(42, "eval", task.id), 0.7)
        assert row["seed"] == item_seed(42, "eval", task.id)
    assert json.loads((project / "metrics/eval/t.json").read_text())["n_by_type"] == {"qa": len(tasks)}


@pytest.mark.slow
def test_eval_against_a_broken_server_writes_nothing(project, tiny_base):
    model_dir, _ = tiny_base
    with serving(FakeVLLM(fail="non_json")) as url:
        eval_project(project, model_dir, url)
        res = run_eval(project)
    assert res.returncode == 1
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "/v1/completions: item qa-" in errors[0] and "reply is not JSON" in errors[0]
    assert "Traceback" not in res.stderr
    assert not (project / "data/eval/t.jsonl").exists() and not (project / "metrics/eval/t.json").exists()


@pytest.mark.slow
def test_candidates_against_a_server(project, tiny_base):
    """generate_candidates@R with backend openai: a forced prefix in the prompt and in front of the
    text, one seed per (task, sample), rows in task x sample order."""
    model_dir, _ = tiny_base
    folder = project / "models/merged/sft"
    shutil.copytree(model_dir, folder)
    tasks = [make_task(i) for i in range(3)]
    (project / "data/tasks").mkdir(parents=True)
    (project / "data/tasks/train.jsonl").write_text("".join(t.model_dump_json() + "\n" for t in tasks))
    params = yaml.safe_load((project / "params.yaml").read_text())
    fake = FakeVLLM(served="models/merged/sft")
    with serving(fake) as url:
        params["rounds"]["v2_1"].update(
            prompts=0, samples_per_prompt=2, backend="openai", server={"base_url": url, "backoff_s": 0}
        )
        (project / "params.yaml").write_text(yaml.safe_dump(params))
        res = run_stage(
            project, "generate_candidates.py", "--round", "v2_1", "--policy", "models/merged/sft", "--out", "c.jsonl"
        )
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [json.loads(x) for x in (project / "c.jsonl").read_text().splitlines()]
    tok = load_tokenizer(model_dir)
    assert [(r["task_id"], r["sample"]) for r in rows] == [(t.id, s) for t in tasks for s in range(2)]
    for row, (task, s) in zip(rows, [(t, s) for t in tasks for s in range(2)], strict=True):
        prompt = render_prompt(tok, prompt_messages(task), "<think>\n")
        assert row["seed"] == item_seed(42, "v2_1", task.id, s)
        assert row["text"] == "<think>\n" + fake_text(prompt, row["seed"], 0.7)
    assert not list((project / "checkpoints").rglob("*.jsonl"))  # the partial file is gone
