"""Single sign-on over real HTTP: a gateway on a port, a real OpenID Connect provider on another (loopback).

Each test walks the authorization-code flow the way a browser does — gateway → provider's
authorization form → callback with the code — with ``requests`` keeping the cookies, so
discovery, PKCE, state, nonce and the ID token's signature are all checked for real.
"""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from werkzeug.wrappers import Response

from feedback import accounts
from feedback.db import open_db
from tests.plugins.oidc import CLIENT_ID

pytestmark = pytest.mark.usefixtures("sso_secret")


@pytest.fixture
def gateway_with_sso(make_gateway, serve, oidc_provider):
    """Factory: a gateway on a real port whose single sign-on points at the test provider."""

    def start(**extra):
        app = make_gateway(**oidc_provider.settings(**extra))
        return app, serve(app)

    return start


def sso_sign_in(base: str, sub: str, next_path: str = "/admin/review") -> tuple[requests.Session, requests.Response]:
    """Walk the flow as ``sub``; returns the browser-like session and the gateway's final answer."""
    browser = requests.Session()
    start = browser.get(f"{base}/admin/sso/login", params={"next": next_path}, allow_redirects=False, timeout=10)
    assert start.status_code == 302, start.text
    authorize = start.headers["Location"]
    query = parse_qs(urlsplit(authorize).query)
    assert query["client_id"] == [CLIENT_ID] and query["code_challenge_method"] == ["S256"]
    assert query["redirect_uri"] == [f"{base}/admin/sso/callback"] and query["nonce"] and query["state"]
    consent = browser.post(authorize, data={"sub": sub}, allow_redirects=False, timeout=10)
    assert consent.status_code == 302, consent.text
    callback = consent.headers["Location"]
    assert callback.startswith(f"{base}/admin/sso/callback?")
    return browser, browser.get(callback, allow_redirects=False, timeout=10)


def test_a_mapped_group_signs_in_as_that_role(gateway_with_sso, oidc_provider):
    app, base = gateway_with_sso(**{"sso.role_claim": "groups", "sso.role_map": {"support-leads": "admin"}})
    sub = oidc_provider.person("lead-1", email="Lead@Corp.example", name="Team Lead", groups=["support-leads"])
    browser, done = sso_sign_in(base, sub)
    # A page that moves on by itself (a redirect would lose the SameSite=Strict cookie, see sso.py).
    assert done.status_code == 200 and '<meta http-equiv="refresh" content="0;url=/admin/review">' in done.text
    assert browser.get(f"{base}/admin/api/users", timeout=10).status_code == 200  # admin
    db = open_db(app.extensions["tuneloop"].settings.db_path)
    account = accounts.get_user(db, "lead@corp.example")
    assert (account.role, account.name, account.source) == ("admin", "Team Lead", "sso")
    assert account.sso_subject == f"{oidc_provider.issuer} {sub}"
    session_row = db.execute("SELECT method FROM admin_sessions WHERE user_id = ?", [account.id]).fetchone()
    assert session_row == ("sso",)


def test_an_allowed_domain_without_a_role_is_a_viewer_and_any_other_domain_gets_nothing(
    gateway_with_sso, oidc_provider
):
    app, base = gateway_with_sso(**{"sso.allowed_domains": ["corp.example"]})
    inside = oidc_provider.person("staff-1", email="agent@corp.example", name="Agent")
    browser, done = sso_sign_in(base, inside)
    assert done.status_code == 200
    assert browser.get(f"{base}/admin/api/review", timeout=10).status_code == 200
    refused = browser.get(f"{base}/admin/api/users", timeout=10)  # a viewer: not the people page
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "role_required"
    outside = oidc_provider.person("guest-1", email="someone@gmail.com", name="Guest")
    stranger, page = sso_sign_in(base, outside)
    assert page.status_code == 403 and "has no tuneloop account and no role" in page.text
    assert stranger.get(f"{base}/admin/api/review", timeout=10).status_code == 401
    db = open_db(app.extensions["tuneloop"].settings.db_path)
    assert [a.email for a in accounts.list_users(db)] == ["agent@corp.example"]


def test_an_account_made_for_the_address_gives_its_role_and_a_disabled_one_stays_shut(gateway_with_sso, oidc_provider):
    app, base = gateway_with_sso()
    db = open_db(app.extensions["tuneloop"].settings.db_path)
    accounts.add_user(db, "reviewer@partner.example", role="reviewer", actor="test")
    sub = oidc_provider.person("partner-1", email="reviewer@partner.example")
    browser, done = sso_sign_in(base, sub)
    assert done.status_code == 200 and browser.get(f"{base}/admin/api/review", timeout=10).status_code == 200
    accounts.set_disabled(db, "reviewer@partner.example", True, actor="test")
    assert browser.get(f"{base}/admin/api/review", timeout=10).status_code == 401
    _, again = sso_sign_in(base, sub)
    assert again.status_code == 403 and "is disabled" in again.text


def test_a_forged_or_replayed_callback_is_refused(gateway_with_sso, oidc_provider):
    _, base = gateway_with_sso(**{"sso.allowed_domains": ["corp.example"]})
    sub = oidc_provider.person("staff-2", email="b@corp.example")
    browser = requests.Session()
    start = browser.get(f"{base}/admin/sso/login", allow_redirects=False, timeout=10)
    consent = browser.post(start.headers["Location"], data={"sub": sub}, allow_redirects=False, timeout=10)
    callback = consent.headers["Location"]
    # The code arrives in another browser (no state cookie): login CSRF is refused.
    other = requests.get(callback, allow_redirects=False, timeout=10)
    assert other.status_code == 401 and "Single sign-on failed" in other.text
    assert browser.get(callback, allow_redirects=False, timeout=10).status_code == 200
    replay = browser.get(callback, allow_redirects=False, timeout=10)  # the state was used up
    assert replay.status_code == 401


def test_a_discovery_document_naming_another_issuer_is_refused(make_gateway, serve, oidc_provider):
    # A server at the configured address whose discovery document names another issuer (a mix-up).
    def impostor(environ, start_response):
        return Response(json.dumps({"issuer": oidc_provider.issuer}), mimetype="application/json")(
            environ, start_response
        )

    app = make_gateway(**oidc_provider.settings(**{"sso.issuer": serve(impostor)}))
    page = requests.get(f"{serve(app)}/admin/sso/login", allow_redirects=False, timeout=10)
    assert page.status_code == 403 and "names issuer" in page.text and "misconfigured" in page.text


def test_single_sign_on_can_be_switched_off(make_gateway, serve):
    base = serve(make_gateway())
    assert requests.get(f"{base}/admin/sso/login", allow_redirects=False, timeout=10).status_code == 404
    assert "single sign-on" not in requests.get(f"{base}/admin/login", timeout=10).text.lower()
