"""Credential health: the classification of outcomes and the state rule, at its edges."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.health import (
    CLIENT_ERROR,
    REJECTED,
    SERVER_ERROR,
    TRANSPORT,
    Counts,
    State,
    assess,
    health,
    outcome_slot,
)
from proxy.stats import Tally

DAY = Counts(100)  # some traffic earlier in the day, so a quiet hour is not "unused"


@pytest.mark.parametrize(
    ("status", "slot"),
    [
        (200, None),
        (101, None),
        (304, None),
        (399, None),
        (400, CLIENT_ERROR),
        (401, REJECTED),
        (403, REJECTED),
        (404, CLIENT_ERROR),
        (407, CLIENT_ERROR),
        (429, CLIENT_ERROR),
        (499, CLIENT_ERROR),
        (500, SERVER_ERROR),
        (503, SERVER_ERROR),
        (599, SERVER_ERROR),
        (None, TRANSPORT),
    ],
)
def test_outcome_classes(status: int | None, slot: int | None) -> None:
    assert outcome_slot(status) == slot


def test_no_requests_at_all_is_unused() -> None:
    assert assess(Counts(), Counts()) is State.UNUSED


def test_traffic_earlier_in_the_day_but_not_this_hour_is_ok() -> None:
    assert assess(Counts(), Counts(3, rejected=3)) is State.OK


@pytest.mark.parametrize(
    ("hour", "state"),
    [
        (Counts(5, rejected=5), State.CREDENTIAL_REJECTED),
        (Counts(5, rejected=3), State.CREDENTIAL_REJECTED),  # 60 %
        (Counts(5, rejected=2), State.OK),  # 40 %
        (Counts(4, rejected=4), State.OK),  # too few requests to judge
        (Counts(10, rejected=5), State.CREDENTIAL_REJECTED),  # exactly 50 %
        (Counts(10, rejected=4), State.OK),
        (Counts(11, rejected=5), State.OK),  # just under half
        (Counts(5, server_errors=3), State.FAILING),
        (Counts(10, server_errors=5), State.FAILING),
        (Counts(10, server_errors=2, transport_failures=3), State.FAILING),  # 5xx and transport add up
        (Counts(10, transport_failures=5), State.FAILING),
        (Counts(10, server_errors=4), State.OK),
        (Counts(4, transport_failures=4), State.OK),  # too few
        (Counts(10, rejected=5, server_errors=5), State.CREDENTIAL_REJECTED),  # the fixable one first
        (Counts(10, rejected=4, server_errors=4), State.OK),  # neither dominates alone
        (Counts(50, client_errors=50), State.OK),  # only 404s: the sandbox asked for nothing
        (Counts(10, client_errors=6, rejected=4), State.OK),
    ],
)
def test_state_rule(hour: Counts, state: State) -> None:
    assert assess(hour, DAY) is state


@given(st.integers(0, 10_000), st.integers(0, 10_000))
def test_other_4xx_alone_never_make_a_connector_look_broken(requests: int, client: int) -> None:
    hour = Counts(requests, client_errors=min(client, requests))
    state = assess(hour, Counts(requests))
    assert state in (State.OK, State.UNUSED)
    assert not health(hour, Counts(requests)).alert


def test_alert_follows_the_state() -> None:
    assert health(Counts(5, rejected=5), DAY).alert
    assert health(Counts(5, transport_failures=5), DAY).alert
    assert not health(Counts(5, server_errors=2), DAY).alert
    assert not health(Counts(), Counts()).alert


def test_shares_and_json_shape() -> None:
    h = health(Counts(8, rejected=6), Counts(40, rejected=10))
    assert (h.rejected_share_1h, h.rejected_share_24h) == (0.75, 0.25)
    doc = h.to_dict()
    assert doc["state"] == "credential-rejected" and type(doc["state"]) is str
    assert doc["last_1h"] == {
        "requests": 8,
        "rejected": 6,
        "client_errors": 0,
        "server_errors": 0,
        "transport_failures": 0,
    }
    assert health(Counts(), Counts()).rejected_share_1h == 0.0


def test_tally_counts_each_class_and_merge_keeps_them() -> None:
    tally = Tally(lambda: 120.0)
    slots = [tally.request("c", s) for s in (200, 401, 403, 404, 502, None)]
    assert slots == [None, REJECTED, REJECTED, CLIENT_ERROR, SERVER_ERROR, TRANSPORT]
    first = tally.drain()
    assert first.requests == {("c", 2): [6, 5, 2, 1, 1, 1]}
    tally.request("c", 401)
    tally.merge(first)
    assert tally.drain().requests == {("c", 2): [7, 6, 3, 1, 1, 1]}
