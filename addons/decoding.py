"""Streaming, bounded decoders for response bodies an upstream compressed anyway (and for
small compressed request bodies, decoded whole for the exfiltration scan).

A compressed echo cannot be masked, so the return path decodes it. Output is
produced in bounded pieces and checked against a budget (a first megabyte,
then at most RATIO bytes out per byte in), so a few kilobytes of brotli
cannot expand into gigabytes in the proxy; past the budget, or on corrupt
input, ``Unscrubbable`` is raised and the flow is killed.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence

import brotli  # type: ignore[import-untyped]

PIECE = 256 * 1024
FREE = 1 << 20
RATIO = 200
Transform = Callable[[bytes], bytes]


class Unscrubbable(Exception):
    pass


class Budget:
    def __init__(self) -> None:
        self.into = 0
        self.out = 0

    def take(self, consumed: int, produced: int) -> None:
        self.into += consumed
        self.out += produced
        if self.out > FREE + RATIO * self.into:
            raise Unscrubbable(f"decoded body expands more than {RATIO}:1 (a decompression bomb?)")


def _zlib(budget: Budget) -> Transform:
    state = {"z": zlib.decompressobj(47)}  # gzip or zlib header, detected

    def step(chunk: bytes) -> bytes:
        out: list[bytes] = []
        data, first = chunk, True
        while data or first:
            first = False
            z = state["z"]
            try:
                piece = z.decompress(data, PIECE) if data else z.flush()
            except zlib.error as e:
                raise Unscrubbable(f"corrupt compressed body ({e})") from None
            budget.take(len(data) - len(z.unconsumed_tail) if data else 0, len(piece))
            out.append(piece)
            data = z.unconsumed_tail
            if z.eof and z.unused_data:  # gzip may have several members (RFC 1952)
                data, state["z"] = z.unused_data, zlib.decompressobj(47)
        return b"".join(out)

    return step


def _bounded(
    budget: Budget, feed: Callable[[bytes], bytes], more: Callable[[], bool], errors: type[Exception]
) -> Transform:
    """A decoder step from ``feed`` (at most PIECE out per call) and ``more`` (output pending)."""

    def step(chunk: bytes) -> bytes:
        if not chunk:
            return b""
        try:
            out = [feed(chunk)]
            budget.take(len(chunk), len(out[0]))
            while more():
                out.append(feed(b""))
                budget.take(0, len(out[-1]))
        except errors as e:
            raise Unscrubbable(f"corrupt compressed body ({e})") from None
        return b"".join(out)

    return step


def _brotli(budget: Budget) -> Transform:
    b = brotli.Decompressor()
    return _bounded(
        budget, lambda data: b.process(data, output_buffer_limit=PIECE), lambda: not b.can_accept_more_data(),
        brotli.error,
    )  # fmt: skip


def _zstd(budget: Budget) -> Transform:
    try:
        from compression import zstd  # type: ignore[import-not-found]
    except ImportError:
        from backports import zstd
    d = zstd.ZstdDecompressor()
    return _bounded(
        budget, lambda data: d.decompress(data, max_length=PIECE), lambda: not d.needs_input and not d.eof,
        zstd.ZstdError,
    )  # fmt: skip


STEPS: dict[str, Callable[[Budget], Transform]] = {
    "gzip": _zlib, "x-gzip": _zlib, "deflate": _zlib, "br": _brotli, "zstd": _zstd,
}  # fmt: skip


def step_for(coding: str) -> Transform | None:
    make = STEPS.get(coding)
    return make(Budget()) if make else None


def decode_whole(body: bytes, codings: Sequence[str], limit: int) -> bytes:
    """A whole body decoded (``codings`` in the order they were applied), for a scan.

    Unscrubbable on an unknown coding, corrupt input, a decompression bomb (the
    same budget as responses) or more than ``limit`` bytes decoded.
    """
    data = body
    for coding in reversed(codings):
        step = step_for(coding)
        if step is None:
            raise Unscrubbable(f"content coding {coding} cannot be checked")
        data = step(data) + step(b"")
        if len(data) > limit:
            raise Unscrubbable(f"the body decodes to more than {limit // 1024} KiB")
    return data
