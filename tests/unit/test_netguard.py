"""The SSRF guard: only public unicast addresses pass unless a range is opened; pins parse."""

from __future__ import annotations

import pytest

from proxy.errors import ConfigError
from proxy.netguard import NetGuard


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.255.255.254",
        "::1",
        "::ffff:127.0.0.1",
        "169.254.169.254",
        "::ffff:169.254.169.254",
        "10.0.0.1",
        "172.16.0.1",
        "192.168.1.1",
        "100.64.0.1",
        "100.127.255.254",
        "fd00:ec2::254",
        "fd00::1",
        "fe80::1",
        "fe80::1%1",
        "0.0.0.0",
        "::",
        "224.0.0.1",
        "ff02::1",
        "255.255.255.255",
        "198.18.0.1",
        "::127.0.0.1",
        "64:ff9b::7f00:1",
        "64:ff9b::a9fe:a9fe",
        "64:ff9b:1::a00:1",
        "2002:7f00:1::",
        "2002:a9fe:a9fe::",
        "2001:0:4136:e378:8000:63bf:80ff:fffe",
        "::ffff:0:7f00:1",
        "::ffff:0:a9fe:a9fe",
        "::ffff:0:a00:1",
        "not-an-ip",
        "",
    ],
)
def test_netguard_refuses_private_forms(address: str) -> None:
    assert not NetGuard().permits(address), f"{address!r} may be dialled by default"
    # Opening loopback for tests must not open metadata or other private ranges.
    if not address.startswith(("127.", "::ffff:127.")):
        assert not NetGuard(["127.0.0.0/8"]).permits(address), f"{address!r} opened by 127.0.0.0/8"


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_netguard_permits_public(address: str) -> None:
    assert NetGuard().permits(address)


@pytest.mark.parametrize(
    "pin", ["api.test", "api.test=", "api.test=not-an-ip", "=1.2.3.4", "bad host=1.2.3.4"]
)
def test_bad_pins_are_config_errors(pin: str) -> None:
    with pytest.raises(ConfigError, match="--resolve"):
        NetGuard(pins=[pin])


def test_pins_normalise_names_and_addresses() -> None:
    guard = NetGuard(pins=["API.Test.=[::1]", "b.test=127.0.0.2"])
    assert guard.pins == {"api.test": "::1", "b.test": "127.0.0.2"}


@pytest.mark.parametrize("cidr", ["10.0.0.0/33", "nope", "1.2.3.4/"])
def test_bad_networks_are_config_errors(cidr: str) -> None:
    with pytest.raises(ConfigError, match="--allow-network"):
        NetGuard([cidr])
