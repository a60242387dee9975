"""The reason table: every reason has a status and a doc line, and the docs say the same."""

from __future__ import annotations

import json
from pathlib import Path

from proxy.reasons import REASONS, Reason, blocked_answer, markdown_table

USAGE = Path(__file__).resolve().parents[2] / "docs" / "usage.md"


def test_every_reason_is_in_the_table() -> None:
    assert set(REASONS) == set(Reason)
    for info in REASONS.values():
        assert info.status in (0, 400, 403, 407, 502, 503)  # 0: logged, never an HTTP answer
        assert info.meaning


def test_docs_reason_table_is_generated_from_the_code() -> None:
    text = USAGE.read_text()
    begin, end = "<!-- reasons:begin -->\n", "<!-- reasons:end -->"
    assert begin in text and end in text, "docs/usage.md lost its reason-table markers"
    shown = text.split(begin, 1)[1].split(end, 1)[0]
    assert shown == markdown_table(), "run `make docs` to regenerate the reason table"


def test_blocked_answer_shape() -> None:
    status, headers, body = blocked_answer(Reason.NO_GRANT, "need a grant", "rid")
    assert status == 407
    assert headers["x-egress-blocked"] == "no-grant"
    assert headers["proxy-authenticate"].startswith("Basic")
    assert json.loads(body) == {
        "error": "blocked",
        "reason": "no-grant",
        "detail": "need a grant",
        "request_id": "rid",
    }
