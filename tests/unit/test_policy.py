"""Policy decisions: which connector serves a URL, and why one is blocked."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.connectors import make_connector
from proxy.policy import Allow, Block, Policy, Target
from proxy.reasons import Reason

HEADER = {"header": "Authorization", "template": "Bearer {{secret}}"}
PAT = ["https://api.example.com/*"]


# -- Policy ----------------------------------------------------------------------


def policy(*specs: tuple[str, list[str], dict[str, str], str | None]) -> Policy:
    return Policy(
        (make_connector(name, patterns=pats, inject=inj), None if secret is None else {"secret": secret})
        for name, pats, inj, secret in specs
    )


@pytest.fixture
def pol() -> Policy:
    return policy(
        ("stripe", ["https://api.stripe.com/*"], HEADER, "sk_live_1"),
        (
            "stripe-files",
            ["https://api.stripe.com/v1/files/*"],
            {"header": "X-Key", "template": "{{secret}}"},
            "fk",
        ),
        ("weather", ["https://api.weather.example/v1/*"], {"query": "appid"}, "w e/t"),
        ("wild", ["https://*.example.org/*"], HEADER, "wk"),
        ("dup-a", ["https://dup.example.net/v1/*"], HEADER, "a"),
        ("dup-b", ["https://dup.example.net/v1/*"], HEADER, "b"),
        ("alt", ["https://alt.example.com:8443/*"], HEADER, None),
    )


def test_explain_allow_header(pol: Policy) -> None:
    d = pol.explain("https://api.stripe.com/v1/charges?limit=3")
    assert isinstance(d, Allow)
    assert d.connector == "stripe"
    assert d.where == "header Authorization"
    assert d.rendered.headers == (("Authorization", "Bearer sk_live_1"),)
    assert d.rendered.query == ()


def test_explain_most_specific_connector(pol: Policy) -> None:
    d = pol.explain("https://api.stripe.com/v1/files/f_123")
    assert isinstance(d, Allow)
    assert d.connector == "stripe-files"
    assert d.rendered.headers == (("X-Key", "fk"),)


def test_explain_allow_query(pol: Policy) -> None:
    d = pol.explain("https://API.Weather.Example./v1")
    assert isinstance(d, Allow)
    assert d.connector == "weather"
    assert d.where == "query parameter appid"
    assert d.rendered.query == (("appid", "appid=w%20e%2Ft"),)
    assert d.rendered.headers == ()


def test_secrets_not_in_repr(pol: Policy) -> None:
    for url in ("https://api.stripe.com/x", "https://api.weather.example/v1/x"):
        d = pol.explain(url)
        assert "sk_live_1" not in repr(d)
        assert "w%20e" not in repr(d)


def test_explain_allow_without_secret(pol: Policy) -> None:
    d = pol.explain("https://alt.example.com:8443/x")
    assert isinstance(d, Allow)
    assert d.connector == "alt"
    assert d.rendered.headers == ()


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("https://api.github.com/x", Reason.NO_CONNECTOR),
        ("https://api.stripe.com:8443/x", Reason.NO_CONNECTOR),
        ("https://alt.example.com/x", Reason.NO_CONNECTOR),
        ("https://api.weather.example/v2/x", Reason.NO_CONNECTOR),
        ("https://api.weather.example/v1x", Reason.NO_CONNECTOR),
        ("https://example.org/x", Reason.NO_CONNECTOR),
        ("https://api.stripe.com.evil.io/x", Reason.NO_CONNECTOR),
        ("https://api.stripe.com/v1/../admin", Reason.BAD_PATH),
        ("https://api.stripe.com/v1/%2e%2e/admin", Reason.BAD_PATH),
        ("https://api.stripe.com/v1/%252e", Reason.BAD_PATH),
        ("https://api.stripe.com/a\\b", Reason.BAD_PATH),
        ("https://api.stripe.com/a/..;/b", Reason.BAD_PATH),
        ("https://dup.example.net/v1/x", Reason.AMBIGUOUS),
        ("https://dup.example.net/v1", Reason.AMBIGUOUS),
        ("http://api.stripe.com/v1/charges", Reason.PLAIN_HTTP),
        ("HTTP://api.stripe.com/v1/charges", Reason.PLAIN_HTTP),
        ("ftp://api.stripe.com/x", Reason.PLAIN_HTTP),
        ("https://user@api.stripe.com/x", Reason.BAD_HOST),
        ("https://0x7f.0.0.1/x", Reason.BAD_HOST),
        ("https://2130706433/x", Reason.BAD_HOST),
        ("https://api.stripe.com:0/x", Reason.BAD_HOST),
    ],
)
def test_explain_blocks(pol: Policy, url: str, reason: Reason) -> None:
    d = pol.explain(url)
    assert isinstance(d, Block), d
    assert d.reason == reason
    assert d.status == 403
    assert "sk_live_1" not in d.detail


def test_ambiguous_names_both_connectors(pol: Policy) -> None:
    d = pol.explain("https://dup.example.net/v1/x")
    assert isinstance(d, Block)
    assert "dup-a" in d.detail
    assert "dup-b" in d.detail


def test_reason_words_are_fixed() -> None:
    assert str(Reason.NO_CONNECTOR) == "no-connector"
    assert str(Reason.BAD_PATH) == "bad-path"
    assert str(Reason.AMBIGUOUS) == "ambiguous"
    assert str(Reason.PLAIN_HTTP) == "plain-http"


def test_route_directly(pol: Policy) -> None:
    t = Target("api.stripe.com", 443)
    assert isinstance(pol.route(t, "/v1/x"), Allow)
    bad_path = pol.route(t, "/v1/./x")
    assert isinstance(bad_path, Block)
    assert bad_path.reason == Reason.BAD_PATH
    none = pol.route(Target("nothing.example", 443), "/")
    assert isinstance(none, Block)
    assert none.reason == Reason.NO_CONNECTOR
    amb = pol.route(Target("dup.example.net", 443), "/v1/a")
    assert isinstance(amb, Block)
    assert amb.reason == Reason.AMBIGUOUS


def test_route_with_grants(pol: Policy) -> None:
    t = Target("api.stripe.com", 443)
    ok = pol.route(t, "/v1/x", frozenset({"stripe"}))
    assert isinstance(ok, Allow)
    assert ok.connector == "stripe"
    denied = pol.route(t, "/v1/x", frozenset({"weather"}))
    assert isinstance(denied, Block)
    assert denied.reason == Reason.NOT_GRANTED
    # Granting only one of two ambiguous connectors removes the ambiguity.
    one = pol.route(Target("dup.example.net", 443), "/v1/x", frozenset({"dup-b"}))
    assert isinstance(one, Allow)
    assert one.connector == "dup-b"


def test_connect_decisions(pol: Policy) -> None:
    assert pol.connect(Target("api.stripe.com", 443)) is None
    assert pol.connect(Target("a.b.example.org", 443)) is None
    no = pol.connect(Target("api.stripe.com", 444))
    assert isinstance(no, Block)
    assert no.reason == Reason.NO_CONNECTOR
    ng = pol.connect(Target("api.stripe.com", 443), frozenset({"weather"}))
    assert isinstance(ng, Block)
    assert ng.reason == Reason.NOT_GRANTED


def test_same_connector_twice_is_not_ambiguous() -> None:
    p = policy(("one", ["https://h.example.com/v1/*", "https://h.example.com/v1/*"], HEADER, "s"))
    d = p.explain("https://h.example.com/v1/x")
    assert isinstance(d, Allow)
    assert d.connector == "one"


def test_policy_len() -> None:
    assert len(policy()) == 0
    assert len(policy(("a", PAT, HEADER, "s"), ("b", ["https://b.example.com/*"], HEADER, "s"))) == 2


@pytest.mark.parametrize(
    ("path", "allowed"),
    [
        ("/repos/o/r/branches/feature%2Fx", True),  # a branch named feature/x
        ("/repos/o%2Fr/branches/x", True),
        ("/repos/o/r/branches/100%25", True),  # an S3-style key with %
        ("/repos/o/r/branches/a%252Fb", True),
        ("/repos%2Fo/branches/x", False),  # the literal part must match as written
        ("/v1%2Fexact", False),  # no wildcard at all
        ("/repos/o/r/branches/a%2F..%2Fb", False),  # decoded: a dot segment
        ("/repos/o/r/branches/%252e%252e", False),  # decoded twice: a dot segment
        ("/repos/o/r/branches/%25252e%25252e", False),  # three times
        ("/repos/o/r/branches/a%255c", False),  # decoded: a backslash
        ("/repos/o/r/branches/a%5cb", False),
        ("/repos/o/r/branches/a%2500", False),  # decoded: NUL
    ],
)
def test_encoded_slash_and_percent_only_inside_a_wildcard(path: str, allowed: bool) -> None:
    c = make_connector(
        "gh",
        patterns=["https://api.github.com/repos/*/branches/*", "https://api.github.com/v1/exact"],
        inject=HEADER,
    )
    d = Policy([(c, {"secret": "s"})]).explain("https://api.github.com" + path)
    if allowed:
        assert isinstance(d, Allow), d
    else:
        assert isinstance(d, Block) and d.reason == Reason.BAD_PATH, d


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.sampled_from(["%25", "%2f", "%2F", "2e", "2E", ".", "/", "a", "5c", "00", "%"]), max_size=14)
)
def test_property_no_allowed_path_decodes_to_a_dot_segment_or_backslash(parts: list[str]) -> None:
    from urllib.parse import unquote

    c = make_connector("w", patterns=["https://api.example.com/files/*"], inject=HEADER)
    path = "/files/" + "".join(parts)
    if isinstance(Policy([(c, {"secret": "s"})]).explain("https://api.example.com" + path), Allow):
        current = path
        for _ in range(8):
            segments = current.split("/")
            assert "." not in segments and ".." not in segments, (path, current)
            assert "\\" not in current and "\x00" not in current, (path, current)
            current = unquote(current)


def test_secrets_of_connectors_sharing_a_host_are_masked_in_each_others_responses() -> None:
    a = make_connector("a", patterns=["https://api.shared.test/a/*"], inject=HEADER)
    b = make_connector("b", patterns=["https://api.shared.test/b/*"], inject=HEADER)
    other = make_connector("c", patterns=["https://elsewhere.test/*"], inject=HEADER)
    pol = Policy(
        [
            (a, {"secret": "secret-of-a-123"}),
            (b, {"secret": "secret-of-b-456"}),
            (other, {"secret": "c-789xyz"}),
        ]
    )
    route = pol.routes["a"]
    assert isinstance(route, Allow)
    assert route.scrub.mask(b"secret-of-b-456") == b"*" * 15
    assert route.scrub.mask(b"c-789xyz") == b"c-789xyz"  # another host's secret is not this route's
