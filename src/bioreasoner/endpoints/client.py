"""One HTTP client for every OpenAI-compatible endpoint we call (judges, teachers, samplers).

`EndpointClient.post_json(path, body)` sends one JSON request and returns the raw body of a
200 reply, or raises `EndpointError` with one line that says what went wrong. It is built so
that a slow, broken or hostile endpoint cannot hang a stage, fill its memory or leak a secret:

- Key: read at request time from the environment variable named by `api_key_env`, which has
  no default. Without it no Authorization header is sent at all (a local server needs none),
  whatever OPENAI_API_KEY holds. `redact` removes the key from any text the caller keeps;
  error messages raised here never contain it. Credentials inside `base_url` are refused.
- Time: each call has a total `deadline_s` covering every attempt, backoff and Retry-After
  wait. Each attempt's connect and per-read timeouts are min(`timeout_s`, time left), and the
  body is read in chunks with the deadline checked (and the socket timeout shortened) before
  each, so a server that drips bytes still hits it. A wait (Retry-After, numeric or an HTTP
  date, or backoff_s x 2^attempt) that would end past the deadline is not waited.
- Retries: 429, 5xx and connection errors are retried up to `max_retries` times per call, and
  each retry is taken from the stage's shared `RetryBudget`; once it is spent no failure is
  retried. Other HTTP errors and replies over the size cap fail at once.
- Size: the reply is streamed and reading stops past `max_response_bytes` (a larger declared
  Content-Length is refused unread). Compressed replies are not accepted (identity is asked
  for), so the cap is the real size.

`EndpointClient.from_config(cfg, budget=..., name=...)` builds one from a params section
(`core.config.EndpointCfg`: `server:`, an `openai` judge or teacher), field for field.

The client is thread-safe for concurrent calls (one `requests.Session` per thread; the retry
budget and the request counter are locked), so callers may fan items out to a thread pool.
"""

from __future__ import annotations

import contextlib
import email.utils
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import requests
import urllib3

if TYPE_CHECKING:
    from bioreasoner.core.config import EndpointCfg

log = logging.getLogger(__name__)

RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
READ_CHUNK = 64 * 1024
ERROR_SNIPPET_BYTES = 200
REDACTED = "[REDACTED]"
_NETWORK_ERRORS = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)
_READ_ERRORS = (urllib3.exceptions.HTTPError, OSError)  # while streaming a body: timeouts, resets, truncation


class EndpointError(RuntimeError):
    """The endpoint did not answer usefully (after the retries it was allowed)."""


class RetryBudget:
    """HTTP retries allowed to a whole stage, shared by its clients and threads.

    `take()` spends one retry and says whether one was left; None = unlimited.
    """

    def __init__(self, total: int | None, param: str = "retry_budget"):
        if total is not None and total < 0:
            raise ValueError(f"retry budget must be >= 0, got {total}")
        self.total = total
        self.param = param  # the params key it comes from, for error messages
        self.used = 0
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            if self.total is not None and self.used >= self.total:
                return False
            self.used += 1
            return True

    @property
    def left(self) -> int | None:
        return None if self.total is None else self.total - self.used

    def __repr__(self) -> str:
        return f"RetryBudget(total={self.total}, used={self.used})"


def check_base_url(base_url: str) -> str:
    """`base_url` without a trailing slash; ValueError for a non-http(s) URL or one with credentials."""
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"base_url must be an http(s) URL, got {base_url!r}")
    if parts.username or parts.password:
        raise ValueError("base_url must not carry credentials: name the key's variable in api_key_env")
    return base_url.rstrip("/")


class EndpointClient:
    def __init__(
        self,
        base_url: str,
        *,
        api_key_env: str | None = None,
        timeout_s: float = 60.0,
        deadline_s: float = 300.0,
        max_retries: int = 3,
        backoff_s: float = 1.0,
        max_response_bytes: int = 1_000_000,
        budget: RetryBudget | None = None,
        name: str = "endpoint",
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.base_url = check_base_url(base_url)
        for field, value in (("timeout_s", timeout_s), ("deadline_s", deadline_s)):
            if not value > 0:
                raise ValueError(f"{field} must be > 0, got {value!r}")
        if max_response_bytes < 1:
            raise ValueError("max_response_bytes must be >= 1")
        self.api_key_env = api_key_env or None
        self.timeout_s = float(timeout_s)
        self.deadline_s = float(deadline_s)
        self.max_retries = max(0, int(max_retries))
        self.backoff_s = max(0.0, float(backoff_s))
        self.max_response_bytes = int(max_response_bytes)
        self.budget = budget if budget is not None else RetryBudget(None)
        self.name = name
        self._session = session  # a caller's session (tests) is shared; else one per thread
        self._local = threading.local()
        self._sleep = sleep
        self._clock = clock
        self._lock = threading.Lock()
        self.network_requests = 0  # attempts sent to the server (metrics, tests)
        if self.api_key_env and not os.environ.get(self.api_key_env):
            log.warning("%s: %s is not set: requests go without an API key", self.name, self.api_key_env)

    @classmethod
    def from_config(
        cls, cfg: EndpointCfg, *, budget: RetryBudget | None = None, name: str = "endpoint", **overrides: Any
    ) -> EndpointClient:
        """The client of an endpoint's params section: its connection fields, under the same names.

        `budget` is the stage's shared `RetryBudget` (None: unlimited) and `name` the prefix of
        log lines. `overrides` are passed on as keyword arguments (`session`, `sleep`, `clock`
        in tests) and win over the section's fields.
        """
        kwargs: dict[str, Any] = {
            "base_url": cfg.base_url,
            "api_key_env": cfg.api_key_env,
            "timeout_s": cfg.timeout_s,
            "deadline_s": cfg.deadline_s,
            "max_retries": cfg.max_retries,
            "backoff_s": cfg.backoff_s,
            "max_response_bytes": cfg.max_response_bytes,
            "budget": budget,
            "name": name,
        }
        return cls(**(kwargs | overrides))

    def url(self, path: str) -> str:
        return self.base_url + "/" + path.lstrip("/")

    # ------------------------------------------------------------------ secrets

    def _key(self) -> str:
        return os.environ.get(self.api_key_env, "") if self.api_key_env else ""

    def redact(self, text: str) -> str:
        key = self._key()
        return text.replace(key, REDACTED) if key else text

    def headers(self) -> dict[str, str]:
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "Accept-Encoding": "identity",  # the size cap counts what is read
            "User-Agent": "bioreasoner/0.1 (python-requests)",
        }
        key = self._key()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    @property
    def session(self) -> requests.Session:
        if self._session is not None:
            return self._session
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    # ------------------------------------------------------------------ HTTP

    def post_json(self, path: str, body: dict[str, Any]) -> bytes:
        """The body of a 200 reply to POST `path`, after retries; EndpointError otherwise."""
        return self._request("POST", path, body)

    def get_json(self, path: str) -> bytes:
        """The body of a 200 reply to GET `path` (e.g. `models`), with the same limits and retries."""
        return self._request("GET", path, None)

    def _request(self, method: str, path: str, body: dict[str, Any] | None) -> bytes:
        url = self.url(path)
        deadline = self._clock() + self.deadline_s
        problem = ""
        attempt = 0
        while True:
            left = deadline - self._clock()
            if left <= 0:
                raise EndpointError(f"{method} {url}: deadline of {self.deadline_s:g}s passed ({problem})")
            with self._lock:
                self.network_requests += 1
            retry_after = None
            timeout = min(self.timeout_s, left)
            try:
                resp = self.session.request(
                    method, url, json=body, headers=self.headers(), timeout=(timeout, timeout), stream=True
                )
            except _NETWORK_ERRORS as err:
                problem = f"connection error ({type(err).__name__})"
            except requests.RequestException as err:  # a bad URL and the like: retrying won't help
                raise EndpointError(f"{method} {url} failed: {type(err).__name__}") from None
            else:
                with resp:
                    try:
                        if resp.status_code == 200:
                            return self._read_body(resp, f"{method} {url}", deadline, self.max_response_bytes)
                        problem = f"HTTP {resp.status_code}"
                        if resp.status_code not in RETRY_STATUS and resp.status_code < 500:
                            snippet = self._read_body(resp, f"{method} {url}", deadline, ERROR_SNIPPET_BYTES, cut=True)
                            raise EndpointError(self.redact(f"{method} {url} failed: {problem}: {printable(snippet)}"))
                    except _READ_ERRORS as err:
                        problem = f"connection error while reading the reply ({type(err).__name__})"
                    retry_after = retry_after_seconds(resp.headers.get("Retry-After"))
            if attempt >= self.max_retries:
                raise EndpointError(f"{method} {url} failed after {attempt + 1} attempts: {problem}")
            delay = retry_after if retry_after is not None else self.backoff_s * 2**attempt
            if delay >= deadline - self._clock():
                raise EndpointError(
                    f"{method} {url} failed: {problem}; a retry in {delay:g}s would pass the "
                    f"{self.deadline_s:g}s deadline"
                )
            if not self.budget.take():
                raise EndpointError(
                    f"{method} {url} failed: {problem}; not retried: the stage's retry budget "
                    f"({self.budget.param} = {self.budget.total}) is spent"
                )
            log.warning("%s: %s; retrying in %.2fs", self.name, problem, delay)
            self._sleep(delay)
            attempt += 1

    def _read_body(self, resp: requests.Response, what: str, deadline: float, limit: int, cut: bool = False) -> bytes:
        """At most `limit` bytes of the body, read in chunks against the deadline (`what`: "POST <url>").

        More than `limit` is an EndpointError, or just cut when `cut` (error snippets).
        """
        encoding = resp.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise EndpointError(f"{what}: reply is {encoding!r}-encoded although identity was asked for")
        declared = resp.headers.get("Content-Length", "")
        if not cut and declared.isdigit() and int(declared) > limit:
            raise EndpointError(f"{what}: reply of {declared} bytes exceeds max_response_bytes = {limit}")
        raw = resp.raw
        read = getattr(raw, "read1", None) or raw.read
        buf = bytearray()
        while True:
            left = deadline - self._clock()
            if left <= 0:
                raise EndpointError(
                    f"{what}: deadline of {self.deadline_s:g}s passed while reading the reply ({len(buf)} bytes in)"
                )
            _set_read_timeout(raw, min(self.timeout_s, left))
            chunk = read(min(READ_CHUNK, limit + 1 - len(buf)), decode_content=False)
            if not chunk:
                return bytes(buf)
            buf += chunk
            if len(buf) > limit:
                if cut:
                    return bytes(buf[:limit])
                raise EndpointError(f"{what}: reply exceeds max_response_bytes = {limit}: cut there")


def _set_read_timeout(raw: Any, seconds: float) -> None:
    """Shorten the socket timeout of a streamed urllib3 response (a no-op where it can't be reached)."""
    sock = getattr(getattr(raw, "connection", None), "sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):  # a socket already closed by the server
            sock.settimeout(max(seconds, 0.001))


def printable(data: bytes) -> str:
    """An error body for one log line: decoded, control characters dropped, whitespace collapsed."""
    text = data.decode("utf-8", errors="replace")
    return " ".join("".join(ch if ch.isprintable() or ch.isspace() else "?" for ch in text).split())


def retry_after_seconds(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header: a number, or an HTTP date (seconds from now)."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None or when.tzinfo is None:
            return None
        seconds = when.timestamp() - time.time()
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)
