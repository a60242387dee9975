"""Near miss: which connector came closest to a blocked request, and the word for what differed."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.connectors import make_connector, split_key
from proxy.nearmiss import NearMiss, Request, suggestion
from proxy.patterns import parse_pattern
from proxy.policy import Allow, Block, Policy, Target
from proxy.reasons import Reason, blocked_answer

HEADER = {"header": "Authorization", "template": "Bearer {{secret}}"}


def policy(*specs: tuple[str, list[str]] | tuple[str, list[str], list[str]]) -> Policy:
    items = []
    for spec in specs:
        name, patterns = spec[0], spec[1]
        methods = spec[2] if len(spec) > 2 else None  # type: ignore[misc]
        items.append((make_connector(name, patterns=patterns, inject=HEADER, methods=methods), None))
    return Policy(items)


POL = policy(
    ("stripe", ["https://api.stripe.com/v1/*"]),
    ("exact", ["https://api.exact.test/v1"]),
    ("wild", ["https://*.wild.test/*"]),
    ("alt", ["https://alt.example.com:8443/*"]),
    ("ro", ["https://ro.example.com/*"], ["GET", "HEAD"]),
    ("dup-a", ["https://dup.example.net/v1/*"]),
    ("dup-b", ["https://dup.example.net/v1/*"]),
)


def near(url: str, allowed: frozenset[str] | None = None, method: str | None = None) -> NearMiss:
    decision = POL.explain(url, allowed, method)
    assert isinstance(decision, Block), decision
    assert decision.near_miss is not None, decision
    return decision.near_miss


def test_path_names_the_first_differing_segment() -> None:
    n = near("https://api.stripe.com/v2/charges/ch_1")
    assert (n.connector, n.differs) == ("stripe", "path")
    assert n.detail == "pattern wants /v1/*, request has /v2/..."
    assert n.pattern == "https://api.stripe.com/v1/*"


def test_path_missing_star() -> None:
    n = near("https://api.exact.test/v1/items")
    assert (n.connector, n.differs) == ("exact", "path")
    assert "no /*" in n.detail


def test_port_qualified_host() -> None:
    n = near("https://api.stripe.com:8443/v1/charges")
    assert (n.connector, n.differs) == ("stripe", "port")
    assert n.detail == "pattern https://api.stripe.com/v1/* has no port (443); the request used :8443"
    n = near("https://alt.example.com/x")
    assert (n.connector, n.differs) == ("alt", "port")
    assert "wants port 8443" in n.detail


def test_wrong_scheme() -> None:
    decision = POL.explain("http://api.stripe.com/v1/charges")
    assert isinstance(decision, Block) and decision.reason is Reason.PLAIN_HTTP
    assert decision.near_miss is not None
    assert (decision.near_miss.connector, decision.near_miss.differs) == ("stripe", "scheme")
    # The scheme comes first, whatever else differs too.
    n = near("http://api.stripe.com/v2/x")
    assert (n.differs, n.also) == ("scheme", ("path",))


def test_host_one_label_too_few_under_a_wildcard() -> None:
    n = near("https://wild.test/x")
    assert (n.connector, n.differs, n.depth) == ("wild", "host", 1)
    assert "one more label" in n.detail


def test_host_one_label_too_many_and_too_few_for_an_exact_host() -> None:
    n = near("https://v2.api.stripe.com/v1/x")
    assert (n.connector, n.differs, n.depth) == ("stripe", "host", -1)
    n = near("https://stripe.com/v1/x")
    assert (n.connector, n.differs, n.depth) == ("stripe", "host", 1)
    n = near("https://files.stripe.com/v1/x")
    assert (n.connector, n.differs, n.depth) == ("stripe", "host", 0)


def test_method() -> None:
    n = near("https://ro.example.com/x", method="DELETE")
    assert (n.connector, n.differs) == ("ro", "method")
    assert n.detail == "ro allows GET, HEAD; the request used DELETE"


def test_not_granted_in_a_tunnel_and_at_connect() -> None:
    n = near("https://api.stripe.com/v1/x", allowed=frozenset({"ro"}))
    assert (n.connector, n.differs) == ("stripe", "not-granted")
    block = POL.connect(Target("api.stripe.com", 443), frozenset({"ro"}))
    assert block is not None and block.near_miss is not None
    assert (block.near_miss.connector, block.near_miss.differs) == ("stripe", "not-granted")


def test_connect_level_port() -> None:
    block = POL.connect(Target("api.stripe.com", 8443))
    assert block is not None and block.near_miss is not None
    assert (block.near_miss.connector, block.near_miss.differs) == ("stripe", "port")


def test_ambiguous_with() -> None:
    n = near("https://dup.example.net/v1/x")
    assert (n.connector, n.differs, n.others) == ("dup-a", "ambiguous-with", ("dup-b",))


def test_fewest_differences_win_and_same_host_beats_a_sibling() -> None:
    pol = policy(("v1", ["https://api.example.com/v1/*"]), ("files", ["https://files.example.com/*"]))
    decision = pol.explain("https://api.example.com/v2/x")
    assert isinstance(decision, Block) and decision.near_miss is not None
    assert (decision.near_miss.connector, decision.near_miss.differs) == ("v1", "path")


def test_nothing_near() -> None:
    decision = POL.explain("https://unknown.invalid/x")
    assert isinstance(decision, Block) and decision.near_miss is None
    assert POL.near_miss(Request("example.org", 443, "/")) is None  # a TLD has no siblings


def test_allowed_requests_carry_nothing_and_bad_paths_no_near_miss() -> None:
    assert isinstance(POL.explain("https://api.stripe.com/v1/x"), Allow)
    decision = POL.explain("https://api.stripe.com/v1/../x")
    assert isinstance(decision, Block) and decision.reason is Reason.BAD_PATH and decision.near_miss is None


def test_a_crowded_parent_domain_is_bounded() -> None:
    # Ten thousand siblings: only a bounded number is looked at, and one is still named.
    pol = policy(*((f"c{i}", [f"https://api{i}.crowd.test/*"]) for i in range(10_000)))
    decision = pol.explain("https://other.crowd.test/x")
    assert isinstance(decision, Block) and decision.near_miss is not None
    assert decision.near_miss.differs == "host"


def test_round_trip_and_unknown_words_survive() -> None:
    n = near("http://api.stripe.com/v2/x")
    assert NearMiss.from_dict(json.loads(json.dumps(n.to_dict()))) == n
    later = NearMiss.from_dict({"connector": "x", "differs": "other-workspace", "detail": "d"})
    assert later.differs == "other-workspace"


def test_403_body_carries_the_small_form() -> None:
    n = near("https://api.stripe.com/v2/x")
    status, _, body = blocked_answer(Reason.NO_CONNECTOR, "no", "rid", near_miss=n.body())
    doc = json.loads(body)
    assert status == 403
    assert doc["near_miss"] == {
        "connector": "stripe",
        "differs": "path",
        "detail": "pattern wants /v1/*, request has /v2/...",
    }
    assert "near_miss" not in json.loads(blocked_answer(Reason.NO_CONNECTOR, "no", "rid")[2])


@pytest.mark.parametrize(
    ("url", "method", "allowed", "expected"),
    [
        (
            "https://api.stripe.com/v2/charges",
            "GET",
            None,
            "add pattern https://api.stripe.com/v2/* to connector stripe",
        ),
        (
            "https://api.stripe.com:8443/v1/x",
            "GET",
            None,
            "connector stripe: pattern https://api.stripe.com/v1/* has no port; the request used :8443 "
            "(add pattern https://api.stripe.com:8443/v1/*)",
        ),
        (
            "https://api.exact.test/v1/items",
            "GET",
            None,
            "add pattern https://api.exact.test/v1/* to connector exact",
        ),
        ("https://wild.test/x", "GET", None, "add pattern https://wild.test/* to connector wild"),
        (
            "https://v2.api.stripe.com/v1/x",
            "GET",
            None,
            "add pattern https://v2.api.stripe.com/v1/* to connector stripe",
        ),
        ("https://ro.example.com/x", "DELETE", None, "add method DELETE to connector ro"),
        ("https://api.stripe.com/v1/x", "GET", frozenset({"ro"}), "egress grant --connector stripe"),
        ("https://dup.example.net/v1/x", "GET", None, "connectors dup-a, dup-b match equally"),
    ],
)
def test_suggestion(url: str, method: str, allowed: frozenset[str] | None, expected: str) -> None:
    decision = POL.explain(url, allowed, method)
    assert isinstance(decision, Block)
    authority, path = url.removeprefix("https://").split("/", 1)
    assert expected in suggestion(decision.near_miss, method, authority, "/" + path)


def test_suggestion_without_a_near_miss() -> None:
    text = suggestion(None, "GET", "new.example.com", "/api/x")
    assert (
        text
        == "no connector is near https://new.example.com/api/x: add one with pattern https://new.example.com/api/*"
    )


# -- another workspace's connector: named to the operator, only the word to the client ------

WS = Policy(
    [
        (
            make_connector(
                "stripe", patterns=["https://api.stripe.com/v1/*"], inject=HEADER, workspace="acme"
            ),
            None,
        ),
        (make_connector("billing", patterns=["https://billing.example.org/*"], inject=HEADER), None),
        (make_connector("v1", patterns=["https://api.shared.test/v1/*"], inject=HEADER), None),
        (
            make_connector("v2", patterns=["https://api.shared.test/v2/*"], inject=HEADER, workspace="acme"),
            None,
        ),
    ]
)
DEFAULT_GRANT = frozenset({"billing"})  # grants of the default workspace
SHARED_GRANT = frozenset({"v1"})


def test_other_workspace_at_connect_and_in_a_tunnel() -> None:
    decision = WS.explain("https://api.stripe.com/v1/charges", DEFAULT_GRANT, "GET")
    assert isinstance(decision, Block) and decision.reason is Reason.NOT_GRANTED  # at CONNECT
    n = decision.near_miss
    assert n is not None and (n.connector, n.differs, n.also) == ("acme/stripe", "other-workspace", ())
    assert n.detail == "connector acme/stripe is in workspace acme; the grant reaches only workspace default"
    assert "acme" not in decision.detail
    # In a tunnel the grant opened (v1 covers the host): the 403's own detail names no connector.
    decision = WS.explain("https://api.shared.test/v2/x", SHARED_GRANT, "GET")
    assert isinstance(decision, Block) and decision.reason is Reason.NOT_GRANTED
    assert decision.detail == "only another workspace's connectors allow this URL"
    assert decision.near_miss is not None
    assert (decision.near_miss.connector, decision.near_miss.differs) == ("acme/v2", "other-workspace")


def test_other_workspace_comes_first_and_the_rest_follows_in_also() -> None:
    n = WS.explain("https://api.shared.test/v2/x", SHARED_GRANT, "DELETE").near_miss  # type: ignore[union-attr]
    assert n is not None and (n.connector, n.differs, n.also) == ("acme/v2", "other-workspace", ())
    n = WS.near_miss(Request("api.stripe.com", 443, "/v2/x", "GET", DEFAULT_GRANT))
    assert n is not None and (n.differs, n.also) == ("other-workspace", ("path",))
    assert "not-granted" not in n.also  # implied: a grant never spans workspaces


def test_on_a_tie_the_connector_that_matches_the_url_wins_then_the_grants_workspace() -> None:
    # /v3 matches nothing: v1 (path) beats acme/v2 (other-workspace and path).
    n = WS.explain("https://api.shared.test/v3/x", SHARED_GRANT).near_miss  # type: ignore[union-attr]
    assert n is not None and (n.connector, n.differs) == ("v1", "path")
    # /v2 is acme/v2's URL: it beats v1, whose path differs (both one word away).
    n = WS.explain("https://api.shared.test/v2/x", SHARED_GRANT).near_miss  # type: ignore[union-attr]
    assert n is not None and (n.connector, n.differs) == ("acme/v2", "other-workspace")
    # An acme grant: acme/v2 not granted beats v1 of another workspace, both matching their URL.
    both = Policy(
        [
            (make_connector("v1", patterns=["https://api.shared.test/*"], inject=HEADER), None),
            (
                make_connector("v2", patterns=["https://api.shared.test/*"], inject=HEADER, workspace="acme"),
                None,
            ),
            (
                make_connector(
                    "s", patterns=["https://api.shared.test/s/*"], inject=HEADER, workspace="acme"
                ),
                None,
            ),
        ]
    )
    n = both.near_miss(Request("api.shared.test", 443, "/x", "GET", frozenset({"acme/s"})))
    assert n is not None and (n.connector, n.differs) == ("acme/v2", "not-granted")


def test_without_a_grant_there_is_no_other_workspace() -> None:
    n = WS.explain("https://api.stripe.com/v2/x", None, "GET").near_miss  # type: ignore[union-attr]
    assert n is not None and (n.connector, n.differs, n.also) == ("acme/stripe", "path", ())


def test_the_client_learns_only_the_word() -> None:
    n = WS.near_miss(Request("api.stripe.com", 443, "/v2/x", "GET", DEFAULT_GRANT))
    assert n is not None
    body = n.body()
    assert body["differs"] == "other-workspace" and set(body) == {"differs", "detail"}
    assert "stripe" not in json.dumps(body) and "acme" not in json.dumps(body)
    _, _, raw = blocked_answer(Reason.NOT_GRANTED, "d", "rid", near_miss=body)
    assert json.loads(raw)["near_miss"] == body
    hidden = n.concealed()
    assert hidden.to_dict() == body and NearMiss.from_dict(hidden.to_dict()) == hidden
    assert NearMiss.from_dict(json.loads(json.dumps(n.to_dict()))) == n  # the log keeps it all
    plain = near("https://api.stripe.com/v2/x")
    assert plain.concealed() is plain and "connector" in plain.body()


def test_suggestion_for_another_workspace() -> None:
    n = WS.explain("https://api.stripe.com/v1/x", DEFAULT_GRANT).near_miss  # type: ignore[union-attr]
    assert n is not None
    assert "egress grant --workspace acme --connector stripe" in suggestion(
        n, "GET", "api.stripe.com", "/v1/x"
    )
    assert "another workspace" in suggestion(n.concealed(), "GET", "api.stripe.com", "/v1/x")


# -- property: one word means that one change would let the named connector's pattern match ----

CONNECTOR_HOSTS = ["api.x.test", "files.x.test", "x.test", "*.x.test", "v2.api.x.test"]
REQUEST_HOSTS = ["api.x.test", "files.x.test", "x.test", "a.x.test", "v2.api.x.test", "b.api.x.test"]
PATHS = ["/v1/*", "/v2/*", "/v1", "/*"]


@st.composite
def world(draw: st.DrawFn) -> tuple[Policy, list[tuple[str, str, frozenset[str] | None]]]:
    """Up to six connectors in two workspaces: (policy, [(key, workspace, methods)])."""
    items, meta = [], []
    for i in range(draw(st.integers(1, 6))):
        ws = draw(st.sampled_from(["default", "acme"]))
        host = draw(st.sampled_from(CONNECTOR_HOSTS))
        port = draw(st.sampled_from(["", ":8443"]))
        path = draw(st.sampled_from(PATHS))
        methods = draw(st.sampled_from([None, ["GET"], ["GET", "POST"]]))
        c = make_connector(f"c{i}", patterns=[f"https://{host}{port}{path}"], inject=HEADER, methods=methods,
                           workspace=ws)  # fmt: skip
        items.append((c, None))
        meta.append((c.key, ws, frozenset(methods) if methods else None))
    return Policy(items), meta


@settings(max_examples=300, deadline=None, database=None)
@given(
    w=world(),
    host=st.sampled_from(REQUEST_HOSTS),
    port=st.sampled_from([443, 8443]),
    path=st.sampled_from(["/v1/a", "/v2/b", "/v1", "/v3/c", "/"]),
    method=st.sampled_from(["GET", "POST", "DELETE"]),
    grant=st.one_of(st.none(), st.sets(st.integers(0, 5), max_size=3)),
)
def test_property_a_single_word_names_the_one_change_that_lets_the_connector_match(
    w: tuple[Policy, list[tuple[str, str, frozenset[str] | None]]],
    host: str,
    port: int,
    path: str,
    method: str,
    grant: set[int] | None,
) -> None:
    policy, meta = w
    keys = [k for k, _, _ in meta]
    allowed: frozenset[str] | None = None
    if grant is not None:  # a grant lists connectors of one workspace
        picked = [keys[i] for i in grant if i < len(keys)]
        ws = meta[min(grant)][1] if picked and min(grant) < len(keys) else "default"
        allowed = frozenset(k for k in picked if dict((k, w) for k, w, _ in meta)[k] == ws) or None
    decision = policy.explain(f"https://{host}:{port}{path}", allowed, method)
    if not isinstance(decision, Block) or decision.near_miss is None:
        return
    n = decision.near_miss
    if n.differs == "ambiguous-with" or n.also:
        return
    p = parse_pattern(n.pattern)
    methods = policy.routes[n.connector].methods
    fixed_host, fixed_port, fixed_path, fixed_method, fixed_allowed = host, port, path, method, allowed
    if n.differs == "host":
        fixed_host = f"a.{p.host}" if p.wildcard_host else p.host
    elif n.differs == "port":
        fixed_port = p.port
    elif n.differs == "path":
        fixed_path = p.path.replace("*", "x")
    elif n.differs == "method":
        assert methods is not None and method not in methods
        fixed_method = sorted(methods)[0]
    elif n.differs == "not-granted":
        assert allowed is not None and n.connector not in allowed
        fixed_allowed = allowed | {n.connector}
    elif n.differs == "other-workspace":
        assert allowed is not None
        assert split_key(n.connector)[0] != split_key(next(iter(allowed)))[0]
        fixed_allowed = frozenset({n.connector})
    else:
        raise AssertionError(f"unexpected word {n.differs}")
    # Everything else already matched: changing that one dimension lets the pattern serve it.
    assert p.matches(fixed_host, fixed_port, fixed_path), n
    assert methods is None or fixed_method in methods, n
    assert fixed_allowed is None or n.connector in fixed_allowed, n


def test_check_of_a_url_refused_at_connect_weighs_its_path_and_method() -> None:
    n = near("https://api.stripe.com:8443/v2/x", method="GET")
    assert (n.connector, n.differs, n.also) == ("stripe", "port", ("path",))
    n = near("https://ro.example.com:9443/x", method="DELETE")
    assert (n.connector, n.differs, n.also) == ("ro", "port", ("method",))
