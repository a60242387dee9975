"""The run spec and the one host:port parser/formatter it relies on."""

from __future__ import annotations

import pytest

from proxy.errors import ConfigError
from proxy.hosts import format_authority, is_loopback, parse_listen, split_authority
from proxy.runtime.settings import RunSettings


def test_settings_round_trip_through_json() -> None:
    s = RunSettings(
        home="/h", run_dir="/h/run", listen="[::1]:0", workers=3, allow_network=("127.0.0.0/8",),
        resolve=("a.test=127.0.0.1",), require_grant=True, log_format="json",
    )  # fmt: skip
    again = RunSettings.from_json(s.to_json())
    assert again == s
    assert again.listen_address == ("::1", 0)
    assert again.with_listen("127.0.0.1:9").listen_address == ("127.0.0.1", 9)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("127.0.0.1:8080", ("127.0.0.1", 8080)), ("[::1]:0", ("::1", 0)), (":9090", ("127.0.0.1", 9090))],
)
def test_parse_listen(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen(text, "--listen") == expected


@pytest.mark.parametrize("text", ["8080", "host:", "h:65536", "h:-1", "h:\uff18\uff10", "h:80a"])
def test_parse_listen_refuses(text: str) -> None:
    with pytest.raises(ConfigError, match="--admin"):
        parse_listen(text, "--admin")


@pytest.mark.parametrize(
    ("host", "port", "default", "shown"),
    [("a.test", 443, 443, "a.test"), ("a.test", 8443, 443, "a.test:8443"), ("::1", 443, 443, "[::1]"),
     ("::1", 80, None, "[::1]:80"), ("127.0.0.1", 443, None, "127.0.0.1:443")],
)  # fmt: skip
def test_format_authority(host: str, port: int, default: int | None, shown: str) -> None:
    assert format_authority(host, port, default) == shown
    assert split_authority(format_authority(host, port)) == (host, port)


def test_is_loopback() -> None:
    assert all(map(is_loopback, ["127.0.0.1", "127.9.9.9", "::1", "localhost"]))
    assert not any(map(is_loopback, ["0.0.0.0", "10.0.0.1", "example.test", "::"]))
