"""URL patterns (docs/usage.md, "Patterns"): grammar, path vetting, specificity, and properties."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from proxy.connectors import make_connector
from proxy.errors import ConfigError
from proxy.hosts import normalize_host
from proxy.patterns import PatternIndex, parse_pattern, path_problem
from proxy.policy import Allow, Block, Policy

PROPS = settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def refused(text: str) -> str:
    with pytest.raises(ConfigError) as e:
        parse_pattern(text)
    return str(e.value)


# -- parse_pattern: grammar -------------------------------------------------


def test_minimal_pattern_fields() -> None:
    p = parse_pattern("https://api.example.com/v1/*")
    assert p.host == "api.example.com"
    assert p.port == 443
    assert p.path == "/v1/*"
    assert p.wildcard_host is False
    assert p.text == "https://api.example.com/v1/*"


@pytest.mark.parametrize(
    "text",
    [
        "http://api.example.com/*",
        "ftp://api.example.com/*",
        "wss://api.example.com/*",
        "httpss://api.example.com/*",
    ],
)
def test_scheme_must_be_https(text: str) -> None:
    msg = refused(text)
    assert "https" in msg
    assert text in msg


def test_scheme_is_case_insensitive_and_canonicalised() -> None:
    assert parse_pattern("HTTPS://api.example.com/x").text == "https://api.example.com/x"


@pytest.mark.parametrize("text", ["api.example.com/v1", "//api.example.com/v1", "", "https:api.example.com/"])
def test_not_a_url_is_refused(text: str) -> None:
    refused(text)


def test_non_string_is_refused() -> None:
    with pytest.raises(ConfigError):
        parse_pattern(None)  # type: ignore[arg-type]


@pytest.mark.parametrize("text", ["https://api.example.com", "https://api.example.com:8443"])
def test_missing_path_is_refused_with_a_hint(text: str) -> None:
    msg = refused(text)
    assert "missing path" in msg
    assert "/*" in msg


@pytest.mark.parametrize(
    "text",
    [
        "https://api.example.com/v1?key=1",
        "https://api.example.com/v1/*?x",
        "https://api.example.com/v1#frag",
        "https://api.example.com/?",
        "https://api.example.com/#",
    ],
)
def test_query_and_fragment_are_refused(text: str) -> None:
    assert "query or fragment" in refused(text)


@pytest.mark.parametrize(
    "text",
    [
        "https://a.*.example.com/*",
        "https://*example.com/*",
        "https://api.*/*",
        "https://*/*",
        "https://**.example.com/*",
        "https://*.*.example.com/*",
        "https://api.example.*/*",
        "https://ap*.example.com/*",
    ],
)
def test_host_wildcard_only_as_leading_star_dot(text: str) -> None:
    refused(text)


@pytest.mark.parametrize("text", ["https://*.com/*", "https://*.io/v1"])
def test_wildcard_over_a_tld_is_refused(text: str) -> None:
    assert "too broad" in refused(text)


@pytest.mark.parametrize("text", ["https://*.1.2.3.4/*", "https://*.[::1]/*", "https://*.10.0.0.1/x"])
def test_wildcard_before_an_ip_is_refused(text: str) -> None:
    refused(text)


def test_wildcard_pattern_fields() -> None:
    p = parse_pattern("https://*.Example.COM./v1/*")
    assert p.wildcard_host is True
    assert p.host == "example.com"
    assert p.text == "https://*.example.com/v1/*"


@pytest.mark.parametrize(
    ("text", "port", "canonical"),
    [
        ("https://api.example.com:443/x", 443, "https://api.example.com/x"),
        ("https://api.example.com:8443/x", 8443, "https://api.example.com:8443/x"),
        ("https://api.example.com:1/x", 1, "https://api.example.com:1/x"),
        ("https://api.example.com:65535/x", 65535, "https://api.example.com:65535/x"),
        ("https://*.example.com:9443/*", 9443, "https://*.example.com:9443/*"),
    ],
)
def test_ports(text: str, port: int, canonical: str) -> None:
    p = parse_pattern(text)
    assert p.port == port
    assert p.text == canonical


@pytest.mark.parametrize(
    "port",
    ["0", "65536", "99999", "", "-1", "+443", "0x1bb", "44 3", "abc", "443:443"],
)
def test_bad_ports_are_refused(port: str) -> None:
    refused(f"https://api.example.com:{port}/x")


@pytest.mark.parametrize("port", ["\uff14\uff14\uff13", "\u0663", "\u0664\u0664\u0663"])
def test_non_ascii_digit_ports_are_refused(port: str) -> None:
    # Fullwidth / Arabic-Indic digits are not a port spelling anyone means;
    # "odd spellings are refused, not interpreted" (patterns.py docstrings).
    refused(f"https://api.example.com:{port}/x")


@pytest.mark.parametrize(
    ("text", "host"),
    [
        ("https://API.Example.COM/x", "api.example.com"),
        ("https://api.example.com./x", "api.example.com"),
        ("https://API.EXAMPLE.COM./x", "api.example.com"),
        ("https://b\u00fccher.example/x", "xn--bcher-kva.example"),
        ("https://B\u00dcCHER.example/x", "xn--bcher-kva.example"),
        ("https://\uff41\uff50\uff49.example.com/x", "api.example.com"),
        ("https://xn--bcher-kva.example/x", "xn--bcher-kva.example"),
        ("https://under_score.example.com/x", "under_score.example.com"),
    ],
)
def test_host_normalisation(text: str, host: str) -> None:
    p = parse_pattern(text)
    assert p.host == host
    assert p.text == f"https://{host}/x"


def test_idna_pattern_matches_unicode_request_host() -> None:
    p = parse_pattern("https://b\u00fccher.example/*")
    assert p.matches(normalize_host("B\u00fcCHER.example."), 443, "/a")


@pytest.mark.parametrize(
    "text",
    [
        "https://-api.example.com/x",
        "https://api-.example.com/x",
        "https://a..example.com/x",
        "https://" + "a" * 64 + ".example.com/x",
        "https://api example.com/x",
        "https://api!.example.com/x",
        "https:///x",
        "https://./x",
        "https://user@api.example.com/x",
        "https://user:pw@api.example.com/x",
    ],
)
def test_invalid_hosts_are_refused(text: str) -> None:
    refused(text)


def test_63_char_label_is_fine() -> None:
    assert parse_pattern("https://" + "a" * 63 + ".example.com/x").host.startswith("a" * 63)


@pytest.mark.parametrize(
    ("text", "host", "canonical"),
    [
        ("https://[::1]/x", "::1", "https://[::1]/x"),
        ("https://[0:0:0:0:0:0:0:1]:8443/x", "::1", "https://[::1]:8443/x"),
        ("https://[2001:DB8::1]/v1/*", "2001:db8::1", "https://[2001:db8::1]/v1/*"),
    ],
)
def test_ipv6_literals(text: str, host: str, canonical: str) -> None:
    p = parse_pattern(text)
    assert p.host == host
    assert p.text == canonical


@pytest.mark.parametrize(
    "text",
    [
        "https://::1/x",
        "https://2001:db8::1/x",
        "https://[::1/x",
        "https://[::1]x/y",
        "https://[not-ipv6]/x",
        "https://[127.0.0.1]/x",
    ],
)
def test_bad_ipv6_spellings_are_refused(text: str) -> None:
    refused(text)


def test_dotted_quad_ipv4_is_accepted() -> None:
    p = parse_pattern("https://93.184.216.34/x")
    assert p.host == "93.184.216.34"
    assert parse_pattern("https://93.184.216.34./x").host == "93.184.216.34"


@pytest.mark.parametrize(
    "host",
    [
        "0x7f.0.0.1",
        "0x7F000001",
        "2130706433",
        "127.1",
        "127.0.1",
        "0177.0.0.1",
        "127.0.0.01",
        "017700000001",
        "1.2.3.0x4",
        "1.2.3.4.5",
        "0x7f.1",
    ],
)
def test_odd_ipv4_spellings_are_refused(host: str) -> None:
    refused(f"https://{host}/x")
    with pytest.raises(ValueError):
        normalize_host(host)


# -- path_problem ------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/v1",
        "/v1/",
        "/v1/users/42",
        "/a//b",
        "/a/.../b",
        "/a/..b/c",
        "/a/b..",
        "/.well-known/x",
        "/a;b=c/d",
        "/a/%41%42",
        "/a/%e2%82%ac",
        "/a/%2E%2Ex",
        "/~user/-_.!$&'()*+,;=:@",
    ],
)
def test_clean_paths_pass(path: str) -> None:
    assert path_problem(path) is None


@pytest.mark.parametrize(
    "path",
    [
        "/..",
        "/.",
        "/a/../b",
        "/a/./b",
        "/a/b/..",
        "/a/b/.",
        "/../a",
        "/a/%2e%2e/b",
        "/a/%2E%2E/b",
        "/a/%2e%2E/b",
        "/a/.%2e/b",
        "/a/%2e./b",
        "/a/%2e/b",
        "/a/..;/b",
        "/a/..;jsessionid=1/b",
        "/a/.;x/b",
        "/a/%2e%2e;/b",
    ],
)
def test_dot_segments_are_refused(path: str) -> None:
    assert path_problem(path) == "dot segment in path"


@pytest.mark.parametrize("path", ["/a%2fb", "/a%2Fb", "/a%5cb", "/a%5Cb", "/%2F%2e%2e%2F"])
def test_encoded_slashes_are_refused(path: str) -> None:
    assert path_problem(path) == "encoded slash in path"


@pytest.mark.parametrize("path", ["/a\\b", "/a/..\\..\\b", "\\"])
def test_backslash_is_refused(path: str) -> None:
    assert path_problem(path) is not None


def test_backslash_message() -> None:
    assert path_problem("/a\\b") == "backslash in path"


@pytest.mark.parametrize("path", ["/a%25", "/a%252e%252e/b", "/%252F", "/x%2541"])
def test_double_encoding_is_refused(path: str) -> None:
    assert path_problem(path) == "double percent-encoding"


@pytest.mark.parametrize("path", ["/a%00b", "/a%0a", "/a%0D%0A", "/a%1f", "/a%7f", "/a%7F", "/%09"])
def test_encoded_control_characters_are_refused(path: str) -> None:
    assert path_problem(path) == "encoded control character in path"


@pytest.mark.parametrize("code", [*range(0x00, 0x20), 0x7F])
def test_raw_control_characters_are_refused_in_the_middle(code: int) -> None:
    assert path_problem(f"/a{chr(code)}b") is not None


@pytest.mark.parametrize("code", [0x0A, 0x0D, 0x00, 0x09])
def test_raw_control_characters_are_refused_at_the_end(code: int) -> None:
    # A trailing "\n" slips past a `^...$` regex (``$`` matches before a final newline).
    assert path_problem(f"/v1/users{chr(code)}") is not None


@pytest.mark.parametrize("path", ["/a%", "/a%2", "/a%g0", "/a%%30", "/%zz", "/a%2x"])
def test_malformed_percent_encoding_is_refused(path: str) -> None:
    assert path_problem(path) == "malformed percent-encoding"


@pytest.mark.parametrize("path", ["/caf\u00e9", "/\u2215etc", "/a\u00a0b", "/\uff0e\uff0e/x", "/a b", '/a"b'])
def test_non_ascii_and_unsafe_characters_are_refused(path: str) -> None:
    assert path_problem(path) is not None


@pytest.mark.parametrize("path", ["", "v1/x", "*", "%2f"])
def test_path_must_start_with_slash(path: str) -> None:
    assert path_problem(path) is not None


@pytest.mark.parametrize(
    "text",
    [
        "https://api.example.com/v1/../admin/*",
        "https://api.example.com/v1/%2e%2e/*",
        "https://api.example.com/a%2fb/*",
        "https://api.example.com/a\\b",
        "https://api.example.com/a%25/*",
        "https://api.example.com/a%00",
        "https://api.example.com/caf\u00e9",
        "https://api.example.com/v1\n",
        "https://api.example.com/v1/*\n",
    ],
)
def test_patterns_with_unsafe_paths_are_refused(text: str) -> None:
    refused(text)


# -- path matching -------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "path", "expected"),
    [
        ("/v1/*", "/v1", True),
        ("/v1/*", "/v1/", True),
        ("/v1/*", "/v1/users", True),
        ("/v1/*", "/v1/users/42/x", True),
        ("/v1/*", "/v1x", False),
        ("/v1/*", "/v10/x", False),
        ("/v1/*", "/v", False),
        ("/v1/*", "/", False),
        ("/v1/*", "/V1/x", False),
        ("/v1/*", "/x/v1/y", False),
        ("/*", "/", True),
        ("/*", "/anything/at/all", True),
        ("/v1/users", "/v1/users", True),
        ("/v1/users", "/v1/users/", False),
        ("/v1/users", "/v1/users/1", False),
        ("/v1/users", "/v1/user", False),
        ("/v1*", "/v1", True),
        ("/v1*", "/v1beta/x", True),
        ("/v1*", "/v2", False),
        ("/a/*/c", "/a/b/c", True),
        ("/a/*/c", "/a/b/x/c", True),
        ("/a/*/c", "/a/c", False),
        ("/a/*/c", "/a/b/c/d", False),
        ("/files/*.json", "/files/a/b.json", True),
        ("/files/*.json", "/files/a.jsonx", False),
        ("/a.b", "/aXb", False),
        ("/a+b/*", "/aab/x", False),
        ("/a+b/*", "/a+b/x", True),
    ],
)
def test_path_matching(pattern: str, path: str, expected: bool) -> None:
    p = parse_pattern("https://api.example.com" + pattern)
    assert p.path_matches(path) is expected
    assert p.matches("api.example.com", 443, path) is expected


def test_port_must_match_exactly() -> None:
    p = parse_pattern("https://api.example.com/*")
    assert p.matches("api.example.com", 443, "/x")
    assert not p.matches("api.example.com", 8443, "/x")
    q = parse_pattern("https://api.example.com:8443/*")
    assert q.matches("api.example.com", 8443, "/x")
    assert not q.matches("api.example.com", 443, "/x")


def test_wildcard_host_matching() -> None:
    p = parse_pattern("https://*.example.com/*")
    assert p.host_matches("a.example.com", 443)
    assert p.host_matches("a.b.example.com", 443)
    assert not p.host_matches("example.com", 443)
    assert not p.host_matches("badexample.com", 443)
    assert not p.host_matches("a.example.com.evil.io", 443)
    assert not p.host_matches("a.example.com", 444)


# -- PatternIndex.best ---------------------------------------------------------


def index(*entries: tuple[str, str]) -> PatternIndex[str]:
    return PatternIndex((parse_pattern(text), owner) for text, owner in entries)


def owners(idx: PatternIndex[str], host: str, path: str, port: int = 443) -> list[str]:
    return sorted(h.owner for h in idx.best(host, port, path))


def test_exact_host_beats_wildcard_host() -> None:
    idx = index(("https://*.example.com/v1/users/*", "wild"), ("https://api.example.com/*", "exact"))
    assert owners(idx, "api.example.com", "/v1/users/1") == ["exact"]
    assert owners(idx, "www.example.com", "/v1/users/1") == ["wild"]
    assert owners(idx, "www.example.com", "/v2") == []


def test_longer_wildcard_suffix_beats_shorter() -> None:
    idx = index(("https://*.example.com/*", "broad"), ("https://*.api.example.com/*", "narrow"))
    assert owners(idx, "x.api.example.com", "/a") == ["narrow"]
    assert owners(idx, "x.www.example.com", "/a") == ["broad"]
    assert owners(idx, "api.example.com", "/a") == ["broad"]


def test_longer_literal_prefix_wins() -> None:
    idx = index(
        ("https://api.example.com/*", "root"),
        ("https://api.example.com/v1/*", "v1"),
        ("https://api.example.com/v1/users/*", "users"),
    )
    assert owners(idx, "api.example.com", "/v1/users/42") == ["users"]
    assert owners(idx, "api.example.com", "/v1/users") == ["users"]
    assert owners(idx, "api.example.com", "/v1/orders") == ["v1"]
    assert owners(idx, "api.example.com", "/v1") == ["v1"]
    assert owners(idx, "api.example.com", "/v2") == ["root"]


def test_literal_path_beats_wildcard_path() -> None:
    idx = index(("https://api.example.com/v1/users/*", "wild"), ("https://api.example.com/v1/users", "exact"))
    assert owners(idx, "api.example.com", "/v1/users") == ["exact"]
    assert owners(idx, "api.example.com", "/v1/users/1") == ["wild"]


def test_registration_order_does_not_matter() -> None:
    entries = [
        ("https://api.example.com/v1/users/*", "users"),
        ("https://api.example.com/*", "root"),
        ("https://*.example.com/v1/users/42", "wild"),
    ]
    for order in (entries, entries[::-1], entries[1:] + entries[:1]):
        idx = index(*order)
        assert owners(idx, "api.example.com", "/v1/users/42") == ["users"]
        assert owners(idx, "x.example.com", "/v1/users/42") == ["wild"]


def test_equal_specificity_between_owners_returns_all_hits() -> None:
    idx = index(("https://api.example.com/v1/*", "a"), ("https://api.example.com/v1/*", "b"))
    hits = idx.best("api.example.com", 443, "/v1/x")
    assert len(hits) == 2
    assert {h.owner for h in hits} == {"a", "b"}


def test_equal_specificity_different_patterns_both_matching() -> None:
    # Same literal prefix "/v1/", both with a wildcard: equally specific.
    a, b = parse_pattern("https://api.example.com/v1/*/x"), parse_pattern("https://api.example.com/v1/*")
    assert a.specificity == b.specificity
    idx = PatternIndex([(a, "a"), (b, "b")])
    assert owners(idx, "api.example.com", "/v1/abc/x") == ["a", "b"]
    assert owners(idx, "api.example.com", "/v1/abc/y") == ["b"]


def test_equal_wildcards_ambiguous() -> None:
    idx = index(("https://*.example.com/*", "a"), ("https://*.example.com/*", "b"))
    assert owners(idx, "x.example.com", "/") == ["a", "b"]


def test_more_specific_non_matching_pattern_does_not_hide_less_specific_match() -> None:
    idx = index(
        ("https://api.example.com/v1/users/*", "users"),
        ("https://api.example.com/*", "root"),
        ("https://*.example.com/v9/*", "wild"),
    )
    assert owners(idx, "api.example.com", "/v2/x") == ["root"]


def test_best_respects_port_and_host() -> None:
    idx = index(("https://api.example.com:8443/*", "alt"), ("https://api.example.com/*", "std"))
    assert owners(idx, "api.example.com", "/x", 8443) == ["alt"]
    assert owners(idx, "api.example.com", "/x", 443) == ["std"]
    assert owners(idx, "api.example.com", "/x", 9443) == []
    assert owners(idx, "api2.example.com", "/x") == []
    assert owners(idx, "example.com", "/x") == []


def test_v1_star_matches_v1_through_index() -> None:
    idx = index(("https://api.example.com/v1/*", "a"))
    assert owners(idx, "api.example.com", "/v1") == ["a"]
    assert owners(idx, "api.example.com", "/v1x") == []


def test_index_len_and_candidates() -> None:
    idx = index(
        ("https://api.example.com/*", "a"),
        ("https://*.example.com/*", "b"),
        ("https://*.example.com/v1", "b"),
    )
    assert len(idx) == 3
    assert {h.owner for h in idx.candidates("api.example.com", 443)} == {"a", "b"}
    assert list(idx.candidates("example.com", 443)) == []
    assert list(idx.candidates("api.example.com", 444)) == []


def test_many_connectors_index() -> None:
    idx = index(*((f"https://api{i}.example.com/v1/*", f"c{i}") for i in range(2000)))
    assert owners(idx, "api1234.example.com", "/v1/x") == ["c1234"]
    assert owners(idx, "api2000.example.com", "/v1/x") == []


# -- property tests ------------------------------------------------------------

LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,6}[a-z0-9])?", fullmatch=True)
TLD = st.from_regex(r"[a-z]{2,5}", fullmatch=True)
HOST = st.builds(lambda labels, tld: ".".join([*labels, tld]), st.lists(LABEL, min_size=1, max_size=3), TLD)
SEGMENT = st.text(alphabet="abcxyzABZ019-_~.", min_size=1, max_size=6).filter(lambda s: s not in (".", ".."))
PATH = st.lists(SEGMENT, min_size=1, max_size=4).map(lambda segs: "/" + "/".join(segs))


@st.composite
def spelled(draw: st.DrawFn, host: str) -> str:
    """The same host as a client might spell it: any case, maybe a trailing dot."""
    chars = [c.upper() if draw(st.booleans()) else c for c in host]
    return "".join(chars) + ("." if draw(st.booleans()) else "")


@st.composite
def request_path(draw: st.DrawFn, prefix: str) -> str:
    kind = draw(st.integers(0, 4))
    if kind == 0:
        return prefix
    if kind == 1:
        return prefix + "/" + "/".join(draw(st.lists(SEGMENT, max_size=3)))
    if kind == 2:
        return prefix + draw(SEGMENT)
    if kind == 3:
        return prefix[: draw(st.integers(1, len(prefix)))]
    return draw(PATH)


@PROPS
@given(data=st.data(), host=HOST, prefix=PATH)
def test_property_prefix_pattern_matches_exactly_its_scope(
    data: st.DataObject, host: str, prefix: str
) -> None:
    pattern = parse_pattern(f"https://{data.draw(spelled(host))}{prefix}/*")
    req_host = data.draw(st.one_of(spelled(host), HOST))
    path = data.draw(request_path(prefix))
    if path.rsplit("/", 1)[-1] in (".", ".."):
        # A prefix cut inside a segment such as ".a" ends in a dot segment: refused before
        # any matching (never normalised), so no pattern's scope is at stake.
        assert path_problem(path) == "dot segment in path"
        return
    assert path_problem(path) is None
    norm = normalize_host(req_host)
    expected = norm == host and (path == prefix or path.startswith(prefix + "/"))
    assert pattern.matches(norm, 443, path) is expected
    idx = PatternIndex([(pattern, "c")])
    assert bool(idx.best(norm, 443, path)) is expected


@st.composite
def maybe_subdomain(draw: st.DrawFn) -> str:
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return ".".join(draw(st.lists(LABEL, min_size=1, max_size=3))) + ".example.com"
    if kind == 1:
        return draw(st.sampled_from(["example.com", "example.com.", "EXAMPLE.COM"]))
    if kind == 2:
        label = draw(LABEL)
        return draw(
            st.sampled_from(
                [
                    f"{label}example.com",
                    f"example.com.{label}.io",
                    f"{label}.example.com.{label}.io",
                    f"{label}.example.co",
                    f"{label}.examplexcom.io",
                    f"{label}-example.com",
                ]
            )
        )
    return draw(HOST)


@PROPS
@given(data=st.data(), raw=maybe_subdomain())
def test_property_wildcard_host_scope(data: st.DataObject, raw: str) -> None:
    pattern = parse_pattern("https://*.example.com/*")
    host = normalize_host(data.draw(spelled(raw.rstrip(".").lower())))
    expected = host.endswith(".example.com")
    assert host != "example.com" or not expected
    assert pattern.host_matches(host, 443) is expected
    idx = PatternIndex([(pattern, "c")])
    assert bool(idx.best(host, 443, "/x")) is expected
    assert bool(list(idx.candidates(host, 443))) is expected


def _url(host: str, port: int, path: str) -> str:
    return f"https://{host}{'' if port == 443 else f':{port}'}{path}"


PORT = st.one_of(st.just(443), st.integers(1, 65535))


@PROPS
@given(
    data=st.data(),
    host=HOST,
    wildcard=st.booleans(),
    port=PORT,
    prefix=PATH,
    star=st.booleans(),
    mutation=st.sampled_from(["port", "host", "path"]),
)
def test_property_urls_outside_scope_never_match(
    data: st.DataObject,
    host: str,
    wildcard: bool,
    port: int,
    prefix: str,
    star: bool,
    mutation: str,
) -> None:
    pattern_text = _url(("*." if wildcard else "") + host, port, prefix + ("/*" if star else ""))
    connector = make_connector("c", patterns=[pattern_text], inject={"header": "X-Key"})
    policy = Policy([(connector, {"secret": "s3cret"})])

    in_host = (data.draw(LABEL) + "." + host) if wildcard else host
    # Sanity: the unmutated request is allowed, so the property is not vacuous.
    assert isinstance(policy.explain(_url(in_host, port, prefix)), Allow)

    req_host, req_port, req_path = in_host, port, prefix
    if mutation == "port":
        req_port = data.draw(PORT.filter(lambda p: p != port))
    elif mutation == "host":
        req_host = data.draw(HOST.filter(lambda h: h != host and not h.endswith("." + host)))
    else:
        req_path = data.draw(PATH)
        inside = req_path == prefix or (star and req_path.startswith(prefix + "/"))
        if inside:
            req_path = "/" + data.draw(SEGMENT) + "-outside" + prefix
    decision = policy.explain(_url(req_host, req_port, req_path))
    assert isinstance(decision, Block), (pattern_text, req_host, req_port, req_path)


BAD_PARTS = ["/../", "/./", "%2f", "%5c", "%25", "\\", *(chr(c) for c in range(0x20)), "\x7f"]


def case_mixed(text: str, mask: int) -> str:
    return "".join(c.upper() if mask >> (i % 16) & 1 else c for i, c in enumerate(text))


SAFE_TEXT = st.text(alphabet="abcXYZ019-_~.;=/", max_size=8)


@PROPS
@given(prefix=SAFE_TEXT, suffix=SAFE_TEXT, bad=st.sampled_from(BAD_PARTS), mask=st.integers(0, 0xFFFF))
@example(prefix="v1/users", suffix="", bad="\n", mask=0)
@example(prefix="", suffix="x", bad="%2f", mask=0b10)
def test_property_path_problem_never_accepts_bad_parts(prefix: str, suffix: str, bad: str, mask: int) -> None:
    path = "/" + prefix + case_mixed(bad, mask) + suffix
    assert path_problem(path) is not None, repr(path)
