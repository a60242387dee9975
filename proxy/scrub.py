"""Mask a secret an upstream echoes back, before the sandbox reads it.

Masks keep the length (``*`` for every byte), so Content-Length stays true,
and a streaming scrubber holds back just enough bytes to catch a secret split
across chunks. ``needles_for`` defines, once, which forms of a secret are
looked for.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import quote

Needles = tuple[tuple[bytes, bytes], ...]  # (needle, same-length mask), longest first


def masks(needles: Iterable[bytes]) -> Needles:
    """(needle, same-length mask) pairs, longest first; empty needles dropped."""
    unique = sorted({n for n in needles if n}, key=len, reverse=True)
    return tuple((n, b"*" * len(n)) for n in unique)


def needles_for(secrets: Iterable[str]) -> Needles:
    """Every form of each secret the scrubber masks: raw and URL-encoded."""
    forms: list[bytes] = []
    for secret in secrets:
        forms += [secret.encode(), quote(secret, safe="").encode()]
    return masks(forms)


def scrub_text(text: str, pairs: Needles) -> str:
    for needle, mask in pairs:
        s = needle.decode("utf-8", "replace")
        if s in text:
            text = text.replace(s, mask.decode())
    return text


class StreamScrubber:
    """A mitmproxy ``stream`` callable: chunks in, masked chunks out; b"" flushes."""

    __slots__ = ("_carry", "_keep", "_pairs")

    def __init__(self, pairs: Needles) -> None:
        self._pairs = pairs
        self._keep = max((len(n) for n, _ in pairs), default=1) - 1
        self._carry = b""

    def _mask(self, data: bytes) -> bytes:
        for needle, mask in self._pairs:
            if needle in data:
                data = data.replace(needle, mask)
        return data

    def __call__(self, chunk: bytes) -> bytes:
        if not chunk:
            out, self._carry = self._mask(self._carry), b""
            return out
        data = self._mask(self._carry + chunk)
        if self._keep == 0:
            return data
        if len(data) <= self._keep:
            self._carry = data
            return b""
        self._carry = data[-self._keep :]
        return data[: -self._keep]
