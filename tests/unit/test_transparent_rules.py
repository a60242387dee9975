"""The transparent-mode firewall rules, and the deploy examples that carry them."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.service.transparent import iptables_rules

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def test_rules_match_only_the_sandbox_uid_and_close_every_other_way_out() -> None:
    rules = iptables_rules(20000, 8081, 9090)
    assert all("--uid-owner 20000" in r for r in rules if "OUTPUT" in r)
    assert not any("--uid-owner 0" in r for r in rules)
    assert rules[1].endswith("--dports 80,443 -j REDIRECT --to-ports 8081")
    assert "--dports 8081,9090 -j REJECT" in " ".join(rules)  # the proxy's own ports
    assert rules[-1].startswith("ip6tables") and rules[-1].endswith("-j REJECT")


@pytest.mark.parametrize("example", ["kubernetes/pod-transparent.yaml", "docker-compose.transparent.yaml"])
def test_deploy_examples_carry_the_generated_rules(example: str) -> None:
    text = (DEPLOY / example).read_text()
    shown = [
        line.strip() for line in text.splitlines() if line.strip().startswith(("iptables ", "ip6tables "))
    ]
    assert shown == iptables_rules(20000, 8081, 9090)
