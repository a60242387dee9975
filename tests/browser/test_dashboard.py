"""The dashboard, driven in chromium against the real admin API and real proxied traffic."""

from __future__ import annotations

import re
from typing import Any

import pytest
import requests
from playwright.sync_api import expect

from tests.browser.conftest import Dash, Watch
from tests.harness import egress

pytestmark = [pytest.mark.browser, pytest.mark.e2e]
COOKIE = "egress_session"


def assert_no_secret(page: Any, dash: Dash) -> None:
    """No secret value in the DOM, in the tab's storage or in a cookie scripts can read."""
    html = page.content()
    storage = page.evaluate(
        "() => JSON.stringify([Object.entries(sessionStorage), Object.entries(localStorage), document.cookie])"
    )
    for secret in [*dash.secrets, dash.token]:
        assert secret not in html
        assert secret not in storage


def assert_nothing_stored(page: Any) -> None:
    """No token or anything else in the tab's storage; the session cookie is invisible to scripts."""
    assert page.evaluate("() => [localStorage.length, sessionStorage.length]") == [0, 0]
    assert COOKIE not in page.evaluate("() => document.cookie")


def session_cookie(page: Any) -> dict[str, Any] | None:
    return next((c for c in page.context.cookies() if c["name"] == COOKIE), None)


def login(page: Any, dash: Dash, token: str | None = None) -> None:
    page.goto(dash.url + "/")
    page.get_by_label("Admin token").fill(token or dash.token)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Connectors", level=1)).to_be_visible()


def open_connector(page: Any, name: str) -> None:
    page.locator("#connectors-table").get_by_role("link", name=name, exact=True).click()
    expect(page.get_by_role("heading", name=name, level=1)).to_be_visible()


def test_login_refuses_a_bad_token_then_lists_connectors(page: Any, dash: Dash) -> None:
    page.goto(dash.url + "/")
    page.get_by_label("Admin token").fill("not-a-valid-token")
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("#login-message")).to_contain_text("did not accept the token")
    assert_nothing_stored(page)  # a refused token is not kept
    assert session_cookie(page) is None

    page.get_by_label("Admin token").fill(dash.token)
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("#connectors-table")).to_contain_text("flaky")
    assert_nothing_stored(page)

    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_label("Admin token")).to_be_visible()
    expect(page.locator("#login-message")).to_have_text("Logged out.")
    assert session_cookie(page) is None
    assert_nothing_stored(page)
    assert_no_secret(page, dash)


def test_the_session_lives_in_an_httponly_cookie_and_nothing_in_storage(page: Any, dash: Dash) -> None:
    login(page, dash)
    assert_nothing_stored(page)
    cookie = session_cookie(page)
    assert cookie is not None
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict" and cookie["path"] == "/"
    assert cookie["secure"] is False and cookie["expires"] == -1  # plain http here; a browser-session cookie
    assert dash.token not in cookie["value"]
    assert_no_secret(page, dash)

    # A reload keeps the session (the cookie) without the token: the page asks for its CSRF token again.
    page.reload()
    expect(page.locator("#connectors-table")).to_contain_text("flaky")
    assert_nothing_stored(page)
    # The browser sends the cookie by itself, but a change without the CSRF token is refused.
    status = page.evaluate(
        "() => fetch('/api/v1/workspaces/default/connectors/flaky', {method: 'DELETE'}).then(r => r.status)"
    )
    assert status == 403
    assert dash.api("GET", "/workspaces/default/connectors/flaky").status_code == 200

    # Logging out ends the session on the server: the same cookie, sent again, is refused.
    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_label("Admin token")).to_be_visible()
    res = requests.get(f"{dash.url}/api/v1/whoami", cookies={COOKIE: cookie["value"]}, timeout=10)
    assert res.status_code == 401
    page.reload()
    expect(page.get_by_label("Admin token")).to_be_visible()


def test_revoking_the_token_ends_the_dashboard_session(page: Any, dash: Dash) -> None:
    token = dash.admin_token("--label", "revoked-in-browser")
    login(page, dash, token)
    res = egress(dash.proxy.home, "admin", "token", "revoke", token.split("_")[2])
    assert res.returncode == 0, res.stderr
    page.get_by_role("button", name="Refresh").click()
    expect(page.get_by_label("Admin token")).to_be_visible()
    expect(page.locator("#login-message")).to_contain_text("The session has ended")
    assert session_cookie(page) is None  # the refusal cleared it


def test_add_a_connector_from_the_stripe_preset(page: Any, dash: Dash) -> None:
    secret = "sk_test_BROWSER_preset_9c41e0"
    dash.secrets.append(secret)
    login(page, dash)
    page.get_by_role("link", name="Add connector").click()
    page.get_by_label("Provider").select_option(label="Stripe")
    # The preset fills in its patterns and placement and names the connector after itself.
    expect(page.get_by_label("Name", exact=True)).to_have_value("stripe")
    expect(page.get_by_label("Allowed URL patterns")).to_have_value(
        re.compile(r"https://api\.stripe\.com/\*")
    )
    page.get_by_label("Name", exact=True).fill("stripe-live")
    page.get_by_label("Secret value").fill(secret)
    page.get_by_role("button", name="Create connector").click()
    expect(page.get_by_role("heading", name="stripe-live", level=1)).to_be_visible()
    expect(page.locator("#secret-status")).to_contain_text("secret set, last changed")
    assert_no_secret(page, dash)

    page.get_by_role("link", name="Connectors").first.click()
    row = page.locator("#connectors-table tr", has_text="stripe-live")
    expect(row).to_contain_text("https://api.stripe.com/*")
    expect(row).to_contain_text("Authorization")
    assert_no_secret(page, dash)
    created = dash.api("GET", "/workspaces/default/connectors/stripe-live").json()
    assert created["preset"] == "stripe" and created["secret_set"] is True


def test_a_refused_field_is_named_next_to_it(page: Any, dash: Dash) -> None:
    secret = "sk_BROWSER_refused_3e8a"
    dash.secrets.append(secret)
    login(page, dash)
    page.get_by_role("link", name="Add connector").click()
    page.get_by_label("Name", exact=True).fill("plain-http")
    page.get_by_label("Allowed URL patterns").fill("http://api.example.com/*")
    expect(page.locator("#f-patterns-hint")).to_contain_text("not an https:// URL")  # a hint, not a block
    page.get_by_label("Secret value").fill(secret)
    page.get_by_role("button", name="Create connector").click()
    error = page.locator("#f-patterns-error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("patterns")
    expect(page.locator("#f-patterns")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#form-error")).to_be_visible()
    assert dash.api("GET", "/workspaces/default/connectors/plain-http").status_code == 404
    assert_no_secret(page, dash)


def test_replace_a_secret(page: Any, dash: Dash) -> None:
    dash.add_connector("rotated", "sk_BROWSER_old_a1b2c3", path="/v1/rotated/*")
    new = "sk_BROWSER_new_d4e5f6"
    dash.secrets.append(new)
    before = dash.api("GET", "/workspaces/default/connectors/rotated").json()["secret_updated_at"]
    login(page, dash)
    open_connector(page, "rotated")
    page.get_by_role("link", name="Replace secret").click()
    page.get_by_label("Secret value").fill(new)
    page.get_by_role("button", name="Replace secret").click()
    expect(page.get_by_role("status")).to_contain_text("Secret replaced")
    expect(page.locator("#secret-status")).to_contain_text("secret set, last changed")
    assert_no_secret(page, dash)
    assert dash.api("GET", "/workspaces/default/connectors/rotated").json()["secret_updated_at"] >= before
    # The proxy injects the new value: the upstream sees it, the page never did.
    assert dash.injected("/v1/rotated/check-new", f"Bearer {new}")


def test_connector_page_shows_real_errors_chart_and_health(page: Any, dash: Dash) -> None:
    dash.fail(3)
    login(page, dash)
    open_connector(page, "flaky")
    rows = page.locator("#errors-table tbody tr")
    expect(rows.first).to_be_visible()
    assert rows.count() >= 3
    first = rows.first
    for cell in ("500", "GET", "api.stripe.test", "/v1/status"):
        expect(first).to_contain_text(cell)
    expect(page.locator("#chart g.hour")).to_have_count(24)
    expect(page.locator("#health .badge")).to_be_visible()
    assert_no_secret(page, dash)


def test_blocked_page_renders_attacker_strings_as_text(page: Any, dash: Dash, watch: Watch) -> None:
    # Paths and grant labels come from the sandbox; both carry markup that would run if parsed.
    path = "/x/<img/src/onerror=alert(1)><svg/onload=alert(2)>"
    label = "<img src=x onerror=alert(3)>"
    dash.block(path, grant=dash.grant(label))
    login(page, dash)
    page.get_by_role("link", name="Blocked requests").click()
    table = page.locator("#blocked-table")
    row = table.locator("tbody tr", has_text="/x/").first
    expect(row).to_be_visible()
    expect(row.locator("td.path")).to_have_text(re.compile(re.escape(path)))
    expect(row).to_contain_text(label)
    (event,) = [e for e in dash.api("GET", "/workspaces/default/logs/blocked").json() if e["path"] == path]
    expect(row).to_contain_text(event["reason"])  # bad-path or no-connector: the proxy's call, shown as is
    expect(row).to_contain_text("api.stripe.test")
    page.wait_for_timeout(300)  # an injected onerror/onload would have fired by now
    assert table.locator("img, svg, script").count() == 0
    assert page.locator("img").count() == 0
    assert watch.dialogs == []
    assert_no_secret(page, dash)


def test_read_only_token_sees_no_write_controls(page: Any, dash: Dash) -> None:
    login(page, dash, dash.admin_token("--read-only"))
    expect(page.locator("#ro-badge")).to_be_visible()
    expect(page.locator("#connectors-table")).to_contain_text("flaky")
    expect(page.get_by_role("link", name="Add connector")).to_have_count(0)
    open_connector(page, "flaky")
    expect(page.locator("#secret-status")).to_be_visible()
    for name in ("Edit", "Replace secret", "Delete"):
        expect(page.get_by_role("link", name=name, exact=True)).to_have_count(0)
        expect(page.get_by_role("button", name=name, exact=True)).to_have_count(0)
    page.goto(dash.url + "/#/w/default/new")
    expect(page.get_by_role("heading", name="Read-only")).to_be_visible()
    expect(page.locator("form.connector-form")).to_have_count(0)
    assert_no_secret(page, dash)


def test_workspace_token_sees_only_its_workspace(page: Any, dash: Dash) -> None:
    login(page, dash, dash.admin_token("--workspace", "acme"))
    expect(page.locator("#workspace-box")).to_contain_text("Workspace: acme")
    expect(page.locator("select#workspace")).to_have_count(0)
    expect(page.locator("#connectors-table")).to_contain_text("acme-only")
    expect(page.locator("#connectors-table")).not_to_contain_text("flaky")  # in default


def test_edit_then_delete_with_confirmation(page: Any, dash: Dash) -> None:
    dash.add_connector("doomed", "sk_BROWSER_doomed_77aa", path="/v1/doomed/*")
    login(page, dash)
    open_connector(page, "doomed")
    page.get_by_role("link", name="Edit").click()
    expect(page.get_by_label("Name", exact=True)).to_have_value("doomed")
    expect(page.locator("input[type=password]").first).to_have_value("")  # never prefilled
    page.get_by_label("Methods (optional)").fill("GET")
    page.get_by_role("button", name="Save changes").click()
    expect(page.get_by_role("heading", name="doomed", level=1)).to_be_visible()
    expect(page.locator("dl.facts")).to_contain_text("GET")

    page.get_by_role("button", name="Delete").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("Delete doomed?")
    dialog.get_by_role("button", name="Cancel").click()
    expect(page.get_by_role("heading", name="doomed", level=1)).to_be_visible()
    page.get_by_role("button", name="Delete").click()
    page.get_by_role("dialog").get_by_role("button", name="Delete").click()
    expect(page.get_by_role("heading", name="Connectors", level=1)).to_be_visible()
    expect(page.locator("#connectors-table")).not_to_contain_text("doomed")
    assert dash.api("GET", "/workspaces/default/connectors/doomed").status_code == 404
    assert_no_secret(page, dash)


def test_narrow_window_keeps_everything_reachable(page: Any, dash: Dash) -> None:
    page.set_viewport_size({"width": 390, "height": 800})
    login(page, dash)
    open_connector(page, "flaky")
    # Nothing wider than the window: the tables turn into one card per row.
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 390
    expect(page.get_by_role("link", name="Blocked requests")).to_be_visible()


def test_keyboard_only(page: Any, dash: Dash) -> None:
    page.goto(dash.url + "/")
    expect(page.get_by_label("Admin token")).to_be_focused()
    page.keyboard.type(dash.token)
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Connectors", level=1)).to_be_visible()
    link = page.locator("#connectors-table").get_by_role("link", name="flaky", exact=True)
    for _ in range(30):  # Tab through the header and the table until the row's link has focus
        page.keyboard.press("Tab")
        if link.evaluate("el => el === document.activeElement"):
            break
    expect(link).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="flaky", level=1)).to_be_focused()  # focus follows the page
    page.get_by_role("button", name="Delete").focus()
    page.keyboard.press("Enter")
    expect(page.get_by_role("dialog")).to_be_visible()
    page.keyboard.press("Escape")  # cancels: nothing is deleted
    expect(page.get_by_role("dialog")).to_have_count(0)
    assert dash.api("GET", "/workspaces/default/connectors/flaky").status_code == 200
