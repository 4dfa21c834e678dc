"""A judge behind any OpenAI-compatible chat completions endpoint (vLLM, llama.cpp, OpenAI).

It sends a rubric prompt (the task's sources, its prompt and the response) and expects a
JSON object {"logic": 1-5, "novelty": 1-5, "rationale": "..."}. Design choices:

- The API key is read from the environment variable named by `api_key_env` at request
  time; a local server needs none, and then no Authorization header is sent. The key is
  never logged, cached, put in an error message or kept on the object.
- 429, 5xx and connection errors are retried with exponential backoff (a numeric
  Retry-After wins); other HTTP errors fail at once.
- Good verdicts are cached on disk under sha256(model, rubric version, judge messages),
  written atomically, so a re-run makes no calls. A failed or malformed verdict becomes
  `Verdict(logic=None, novelty=None, error=...)` and is not cached, so a later run
  retries it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

from bioreasoner.core.io import atomic_path
from bioreasoner.core.records import Task
from bioreasoner.scoring.judge import Verdict

log = logging.getLogger(__name__)

RUBRIC_VERSION = "openai-rubric-v1"
RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
MAX_RETRY_AFTER_S = 300.0
_NETWORK_ERRORS = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)
_FENCE = re.compile(r"```(?:json)?\s*(.*?)\s*```", re.S | re.I)

SYSTEM = (
    "You are a strict reviewer of biomedical reasoning. You score one response to a task about "
    "the given papers, on two scales from 1 (worst) to 5 (best).\n"
    "logic: is the reasoning inside <think> ... </think> coherent, does it follow from what the "
    "papers report, does the answer follow from it, and are claims cited as [PMID:n] with PMIDs "
    "of the given papers only? An invented PMID, a contradiction, a loop of repeated text or a "
    "missing answer caps logic at 2.\n"
    "novelty: does the response go beyond restating the papers: a concrete hypothesis, an "
    "extension, a link between papers, a testable proposal? Copying the abstracts scores 1.\n"
    'Reply with one JSON object and nothing else: {"logic": <1-5>, "novelty": <1-5>, '
    '"rationale": "<one or two sentences>"}'
)


def judge_messages(task: Task, response: str) -> list[dict[str, str]]:
    """The rubric prompt: the sources, the task's prompt and the response to score."""
    papers = "\n\n".join(f"[PMID:{s.pmid}] {s.title}\n{s.text}" for s in task.sources)
    prompt = "\n\n".join(m.content for m in task.messages if m.role == "user")
    user = (
        f"Task type: {task.type}\n\nPapers (the only PMIDs that may be cited):\n{papers}\n\n"
        f"Task prompt:\n{prompt}\n\nResponse to score:\n{response}"
    )
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


class JudgeHTTPError(RuntimeError):
    """The endpoint did not answer usefully."""


class MalformedVerdict(ValueError):
    """The judge's reply could not be read as a verdict."""


def parse_verdict(content: str) -> tuple[float, float, str | None]:
    """(logic, novelty, rationale) from the judge's reply; fenced ```json blocks are accepted."""
    text = content.strip()
    candidates = [text]
    candidates += _FENCE.findall(text)
    if "{" in text and "}" in text:
        candidates.append(text[text.find("{") : text.rfind("}") + 1])
    obj: Any = None
    for cand in candidates:
        try:
            obj = json.loads(cand)
            break
        except json.JSONDecodeError:
            continue
    if not isinstance(obj, dict):
        raise MalformedVerdict(f"reply is not a JSON object: {' '.join(text[:80].split())!r}")
    scores = []
    for key in ("logic", "novelty"):
        if key not in obj:
            raise MalformedVerdict(f"reply lacks {key!r}")
        value = obj[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise MalformedVerdict(f"{key} is not a number: {value!r}")
        if not 1 <= value <= 5:
            raise MalformedVerdict(f"{key} out of range 1-5: {value!r}")
        scores.append(float(value))
    rationale = obj.get("rationale")
    return scores[0], scores[1], rationale if isinstance(rationale, str) else None


class OpenAIJudge:
    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str = "OPENAI_API_KEY",
        cache_dir: str | Path = ".cache/judge",
        max_retries: int = 3,
        backoff_s: float = 1.0,
        timeout_s: float = 60.0,
        temperature: float = 0.0,
        name: str | None = None,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key_env = api_key_env
        self.cache_dir = Path(cache_dir)
        self.max_retries = max(0, int(max_retries))
        self.backoff_s = max(0.0, float(backoff_s))
        self.timeout_s = float(timeout_s)
        self.temperature = float(temperature)
        self.name = name or f"openai:{model}"
        self.session = session or requests.Session()
        self._sleep = sleep
        self.network_requests = 0  # attempts sent to the server (tests, logs)

    def __repr__(self) -> str:
        return f"OpenAIJudge(name={self.name!r}, url={self.url!r}, model={self.model!r})"

    # ------------------------------------------------------------------ public

    def score(self, task: Task, response: str) -> Verdict:
        messages = judge_messages(task, response)
        path = self.cache_path(messages)
        cached = self._read_cache(path)
        if cached is not None:
            return cached
        try:
            content = self._complete(messages)
            logic, novelty, rationale = parse_verdict(content)
        except (MalformedVerdict, JudgeHTTPError) as err:
            problem = self._redact(str(err))
            log.warning("judge %s: task %s: %s", self.name, task.id, problem)
            return Verdict(logic=None, novelty=None, error=problem, judge=self.name)
        record = {"logic": logic, "novelty": novelty, "rationale": rationale, "model": self.model}
        record["rubric_version"] = RUBRIC_VERSION
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n", encoding="utf-8")
        return Verdict(logic=logic, novelty=novelty, error=None, judge=self.name, rationale=rationale)

    def cache_key(self, messages: list[dict[str, str]]) -> str:
        blob = json.dumps([self.model, RUBRIC_VERSION, messages], ensure_ascii=False, sort_keys=True)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def cache_path(self, messages: list[dict[str, str]]) -> Path:
        key = self.cache_key(messages)
        return self.cache_dir / key[:2] / f"{key}.json"

    # ------------------------------------------------------------------ internals

    def _read_cache(self, path: Path) -> Verdict | None:
        if not path.is_file():
            return None
        try:
            rec = json.loads(path.read_text(encoding="utf-8"))
            return Verdict(
                logic=float(rec["logic"]),
                novelty=float(rec["novelty"]),
                error=None,
                judge=self.name,
                rationale=rec.get("rationale"),
            )
        except (ValueError, KeyError, TypeError):
            log.warning("judge %s: ignoring unreadable cache file %s", self.name, path)
            return None

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "User-Agent": "bioreasoner/0.1 (python-requests)"}
        key = os.environ.get(self.api_key_env, "") if self.api_key_env else ""
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _redact(self, text: str) -> str:
        key = os.environ.get(self.api_key_env, "") if self.api_key_env else ""
        return text.replace(key, "***") if key else text

    def _complete(self, messages: list[dict[str, str]]) -> str:
        """The assistant message content, after retries; JudgeHTTPError or MalformedVerdict otherwise."""
        body = {
            "model": self.model,
            "messages": messages,
            "temperature": self.temperature,
            "response_format": {"type": "json_object"},
        }
        problem = ""
        for attempt in range(self.max_retries + 1):
            self.network_requests += 1
            retry_after = None
            try:
                resp = self.session.post(self.url, json=body, headers=self._headers(), timeout=self.timeout_s)
            except _NETWORK_ERRORS as err:
                problem = f"connection error ({type(err).__name__})"
            except requests.RequestException as err:  # a bad URL and the like: retrying won't help
                raise JudgeHTTPError(f"POST {self.url} failed: {type(err).__name__}") from None
            else:
                if resp.status_code == 200:
                    return _content(resp)
                problem = f"HTTP {resp.status_code}"
                if resp.status_code not in RETRY_STATUS and resp.status_code < 500:
                    snippet = " ".join(resp.text[:200].split())
                    raise JudgeHTTPError(f"POST {self.url} failed: {problem}: {snippet}")
                retry_after = _retry_after(resp.headers.get("Retry-After"))
            if attempt == self.max_retries:
                break
            delay = retry_after if retry_after is not None else self.backoff_s * 2**attempt
            log.warning("judge %s: %s; retrying in %.2fs", self.name, problem, delay)
            self._sleep(delay)
        raise JudgeHTTPError(f"POST {self.url} failed after {self.max_retries + 1} attempts: {problem}")


def _content(resp: requests.Response) -> str:
    try:
        content = resp.json()["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise MalformedVerdict("response is not a chat completion") from None
    if not isinstance(content, str):
        raise MalformedVerdict("chat completion has no text content")
    return content


def _retry_after(value: str | None) -> float | None:
    """Seconds from a numeric Retry-After header (HTTP dates fall back to backoff)."""
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return None
    return min(seconds, MAX_RETRY_AFTER_S)
