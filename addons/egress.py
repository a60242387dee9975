"""egress-proxy as a mitmproxy script: ``mitmdump -s addons/egress.py``.

The product runs these addons in its own trimmed Master (``egress run``); this
file lets them load into a stock mitmdump too. Options: ``egress_home``,
``egress_allow_network``, ``egress_resolve``, ``egress_require_grant``,
``egress_record``, ``egress_flush_interval``, ``egress_admin``, ``egress_scrub_responses``,
``egress_explain_blocks``, ``egress_max_client_connections``, ``egress_max_connector_requests``,
``egress_max_client_share``, ``egress_handshake_timeout``, ``egress_h2_max_resets``,
``egress_request_body_timeout``, ``egress_upstream_timeout``, ``egress_max_websocket_message``,
``egress_audit_log``, ``egress_audit_max_bytes``.
"""

from __future__ import annotations

from typing import Any

from addons import patches
from addons.admin import Admin
from addons.gate import Gate
from addons.inject import Inject
from addons.limits import Limits
from addons.oauth import OAuth
from addons.record import Recorder
from addons.scrub import Scrub
from addons.source import PolicySource
from addons.state import Tunnels
from addons.transparent import TransparentGate


def make_addons() -> list[Any]:
    """The egress addons, in the order a request walks through them.

    The source holds the rules; the gate opens tunnels; inject admits each
    request and sets its route, which limits, scrub and record then read from
    the flow's state (so they come after inject). OAuth fetches the token of an
    oauth2 route after inject admitted it.
    """
    patches.install_guards()
    source = PolicySource()
    tunnels = Tunnels()
    recorder = Recorder(tunnels=tunnels)
    gate = Gate(source, tunnels)
    return [
        source,
        gate,
        TransparentGate(gate, recorder.connection_refused),
        Inject(source, tunnels),
        OAuth(source, gate),
        Limits(),
        Scrub(),
        recorder,
        Admin(recorder),
    ]


addons = make_addons()
