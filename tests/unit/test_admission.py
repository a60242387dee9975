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


# --------------------------------------------------------------------------- S3 copy sources

S3_TARGET = Target("s3.example.test", 443)
S3_SPEC = {
    "aws_sigv4": {
        "access_key_id": "{{access_key_id}}",
        "secret_access_key": "{{secret_access_key}}",
        "region": "us-east-1",
        "service": "s3",
    }
}
S3_FIELDS = {"access_key_id": "AKIAEXAMPLE", "secret_access_key": "s3-secret"}
S3_POLICY = Policy(
    [
        (
            make_connector(
                "s3",
                patterns=[
                    "https://s3.example.test/mine/*",
                    "https://s3.example.test/shared/*",
                    "https://mine.s3.us-east-1.amazonaws.com/*",
                    "https://also.s3.us-east-1.amazonaws.com/*",
                ],
                inject=S3_SPEC,
            ),
            S3_FIELDS,
        ),
        (
            make_connector("theirs", patterns=["https://s3.example.test/theirs/*"], inject=S3_SPEC),
            S3_FIELDS,
        ),
        (
            make_connector("plain", patterns=["https://api.example.test/v1/*"], inject={"header": "X-Key"}),
            {"secret": "s"},
        ),
    ]
)


def s3_admit(
    copy_source: str | list[str] | None, target: Target = S3_TARGET, path: str = "/mine/dst"
) -> object:
    values = [copy_source] if isinstance(copy_source, str) else copy_source or []
    fields = [(b"x-amz-copy-source", v.encode()) for v in values]
    request = facts(sni=target.host, host_headers=[target.host], path=path, method=b"PUT", fields=fields)
    return admit(Tunnel(target, "198.51.100.1"), request, Rules(S3_POLICY), NOW)


@pytest.mark.parametrize(
    "source",
    [
        "/mine/src.txt",
        "mine/src.txt",  # botocore's form
        "/shared/a%20b/c.txt",
        "mine/src.txt?versionId=3HL4kqtJlcpXroDTDmJ.rmSpXd3dIbrHY",
        "/mine/d%C3%A9j%C3%A0.txt",
    ],
)
def test_copy_source_within_the_connector_is_admitted(source: str) -> None:
    decision = s3_admit(source)
    assert isinstance(decision, Allow) and decision.connector == "s3", decision


@pytest.mark.parametrize(
    "source",
    [
        "/theirs/secret.txt",  # another connector's bucket on the same host
        "/elsewhere/secret.txt",  # no connector's
        "theirs%2Fsecret.txt",  # decoded once by S3: bucket "theirs"
        "/mine/../theirs/secret.txt",
        "/mine/%2e%2e/theirs/secret.txt",
        "/mine/src.txt?versionId=1&x=2",
        "/mine/src.txt?partNumber=1",
        "arn:aws:s3:us-east-1:123456789012:accesspoint/ap/object/mine/src.txt",
        "/mine",
        "/mine/",
        "/mine/%ff.txt",
        "/mine/a%0ab",
        ["/mine/a", "/mine/b"],
    ],
)
def test_copy_source_outside_the_connector_is_refused(source: str | list[str]) -> None:
    decision = s3_admit(source)
    assert isinstance(decision, Block) and decision.reason == Reason.COPY_SOURCE, decision


def test_copy_source_on_virtual_hosted_buckets() -> None:
    mine = Target("mine.s3.us-east-1.amazonaws.com", 443)
    for ok in ("/mine/a.txt", "also/b.txt"):  # the same bucket, or another the connector covers
        decision = s3_admit(ok, mine, "/dst")
        assert isinstance(decision, Allow), (ok, decision)
    for refused in ("/theirs/a.txt", "/s3.example.test/mine/a.txt", "/Mine/a.txt"):
        decision = s3_admit(refused, mine, "/dst")
        assert isinstance(decision, Block) and decision.reason == Reason.COPY_SOURCE, (refused, decision)


def test_copy_source_folded_name_counts_and_other_kinds_are_not_read() -> None:
    request = facts(
        sni="s3.example.test",
        host_headers=["s3.example.test"],
        path="/mine/dst",
        method=b"PUT",
        fields=[(b"X_Amz_Copy_Source", b"/theirs/secret.txt")],
    )
    decision = admit(Tunnel(S3_TARGET, "198.51.100.1"), request, Rules(S3_POLICY), NOW)
    assert isinstance(decision, Block) and decision.reason == Reason.COPY_SOURCE
    plain = facts(fields=[(b"x-amz-copy-source", b"/theirs/secret.txt")])
    assert isinstance(admit(Tunnel(TARGET, "198.51.100.1"), plain, Rules(S3_POLICY), NOW), Allow)
