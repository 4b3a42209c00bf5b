"""Named accounts for the admin pages: roles, passwords, single-sign-on identities, one-time sign-in links.

Three roles, each including the one before:

- ``viewer``: reads reports, the worst-answered ranking, the review queue and the knowledge base;
- ``reviewer``: also approves, rejects and edits review items and knowledge-base entries;
- ``admin``: also manages accounts, API keys, promotions and rollbacks, and reads the audit log.

An account is matched by its e-mail address (kept lowercased). Passwords are hashed with
argon2id (argon2-cffi's defaults, RFC 9106's second recommended profile) and re-hashed on
sign-in when those defaults move; an unknown address costs a hash too, so timing does not
tell which addresses have accounts. Every change here writes an audit entry in the same
transaction (:mod:`feedback.audit`), and disabling an account or changing its role ends its
open sessions at once (:mod:`feedback.sessions`): a demoted admin's open page stops working
on its next request, on every gateway sharing the store.

The last active admin can be neither disabled nor demoted, so the pages cannot lock
everyone out by accident (the CLI can always add another admin first).
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlite_utils import Database

from config.errors import Conflict, Forbidden, NotFound, ValidationFailed
from config.settings import ROLES
from feedback import audit, sessions
from feedback.db import new_id, utc_now, utc_text, write_transaction

RANK = {role: i for i, role in enumerate(ROLES)}
SOURCES = ("cli", "admin", "sso")
MAX_PASSWORD_CHARS = 1024  # argon2 hashes any length; a megabyte "password" is a denial of service
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_HASHER = PasswordHasher()
# Verified against when the address has no account (or no password), so that answer takes as long as a wrong password.
_DUMMY_HASH = _HASHER.hash(secrets.token_urlsafe(16))

_COLUMNS = (
    "id",
    "email",
    "name",
    "role",
    "password_hash",
    "sso_subject",
    "source",
    "created_at",
    "created_by",
    "updated_at",
    "disabled_at",
    "last_signin_at",
)


@dataclass(frozen=True)
class Account:
    """One person's account (never carries the password hash out of this module)."""

    id: str
    email: str
    name: str
    role: str
    has_password: bool
    sso_subject: str | None
    source: str
    created_at: str
    created_by: str
    updated_at: str
    disabled_at: str | None
    last_signin_at: str | None

    @property
    def active(self) -> bool:
        return self.disabled_at is None

    def can(self, role: str) -> bool:
        """True when this account's role includes ``role``."""
        return has_role(self.role, role)

    def actor(self, via: str) -> audit.Actor:
        """This account as the actor of a change made ``via`` web, api or cli."""
        return audit.Actor(self.email, name=self.name, user_id=self.id, via=via)

    def to_dict(self) -> dict:
        """JSON-ready form (no hash)."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def has_role(held: str, needed: str) -> bool:
    """True when role ``held`` includes role ``needed`` (viewer < reviewer < admin)."""
    return RANK[held] >= RANK[needed]


def check_role(role: str) -> str:
    """``role`` if it is one, else :class:`ValidationFailed` naming the choices."""
    if role not in RANK:
        raise ValidationFailed(f"role must be one of {', '.join(ROLES)}; got {role!r}", field="role")
    return role


def normalize_email(email: str | None) -> str:
    """The address as accounts store it (trimmed, lowercased), or :class:`ValidationFailed`."""
    text = (email or "").strip().lower()
    if len(text) > 320 or not _EMAIL.fullmatch(text):
        raise ValidationFailed(f"not an e-mail address: {email!r}", field="email")
    return text


def email_domain(email: str) -> str:
    """The part after the @."""
    return email.rpartition("@")[2]


def _account(row) -> Account:
    values = dict(zip(_COLUMNS, row, strict=True))
    values["has_password"] = values.pop("password_hash") is not None
    return Account(**values)


def _select(db: Database, where: str, params: list) -> list[Account]:
    rows = db.execute(f"SELECT {', '.join(_COLUMNS)} FROM users WHERE {where}", params).fetchall()
    return [_account(row) for row in rows]


def find_user(db: Database, ref: str) -> Account | None:
    """The account with id or e-mail ``ref``, or None."""
    found = _select(db, "id = ? OR email = ?", [ref, (ref or "").strip().lower()])
    return found[0] if found else None


def get_user(db: Database, ref: str) -> Account:
    """The account with id or e-mail ``ref``; :class:`NotFound` otherwise."""
    account = find_user(db, ref)
    if account is None:
        raise NotFound(f"no account {ref!r} (see 'tuneloop users list')", field="user")
    return account


def list_users(db: Database) -> list[Account]:
    """Every account, admins first, then by e-mail."""
    return _select(db, "1=1 ORDER BY disabled_at IS NOT NULL, role = 'admin' DESC, role = 'reviewer' DESC, email", [])


def admin_exists(db: Database) -> bool:
    """True once an active admin account exists (from then on the admin token opens only the admin API)."""
    return db.execute("SELECT 1 FROM users WHERE role = 'admin' AND disabled_at IS NULL LIMIT 1").fetchone() is not None


def add_user(
    db: Database, email: str, *, role: str, actor: str, name: str | None = None, source: str = "cli"
) -> Account:
    """Create an account; :class:`Conflict` when the address already has one."""
    email = normalize_email(email)
    check_role(role)
    name = (name or "").strip() or email.partition("@")[0]
    if len(name) > 200:
        raise ValidationFailed("name is longer than 200 characters", field="name")
    now = utc_now()
    with write_transaction(db):
        if find_user(db, email) is not None:
            raise Conflict(f"{email} already has an account", field="email")
        user_id = new_id("usr")
        db.execute(
            f"INSERT INTO users ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})",
            [user_id, email, name, role, None, None, source, now, str(actor), now, None, None],
        )
        audit.record(db, actor, "user.add", user_id, {"email": email, "role": role, "source": source})
    return get_user(db, user_id)


def _keep_an_admin(db: Database, account: Account, change: str) -> None:
    others = db.execute(
        "SELECT COUNT(*) FROM users WHERE role = 'admin' AND disabled_at IS NULL AND id != ?", [account.id]
    ).fetchone()[0]
    if account.role == "admin" and account.active and others == 0:
        raise Conflict(f"{account.email} is the last active admin; make another admin before you {change} it")


def set_role(db: Database, ref: str, role: str, *, actor: str) -> Account:
    """Give an account another role; its open sessions end (it signs in again with the new role)."""
    check_role(role)
    with write_transaction(db):
        account = get_user(db, ref)
        if account.role == role:
            return account
        if RANK[role] < RANK["admin"]:
            _keep_an_admin(db, account, "demote")
        _change_role(db, account, role, actor)
    return get_user(db, account.id)


def _change_role(db: Database, account: Account, role: str, actor: str) -> None:
    db.execute("UPDATE users SET role = ?, updated_at = ? WHERE id = ?", [role, utc_now(), account.id])
    ended = sessions.end_user_sessions(db, account.id)
    details = {"email": account.email, "from": account.role, "to": role, "sessions_ended": ended}
    audit.record(db, actor, "user.role", account.id, details)


def set_disabled(db: Database, ref: str, disabled: bool, *, actor: str) -> Account:
    """Disable an account (its sessions end at once and it cannot sign in) or enable it again."""
    with write_transaction(db):
        account = get_user(db, ref)
        if (account.disabled_at is not None) == disabled:
            return account
        details: dict = {"email": account.email}
        if disabled:
            _keep_an_admin(db, account, "disable")
            now = utc_now()
            db.execute("UPDATE users SET disabled_at = ?, updated_at = ? WHERE id = ?", [now, now, account.id])
            details["sessions_ended"] = sessions.end_user_sessions(db, account.id)
            db.execute("UPDATE signin_links SET used_at = ? WHERE user_id = ? AND used_at IS NULL", [now, account.id])
        else:
            db.execute("UPDATE users SET disabled_at = NULL, updated_at = ? WHERE id = ?", [utc_now(), account.id])
        audit.record(db, actor, "user.disable" if disabled else "user.enable", account.id, details)
    return get_user(db, account.id)


def check_password_rules(password: str, min_length: int) -> str:
    """``password`` if it may be set, else :class:`ValidationFailed` saying why."""
    if len(password) < min_length:
        raise ValidationFailed(f"the password needs at least {min_length} characters", field="password")
    if len(password) > MAX_PASSWORD_CHARS:
        raise ValidationFailed(f"the password is longer than {MAX_PASSWORD_CHARS} characters", field="password")
    return password


def set_password(
    db: Database, ref: str, password: str, *, actor: str, min_length: int = 12, keep_session: str | None = None
) -> Account:
    """Set (or replace) an account's password; its open sessions end, but ``keep_session`` (the one changing it)."""
    check_password_rules(password, min_length)
    hashed = _HASHER.hash(password)
    with write_transaction(db):
        account = get_user(db, ref)
        db.execute("UPDATE users SET password_hash = ?, updated_at = ? WHERE id = ?", [hashed, utc_now(), account.id])
        ended = sessions.end_user_sessions(db, account.id, keep=keep_session)
        audit.record(db, actor, "user.password", account.id, {"email": account.email, "sessions_ended": ended})
    return get_user(db, account.id)


def verify_password(db: Database, email: str, password: str) -> Account | None:
    """The active account whose address is ``email`` and whose password is ``password``, else None.

    Takes one argon2 verification whatever the outcome, so the answer's timing does not
    say whether the address has an account.
    """
    try:
        email = normalize_email(email)
    except ValidationFailed:
        email = ""
    row = db.execute("SELECT id, password_hash FROM users WHERE email = ? AND disabled_at IS NULL", [email]).fetchone()
    stored = row[1] if row and row[1] else _DUMMY_HASH
    password = password[:MAX_PASSWORD_CHARS]
    try:
        _HASHER.verify(stored, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return None
    if not row or not row[1]:
        return None
    if _HASHER.check_needs_rehash(stored):
        with write_transaction(db):
            db.execute("UPDATE users SET password_hash = ? WHERE id = ?", [_HASHER.hash(password), row[0]])
    return get_user(db, row[0])


def signed_in(db: Database, account: Account) -> None:
    """Note the time of a successful sign-in."""
    with write_transaction(db):
        db.execute("UPDATE users SET last_signin_at = ? WHERE id = ?", [utc_now(), account.id])


def _link_id(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_signin_link(db: Database, ref: str, *, actor: str, hours: float) -> str:
    """A one-time secret for ``/admin/welcome/<secret>`` (valid ``hours``, works once); earlier links stop working.

    Only its hash is stored: the caller shows the link once.
    """
    secret = secrets.token_urlsafe(32)
    now = datetime.now(timezone.utc)
    with write_transaction(db):
        account = get_user(db, ref)
        if not account.active:
            raise Conflict(f"{account.email} is disabled; enable it first", field="user")
        db.execute(
            "UPDATE signin_links SET used_at = ? WHERE user_id = ? AND used_at IS NULL", [utc_text(now), account.id]
        )
        db.execute(
            "INSERT INTO signin_links (id, user_id, created_at, created_by, expires_at) VALUES (?, ?, ?, ?, ?)",
            [_link_id(secret), account.id, utc_text(now), str(actor), utc_text(now + timedelta(hours=hours))],
        )
        audit.record(db, actor, "user.link", account.id, {"email": account.email, "valid_hours": hours})
    return secret


def link_account(db: Database, secret: str) -> Account | None:
    """The active account a still-valid, unused link is for (without using it up), else None."""
    row = db.execute(
        """SELECT l.user_id FROM signin_links l JOIN users u ON u.id = l.user_id
           WHERE l.id = ? AND l.used_at IS NULL AND l.expires_at > ? AND u.disabled_at IS NULL""",
        [_link_id(secret), utc_now()],
    ).fetchone()
    return get_user(db, row[0]) if row else None


def redeem_signin_link(db: Database, secret: str, password: str, *, min_length: int) -> Account:
    """Use the link once: set the account's password. :class:`Forbidden` when the link is not valid."""
    check_password_rules(password, min_length)
    with write_transaction(db):
        account = link_account(db, secret)
        if account is None:
            raise Forbidden(
                "this sign-in link is used, expired or unknown; ask an admin for a new one", code="bad_link"
            )
        db.execute("UPDATE signin_links SET used_at = ? WHERE id = ?", [utc_now(), _link_id(secret)])
        return set_password(db, account.id, password, actor=account.actor("web"), min_length=min_length)


@dataclass(frozen=True)
class SsoIdentity:
    """Who the identity provider says signed in, and what its claims grant."""

    subject: str  # "<issuer> <sub>": unique and stable at the provider, unlike an e-mail address
    email: str
    name: str
    claimed_role: str | None  # from sso.role_claim / sso.role_map; None when nothing mapped
    domain_allowed: bool  # the address's domain is in sso.allowed_domains


SSO_ACTOR = audit.Actor("single sign-on", via="system")


def sso_sign_in(db: Database, identity: SsoIdentity) -> Account:
    """The account an identity-provider sign-in opens, made or updated as the rules say.

    - a role from the provider's claims wins (the provider is where people are managed) and is
      kept on the account;
    - else the account's own role, when tuneloop has an account for the address;
    - else ``viewer`` when the address's domain is allowed;
    - else no access (:class:`Forbidden`).

    A disabled account stays shut whatever the claims say, and an account bound to another
    identity at the provider (the address was reassigned there) is refused.
    """
    with write_transaction(db):
        bound = _select(db, "sso_subject = ?", [identity.subject])
        account = bound[0] if bound else find_user(db, identity.email)
        if account is not None and account.sso_subject not in (None, identity.subject):
            raise Forbidden(
                f"the account {account.email} belongs to another identity at the provider; an admin can "
                "disable it and add it again",
                code="sso_identity_mismatch",
            )
        if account is not None and not account.active:
            raise Forbidden(f"the account {account.email} is disabled", code="account_disabled")
        if account is None:
            role = identity.claimed_role or ("viewer" if identity.domain_allowed else None)
            if role is None:
                raise Forbidden(
                    f"{identity.email} has no tuneloop account and no role from the identity provider; "
                    "ask an admin for access",
                    code="no_access",
                )
            account = add_user(db, identity.email, role=role, actor=SSO_ACTOR, name=identity.name, source="sso")
        if account.sso_subject is None:
            db.execute("UPDATE users SET sso_subject = ? WHERE id = ?", [identity.subject, account.id])
        if identity.claimed_role and identity.claimed_role != account.role:
            # No last-admin guard here: the provider is where people are managed, and with no admin
            # account left the admin token opens the pages again (docs/accounts.md).
            _change_role(db, account, identity.claimed_role, SSO_ACTOR)
        signed_in(db, account)
    return get_user(db, account.id)
