"""Credentials that must see each request (signatures), as pure values.

A header or query credential is rendered once per policy load; a signature
covers the method, path, query, some headers and the time, so it is computed
per request from the final request (after the proxy rewrote Host and stripped
headers): signing anything earlier would sign bytes the upstream never sees.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Signed:
    """Header edits that carry a fresh signature, applied in this order.

    Delete every header whose name folds (lowercase, "_" read as "-") into
    ``remove``, then add each of ``add`` (lowercase names, safe for HTTP/2).
    ``add`` holds the new ``authorization``, so it stays out of reprs.
    """

    remove: frozenset[str]
    add: tuple[tuple[str, str], ...] = field(repr=False)


@dataclass(frozen=True, slots=True)
class Unsignable:
    """The request cannot be signed as it stands; refuse it (400) with ``detail``."""

    detail: str


class Signer(Protocol):
    """Signs one final request; pure (no I/O), cheap, and safe to call from any thread."""

    def sign(
        self,
        method: str,
        authority: str,
        target: str,
        headers: Sequence[tuple[str, str]],
        now: float,
        *,
        payload_sha256: str | None = None,
    ) -> Signed | Unsignable:
        """``target`` is the raw path and query as sent upstream, ``headers`` the final list.

        ``payload_sha256`` is the body's lowercase hex SHA-256 when the caller
        buffered it (anything else is a ValueError: the caller's bug, not the
        client's); otherwise the client's ``x-amz-content-sha256`` (or
        ``UNSIGNED-PAYLOAD``) is signed and the body streams untouched.
        """
        ...
