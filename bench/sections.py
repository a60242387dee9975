"""The sections a script owns in bench/RESULTS.md, ``<!-- NAME -->`` ... ``<!-- /NAME -->``.

bench/run.py keeps them when it rewrites the rest of the report."""

from __future__ import annotations

import re
from pathlib import Path


def write_section(path: Path, name: str, title: str, lead: str, table: str) -> None:
    """Section ``name`` of ``path`` becomes ``## title``, ``lead`` and ``table``: in its place, else at the end."""
    body = f"<!-- {name} -->\n## {title}\n\n{lead}\n\n{table}\n<!-- /{name} -->\n"
    text = path.read_text() if path.exists() else ""
    pattern = re.compile(rf"<!-- {name} -->.*?<!-- /{name} -->\n", re.S)
    text = pattern.sub(lambda _: body, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + body
    path.write_text(text)
