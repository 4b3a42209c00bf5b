"""Roles on every admin route, walked from the route map; the admin token after bootstrap; sessions that end.

The table is the app's own ``url_map``: a route added tomorrow without ``@requires(...)`` fails
``test_every_admin_route_declares_a_role``, and is refused at run time anyway (fail closed).
"""

from __future__ import annotations

import pytest

from feedback import accounts, review
from feedback.db import open_db
from server.admin import admin_token
from server.admin.auth import declared_role
from tests.plugins.accounts import PASSWORD, add_person, csrf_field, password_login

BROWSER = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
PUBLIC_ENDPOINTS = {
    "admin.login",
    "admin.login_submit",
    "admin.welcome",
    "admin.welcome_submit",
    "admin.sso_login",
    "admin.sso_callback",
}
# The least role each group of pages needs: the product's rules, written down once more on purpose.
EXPECTED = {
    "admin.index": "viewer",
    "admin.reports": "viewer",
    "admin.reports_json": "viewer",
    "admin.report_file": "viewer",
    "admin.worst": "viewer",
    "admin.worst_json": "viewer",
    "admin.review_list": "viewer",
    "admin.review_list_json": "viewer",
    "admin.review_item": "viewer",
    "admin.knowledge_list": "viewer",
    "admin.knowledge_list_json": "viewer",
    "admin.knowledge_entry": "viewer",
    "admin.knowledge_entry_json": "viewer",
    "admin.account": "viewer",
    "admin.account_password": "viewer",
    "admin.logout": "viewer",
    "admin.reports_generate": "reviewer",
    "admin.review_collect": "reviewer",
    "admin.review_approve": "reviewer",
    "admin.review_edit": "reviewer",
    "admin.review_reject": "reviewer",
    "admin.review_approve_json": "reviewer",
    "admin.review_reject_json": "reviewer",
    "admin.knowledge_new": "reviewer",
    "admin.knowledge_create": "reviewer",
    "admin.knowledge_edit": "reviewer",
    "admin.knowledge_retire": "reviewer",
    "admin.knowledge_restore": "reviewer",
    "admin.users": "admin",
    "admin.users_json": "admin",
    "admin.users_add": "admin",
    "admin.users_role": "admin",
    "admin.users_disable": "admin",
    "admin.users_enable": "admin",
    "admin.users_link": "admin",
    "admin.audit": "admin",
    "admin.audit_csv": "admin",
    "admin.audit_json": "admin",
    "admin.privacy": "admin",
    "admin.privacy_purge_preview": "admin",
    "admin.privacy_purge_allow": "admin",
    "admin.privacy_erase": "admin",
    "admin.privacy_export": "admin",
    "admin.privacy_erase_json": "admin",
    "admin.privacy_export_json": "admin",
    "admin.privacy_log_json": "admin",
    "admin.privacy_status_json": "admin",
    "admin.privacy_purge_json": "admin",
}


@pytest.fixture
def app(make_gateway):
    return make_gateway()


def admin_routes(app) -> list[tuple[str, str, str]]:
    """(endpoint, method, url with placeholder arguments) for every admin route."""
    routes = []
    for rule in app.url_map.iter_rules():
        if not rule.endpoint.startswith("admin."):
            continue
        url = rule.rule
        for argument in rule.arguments:
            url = url.replace(f"<{argument}>", "2026-W01" if argument == "name" else "missing-id")
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            routes.append((rule.endpoint, method, url))
    return routes


def test_every_admin_route_declares_a_role(app):
    declared = {endpoint: declared_role(app.view_functions[endpoint]) for endpoint, _, _ in admin_routes(app)}
    assert None not in declared.values(), [e for e, r in declared.items() if r is None]
    assert {e for e, r in declared.items() if r == "public"} == PUBLIC_ENDPOINTS
    assert {e: r for e, r in declared.items() if r != "public"} == EXPECTED


def test_a_view_without_a_role_is_refused(app):
    # Fail closed: strip the declaration off one view and even the admin token cannot open it.
    view = app.view_functions["admin.reports_json"]
    del view.tuneloop_role
    try:
        token = admin_token(app.extensions["tuneloop"].settings, open_db(app.extensions["tuneloop"].settings.db_path))
        refused = app.test_client().get("/admin/api/reports", headers={"Authorization": f"Bearer {token}"})
        assert refused.status_code == 403 and refused.get_json()["error"]["code"] == "no_role_declared"
    finally:
        view.tuneloop_role = "viewer"


def _session(app, role: str):
    add_person(app, role)
    client = app.test_client()
    assert password_login(client, f"{role}@example.com").status_code == 302
    return client, csrf_field(client.get("/admin/account").get_data(as_text=True))


def test_every_route_enforces_its_role_for_every_role(app):
    sessions = {role: _session(app, role) for role in ("viewer", "reviewer", "admin")}
    anonymous = app.test_client()
    checked = 0
    for endpoint, method, url in admin_routes(app):
        needed = EXPECTED.get(endpoint)
        if needed is None or endpoint == "admin.logout":
            continue  # public pages; logging out is checked below (it would end the session mid-walk)
        response = anonymous.open(url, method=method, headers={"Accept": "application/json"})
        assert response.status_code == 401, (endpoint, method, response.status_code)
        for role, (client, csrf) in sessions.items():
            data = {"csrf": csrf} if method == "POST" else None
            response = client.open(url, method=method, data=data, headers={"Accept": "application/json"})
            if accounts.has_role(role, needed):
                assert response.status_code not in (401, 403), (endpoint, method, role, response.get_data(as_text=True))
            else:
                assert response.status_code == 403, (endpoint, method, role, response.status_code)
                assert response.get_json()["error"]["code"] == "role_required"
            checked += 1
    assert checked >= 3 * (len(EXPECTED) - 1)
    for role, (client, csrf) in sessions.items():
        assert client.post("/admin/logout", data={"csrf": csrf}).status_code == 302
        assert client.get("/admin/api/reports").status_code == 401, role


def test_a_viewer_is_told_why_in_a_page(app):
    client, csrf = _session(app, "viewer")
    page = client.post("/admin/review/missing-id/approve", data={"answer": "x", "csrf": csrf}, headers=BROWSER)
    text = page.get_data(as_text=True)
    assert page.status_code == 403 and "Viewer is a viewer; this needs the reviewer role" in text
    assert "Not allowed" in text and "Log out" in text


def test_the_admin_token_is_for_the_api_once_an_admin_account_exists(app):
    settings = app.extensions["tuneloop"].settings
    token = admin_token(settings, open_db(settings.db_path))
    bearer = {"Authorization": f"Bearer {token}"}
    client = app.test_client()
    # Bootstrap: the token opens pages and the login form, and a token session works.
    assert client.get("/admin/reports", headers=bearer).status_code == 200
    assert client.post("/admin/login", data={"token": token}).status_code == 302
    assert client.get("/admin/reports").status_code == 200
    add_person(app, "reviewer")  # not an admin: still bootstrap
    assert client.get("/admin/reports").status_code == 200
    add_person(app, "admin")
    # Now: the API only, the token session ended, the form refuses the token without comparing it.
    assert app.test_client().get("/admin/api/reports", headers=bearer).status_code == 200
    page = app.test_client().get("/admin/reports", headers=bearer)
    assert page.status_code == 401 and page.get_json()["error"]["code"] == "token_is_for_the_api"
    assert client.get("/admin/api/reports").status_code == 401
    refused = app.test_client().post("/admin/login", data={"token": token})
    assert refused.status_code == 401 and "no longer opens these pages" in refused.get_data(as_text=True)
    assert "admin token" not in app.test_client().get("/admin/login").get_data(as_text=True)


def test_password_sign_in_and_what_a_failure_says(app):
    add_person(app, "reviewer", "Min-ji@Example.com", name="Min-ji Kim")
    client = app.test_client()
    wrong = password_login(client, "min-ji@example.com", "not the password")
    unknown = password_login(client, "nobody@example.com", "not the password")
    for response in (wrong, unknown):  # the same answer whether or not the address has an account
        assert response.status_code == 401
        assert "That e-mail address and password do not match." in response.get_data(as_text=True)
    signed = password_login(client, "MIN-JI@example.com", PASSWORD, "/admin/review")
    assert signed.status_code == 302 and signed.headers["Location"] == "/admin/review"
    cookie = signed.headers["Set-Cookie"]
    assert all(a in cookie for a in ("HttpOnly", "SameSite=Strict", "Path=/admin"))
    assert "Min-ji Kim · reviewer" in client.get("/admin/").get_data(as_text=True)


def test_password_sign_in_is_throttled_per_account(make_gateway):
    app = make_gateway(**{"admin.signin_attempts_per_account": 3})
    add_person(app, "viewer")
    for i in range(3):
        client = app.test_client()
        response = client.post(
            "/admin/login",
            data={"email": "viewer@example.com", "password": "guess"},
            environ_base={"REMOTE_ADDR": f"10.9.0.{i}"},
        )
        assert response.status_code == 401
    refused = app.test_client().post(
        "/admin/login",
        data={"email": "viewer@example.com", "password": PASSWORD},
        environ_base={"REMOTE_ADDR": "10.9.1.1"},
    )
    assert refused.status_code == 429 and "Retry-After" in refused.headers
    assert "too many failed sign-ins for viewer@example.com" in refused.get_data(as_text=True)


def test_disabling_or_changing_a_role_ends_open_sessions_at_once(app, make_gateway):
    viewer, _ = _session(app, "viewer")
    reviewer, _ = _session(app, "reviewer")
    other_gateway = make_gateway().test_client()  # the same cookie, presented to another gateway
    other_gateway.set_cookie(
        "tuneloop_admin", reviewer.get_cookie("tuneloop_admin", path="/admin").value, path="/admin"
    )
    assert reviewer.get("/admin/api/review").status_code == 200
    assert other_gateway.get("/admin/api/review").status_code == 200
    db = open_db(app.extensions["tuneloop"].settings.db_path)
    accounts.set_disabled(db, "reviewer@example.com", True, actor="test")
    accounts.set_role(db, "viewer@example.com", "reviewer", actor="test")
    for client in (reviewer, other_gateway, viewer):
        assert client.get("/admin/api/review").status_code == 401
    assert password_login(app.test_client(), "reviewer@example.com").status_code == 401  # disabled: no way back in
    again = app.test_client()
    assert password_login(again, "viewer@example.com").status_code == 302
    assert "Viewer · reviewer" in again.get("/admin/").get_data(as_text=True)
    entries = db.execute(
        "SELECT action, details FROM audit_log WHERE action IN ('user.disable', 'user.role')"
    ).fetchall()
    assert [a for a, _ in entries] == ["user.disable", "user.role"]
    assert all('"sessions_ended": 1' in d for _, d in entries)


def test_a_reviewer_decides_as_themselves_and_the_form_has_no_name_field(app):
    db = open_db(app.extensions["tuneloop"].settings.db_path)
    item = review.create_item(db, question="Do you ship to Jeju?")
    add_person(app, "reviewer", "minji@example.com", name="Min-ji Kim")
    client = app.test_client()
    password_login(client, "minji@example.com")
    page = client.get(f"/admin/review/{item.id}").get_data(as_text=True)
    assert 'name="reviewer"' not in page and "Approving as <b>Min-ji Kim</b>" in page
    done = client.post(
        f"/admin/review/{item.id}/approve",
        data={"answer": "Yes, for 3,000 won more.", "reviewer": "someone else", "csrf": csrf_field(page)},
    )
    assert done.status_code == 302
    assert review.get_item(db, item.id).reviewer == "minji@example.com"
    row = db.execute("SELECT actor, actor_name, actor_id, via, target FROM audit_log WHERE action = 'review.approve'")
    assert row.fetchall() == [
        ("minji@example.com", "Min-ji Kim", accounts.get_user(db, "minji@example.com").id, "web", item.id)
    ]


def test_scripts_approve_through_the_api_with_the_token(app):
    settings = app.extensions["tuneloop"].settings
    db = open_db(settings.db_path)
    item = review.create_item(db, question="Is there a store in Busan?")
    add_person(app, "admin")
    bearer = {"Authorization": f"Bearer {admin_token(settings, db)}"}
    client = app.test_client()
    approved = client.post(f"/admin/api/review/{item.id}/approve", json={"answer": "Yes, in Seomyeon."}, headers=bearer)
    assert approved.status_code == 200 and approved.get_json()["status"] == "approved"
    bad = client.post(f"/admin/api/review/{item.id}/reject", json={"note": 5}, headers=bearer)
    assert bad.status_code == 422 and bad.get_json()["error"]["field"] == "note"
    entry = db.execute("SELECT actor, actor_name, via FROM audit_log WHERE action = 'review.approve'").fetchone()
    assert entry == ("admin", "admin (admin token)", "api")


def test_a_one_time_link_sets_the_password_once(app):
    db = open_db(app.extensions["tuneloop"].settings.db_path)
    account = accounts.add_user(db, "new@example.com", role="reviewer", actor="test")
    secret = accounts.create_signin_link(db, account.id, actor="test", hours=1)
    client = app.test_client()
    form = client.get(f"/admin/welcome/{secret}")
    assert form.status_code == 200 and "new@example.com" in form.get_data(as_text=True)
    short = client.post(f"/admin/welcome/{secret}", data={"password": "short", "confirm": "short"})
    assert short.status_code == 422 and "at least 12 characters" in short.get_data(as_text=True)
    done = client.post(f"/admin/welcome/{secret}", data={"password": PASSWORD, "confirm": PASSWORD})
    assert done.status_code == 302 and client.get("/admin/api/review").status_code == 200
    again = app.test_client().post(f"/admin/welcome/{secret}", data={"password": PASSWORD, "confirm": PASSWORD})
    assert again.status_code == 403 and "does not work" in again.get_data(as_text=True)
    assert password_login(app.test_client(), "new@example.com").status_code == 302
    # The store keeps only the link's hash, and the audit log no secret.
    assert secret not in str(db.execute("SELECT * FROM signin_links").fetchall())
    assert secret not in str(db.execute("SELECT * FROM audit_log").fetchall())


def test_password_sign_in_can_be_switched_off(make_gateway):
    app = make_gateway(**{"admin.password_signin": False})
    add_person(app, "admin")
    page = app.test_client().get("/admin/login").get_data(as_text=True)
    assert 'name="password"' not in page
    refused = password_login(app.test_client(), "admin@example.com")
    assert refused.status_code == 403 and "switched off" in refused.get_data(as_text=True)


def test_people_page_adds_changes_and_disables(app):
    client, csrf = _session(app, "admin")
    added = client.post(
        "/admin/users", data={"email": "Ana@Example.com", "name": "<b>Ana</b>", "role": "reviewer", "csrf": csrf}
    )
    text = added.get_data(as_text=True)
    assert added.status_code == 200 and "Added ana@example.com as reviewer." in text
    assert "&lt;b&gt;Ana&lt;/b&gt;" in text and "<b>Ana</b>" not in text
    link = text.split('<code id="signin-link">')[1].split("</code>")[0]
    assert link.startswith("http://localhost/admin/welcome/")
    db = open_db(app.extensions["tuneloop"].settings.db_path)
    ana = accounts.get_user(db, "ana@example.com")
    assert client.post(f"/admin/users/{ana.id}/role", data={"role": "viewer", "csrf": csrf}).status_code == 200
    assert client.post(f"/admin/users/{ana.id}/disable", data={"csrf": csrf}).status_code == 200
    assert accounts.get_user(db, ana.id).role == "viewer" and not accounts.get_user(db, ana.id).active
    me = accounts.get_user(db, "admin@example.com")
    refused = client.post(f"/admin/users/{me.id}/disable", data={"csrf": csrf})
    assert refused.status_code == 409 and "last active admin" in refused.get_data(as_text=True)
    listed = client.get("/admin/api/users").get_json()["users"]
    assert {u["email"] for u in listed} == {"admin@example.com", "ana@example.com"}
    assert all("password_hash" not in u for u in listed)


def test_changing_your_password_ends_your_other_sessions(app):
    here, csrf = _session(app, "reviewer")
    elsewhere = app.test_client()
    assert password_login(elsewhere, "reviewer@example.com").status_code == 302
    wrong = here.post(
        "/admin/account/password", data={"current": "nope", "password": "x" * 12, "confirm": "x" * 12, "csrf": csrf}
    )
    assert wrong.status_code == 422 and "current password is not right" in wrong.get_data(as_text=True)
    new = "a brand new passphrase"
    done = here.post(
        "/admin/account/password", data={"current": PASSWORD, "password": new, "confirm": new, "csrf": csrf}
    )
    assert done.status_code == 302
    assert here.get("/admin/api/review").status_code == 200
    assert elsewhere.get("/admin/api/review").status_code == 401
    assert password_login(app.test_client(), "reviewer@example.com", PASSWORD).status_code == 401
    assert password_login(app.test_client(), "reviewer@example.com", new).status_code == 302
