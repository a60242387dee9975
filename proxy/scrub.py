"""Mask a secret an upstream echoes back, before the sandbox reads it.

``needles_for`` defines, once per policy load, every form of a secret the
proxy looks for: raw (and lowercase, as an HTTP/2 header name), percent-encoded
in any case and for any subset of its special characters, JSON string escapes
(``\\/``, ``\\u0026`` for some or all characters), HTML entities, hex and
base64/base64url at any alignment. Masks keep the length (``*`` for every
byte), so Content-Length stays true, and the streaming scrubber holds back
just enough bytes to catch a secret split across chunks.
"""

from __future__ import annotations

import base64
import functools
import re
import sys
from collections.abc import Iterable, Iterator
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Protocol

_UNRESERVED = re.compile(rb"[A-Za-z0-9_.-]+")  # never escaped by any encoder seen (~ is, by some)
_HTML = {b"&": [b"&amp;", b"&#38;", b"&#x26;"], b"<": [b"&lt;"], b">": [b"&gt;"],
         b'"': [b"&quot;", b"&#34;"], b"'": [b"&#39;", b"&#x27;"]}  # fmt: skip


@functools.lru_cache(maxsize=4096)
def _any_case_hex(text: bytes) -> bytes:
    return b"".join(b"[%c%c]" % (c, c ^ 0x20) if chr(c).isalpha() else re.escape(bytes([c])) for c in text)


@functools.lru_cache(maxsize=4096)
def _char_forms(ch: str) -> bytes:
    """A regex group matching one character of a secret in any encoding a server may apply."""
    raw = ch.encode()
    alts = [re.escape(raw)]
    alts.append(b"".join(b"%" + _any_case_hex(b"%02x" % b) for b in raw))  # percent, any case
    alts.append(rb"\\u" + _any_case_hex(b"%04x" % ord(ch)))  # JSON \uXXXX
    if ch == "/":
        alts.append(rb"\\/")
    alts += [re.escape(e) for e in _HTML.get(raw, [])]
    if not ch.isalnum():  # numeric character references: &#43; &#x2B;
        alts += [b"&#0*" + str(ord(ch)).encode() + b";", b"&#[xX]0*" + _any_case_hex(b"%x" % ord(ch)) + b";"]
    return b"(?:" + b"|".join(alts) + b")"


@functools.lru_cache(maxsize=4096)
def _form_bytes(ch: str) -> frozenset[int]:
    """Every byte a match of ``_char_forms(ch)`` can hold (kept in step with it; a test checks)."""
    raw, code = ch.encode(), ord(ch)
    out = set(raw) | set(b"%\\u") | set(b"%04x%04X" % (code, code))
    out |= set(b"".join(b"%02x%02X" % (b, b) for b in raw))
    if ch == "/":
        out |= set(b"\\/")
    out |= set(b"".join(_HTML.get(raw, [])))
    if not ch.isalnum():
        out |= set(b"&#;xX0123456789") | set(b"%x%X" % (code, code))
    return frozenset(out)


def _spelling_families(secret: str) -> list[list[bytes]]:
    """Literal spellings of one secret, grouped so each group shares a long run."""
    raw = secret.encode()
    groups = [
        [raw, secret.lower().encode()],
        [raw.hex().encode(), raw.hex().upper().encode()],
        # Every character encoded: no literal run left for the pattern's prefilter.
        ["".join(f"%{b:02x}" for b in raw).encode(), "".join(f"%{b:02X}" for b in raw).encode()],
        [
            "".join(f"\\u{ord(c):04x}" for c in secret).encode(),
            "".join(f"\\u{ord(c):04X}" for c in secret).encode(),
        ],
    ]
    groups += [[core, core.replace(b"+", b"-").replace(b"/", b"_")] for core in _base64_cores(raw)]
    return [sorted(set(g)) for g in groups]


def _base64_cores(raw: bytes) -> list[bytes]:
    """The secret's base64 at each of three alignments inside longer data, edges dropped."""
    cores = []
    for pad in range(3):
        encoded = base64.b64encode(b"\0" * pad + raw)
        start = (pad * 4 + 2) // 3  # characters that depend on the padding bytes
        end = len(encoded) - (len(encoded) - ((pad + len(raw)) * 4 // 3)) - 1
        core = encoded[start : max(start, end)].rstrip(b"=")
        if len(core) >= 8:
            cores.append(core)
    return cores


NARROW, WIDE = 1, 2  # prefilter classes: a byte of some needle or anchor; of a pattern match only
_SAMPLE = 1 << 16  # chunk size the prefilter's false-hit rate is judged at
_MAX_FALSE_HITS = 0.01  # expected per such chunk of random bytes, or the prefilter is not worth it
_SAMPLED_FROM = 4096  # bytes: shorter data is looked at whole, sampling it costs more
_SPREAD = 256  # bytes spread over the data: their marked share predicts false candidates
_CANDIDATES = 8  # false candidates per 64 KiB past which one full pass is cheaper


def lacks_run(data: bytes, table: bytes, run: bytes, stride: int) -> bool:
    """True only if ``data.translate(table)`` lacks ``run`` (one byte value repeated), decided
    from every ``stride``-th byte (``stride <= len(run)``); False means: look at all of it.

    Any ``len(run)`` consecutive positions hold ``m = len(run) // stride`` consecutive multiples
    of ``stride``, so every run in the data shows as m marked bytes in a row in the sample; each
    such candidate is checked on the only bytes a run through it can span, so a sample whose
    candidates are all refuted proves the data holds none.
    """
    if stride == 1 or len(data) < _SAMPLED_FROM:
        return False
    length = len(run)
    m = length // stride
    short = run[:m]
    budget = _CANDIDATES * -(-len(data) // _SAMPLE)  # per 64 KiB begun
    spread = data[:: len(data) // _SPREAD]
    marked = spread.translate(table).count(run[0]) / len(spread)
    if len(data) / stride * marked**m > budget:
        return False  # text, most likely: one full pass is cheaper than refuting its candidates
    sample = data[::stride].translate(table)
    at = sample.find(short)
    for _ in range(budget):
        if at < 0:
            return True
        # a run through data[at * stride], ..., data[(at + m - 1) * stride] lies in data[lo:end]
        lo, end = max(0, (at + m - 1) * stride + 1 - length), at * stride + length
        if data[lo:end].translate(table).find(run) >= 0:
            return False
        at = sample.find(short, at + 1)
    return at < 0


def _stride(marked: float, length: int) -> int:
    """The widest sampling for ``lacks_run`` at which random bytes, each ``marked`` with that
    probability, show about one false candidate per 64 KiB or fewer (1: no sampling)."""
    fits = (k for k in range(2, length + 1) if _SAMPLE / k * marked ** (length // k) <= 1)
    return max(fits, default=1)


@dataclass(frozen=True, slots=True)
class Prefilter:
    """One pass that rules out every needle in a chunk, instead of one scan per spelling.

    ``classes`` (a ``bytes.translate`` table) maps each byte to NARROW, WIDE or 0. Every
    literal and anchor is made of NARROW bytes only and is at least ``len(run)`` long, so a
    chunk whose translation lacks ``run`` holds none of them, hence nothing ``mask`` would
    change. A match that may continue into the next chunk ends in a run of non-zero bytes, so
    only that run (at most ``keep``) must be held back. On random bytes (compressed bodies,
    archives, images) such runs are rare, and found from a sample (``lacks_run``); on text
    they are everywhere, so a hit turns the prefilter off for a while.
    """

    classes: bytes
    run: bytes
    stride: int = 1  # the sampling ``lacks_run`` rules random bytes out at

    def clears(self, data: bytes) -> bool:
        """``data`` holds no literal and no anchor (its translation lacks ``run``)."""
        return (
            lacks_run(data, self.classes, self.run, self.stride)
            or data.translate(self.classes).find(self.run) < 0
        )


@dataclass(frozen=True, slots=True)
class Needles:
    """What to mask for a set of secrets, compiled once."""

    literals: tuple[bytes, ...] = ()  # longest first
    # (key, literals containing it): one scan of the key stands in for its family
    # (the upper/lower hex or base64/base64url spellings of one encoding)
    families: tuple[tuple[bytes, tuple[bytes, ...]], ...] = ()
    source: bytes = field(default=b"", repr=False)  # the pattern, compiled on first use
    anchors: tuple[bytes, ...] = ()  # a match of ``pattern`` contains one of these
    # per anchor: a family whose key lies inside it (or -1), and whether the key is the anchor;
    # the families' scans then decide most anchors without a scan of their own
    gates: tuple[tuple[int, bool], ...] = ()
    lowered: tuple[bytes, ...] = ()  # the raw secrets lowercased, for header names
    keep: int = 0  # bytes a stream holds back: the longest match minus one
    secrets: tuple[str, ...] = field(default=(), repr=False)  # what this was built from
    prefilter: Prefilter | None = field(default=None, repr=False)

    def extended(self, more: Iterable[str]) -> Needles:
        """These needles plus ``more`` secrets (live OAuth2 tokens, known only at request time)."""
        return needles_for(sorted({*self.secrets, *more}))

    def __bool__(self) -> bool:
        return bool(self.literals or self.source)

    def mask(self, data: bytes) -> bytes:
        # find, not ``in``: bytes.__contains__ first tries the needle as an int, and raising and
        # catching that TypeError costs about 0.4 us, most of the scan of a header value
        hits = 0  # bit i: the key of family i occurs in ``data`` as it came in
        for i, (key, members) in enumerate(self.families):
            if data.find(key) >= 0:
                hits |= 1 << i
                for needle in members:
                    if data.find(needle) >= 0:
                        data = data.replace(needle, b"*" * len(needle))
        if self.source and self._anchored(data, hits):
            data = _compiled(self.source).sub(lambda m: b"*" * (m.end() - m.start()), data)
        return data

    def _anchored(self, data: bytes, hits: int) -> bool:
        """Does an anchor occur? A family key inside an anchor was scanned for already: when it
        is absent so is the anchor, and when it is the anchor its hit answers (masking only adds
        ``*``, which no anchor holds, so the answer for the data before masking stays sound)."""
        if not self.anchors:
            return True
        for anchor, (gate, same) in zip(self.anchors, self.gates, strict=True):
            if gate >= 0 and not hits >> gate & 1:
                continue
            if (gate >= 0 and same) or data.find(anchor) >= 0:
                return True
        return False

    def mask_name(self, name: bytes) -> bytes:
        """``mask`` for a header name, which HTTP/2 lowercases (and the echo with it)."""
        lowered, out = name.lower(), bytearray(name)
        for needle in self.lowered:
            at = lowered.find(needle)
            while at >= 0:
                out[at : at + len(needle)] = b"*" * len(needle)
                at = lowered.find(needle, at + 1)
        return self.mask(bytes(out))

    def text(self, value: str) -> str:
        """``mask`` for header names and values, reason phrases, trailers."""
        raw = value.encode("utf-8", "surrogateescape")
        masked = self.mask(raw)
        return value if masked == raw else masked.decode("utf-8", "surrogateescape")


@functools.lru_cache(maxsize=1024)
def _compiled(source: bytes) -> re.Pattern[bytes]:
    """Compiling costs about a millisecond; 10,000 connectors must still load in a blink."""
    return re.compile(source)


def needles_for(secrets: Iterable[str]) -> Needles:
    literals: set[bytes] = set()
    families: list[tuple[bytes, tuple[bytes, ...]]] = []
    groups: list[bytes] = []
    anchors: list[bytes] = []
    longest = 0
    secrets_seen: list[str] = []
    for secret in secrets:
        raw = secret.encode()
        if not raw:
            continue
        secrets_seen.append(secret)
        for members in _spelling_families(secret):
            families.append(((_common_run(members) if len(members) > 1 else members[0]), tuple(members)))
            literals.update(members)
        groups.append(b"".join(_char_forms(ch) for ch in secret))
        runs = _UNRESERVED.findall(raw)
        anchors.append(max(runs, key=len) if runs else b"")
        longest = max(longest, len(raw) * 6, *(len(n) for n in literals))
    if not groups:
        return Needles()
    ordered = tuple(sorted(literals, key=len, reverse=True))
    pattern = b"|".join(groups)
    # Without an unreserved run in every secret there is no cheap prefilter: always run the pattern.
    usable = tuple(a for a in anchors if a) if all(anchors) else ()
    lowered = tuple({s.lower().encode() for s in secrets_seen})
    prefilter = None
    if usable:  # without anchors the pattern runs on every chunk: nothing to rule out cheaply
        wide = {b for secret in secrets_seen for ch in secret for b in _form_bytes(ch)}
        prefilter = _prefilter((*ordered, *usable), wide)
    return Needles(
        ordered, tuple(families), pattern, usable, _gates(usable, families), lowered, longest - 1,
        tuple(secrets_seen), prefilter,
    )  # fmt: skip


def _prefilter(needles: tuple[bytes, ...], wide: set[int]) -> Prefilter | None:
    """The prefilter for ``needles`` (literals and anchors), or None when random bytes would
    pass it too often for it to pay."""
    narrow = {b for n in needles for b in n}
    shortest = min(len(n) for n in needles)
    if _SAMPLE * (len(narrow) / 256) ** shortest > _MAX_FALSE_HITS:
        return None
    classes = bytes(NARROW if b in narrow else WIDE if b in wide else 0 for b in range(256))
    return Prefilter(classes, bytes([NARROW]) * shortest, _stride(len(narrow) / 256, shortest))


def _gates(
    anchors: tuple[bytes, ...], families: list[tuple[bytes, tuple[bytes, ...]]]
) -> tuple[tuple[int, bool], ...]:
    """For each anchor the family whose key is it, else one whose key lies inside it, else -1."""
    out = []
    for anchor in anchors:
        inside = [(key != anchor, -len(key), i) for i, (key, _) in enumerate(families) if key in anchor]
        best = min(inside, default=None)
        out.append((-1, False) if best is None else (best[2], not best[0]))
    return tuple(out)


def _families(literals: tuple[bytes, ...]) -> tuple[tuple[bytes, tuple[bytes, ...]], ...]:
    """Group same-length spellings sharing a long run (hex in two cases, base64 and
    base64url) under that run, so one scan stands in for the family."""
    families: list[tuple[bytes, list[bytes]]] = []
    for needle in literals:
        for i, (_, members) in enumerate(families):
            if len(members[0]) == len(needle):
                run = _common_run([*members, needle])
                if len(run) >= 8:
                    members.append(needle)
                    families[i] = (run, members)
                    break
        else:
            families.append((needle, [needle]))
    return tuple((key, tuple(members)) for key, members in families)


def _common_run(members: list[bytes]) -> bytes:
    """The longest run of positions where every member has the same byte."""
    first, best, start = members[0], (0, 0), 0
    same = [len(set(column)) == 1 for column in zip(*members, strict=True)] + [False]
    for i, ok in enumerate(same):
        if not ok:
            best = max(best, (i - start, start))
            start = i + 1
    length, at = best
    return first[at : at + length]


def masks(needles: Iterable[bytes]) -> Needles:
    """Literal needles only (for tests of the stream mechanics)."""
    unique = tuple(sorted({n for n in needles if n}, key=len, reverse=True))
    keep = max((len(n) for n in unique), default=1) - 1
    return Needles(
        unique, _families(unique), keep=keep, prefilter=_prefilter(unique, set()) if unique else None
    )


def scrub_text(text: str, needles: Needles) -> str:
    return needles.text(text)


class StreamScrubber:
    """A mitmproxy ``stream`` transform: chunks in, masked chunks out; b"" flushes.

    A chunk the prefilter clears is passed on as it is (or behind the held-back carry, when
    the seam between them is clean), holding back only the trailing bytes a needle could
    continue from; anything else is masked whole together with the carry.
    """

    __slots__ = ("_carry", "_needles", "_pause")

    PAUSE = 8  # chunks masked whole after a prefilter hit, before trying it again

    def __init__(self, needles: Needles) -> None:
        self._needles = needles
        self._carry = b""
        self._pause = 0

    def __call__(self, chunk: bytes) -> bytes:
        needles = self._needles
        keep = needles.keep
        if not chunk:
            out, self._carry = needles.mask(self._carry), b""
            return out
        pre = needles.prefilter
        if pre is not None and len(chunk) > keep:
            if self._pause:
                self._pause -= 1
            elif not pre.clears(chunk):
                self._pause = self.PAUSE
            else:
                carry = self._carry
                # a needle across the seam lies within carry + chunk[:keep]
                if not carry or pre.clears(carry + chunk[:keep]):
                    # hold back the trailing run of bytes a match could continue from
                    tail = chunk[len(chunk) - keep :].translate(pre.classes)
                    cut = len(chunk) - keep + tail.rfind(b"\0") + 1
                    self._carry = chunk[cut:]
                    if carry:
                        return b"".join((carry, memoryview(chunk)[:cut]))
                    return chunk if cut == len(chunk) else chunk[:cut]
        data = needles.mask(self._carry + chunk)
        if keep == 0:
            return data
        if len(data) <= keep:
            self._carry = data
            return b""
        self._carry = data[-keep:]
        return data[:-keep]


# -- the exfiltration guard: is any secret in what the client sends? ----------------------

# Case and the base64url alphabet folded away, on the needles and on the data alike
# (byte for byte, so positions stay put): one index entry covers hex and percent-encoding
# in either case, base64 and base64url, and a secret with its case changed.
_FOLD = bytes.maketrans(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZ-_", b"abcdefghijklmnopqrstuvwxyz+/"
)  # fmt: skip
GRAM = 8  # bytes per index key
MAX_STEP = 8  # bounds the index at MAX_STEP keys per spelling
MIN_GUARDED = 12  # shorter values occur by chance; they are not guarded
MAX_RUNS = 4  # runs of marked bytes searched one by one; past that, the rest of the data at once


class SecretFound(Exception):
    """A streamed request body carries a secret: the flow must die before the chunk leaves."""

    def __init__(self, owner: str) -> None:
        super().__init__("a secret in the request body")  # never the value, never the owner
        self.owner = owner


def guarded_spellings(secret: str) -> list[bytes]:
    """Every spelling ``needles_for`` masks literally, plus the usual percent-encoding
    (unreserved characters left alone), folded: what a client's request must not carry."""
    raw = secret.encode()
    spellings = [s for family in _spelling_families(secret) for s in family]
    spellings.append(
        b"".join(bytes([b]) if _UNRESERVED.fullmatch(bytes([b])) else b"%%%02x" % b for b in raw)
    )
    return sorted({s.translate(_FOLD) for s in spellings if len(s) >= GRAM})


class SecretIndex:
    """Thousands of secrets, every spelling, found in one pass that does not grow with them.

    Every byte of every folded spelling is marked in ``_marks``; a spelling
    occurs only inside a run of at least ``lmin`` marked bytes, and in text
    such runs are rare, so one ``translate`` and a ``find`` (both C, memchr
    speed) usually rule the whole data out (random data: those of a sample of
    every ``_stride``-th byte, ``lacks_run``). Inside each run: every spelling
    covers a position that is a multiple of ``step`` (``lmin - GRAM + 1``, at
    most ``MAX_STEP``) with one of its first ``step`` grams; the index holds
    those grams, the run is sliced at every ``step`` bytes and intersected
    with the index in C (with ``step`` 8, the usual case, those grams are the
    run's 64-bit words: one ``memoryview`` cast), and the few candidates are
    confirmed with ``in``. One compiled ``re`` alternation of the same
    spellings took seconds to compile and milliseconds per KiB at a thousand
    secrets (bench/exfil.py).
    """

    __slots__ = ("_grams", "_keys", "_marks", "_run", "_stride", "keep", "literals", "owners", "step")

    def __init__(self, secrets: Iterable[tuple[str, str]] = ()) -> None:
        seen: dict[bytes, str] = {}
        for owner, secret in secrets:
            if len(secret) >= MIN_GUARDED:
                for spelling in guarded_spellings(secret):
                    seen.setdefault(spelling, owner)
        self.literals = tuple(seen)
        self.owners = tuple(seen.values())
        lmin = min((len(s) for s in self.literals), default=GRAM)
        self.step = max(1, min(MAX_STEP, lmin - GRAM + 1))
        self.keep = max((len(s) for s in self.literals), default=1) - 1  # a stream's overlap
        marked = set(b"".join(self.literals))
        self._marks = bytes(1 if _FOLD[b] in marked else 0 for b in range(256))  # applied to raw data
        self._run = b"\x01" * lmin
        self._stride = _stride(sum(self._marks) / 256, lmin)
        grams: dict[bytes | int, list[int]] = {}
        for i, literal in enumerate(self.literals):
            for offset in range(min(self.step, len(literal) - GRAM + 1)):
                gram = literal[offset : offset + GRAM]
                key = int.from_bytes(gram, sys.byteorder) if self.step == GRAM else gram
                grams.setdefault(key, []).append(i)
        self._grams = grams
        self._keys = grams.keys()

    def __bool__(self) -> bool:
        return bool(self.literals)

    def _hits(self, data: bytes) -> Iterator[int]:
        """Indexes of the literals ``data`` carries (folded), each run searched on its own."""
        if lacks_run(data, self._marks, self._run, self._stride):
            return
        marks = data.translate(self._marks)
        at = marks.find(self._run)
        if at < 0:
            return
        folded, step, keys = data.translate(_FOLD), self.step, self._keys
        runs = 0
        while at >= 0:
            runs += 1
            end = marks.find(b"\0", at) if runs <= MAX_RUNS else -1  # many runs: the rest in one go
            end = len(marks) if end < 0 else end
            run = folded[at:end]
            if step == GRAM:
                found: AbstractSet[bytes | int] = (
                    set(memoryview(run)[: len(run) - len(run) % GRAM].cast("Q")) & keys
                )
            else:
                found = {run[i : i + GRAM] for i in range(0, len(run) - GRAM + 1, step)} & keys
            for gram in found:
                for i in self._grams[gram]:
                    if self.literals[i] in run:
                        yield i
            at = marks.find(self._run, end)

    def find(self, data: bytes) -> str | None:
        """The connector one of whose secrets ``data`` carries, in any guarded spelling."""
        if not self.literals or len(data) < GRAM:
            return None
        return next((self.owners[i] for i in self._hits(data)), None)

    def mask(self, data: bytes) -> bytes:
        """``data`` with every guarded spelling starred out (for what the proxy logs)."""
        if not self.literals or len(data) < GRAM:
            return data
        folded, out = data.translate(_FOLD), bytearray(data)
        for i in set(self._hits(data)):
            literal = self.literals[i]
            at = folded.find(literal)
            while at >= 0:
                out[at : at + len(literal)] = b"*" * len(literal)
                at = folded.find(literal, at + 1)
        return bytes(out)

    def text(self, value: str) -> str:
        raw = value.encode("utf-8", "surrogateescape")
        masked = self.mask(raw)
        return value if masked == raw else masked.decode("utf-8", "surrogateescape")


class Guard(Protocol):
    """What the request checks read: one ``SecretIndex``, or several searched as one."""

    @property
    def keep(self) -> int: ...  # a stream's overlap: the longest guarded spelling minus one

    def __bool__(self) -> bool: ...

    def find(self, data: bytes) -> str | None: ...

    def mask(self, data: bytes) -> bytes: ...

    def text(self, value: str) -> str: ...


class Guards:
    """Several indexes searched as one: the policy's and the live secrets' (``LiveSecrets``)."""

    __slots__ = ("_indexes", "keep")

    def __init__(self, *indexes: SecretIndex) -> None:
        self._indexes = tuple(i for i in indexes if i)
        self.keep = max((i.keep for i in self._indexes), default=0)

    def __bool__(self) -> bool:
        return bool(self._indexes)

    def find(self, data: bytes) -> str | None:
        for index in self._indexes:
            owner = index.find(data)
            if owner is not None:
                return owner
        return None

    def mask(self, data: bytes) -> bytes:
        for index in self._indexes:
            data = index.mask(data)
        return data

    def text(self, value: str) -> str:
        for index in self._indexes:
            value = index.text(value)
        return value


class LiveSecrets:
    """Secrets the proxy obtains while it runs (OAuth2 access tokens, rotated refresh tokens),
    guarded like the policy's.

    They get a small index of their own, so a fetched token never rebuilds the policy's
    (thousands of secrets); it is rebuilt only when a value changed, and only when next read,
    so a burst of fetches costs one build. A replaced value stays guarded a while (``KEEP``
    per connector): an access token outlives the fetch of its successor.
    """

    KEEP = 6

    __slots__ = ("_combined", "_index", "_values")

    def __init__(self) -> None:
        self._values: dict[str, tuple[str, ...]] = {}
        self._index: SecretIndex | None = SecretIndex()
        self._combined: tuple[SecretIndex, SecretIndex, Guards] | None = None

    def update(self, owner: str, values: Iterable[str]) -> None:
        """``owner``'s current values (known ones cost a tuple scan, nothing more)."""
        known = self._values.get(owner, ())
        new = tuple(v for v in dict.fromkeys(values) if v and v not in known)
        if new:
            self._values[owner] = (*known, *new)[-self.KEEP :]
            self._index = None

    def retain(self, owners: Iterable[str]) -> None:
        """Forget the values of connectors no longer in the policy."""
        keep = set(owners)
        gone = [o for o in self._values if o not in keep]
        for owner in gone:
            del self._values[owner]
        if gone:
            self._index = None

    def index(self) -> SecretIndex:
        if self._index is None:
            self._index = SecretIndex((o, v) for o, values in self._values.items() for v in values)
        return self._index

    def guard(self, base: SecretIndex) -> Guard:
        """``base`` (the policy's index) with the live values; ``base`` itself when there are none."""
        live = self.index()
        if not live:
            return base
        combined = self._combined
        if combined is None or combined[0] is not base or combined[1] is not live:
            combined = self._combined = (base, live, Guards(base, live))
        return combined[2]


class StreamGuard:
    """A request ``stream`` transform: scans before forwarding, holding back ``keep`` bytes
    so no byte of a secret split across chunks leaves before the whole is seen."""

    __slots__ = ("_carry", "_index")

    def __init__(self, index: Guard) -> None:
        self._index = index
        self._carry = b""

    def __call__(self, chunk: bytes) -> bytes:
        data = self._carry + chunk
        owner = self._index.find(data)
        if owner is not None:
            self._carry = b""
            raise SecretFound(owner)
        keep = self._index.keep
        if not chunk or len(data) <= keep:
            self._carry = b"" if not chunk else data
            return data if not chunk else b""
        self._carry = data[-keep:]
        return data[:-keep]
