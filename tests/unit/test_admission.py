"""Admission: one decision per request in a tunnel, grants checked the same way everywhere."""

from __future__ import annotations

import base64

import pytest

from proxy.admission import RequestFacts, Rules, admit, identify
from proxy.connectors import make_connector
from proxy.context import Tunnel
from proxy.grants import GrantKey
from proxy.policy import Allow, Block, Policy, Target
from proxy.reasons import Reason

NOW = 1_800_000_000.0
KEY = GrantKey(b"g" * 32)
TARGET = Target("api.example.test", 443)
POLICY = Policy(
    [
        (
            make_connector("api", patterns=["https://api.example.test/v1/*"], inject={"header": "X-Key"}),
            {"secret": "s"},
        )
    ]
)


def facts(**overrides: object) -> RequestFacts:
    base: dict[str, object] = {
        "tls": True,
        "sni": "api.example.test",
        "host": "198.51.100.1",
        "port": 443,
        "authority": "",
        "host_headers": ["api.example.test"],
        "path": "/v1/x",
    }
    base.update(overrides)
    return RequestFacts(**base)  # type: ignore[arg-type]


def basic(token: str) -> str:
    return "Basic " + base64.b64encode(f"grant:{token}".encode()).decode()


def test_admits_a_consistent_request() -> None:
    decision = admit(Tunnel(TARGET, "198.51.100.1"), facts(), Rules(POLICY), NOW)
    assert isinstance(decision, Allow) and decision.connector == "api"


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"tls": False}, Reason.PLAIN_HTTP),
        ({"host": "198.51.100.2"}, Reason.HOST_MISMATCH),
        ({"sni": "evil.test"}, Reason.SNI_MISMATCH),
        ({"sni": None}, Reason.SNI_MISMATCH),
        ({"host_headers": ["evil.test"]}, Reason.HOST_MISMATCH),
        ({"host_headers": ["api.example.test", "api.example.test"]}, Reason.HOST_MISMATCH),
        ({"host_headers": []}, Reason.HOST_MISMATCH),
        ({"authority": "evil.test", "host_headers": []}, Reason.HOST_MISMATCH),
        ({"path": "/v2/x"}, Reason.NO_CONNECTOR),
        ({"path": "/v1/../x"}, Reason.BAD_PATH),
    ],
)
def test_refuses_inconsistent_requests(overrides: dict[str, object], reason: Reason) -> None:
    decision = admit(Tunnel(TARGET, "198.51.100.1"), facts(**overrides), Rules(POLICY), NOW)
    assert isinstance(decision, Block) and decision.reason == reason


def test_no_tunnel_is_plain_http() -> None:
    decision = admit(None, facts(), Rules(POLICY), NOW)
    assert isinstance(decision, Block) and decision.reason == Reason.PLAIN_HTTP


@pytest.mark.parametrize(
    ("rules", "ttl", "reason"),
    [
        (Rules(POLICY, KEY, frozenset()), 60, None),
        (Rules(POLICY, KEY, frozenset({"REVOKED"})), 60, Reason.REVOKED_GRANT),
        (Rules(POLICY, GrantKey(b"n" * 32)), 60, Reason.BAD_GRANT),
        (Rules(POLICY, None), 60, Reason.BAD_GRANT),
        (Rules(POLICY, KEY), -5, Reason.EXPIRED_GRANT),
    ],
)
def test_grant_validity_is_one_check_at_connect_and_per_request(
    rules: Rules, ttl: int, reason: Reason | None
) -> None:
    token, grant = KEY.mint(["api"], ttl, "step", now=NOW)
    if rules.revoked:
        rules = Rules(rules.policy, rules.grant_key, frozenset({grant.id}))
    at_connect = identify(basic(token), rules, required=True, now=NOW)
    in_tunnel = admit(Tunnel(TARGET, "198.51.100.1", grant), facts(), rules, NOW)
    if reason is None:
        assert at_connect == grant
        assert isinstance(in_tunnel, Allow)
        return
    for decision in (at_connect, in_tunnel):
        assert isinstance(decision, Block)
        assert (decision.reason, decision.status) == (reason, 407)


@pytest.mark.parametrize(
    ("header", "required", "expected"),
    [(None, False, None), (None, True, Reason.NO_GRANT), ("Bearer x", False, Reason.BAD_GRANT),
     (basic("eg1.forged.sig"), False, Reason.BAD_GRANT)],
)  # fmt: skip
def test_identify_without_a_valid_token(header: str | None, required: bool, expected: Reason | None) -> None:
    decision = identify(header, Rules(POLICY, KEY), required=required, now=NOW)
    if expected is None:
        assert decision is None
    else:
        assert isinstance(decision, Block) and decision.reason == expected and decision.status == 407


def test_grant_scopes_routes() -> None:
    _, grant = KEY.mint(["other"], 60, "step", now=NOW)
    decision = admit(Tunnel(TARGET, "198.51.100.1", grant), facts(), Rules(POLICY, KEY), NOW)
    assert isinstance(decision, Block) and decision.reason == Reason.NOT_GRANTED


@pytest.mark.parametrize(
    "overrides",
    [
        {"method": b"GET /v2/secret"},
        {"method": b"GE\tT"},
        {"method": b"G(E)T"},
        {"method": b""},
        {"method": b"GET\n"},
        {"target": b"/v1/x?a=b HTTP/1.1"},
        {"target": b"/v1/x?a=\tb"},
        {"target": b"/v1/x?\xc3\xa9"},
        {"fields": [(b"x-a", b"a\r\n Host: evil.test")]},
        {"fields": [(b"x-a", b"a\rb")]},
        {"fields": [(b"x-a", b"a\x00b")]},
        {"fields": [(b"x-a", b"a\x0bb")]},
    ],
)
def test_request_line_hygiene(overrides: dict[str, object]) -> None:
    decision = admit(Tunnel(TARGET, "198.51.100.1"), facts(**overrides), Rules(POLICY), NOW)
    assert isinstance(decision, Block)
    assert (decision.reason, decision.status) == (Reason.BAD_REQUEST, 400)


def test_tabs_and_obs_text_in_values_are_fine() -> None:
    request = facts(method=b"PATCH", target=b"/v1/x?q=%20", fields=[(b"x-a", b"a\tb \xe9")])
    assert isinstance(admit(Tunnel(TARGET, "198.51.100.1"), request, Rules(POLICY), NOW), Allow)


def test_a_request_in_an_explained_tunnel_gets_a_near_miss_that_weighs_its_path() -> None:
    target = Target("api.example.test", 8443)  # no connector on this port
    refused = POLICY.connect(target)
    assert refused is not None and refused.near_miss is not None
    assert (refused.near_miss.differs, refused.near_miss.also) == ("port", ())  # path unknown at CONNECT
    tunnel = Tunnel(target, "0.0.0.0", refused=refused)
    decision = admit(tunnel, facts(port=8443, path="/v2/x"), Rules(POLICY), NOW)
    assert isinstance(decision, Block) and decision.reason is Reason.NO_CONNECTOR
    assert decision.near_miss is not None
    assert (decision.near_miss.differs, decision.near_miss.also) == ("port", ("path",))
    private = Block(Reason.PRIVATE_ADDRESS, "no")
    assert admit(Tunnel(target, "0.0.0.0", refused=private), facts(port=8443), Rules(POLICY), NOW) is private
