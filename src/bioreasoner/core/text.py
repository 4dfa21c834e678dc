"""Small text helpers shared by parsers and the teacher."""

from __future__ import annotations

import re
import unicodedata

_WS = re.compile(r"\s+")
# Split after ., ! or ? before a capital, digit or bracket. Linear: it runs on `clean`ed
# text, where every whitespace run is one space, and the lookbehind is one character.
_SENT = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(\[])")


def clean(text: str | None) -> str:
    """NFC-normalise and collapse whitespace (inline markup leaves stray newlines)."""
    if not text:
        return ""
    return _WS.sub(" ", unicodedata.normalize("NFC", text)).strip()


def sentences(text: str) -> list[str]:
    """A simple, deterministic sentence splitter, good enough for abstracts."""
    return [s.strip() for s in _SENT.split(clean(text)) if s.strip()]


def truncate(text: str, max_chars: int) -> str:
    """Cut at a sentence (or word) boundary at or before `max_chars`."""
    text = clean(text)
    if max_chars <= 0 or len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    end = max(cut.rfind(". "), cut.rfind("? "), cut.rfind("! "))
    if end >= max_chars // 2:
        return cut[: end + 1]
    space = cut.rfind(" ")
    return (cut[:space] if space > 0 else cut).rstrip(",;:") + " ..."
