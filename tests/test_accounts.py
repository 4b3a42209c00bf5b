"""Accounts, the audit log and attribution: the store, the CLI (`tuneloop users`, `--as`), keys, models, the report."""

from __future__ import annotations

import io
import json

import pytest
from click.testing import CliRunner

from cli.main import cli
from config.errors import Conflict, Forbidden, NotFound, ValidationFailed
from config.settings import load_settings
from feedback import accounts, apikeys, audit, review
from feedback.accounts import SsoIdentity
from feedback.report import generate_report
from feedback.report.weeks import iso_week_window
from server.admin.sso import identity_from_claims, role_from_claims
from tests.plugins.accounts import PASSWORD
from tests.test_ranking import make_version

pytestmark = pytest.mark.engines  # the storage tests run on SQLite and on PostgreSQL


def entries(db, action: str | None = None) -> list[audit.Entry]:
    return audit.entries(db, audit.Filters(action=action or ""), limit=1000)


def test_accounts_roles_and_the_last_admin(db):
    admin = accounts.add_user(db, " Boss@Example.COM ", role="admin", actor="root")
    assert (admin.email, admin.name, admin.role, admin.has_password) == ("boss@example.com", "boss", "admin", False)
    with pytest.raises(Conflict):
        accounts.add_user(db, "boss@example.com", role="viewer", actor="root")
    with pytest.raises(ValidationFailed):
        accounts.add_user(db, "not-an-address", role="viewer", actor="root")
    with pytest.raises(ValidationFailed):
        accounts.add_user(db, "x@example.com", role="owner", actor="root")
    with pytest.raises(Conflict, match="last active admin"):
        accounts.set_role(db, admin.email, "reviewer", actor="root")
    with pytest.raises(Conflict, match="last active admin"):
        accounts.set_disabled(db, admin.email, True, actor="root")
    accounts.add_user(db, "second@example.com", role="admin", actor="root")
    assert accounts.set_role(db, admin.email, "reviewer", actor="root").role == "reviewer"
    assert [(e.action, e.actor, e.details.get("to")) for e in reversed(entries(db, "user."))] == [
        ("user.add", "root", None),
        ("user.add", "root", None),
        ("user.role", "root", "reviewer"),
    ]
    with pytest.raises(NotFound):
        accounts.get_user(db, "nobody@example.com")


def test_passwords_are_argon2id_and_verified_only_for_active_accounts(db):
    account = accounts.add_user(db, "ana@example.com", role="reviewer", actor="root")
    with pytest.raises(ValidationFailed, match="at least 12"):
        accounts.set_password(db, account.id, "short", actor="root")
    accounts.set_password(db, account.id, PASSWORD, actor="root")
    stored = db.execute("SELECT password_hash FROM users").fetchone()[0]
    assert stored.startswith("$argon2id$") and PASSWORD not in stored
    assert accounts.verify_password(db, "ANA@example.com", PASSWORD).id == account.id
    assert accounts.verify_password(db, "ana@example.com", PASSWORD + "x") is None
    assert accounts.verify_password(db, "nobody@example.com", PASSWORD) is None
    assert accounts.verify_password(db, "", PASSWORD) is None
    accounts.set_disabled(db, account.id, True, actor="root")
    assert accounts.verify_password(db, "ana@example.com", PASSWORD) is None
    assert all(PASSWORD not in json.dumps(e.to_dict()) for e in entries(db))


def test_audit_details_never_hold_a_secret_and_actions_are_named(db):
    audit.record(db, "root", "key.create", "key_1", {"name": "shop", "raw_key": "tl_sk_x", "nested": {"password": "p"}})
    (entry,) = entries(db)
    assert entry.details == {"name": "shop", "raw_key": "[redacted]", "nested": {"password": "[redacted]"}}
    assert (entry.actor, entry.actor_name, entry.via, entry.description) == (
        "root",
        "root",
        "system",
        "created an API key",
    )
    with pytest.raises(ValueError, match="unknown audit action"):
        audit.record(db, "root", "key.steal")
    with pytest.raises(ValidationFailed):
        audit.Filters(since="last tuesday")


def test_keys_are_attributed_and_the_raw_key_is_not_recorded(db):
    actor = audit.Actor("ops@example.com", name="Ops", user_id="usr_1", via="cli")
    key, raw = apikeys.create_key(db, "shop", kind="publishable", actor=actor)
    apikeys.revoke_key(db, key.prefix, actor=actor)
    apikeys.revoke_key(db, key.id, actor=actor)  # twice: recorded once
    rows = [(e.action, e.actor, e.actor_name, e.via, e.target) for e in reversed(entries(db, "key."))]
    assert rows == [
        ("key.create", "ops@example.com", "Ops", "cli", key.id),
        ("key.revoke", "ops@example.com", "Ops", "cli", key.id),
    ]
    assert raw not in str(db.execute("SELECT * FROM audit_log").fetchall())


def test_audit_filters_and_csv_export(db):
    alice = audit.Actor("alice@example.com", name="Alice Lee", via="web")
    audit.record(db, alice, "review.approve", "ri_1", {"question": '=HYPERLINK("http://x")'})
    audit.record(db, "=cmd|' /C calc'!A0", "review.reject", "ri_2")
    audit.record(db, alice, "model.promoted", "mv_1")
    assert [e.target for e in audit.entries(db, audit.Filters(actor="Alice"))] == ["mv_1", "ri_1"]
    assert [e.target for e in audit.entries(db, audit.Filters(action="review."))] == ["ri_2", "ri_1"]
    assert [e.target for e in audit.entries(db, audit.Filters(target="ri_2"))] == ["ri_2"]
    assert audit.count(db, audit.Filters(until="2000-01-01")) == 0
    out = io.StringIO()
    audit.write_csv(audit.entries(db), out)
    text = out.getvalue()
    assert text.splitlines()[0] == "at,actor,actor_name,via,action,description,target,details"
    assert "'=cmd|' /C calc'!A0" in text and ",=cmd" not in text
    assert "Alice Lee" in text and "promoted a model version" in text


def _sso(email="lee@example.com", *, role=None, allowed=False, subject="https://idp lee") -> SsoIdentity:
    return SsoIdentity(subject=subject, email=email, name="Lee", claimed_role=role, domain_allowed=allowed)


def test_single_sign_on_rules(db):
    # Nobody mapped, domain not allowed: no access, nothing created.
    with pytest.raises(Forbidden, match="no tuneloop account"):
        accounts.sso_sign_in(db, _sso())
    assert accounts.list_users(db) == []
    # Domain allowed: viewer. A role from the claims wins, and is kept.
    assert accounts.sso_sign_in(db, _sso(allowed=True)).role == "viewer"
    assert accounts.sso_sign_in(db, _sso(role="reviewer")).role == "reviewer"
    assert accounts.sso_sign_in(db, _sso()).role == "reviewer"  # no claim now: the account's own role
    # An account made for an address outside the domains: its role applies.
    accounts.add_user(db, "contractor@gmail.com", role="reviewer", actor="root")
    assert accounts.sso_sign_in(db, _sso("contractor@gmail.com", subject="https://idp c")).role == "reviewer"
    # The account is bound to the first identity: another subject with the same address is refused.
    with pytest.raises(Forbidden, match="belongs to another identity"):
        accounts.sso_sign_in(db, _sso(subject="https://idp someone-else", allowed=True))
    accounts.set_disabled(db, "lee@example.com", True, actor="root")
    with pytest.raises(Forbidden, match="disabled"):
        accounts.sso_sign_in(db, _sso(role="admin"))
    made = [e for e in entries(db, "user.add") if e.actor == "single sign-on"]
    assert [e.details["email"] for e in made] == ["lee@example.com"]


def test_claims_to_roles():
    cfg = load_settings(env={}, overrides={"sso.role_claim": "groups", "sso.allowed_domains": ["Example.com"]}).sso
    assert role_from_claims({"groups": ["admin", "viewer"]}, cfg) == "admin"
    assert role_from_claims({"groups": "reviewer"}, cfg) == "reviewer"
    assert role_from_claims({"groups": ["support"]}, cfg) is None
    mapped = load_settings(
        env={}, overrides={"sso.role_claim": "groups", "sso.role_map": {"support": "reviewer", "leads": "admin"}}
    ).sso
    assert role_from_claims({"groups": ["support", "admin"]}, mapped) == "reviewer"  # only mapped values count
    assert role_from_claims({"groups": ["support", "leads"]}, mapped) == "admin"
    identity = identity_from_claims({"sub": "42", "email": "Min@Example.com", "name": "Min"}, cfg, "https://idp/")
    assert (identity.subject, identity.email, identity.domain_allowed) == ("https://idp 42", "min@example.com", True)
    with pytest.raises(Forbidden, match="not verified"):
        identity_from_claims({"sub": "1", "email": "a@example.com", "email_verified": False}, cfg, "https://idp")
    with pytest.raises(Forbidden, match="no e-mail address"):
        identity_from_claims({"sub": "1"}, cfg, "https://idp")


def test_sso_settings_are_checked():
    with pytest.raises(Exception, match="sso.issuer: must be an https"):
        load_settings(env={}, overrides={"sso.issuer": "http://idp.example.com"})
    with pytest.raises(Exception, match="sso.client_id: must be set"):
        load_settings(env={}, overrides={"sso.enabled": True, "sso.issuer": "https://idp.example.com"})
    with pytest.raises(Exception, match="sso.role_map"):
        load_settings(env={}, overrides={"sso.role_map": {"x": "owner"}})
    assert load_settings(env={}, overrides={"sso.issuer": "http://127.0.0.1:9999"}).sso.issuer  # loopback: tests


@pytest.fixture
def run(settings):
    env = {
        "TUNELOOP_PATHS__DATA_DIR": str(settings.data_dir),
        "TUNELOOP_DATABASE__URL": settings.database.url,  # the test's store, on either engine
        "USER": "deploy-bot",
        "TUNELOOP_AS": None,
    }

    def invoke(*args, **extra_env):
        return CliRunner().invoke(cli, list(args), env={**env, **extra_env})

    return invoke


def test_cli_users_first_admin_gets_a_one_time_link(run, db):
    added = run("users", "add", "Boss@Example.com", "--role", "admin", "--name", "The Boss")
    assert added.exit_code == 0, added.output
    assert "added admin boss@example.com (The Boss)" in added.output
    link = next(line.strip() for line in added.output.splitlines() if "/admin/welcome/" in line)
    assert link.startswith("http://127.0.0.1:8000/admin/welcome/")
    assert accounts.link_account(db, link.rsplit("/", 1)[1]).email == "boss@example.com"
    assert "the admin token now opens only the admin API" in added.output
    (entry,) = entries(db, "user.add")
    assert (entry.actor, entry.via) == ("deploy-bot", "cli")  # no --as: the operating-system user
    assert run("users", "add", "ana@example.com", "--role", "reviewer", "--as", "boss@example.com").exit_code == 0
    assert entries(db, "user.add")[0].actor == "boss@example.com"
    listed = run("users", "list").output
    assert "boss@example.com" in listed and "admin" in listed and "ana@example.com" in listed
    assert run("users", "role", "ana@example.com", "viewer").exit_code == 0
    assert run("users", "disable", "ana@example.com").exit_code == 0
    assert not accounts.get_user(db, "ana@example.com").active
    assert run("users", "enable", "ana@example.com").exit_code == 0
    relinked = run("users", "link", "ana@example.com")
    assert relinked.exit_code == 0 and "/admin/welcome/" in relinked.output
    assert json.loads(run("users", "list", "--json").output)[0]["email"] == "boss@example.com"
    refused = run("users", "disable", "boss@example.com")
    assert refused.exit_code == 1 and "last active admin" in refused.output


def test_cli_attributes_changes_to_as_and_checks_its_role(run, db):
    item = review.create_item(db, question="Can I pay by bank transfer?")
    accounts.add_user(db, "viewer@example.com", role="viewer", actor="root")
    accounts.add_user(db, "minji@example.com", role="reviewer", name="Min-ji Kim", actor="root")
    refused = run("--as", "viewer@example.com", "review", "approve", item.id, "--answer", "Yes.")
    assert (
        refused.exit_code == 1
        and "viewer@example.com is a viewer; this command needs the reviewer role" in refused.output
    )
    unknown = run("--as", "ghost@example.com", "review", "approve", item.id, "--answer", "Yes.")
    assert unknown.exit_code == 1 and "no account 'ghost@example.com'" in unknown.output
    done = run(
        "review",
        "approve",
        item.id,
        "--answer",
        "Yes, to the account on your order page.",
        TUNELOOP_AS="minji@example.com",
    )
    assert done.exit_code == 0, done.output
    assert review.get_item(db, item.id).reviewer == "minji@example.com"
    (entry,) = entries(db, "review.approve")
    assert (entry.actor, entry.actor_name, entry.via, entry.target) == (
        "minji@example.com",
        "Min-ji Kim",
        "cli",
        item.id,
    )
    key = run("--as", "minji@example.com", "keys", "create", "shop")
    assert key.exit_code == 1 and "needs the admin role" in key.output


def test_rotating_the_admin_token(run, db, make_gateway, settings):
    app = make_gateway(**{"paths.data_dir": str(settings.data_dir)})
    old = run("admin", "token").output.strip()
    client = app.test_client()
    assert client.post("/admin/login", data={"token": old}).status_code == 302
    assert client.get("/admin/api/reports").status_code == 200
    new = run("admin", "token", "--rotate").output.strip()
    assert new != old and len(new) >= 32 and run("admin", "token").output.strip() == new
    assert client.get("/admin/api/reports").status_code == 401  # its token session ended
    assert app.test_client().get("/admin/api/reports", headers={"Authorization": f"Bearer {old}"}).status_code == 401
    assert app.test_client().get("/admin/api/reports", headers={"Authorization": f"Bearer {new}"}).status_code == 200
    (entry,) = entries(db, "admin_token.rotate")
    assert entry.details == {"sessions_ended": 1} and new not in json.dumps(entry.to_dict())
    fixed = run("admin", "token", "--rotate", TUNELOOP_ADMIN__TOKEN="a-configured-admin-token")
    assert fixed.exit_code == 2 and "admin.token is set in your settings" in fixed.output


def test_the_weekly_report_names_who_changed_what(db, settings):
    week = "2026-W47"
    since, _ = iso_week_window(week, settings.report.timezone)
    make_version(db, "live-model")
    minji = accounts.add_user(db, "minji@example.com", role="reviewer", name="Min-ji Kim", actor="root")
    item = review.create_item(db, question="My e-mail is kim.s@gmail.com, where is my order?")
    review.approve(db, item.id, answer="See My Page > Orders.", reviewer=minji.actor("web"))
    db.execute("UPDATE audit_log SET at = ?", [since.replace("T00:00:00.000Z", "T03:00:00.000Z")])
    db.conn.commit()
    report, paths = generate_report(db, settings, week=week)
    changes = report["changes"]
    # The approval also put the corrected answer live as a knowledge-base entry: two changes, both hers.
    assert changes["total"] == 4 and changes["people"][0]["who"] == "Min-ji Kim"
    assert changes["people"][0]["counts"] == {"approved a correction": 1, "added a knowledge-base entry": 1}
    approval = next(e for e in changes["entries"] if e["action"] == "review.approve")
    assert "kim.s@gmail.com" not in approval["text"] and "where is my order?" in approval["text"]
    html = paths["html"].read_text(encoding="utf-8")
    markdown = paths["md"].read_text(encoding="utf-8")
    mine = "1 × added a knowledge-base entry, 1 × approved a correction"
    assert "What changed, and who" in html and f"<b>Min-ji Kim</b>: {mine}" in html
    assert f"- **Min-ji Kim**: {mine}" in markdown
    assert "kim.s@gmail.com" not in html + markdown
