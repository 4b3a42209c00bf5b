"""Named accounts in a real headless Chromium: single sign-on against a real OpenID Connect provider, passwords.

The gateway runs on a real port with single sign-on pointed at oidc-provider-mock, started by
the test on loopback; the browser clicks "Sign in with single sign-on", picks the subject on
the provider's own authorization page and comes back signed in. Other people sign in with a
password on the login form. Nothing outside loopback is fetched (the provider's page links
a remote stylesheet; those requests are aborted).
"""

from __future__ import annotations

import re
from datetime import datetime
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import pytest
from playwright.sync_api import expect

from feedback import review
from tests.plugins.accounts import PASSWORD, add_person
from tests.plugins.axe import assert_accessible

pytestmark = [pytest.mark.browser, pytest.mark.usefixtures("sso_secret")]

QUESTION = "Do you deliver to Jeju island?"
ANSWER = "Yes: Jeju orders ship in 3-4 days and cost 3,000 won more."


@pytest.fixture
def site(live_gateway, oidc_provider):
    """URL of a gateway whose single sign-on trusts the test provider ("support" group → reviewer)."""
    return live_gateway(
        **oidc_provider.settings(
            **{
                "sso.role_claim": "groups",
                "sso.role_map": {"support": "reviewer"},
                "sso.allowed_domains": ["corp.example"],
            }
        )
    )


@pytest.fixture
def person(browser):
    """Factory: a browser of one's own (own cookies), that may reach loopback only."""
    contexts = []

    def open_browser():
        context = browser.new_context(viewport={"width": 1180, "height": 820}, locale="en-US")
        context.route(
            "**/*",
            lambda route: (
                route.continue_()
                if urlsplit(route.request.url).hostname in ("127.0.0.1", "localhost")
                else route.abort()
            ),
        )
        contexts.append(context)
        tab = context.new_page()
        tab.set_default_timeout(10_000)
        return tab

    yield open_browser
    for context in contexts:
        context.close()


def sso_sign_in(page, site: str, sub: str) -> None:
    page.goto(f"{site}/admin/login")
    page.get_by_role("link", name="Sign in with single sign-on").click()
    expect(page.get_by_role("heading", name="Authorize Client")).to_be_visible()  # the provider's own page
    page.get_by_placeholder("sub").fill(sub)
    page.get_by_role("button", name="Authorize").click()
    page.wait_for_url(re.compile(re.escape(site) + r"/admin/"))


def password_sign_in(page, site: str, email: str) -> None:
    page.goto(f"{site}/admin/login")
    page.get_by_label("E-mail address").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in", exact=True).click()
    page.wait_for_url(re.compile(re.escape(site) + r"/admin/$"))


def queued(gateway_db) -> str:
    return review.create_item(gateway_db, question=QUESTION).id


def this_week(settings_tz: str = "Asia/Seoul") -> str:
    year, week, _ = datetime.now(ZoneInfo(settings_tz)).isocalendar()
    return f"{year}-W{week:02d}"


def test_a_reviewer_signed_in_through_the_provider_is_named_in_the_audit_log_and_the_report(
    site, person, oidc_provider, gateway_db
):
    item = queued(gateway_db)
    oidc_provider.person("minji", email="minji@corp.example", name="Min-ji Kim", groups=["support"])
    reviewer = person()
    sso_sign_in(reviewer, site, "minji")
    expect(reviewer.get_by_role("link", name="Min-ji Kim · reviewer")).to_be_visible()
    reviewer.goto(f"{site}/admin/review/{item}")
    expect(reviewer.get_by_text("Approving as Min-ji Kim.")).to_be_visible()
    reviewer.locator("textarea[name=answer]").fill(ANSWER)
    reviewer.get_by_role("button", name="Approve").click()
    expect(reviewer.get_by_text(f"Approved: {QUESTION}")).to_be_visible()
    assert review.get_item(gateway_db, item).reviewer == "minji@corp.example"

    add_person(gateway_db, "admin", "lead@corp.example", name="Team Lead")
    lead = person()
    password_sign_in(lead, site, "lead@corp.example")
    lead.get_by_role("link", name="Audit log").click()
    lead.get_by_label("Action").select_option("review.approve")
    lead.get_by_role("button", name="Filter").click()
    row = lead.locator("#audit tbody tr")
    expect(row).to_have_count(1)
    expect(row).to_contain_text("Min-ji Kim")
    expect(row).to_contain_text("approved a correction")
    expect(row).to_contain_text(item)
    with lead.expect_download() as download:
        lead.get_by_role("link", name="Export CSV").click()
    csv_text = open(download.value.path(), encoding="utf-8").read()
    assert "minji@corp.example,Min-ji Kim,web,review.approve" in csv_text

    lead.get_by_role("link", name="Weekly reports").click()
    lead.get_by_label("ISO week").fill(this_week())
    lead.get_by_role("button", name="Build now").click()
    expect(lead.get_by_role("heading", name="What changed, and who")).to_be_visible()
    expect(lead.locator("#changes")).to_contain_text("Min-ji Kim")
    expect(lead.locator("#changes")).to_contain_text("approved a correction")


def test_a_viewer_gets_403_on_approve_by_either_way_in(site, person, oidc_provider, gateway_db):
    item = queued(gateway_db)
    oidc_provider.person("agent", email="agent@corp.example", name="New Agent")  # allowed domain, no group
    add_person(gateway_db, "viewer", "reader@corp.example", name="Report Reader")
    by_sso, by_password = person(), person()
    sso_sign_in(by_sso, site, "agent")
    password_sign_in(by_password, site, "reader@corp.example")
    for page, name in ((by_sso, "New Agent"), (by_password, "Report Reader")):
        expect(page.get_by_role("link", name=f"{name} · viewer")).to_be_visible()
        page.goto(f"{site}/admin/review/{item}")
        page.locator("textarea[name=answer]").fill(ANSWER)
        with page.expect_response(lambda r: r.url.endswith("/approve")) as answer:
            page.get_by_role("button", name="Approve").click()
        assert answer.value.status == 403
        expect(page.locator("#forbidden")).to_have_text(
            f"{name} is a viewer; this needs the reviewer role (an admin can change it)"
        )
    assert review.get_item(gateway_db, item).status == "pending"
    assert gateway_db.execute("SELECT COUNT(*) FROM audit_log WHERE action LIKE 'review.%'").fetchone() == (1,)


def test_a_disabled_persons_open_session_stops_on_its_next_request(site, person, oidc_provider, gateway_db):
    add_person(gateway_db, "admin", "lead@corp.example", name="Team Lead")
    oidc_provider.person("leaver", email="leaver@corp.example", name="Leaving Reviewer", groups=["support"])
    leaver = person()
    sso_sign_in(leaver, site, "leaver")
    leaver.goto(f"{site}/admin/review")
    expect(leaver.get_by_role("heading", name="Review queue")).to_be_visible()

    lead = person()
    password_sign_in(lead, site, "lead@corp.example")
    lead.get_by_role("link", name="People").click()
    lead.get_by_role("button", name="disable leaver@corp.example").click()
    expect(lead.get_by_role("status")).to_contain_text("Disabled leaver@corp.example; their open sessions ended.")

    leaver.get_by_role("link", name="Worst answered").click()  # the very next request
    leaver.wait_for_url(re.compile(r"/admin/login\?next="))
    expect(leaver.get_by_role("heading", name="Sign in")).to_be_visible()
    leaver.get_by_role("link", name="Sign in with single sign-on").click()  # and single sign-on will not let them back
    expect(leaver.get_by_role("heading", name="Authorize Client")).to_be_visible()
    leaver.get_by_placeholder("sub").fill("leaver")
    leaver.get_by_role("button", name="Authorize").click()
    expect(leaver.get_by_role("alert")).to_contain_text("the account leaver@corp.example is disabled")


# Every admin page that renders HTML, reached as an admin: axe-core's WCAG 2.1 A/AA audit (tests/plugins/axe.py).
ADMIN_PAGES = ["/admin/", "/admin/review", "/admin/worst", "/admin/knowledge", "/admin/knowledge/new"]
ADMIN_PAGES += ["/admin/reports", "/admin/privacy", "/admin/users", "/admin/audit", "/admin/account"]


def test_the_sign_in_page_every_admin_page_and_the_html_report_pass_the_accessibility_audit(site, person, gateway_db):
    item = queued(gateway_db)
    add_person(gateway_db, "admin", "lead@corp.example", name="Team Lead")
    lead = person()
    lead.goto(f"{site}/admin/login")
    assert_accessible(lead, "the sign-in page")
    lead.get_by_label("E-mail address").fill("lead@corp.example")
    lead.get_by_label("Password").fill("not the password")
    lead.get_by_role("button", name="Sign in", exact=True).click()
    expect(lead.get_by_role("alert")).to_be_visible()
    assert_accessible(lead, "the sign-in page with its error")
    password_sign_in(lead, site, "lead@corp.example")
    for path in ADMIN_PAGES:
        lead.goto(site + path)
        expect(lead.get_by_role("heading").first).to_be_visible()
        assert_accessible(lead, path)

    lead.goto(f"{site}/admin/review/{item}")
    expect(lead.get_by_role("heading", name=QUESTION)).to_be_visible()
    assert_accessible(lead, "/admin/review/<item>")
    lead.goto(f"{site}/admin/knowledge")
    lead.locator("table a[href*='/admin/knowledge/']").first.click()
    lead.wait_for_url(re.compile(r"/admin/knowledge/(?!new)[^/?]+$"))
    assert_accessible(lead, "/admin/knowledge/<entry>")

    lead.get_by_role("link", name="Weekly reports").click()
    lead.get_by_label("ISO week").fill(this_week())
    lead.get_by_role("button", name="Build now").click()
    expect(lead.get_by_role("heading", name="What changed, and who")).to_be_visible()
    assert lead.url == f"{site}/admin/reports/{this_week()}", lead.url  # the HTML weekly report itself
    assert_accessible(lead, "the HTML weekly report")

    lead.goto(f"{site}/admin/users")
    lead.get_by_label("e-mail address").fill("newcomer@corp.example")
    lead.get_by_role("button", name="Add").click()
    link = lead.locator("#signin-link")
    expect(link).to_be_visible()
    assert_accessible(lead, "/admin/users with a new sign-in link")
    newcomer = person()
    newcomer.goto(link.inner_text())
    expect(newcomer.get_by_role("heading").first).to_be_visible()
    assert "/admin/welcome/" in newcomer.url
    assert_accessible(newcomer, "the one-time sign-in link's welcome page")
