"""A small polite HTTP client for the live API readers: cached, rate limited, retrying.

Every successful response is kept on disk under a hash of the URL and its parameters, so
an interrupted harvest resumes without asking the server again and a re-run is
reproducible. Secrets (API keys) are sent but never enter the cache key, a file name, a
log line or an error message: they are named in `exclude_from_key` and redacted.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import requests

from bioreasoner.core.io import atomic_path

log = logging.getLogger(__name__)

RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
MAX_RETRY_AFTER_S = 300.0
USER_AGENT = "bioreasoner/0.1 (python-requests)"
_NETWORK_ERRORS = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
)

Params = Mapping[str, Any]


class FetchError(RuntimeError):
    """A request that failed for good; the message names the URL (secrets removed) and why."""


class CachedClient:
    def __init__(
        self,
        cache_dir: str | Path,
        min_interval_s: float = 0.0,
        max_retries: int = 5,
        backoff_s: float = 1.0,
        timeout_s: float = 30.0,
        session: requests.Session | None = None,
        exclude_from_key: Collection[str] = (),
        headers: Mapping[str, str] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.cache_dir = Path(cache_dir)
        self.min_interval_s = max(0.0, float(min_interval_s))
        self.max_retries = max(0, int(max_retries))
        self.backoff_s = max(0.0, float(backoff_s))
        self.timeout_s = timeout_s
        self.session = session or requests.Session()
        self.exclude_from_key = frozenset(exclude_from_key)
        self.headers = {"User-Agent": USER_AGENT, **(headers or {})}
        self._sleep = sleep
        self.network_requests = 0  # attempts that went to the server (tests, logs)
        self._last_request = float("-inf")
        self._secrets: set[str] = set()

    # ------------------------------------------------------------------ public

    def get(self, url: str, params: Params | None = None) -> bytes:
        """The response body, from the cache when this request was answered before."""
        params = {k: str(v) for k, v in (params or {}).items() if v is not None}
        self._secrets.update(v for k, v in params.items() if k in self.exclude_from_key and v)
        path = self.cache_path(url, params)
        if path.is_file():
            log.debug("cache hit %s", self.describe(url, params))
            return path.read_bytes()
        body = self._fetch(url, params)
        with atomic_path(path) as tmp:
            tmp.write_bytes(body)
        return body

    def forget(self, url: str, params: Params | None = None) -> None:
        """Drop a cached answer that turned out unusable, so the next run asks again."""
        params = {k: str(v) for k, v in (params or {}).items() if v is not None}
        self.cache_path(url, params).unlink(missing_ok=True)

    def cache_key(self, url: str, params: Params) -> str:
        kept = sorted((k, str(v)) for k, v in params.items() if k not in self.exclude_from_key)
        return hashlib.sha256(f"{url}?{urlencode(kept)}".encode()).hexdigest()

    def cache_path(self, url: str, params: Params) -> Path:
        key = self.cache_key(url, params)
        return self.cache_dir / key[:2] / f"{key}.body"

    def describe(self, url: str, params: Params) -> str:
        """The URL with its parameters, secrets left out: safe for logs and errors."""
        kept = sorted((k, str(v)) for k, v in params.items() if k not in self.exclude_from_key)
        return f"{url}?{urlencode(kept)}" if kept else url

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    # ------------------------------------------------------------------ network

    def _fetch(self, url: str, params: dict[str, str]) -> bytes:
        label = self.describe(url, params)
        problem = ""
        for attempt in range(self.max_retries + 1):
            self._wait_turn()
            self.network_requests += 1
            log.debug("GET %s (attempt %d)", label, attempt + 1)
            retry_after = None
            try:
                resp = self.session.get(url, params=params, headers=self.headers, timeout=self.timeout_s)
            except _NETWORK_ERRORS as err:
                # Only the type: requests' messages repeat the full URL, API key included.
                problem = f"connection error ({type(err).__name__})"
            except requests.RequestException as err:  # bad URL and the like: retrying won't help
                raise FetchError(f"GET {label} failed: {type(err).__name__}") from None
            else:
                if resp.status_code == 200:
                    return resp.content
                problem = f"HTTP {resp.status_code}"
                if resp.status_code not in RETRY_STATUS:
                    snippet = self.redact(" ".join(resp.text[:200].split()))
                    raise FetchError(f"GET {label} failed: {problem}: {snippet}")
                retry_after = _retry_after(resp.headers.get("Retry-After"))
            if attempt == self.max_retries:
                break
            delay = retry_after if retry_after is not None else self.backoff_s * 2**attempt
            log.warning("GET %s: %s; retrying in %.2fs", label, problem, delay)
            self._sleep(delay)
        raise FetchError(f"GET {label} failed after {self.max_retries + 1} attempts: {problem}")

    def _wait_turn(self) -> None:
        """Sleep so that consecutive network requests are at least min_interval_s apart."""
        wait = self._last_request + self.min_interval_s - time.monotonic()
        if wait > 0:
            self._sleep(wait)
        self._last_request = time.monotonic()


def _retry_after(value: str | None) -> float | None:
    """Seconds from a numeric Retry-After header (HTTP dates fall back to backoff)."""
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    if seconds is None or seconds < 0:
        return None
    return min(seconds, MAX_RETRY_AFTER_S)
