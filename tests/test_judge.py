"""Judges: the verdict type, the factory, agreement, the rubric's orderings, and the
OpenAI-compatible judge against a scripted local server (retries, cache, secrets)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from bioreasoner.core.records import Message, Source, Task
from bioreasoner.scoring.judge import Judge, Verdict, agreement, build_judge, build_judges
from bioreasoner.scoring.judge.openai import OpenAIJudge, judge_messages, parse_verdict
from bioreasoner.scoring.judge.rubric import RubricJudge
from bioreasoner.tasks.excerpt import Excerpt
from bioreasoner.tasks.prompts import cross_messages, qa_messages
from bioreasoner.tasks.teacher import cross_reference, qa_reference
from tests.conftest import loopback, send

SECRET = "sk-test-0123456789abcdef"

# ----------------------------------------------------------------------------- literal tasks

QA_SOURCE = Source(
    pmid="21645374",
    title="Does aspirin reduce the recurrence of colorectal adenomas?",
    text=(
        "Aspirin inhibits cyclooxygenase, which is overexpressed in colorectal adenomas. "
        "We randomized 1121 patients with a recent adenoma to aspirin or placebo for three years. "
        "Adenomas recurred in 38% of the aspirin group and 47% of the placebo group."
    ),
)
QA_QUESTION = "Does aspirin reduce the recurrence of colorectal adenomas?"
QA_TASK = Task(
    id="qa-21645374",
    type="qa",
    sources=[QA_SOURCE],
    messages=qa_messages(QA_SOURCE, QA_QUESTION),
    reference="",
    gold="yes",
)
# A reference written out in the teacher's shape (tasks/teacher.py: qa_reference).
QA_REFERENCE = (
    "<think>\nThe question is: Does aspirin reduce the recurrence of colorectal adenomas? The evidence is one "
    "paper, [PMID:21645374]. Its aim: Aspirin inhibits cyclooxygenase, which is overexpressed in colorectal "
    "adenomas. How it was studied: We randomized 1121 patients with a recent adenoma to aspirin or placebo for "
    "three years. What it found: Adenomas recurred in 38% of the aspirin group and 47% of the placebo group. "
    "Weighing these findings against the question: Daily aspirin lowered the risk that an adenoma returns "
    "within three years.\n</think>\nDaily aspirin lowered the risk that an adenoma returns within three years. "
    "[PMID:21645374]\n\nAnswer: yes"
)

CROSS_SOURCES = [
    Source(
        pmid="11111111",
        title="Exercise training after myocardial infarction in older adults",
        text=(
            "We studied whether supervised exercise improves fitness after infarction. Two hundred patients over "
            "seventy were assigned to twelve weeks of training or usual care. Peak oxygen uptake rose by 15% "
            "with training."
        ),
    ),
    Source(
        pmid="22222222",
        title="Home-based cardiac rehabilitation in rural patients",
        text=(
            "Rural patients rarely attend rehabilitation centres. We enrolled 150 patients in a telephone-guided "
            "home programme. Adherence was 80% and readmissions fell by a third."
        ),
    ),
    Source(
        pmid="33333333",
        title="Depressive symptoms and recovery after heart attack",
        text=(
            "Depression is common after infarction. A cohort of 400 patients completed questionnaires at "
            "discharge. Depressive symptoms predicted lower physical activity at one year."
        ),
    ),
]
CROSS_TASK = Task(
    id="critique_extend-11111111-22222222-33333333",
    type="critique_extend",
    sources=CROSS_SOURCES,
    messages=cross_messages("critique_extend", CROSS_SOURCES),
    reference="",
)
CROSS_EXCERPTS = [
    Excerpt(
        text=CROSS_SOURCES[0].text,
        aim="We studied whether supervised exercise improves fitness after infarction.",
        method="Two hundred patients over seventy were assigned to twelve weeks of training or usual care.",
        finding="Peak oxygen uptake rose by 15% with training.",
    ),
    Excerpt(
        text=CROSS_SOURCES[1].text,
        aim="Rural patients rarely attend rehabilitation centres.",
        method="We enrolled 150 patients in a telephone-guided home programme.",
        finding="Adherence was 80% and readmissions fell by a third.",
    ),
    Excerpt(
        text=CROSS_SOURCES[2].text,
        aim="Depression is common after infarction.",
        method="A cohort of 400 patients completed questionnaires at discharge.",
        finding="Depressive symptoms predicted lower physical activity at one year.",
    ),
]

EMPTY = ""
GIBBERISH = "xkq wplz zzrt vbnm qwrt plkj mnbv trewq asdfg hjkl poiu zxcv"
REPEATED = "the " * 80
REPEATED_IN_THINK = "<think>" + "the cells the cells " * 40 + "</think>" + "the cells " * 20 + "Answer: yes"
CITATION_SPAM = "[PMID:21645374] " * 20

# ----------------------------------------------------------------------------- Verdict, factory, agreement


@pytest.mark.parametrize(
    ("verdict", "ok", "mean"),
    [
        # both scores, no error
        (Verdict(4.0, 3.0, None, "j"), True, 3.5),
        # an error
        (Verdict(None, None, "HTTP 500", "j"), False, None),
        # a missing score without an error is still not ok
        (Verdict(4.0, None, None, "j"), False, None),
    ],
)
def test_verdict_ok_and_mean(verdict, ok, mean):
    assert verdict.ok is ok
    assert verdict.mean == mean


def test_build_judge_kinds(tmp_path):
    assert isinstance(build_judge({"kind": "rubric"}), RubricJudge)
    judge = build_judge(
        {
            "kind": "openai",
            "base_url": "http://127.0.0.1:1/v1/",
            "model": "m",
            "api_key_env": "OPENAI_API_KEY",
            "cache_dir": str(tmp_path),
            "max_retries": 3,
            "backoff_s": 1.0,
            "timeout_s": 60,
            "temperature": 0,
        }
    )
    assert isinstance(judge, OpenAIJudge)
    assert isinstance(judge, Judge)
    assert judge.url == "http://127.0.0.1:1/v1/chat/completions"
    assert judge.name == "openai:m"


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        # unknown kind
        ({"kind": "oracle"}, "unknown judge kind"),
        # the rubric has no options, a typo is not ignored
        ({"kind": "rubric", "strict": True}, "takes no options"),
        # a misspelt openai option
        ({"kind": "openai", "base_url": "http://x", "model": "m", "modle": "m"}, "modle"),
        # a missing required openai option
        ({"kind": "openai", "base_url": "http://x"}, "model"),
    ],
)
def test_build_judge_rejects_bad_config(cfg, message):
    with pytest.raises(ValueError, match=message):
        build_judge(cfg)


def test_build_judges_needs_distinct_names():
    assert [j.name for j in build_judges([{"kind": "rubric"}])] == ["rubric"]
    with pytest.raises(ValueError, match="unique"):
        build_judges([{"kind": "rubric"}, {"kind": "rubric"}])


T, F = True, False


@pytest.mark.parametrize(
    ("a", "b", "share", "kappa"),
    [
        # p_o = 3/4, p_e = 1/2*1/4 + 1/2*3/4 = 1/2 -> kappa = (3/4 - 1/2) / (1/2) = 0.5
        ([T, T, F, F], [T, F, F, F], 0.75, 0.5),
        # p_o = 7/10, p_e = .6*.5 + .4*.5 = .5 -> kappa = .2 / .5 = 0.4
        ([T, T, T, F, F, F, T, F, T, T], [T, T, F, F, F, T, T, F, F, T], 0.7, 0.4),
        # always opposite: p_o = 0, p_e = 1/2 -> kappa = -1
        ([T, F], [F, T], 0.0, -1.0),
        # both constant and equal: p_e = 1, defined as kappa 1.0
        ([T, T, T], [T, T, T], 1.0, 1.0),
        # both constant, different: p_o = 0, p_e = 0 -> kappa 0
        ([T, T, T], [F, F, F], 0.0, 0.0),
        # p_o = 2/3, pa = 2/3, pb = 1/3, p_e = 2/9 + 2/9 = 4/9 -> kappa = (2/9)/(5/9) = 0.4
        ([T, T, F], [T, F, F], 0.6667, 0.4),
    ],
)
def test_agreement_and_cohens_kappa(a, b, share, kappa):
    got = agreement(a, b)
    assert got["agreement"] == share
    assert got["cohens_kappa"] == kappa
    assert got["n"] == len(a)


def test_agreement_edge_cases():
    assert agreement([], []) == {"n": 0, "agreement": None, "cohens_kappa": None}
    with pytest.raises(ValueError, match="paired"):
        agreement([True], [True, False])


# ----------------------------------------------------------------------------- rubric


def rubric(task: Task, response: str) -> Verdict:
    return RubricJudge().score(task, response)


def test_teacher_shaped_references_score_well():
    built_qa = qa_reference(
        QA_SOURCE.pmid,
        Excerpt(
            text=QA_SOURCE.text,
            aim="Aspirin inhibits cyclooxygenase, which is overexpressed in colorectal adenomas.",
            method="We randomized 1121 patients with a recent adenoma to aspirin or placebo for three years.",
            finding="Adenomas recurred in 38% of the aspirin group and 47% of the placebo group.",
        ),
        QA_QUESTION,
        "Daily aspirin lowered the risk that an adenoma returns within three years.",
        "yes",
        200,
    )
    built_cross = cross_reference(
        "critique_extend",
        [s.pmid for s in CROSS_SOURCES],
        CROSS_EXCERPTS,
        ["Myocardial Infarction", "Exercise"],
        200,
    )
    for task, response in [(QA_TASK, QA_REFERENCE), (QA_TASK, built_qa), (CROSS_TASK, built_cross)]:
        verdict = rubric(task, response)
        assert verdict.ok
        assert verdict.logic is not None and verdict.logic >= 3.5, (verdict, response)


@pytest.mark.parametrize(
    "response",
    [
        # empty string
        EMPTY,
        # letter salad
        GIBBERISH,
        # one token over and over
        REPEATED,
        # a loop inside and after a think block, with a decision line
        REPEATED_IN_THINK,
        # one grounded citation twenty times
        CITATION_SPAM,
    ],
)
def test_degenerate_responses_score_1_to_2(response):
    verdict = rubric(QA_TASK, response)
    assert 1.0 <= verdict.logic <= 2.0, verdict
    assert 1.0 <= verdict.novelty <= 2.0, verdict
    reference = rubric(QA_TASK, QA_REFERENCE)
    assert verdict.logic < reference.logic


SOURCE_COPY = "<think>" + QA_SOURCE.text + "</think>\n" + QA_SOURCE.text + " [PMID:21645374]\n\nAnswer: yes"


@pytest.mark.parametrize(
    ("response", "score", "direction"),
    [
        # the cited PMID is not the task's source: logic falls
        (QA_REFERENCE.replace("21645374", "99999999"), "logic", -1),
        # the same text without the think tags: logic falls
        (QA_REFERENCE.replace("<think>", "").replace("</think>", ""), "logic", -1),
        # no decision line for a qa task: logic falls
        (QA_REFERENCE.replace("Answer: yes", ""), "logic", -1),
        # nothing after the think block: logic falls
        (QA_REFERENCE.split("</think>")[0] + "</think>", "logic", -1),
        # a reasoning connective: logic rises
        (QA_REFERENCE.replace("Weighing", "Because the groups were randomized, weighing"), "logic", +1),
        # a testable proposal in the answer: novelty rises
        (
            QA_REFERENCE.replace(
                "Answer: yes", "We propose to test whether a lower dose keeps this benefit.\nAnswer: yes"
            ),
            "novelty",
            +1,
        ),
        # the answer copies the abstract verbatim: novelty falls
        (SOURCE_COPY, "novelty", -1),
    ],
)
def test_rubric_terms_move_the_score(response, score, direction):
    base = getattr(rubric(QA_TASK, QA_REFERENCE), score)
    moved = getattr(rubric(QA_TASK, response), score)
    assert (moved - base) * direction > 0, (base, moved)


def test_linking_sources_raises_novelty():
    one = "<think>The studies differ.</think>\nSupervised training helped older adults [PMID:11111111]."
    three = (
        "<think>The studies differ.</think>\nSupervised training helped older adults [PMID:11111111], home "
        "programmes reach rural patients [PMID:22222222], and depression limits activity [PMID:33333333]."
    )
    assert rubric(CROSS_TASK, three).novelty > rubric(CROSS_TASK, one).novelty


def test_rubric_is_deterministic_and_bounded():
    first, second = rubric(CROSS_TASK, QA_REFERENCE), rubric(CROSS_TASK, QA_REFERENCE)
    assert first == second
    assert 1.0 <= first.logic <= 5.0 and 1.0 <= first.novelty <= 5.0
    assert first.logic == round(first.logic, 2)


# ----------------------------------------------------------------------------- OpenAI-compatible judge

Reply = tuple[int, dict[str, str], bytes]


def completion(content: str) -> Reply:
    body = {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}
    return 200, {"Content-Type": "application/json"}, json.dumps(body).encode()


GOOD = completion('{"logic": 4, "novelty": 3, "rationale": "sound"}')


@dataclass
class Scripted:
    """Replies served in order (the last one repeats) and every request received."""

    base_url: str = ""
    replies: list[Reply] = field(default_factory=list)
    requests: list[tuple[dict[str, str], dict[str, Any]]] = field(default_factory=list)


@pytest.fixture
def server() -> Iterator[Scripted]:
    scripted = Scripted()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            scripted.requests.append((dict(self.headers.items()), json.loads(body)))
            send(self, *(scripted.replies.pop(0) if len(scripted.replies) > 1 else scripted.replies[0]))

        def log_message(self, *args: Any) -> None:
            pass

    with loopback(Handler) as url:
        scripted.base_url = f"{url}/v1"
        yield scripted


def make_judge(server: Scripted, tmp_path: Path, **kw: Any) -> OpenAIJudge:
    opts: dict[str, Any] = {"max_retries": 2, "backoff_s": 0.01, "timeout_s": 5, "cache_dir": tmp_path / "cache"}
    return OpenAIJudge(base_url=server.base_url, model="judge-m", **(opts | kw))


def cache_files(tmp_path: Path) -> list[Path]:
    return sorted(p for p in (tmp_path / "cache").rglob("*") if p.is_file())


def test_good_verdict_request_shape_and_cache(server, tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("JUDGE_KEY", SECRET)
    server.replies = [GOOD]
    verdict = make_judge(server, tmp_path, api_key_env="JUDGE_KEY").score(QA_TASK, QA_REFERENCE)
    assert (verdict.logic, verdict.novelty, verdict.error, verdict.judge) == (4.0, 3.0, None, "openai:judge-m")
    assert verdict.rationale == "sound"

    headers, body = server.requests[0]
    assert headers["Authorization"] == f"Bearer {SECRET}"
    assert body["model"] == "judge-m"
    assert body["temperature"] == 0
    assert body["response_format"] == {"type": "json_object"}
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    user = body["messages"][1]["content"]
    assert QA_SOURCE.text in user and QA_QUESTION in user and QA_REFERENCE in user

    # a fresh judge on the same cache answers without a call
    again = make_judge(server, tmp_path, api_key_env="JUDGE_KEY").score(QA_TASK, QA_REFERENCE)
    assert again == verdict
    assert len(server.requests) == 1
    # a different response is a different cache entry
    make_judge(server, tmp_path, api_key_env="JUDGE_KEY").score(QA_TASK, QA_REFERENCE + " more")
    assert len(server.requests) == 2

    files = cache_files(tmp_path)
    assert len(files) == 2
    assert all(SECRET not in f.read_text(encoding="utf-8") for f in files)
    assert all(SECRET not in r.getMessage() for r in caplog.records)


def test_fenced_json_is_accepted(server, tmp_path):
    server.replies = [completion('Here you go:\n```json\n{"logic": 5, "novelty": 2.5, "rationale": "x"}\n```')]
    verdict = make_judge(server, tmp_path).score(QA_TASK, QA_REFERENCE)
    assert (verdict.logic, verdict.novelty, verdict.error) == (5.0, 2.5, None)


def test_no_key_in_env_sends_no_authorization(server, tmp_path, monkeypatch):
    monkeypatch.delenv("JUDGE_KEY", raising=False)
    server.replies = [GOOD]
    make_judge(server, tmp_path, api_key_env="JUDGE_KEY").score(QA_TASK, QA_REFERENCE)
    assert "Authorization" not in server.requests[0][0]


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        # prose instead of JSON
        (completion("I would give it a four."), "not a JSON object"),
        # a JSON array, not an object
        (completion("[4, 3]"), "not a JSON object"),
        # novelty missing
        (completion('{"logic": 4}'), "lacks 'novelty'"),
        # out of range
        (completion('{"logic": 7, "novelty": 3}'), "out of range"),
        # zero is out of range too
        (completion('{"logic": 4, "novelty": 0}'), "out of range"),
        # a number as a string
        (completion('{"logic": "4", "novelty": 3}'), "not a number"),
        # a boolean is not a score
        (completion('{"logic": true, "novelty": 3}'), "not a number"),
        # a 200 that is not a chat completion
        ((200, {}, b'{"result": "ok"}'), "not a chat completion"),
        # a 200 with a non-JSON body
        ((200, {}, b"<html>oops</html>"), "not a chat completion"),
        # a client error is not retried
        ((400, {}, b'{"error": "bad request"}'), "HTTP 400"),
    ],
)
def test_malformed_verdicts_are_errors_and_not_cached(server, tmp_path, reply, error):
    server.replies = [reply]
    judge = make_judge(server, tmp_path)
    verdict = judge.score(QA_TASK, QA_REFERENCE)
    assert (verdict.logic, verdict.novelty, verdict.ok) == (None, None, False)
    assert error in verdict.error
    assert cache_files(tmp_path) == []
    assert len(server.requests) == 1  # none of these is retried
    judge.score(QA_TASK, QA_REFERENCE)  # not cached: asked again
    assert len(server.requests) == 2


def test_429_then_200_honours_retry_after(server, tmp_path):
    server.replies = [(429, {"Retry-After": "0.02"}, b"slow down"), GOOD]
    slept: list[float] = []
    verdict = make_judge(server, tmp_path, sleep=slept.append).score(QA_TASK, QA_REFERENCE)
    assert verdict.ok and verdict.logic == 4.0
    assert len(server.requests) == 2
    assert slept == [0.02]


def test_server_error_then_success_backs_off(server, tmp_path):
    server.replies = [(503, {}, b"busy"), (502, {}, b"busy"), GOOD]
    slept: list[float] = []
    verdict = make_judge(server, tmp_path, sleep=slept.append).score(QA_TASK, QA_REFERENCE)
    assert verdict.ok
    assert slept == [0.01, 0.02]  # exponential: backoff_s * 2**attempt


def test_500_forever_is_an_error_verdict_after_retries(server, tmp_path):
    server.replies = [(500, {}, b"down")]
    verdict = make_judge(server, tmp_path, max_retries=2).score(QA_TASK, QA_REFERENCE)
    assert not verdict.ok
    assert "after 3 attempts: HTTP 500" in verdict.error
    assert len(server.requests) == 3
    assert cache_files(tmp_path) == []


def test_connection_refused_is_an_error_verdict(tmp_path):
    with HTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler) as probe:
        port = probe.server_address[1]  # bound then closed: nothing listens there
    judge = OpenAIJudge(
        base_url=f"http://127.0.0.1:{port}/v1", model="m", max_retries=1, backoff_s=0.01, cache_dir=tmp_path / "cache"
    )
    verdict = judge.score(QA_TASK, QA_REFERENCE)
    assert not verdict.ok
    assert "connection error" in verdict.error
    assert judge.network_requests == 2


def test_key_echoed_by_server_is_redacted(server, tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("JUDGE_KEY", SECRET)
    server.replies = [(401, {}, f"invalid key {SECRET}".encode())]
    verdict = make_judge(server, tmp_path, api_key_env="JUDGE_KEY").score(QA_TASK, QA_REFERENCE)
    assert "HTTP 401" in verdict.error
    assert SECRET not in verdict.error
    assert caplog.records, "the failure is logged"
    assert all(SECRET not in r.getMessage() for r in caplog.records)
    assert SECRET not in repr(make_judge(server, tmp_path, api_key_env="JUDGE_KEY"))


def test_unreadable_cache_file_is_asked_again(server, tmp_path):
    server.replies = [GOOD]
    judge = make_judge(server, tmp_path)
    judge.score(QA_TASK, QA_REFERENCE)
    (path,) = cache_files(tmp_path)
    path.write_text("{not json", encoding="utf-8")
    assert judge.score(QA_TASK, QA_REFERENCE).logic == 4.0
    assert len(server.requests) == 2


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        # plain JSON with integer scores
        ('{"logic": 3, "novelty": 4, "rationale": "r"}', (3.0, 4.0, "r")),
        # fenced without a language tag, no rationale
        ('```\n{"logic": 1, "novelty": 5}\n```', (1.0, 5.0, None)),
        # JSON after a sentence, a nested object inside
        ('Verdict: {"logic": 2.5, "novelty": 2, "detail": {"a": 1}}', (2.5, 2.0, None)),
    ],
)
def test_parse_verdict(content, expected):
    assert parse_verdict(content) == expected


def test_judge_prompt_and_cache_key():
    task = QA_TASK.model_copy(update={"messages": [Message(role="user", content="prompt text")]})
    user = judge_messages(task, "resp")[1]["content"]
    assert "[PMID:21645374]" in user and QA_SOURCE.text in user and "prompt text" in user and user.endswith("resp")
    judge = OpenAIJudge(base_url="http://127.0.0.1:1", model="m")
    other_model = OpenAIJudge(base_url="http://127.0.0.1:1", model="m2")
    key = judge.cache_key(judge_messages(task, "a"))
    assert key != judge.cache_key(judge_messages(task, "b"))  # the response is in the key
    assert key != other_model.cache_key(judge_messages(task, "a"))  # so is the model
