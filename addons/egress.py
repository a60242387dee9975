"""egress-proxy as a mitmproxy script: ``mitmdump -s addons/egress.py``.

The product runs these addons in its own trimmed Master (``egress run``); this
file lets them load into a stock mitmdump too. Options: ``egress_home``,
``egress_allow_network``, ``egress_resolve``, ``egress_record``, ``egress_admin``.
"""

from __future__ import annotations

from typing import Any

from addons import limits
from addons.admin import Admin
from addons.gate import Gate, Tunnel
from addons.inject import Inject
from addons.record import Recorder
from addons.source import PolicySource


def make_addons() -> list[Any]:
    """The egress addons, wired to one Policy source and one tunnel table."""
    limits.install()
    source = PolicySource()
    tunnels: dict[str, Tunnel] = {}
    recorder = Recorder()
    return [source, Gate(source, tunnels), Inject(source, tunnels), recorder, Admin(recorder)]


addons = make_addons()
