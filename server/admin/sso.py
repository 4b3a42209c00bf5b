"""Single sign-on to ``/admin`` with OpenID Connect (authlib's Flask client).

``/admin/sso/login`` sends the browser to the provider (authorization code flow with
PKCE, a ``state`` and a ``nonce``); ``/admin/sso/callback`` takes the code back,
exchanges it, checks the ID token (signature against the provider's published keys,
issuer, audience, expiry, nonce) and turns its claims into an account with
:func:`identity_from_claims` and :func:`feedback.accounts.sso_sign_in`:

- a role from ``sso.role_claim`` (through ``sso.role_map``) wins and is kept on the account;
- else the role of tuneloop's own account for the address;
- else ``viewer`` when the address's domain is in ``sso.allowed_domains``;
- else no access (403), and nothing is created.

The provider's discovery document is read from ``<sso.issuer>/.well-known/openid-configuration``
and its ``issuer`` must be exactly the configured one (a document naming another issuer is
refused: that is how a mix-up between providers is caught). The flow's state lives in a
short-lived cookie scoped to ``/admin/sso`` (SameSite=Lax, so it comes back with the
provider's redirect), signed with a key kept in the store, so any gateway can finish a
sign-in another one started.
"""

from __future__ import annotations

import logging

import requests
from authlib.common.errors import AuthlibBaseError
from authlib.integrations.flask_client import OAuth
from flask import Flask, current_app, make_response, request, session, url_for
from joserfc.errors import JoseError
from sqlite_utils import Database

from config.errors import Forbidden, NotFound
from config.settings import ROLES, SsoSettings
from feedback import accounts
from feedback.accounts import RANK, SsoIdentity
from feedback.secrets import instance_secret
from server.admin.auth import public, safe_next, start_session
from server.admin.blueprint import bp, page
from server.admin.signin import login_page
from server.context import gateway, get_db

log = logging.getLogger("tuneloop.admin.sso")
OAUTH_KEY = "tuneloop_oauth"
STATE_KEY_NAME = "sso_state_key"
NEXT_KEY = "tuneloop_next"


@bp.record_once
def _register(state) -> None:
    services = gateway(state.app)
    if not services.settings.sso.enabled:
        return
    db = services.connect()
    try:
        init_sso(state.app, db)
    finally:
        db.close()


def init_sso(app: Flask, db: Database) -> None:
    """Register the provider on ``app`` (done once at start when ``sso.enabled``)."""
    cfg = gateway(app).settings.sso
    # authlib keeps the flow's state in Flask's session cookie: give it its own name, a path that only
    # the two SSO routes see, and a key every gateway shares.
    app.secret_key = instance_secret(db, STATE_KEY_NAME)
    app.config.update(
        SESSION_COOKIE_NAME="tuneloop_sso",
        SESSION_COOKIE_PATH="/admin/sso",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
    )
    oauth = OAuth(app)
    oauth.register(
        "sso",
        client_id=cfg.client_id,
        server_metadata_url=cfg.issuer.rstrip("/") + "/.well-known/openid-configuration",
        client_kwargs={"scope": " ".join(cfg.scopes), "code_challenge_method": "S256", "timeout": 15},
    )
    app.extensions[OAUTH_KEY] = oauth


def _client(cfg: SsoSettings):
    oauth = current_app.extensions.get(OAUTH_KEY)
    if not cfg.enabled or oauth is None:
        raise NotFound("single sign-on is not enabled here (sso.enabled)", code="sso_disabled")
    client = oauth.sso
    # Read at each sign-in, so a rotated secret needs no restart; no secret means a public client (PKCE only).
    secret = cfg.client_secret()
    client.client_secret = secret or None
    client.client_kwargs["token_endpoint_auth_method"] = "client_secret_basic" if secret else "none"
    metadata = client.load_server_metadata()
    if metadata.get("issuer", "").rstrip("/") != cfg.issuer.rstrip("/"):
        raise Forbidden(
            f"the identity provider's discovery document names issuer {metadata.get('issuer')!r}, not the configured "
            f"{cfg.issuer!r} (sso.issuer)",
            code="sso_issuer_mismatch",
        )
    return client


def _redirect_uri(cfg: SsoSettings) -> str:
    return cfg.redirect_uri or url_for("admin.sso_callback", _external=True)


def _values(claim) -> list[str]:
    if isinstance(claim, str):
        return [claim]
    if isinstance(claim, (list, tuple)):
        return [v for v in claim if isinstance(v, str)]
    return []


def role_from_claims(claims: dict, cfg: SsoSettings) -> str | None:
    """The highest role ``sso.role_claim`` grants (through ``sso.role_map`` when set), or None."""
    if not cfg.role_claim:
        return None
    values = _values(claims.get(cfg.role_claim))
    if cfg.role_map:
        roles = [cfg.role_map[v] for v in values if v in cfg.role_map]
    else:
        roles = [v for v in values if v in ROLES]
    return max(roles, key=RANK.__getitem__) if roles else None


def identity_from_claims(claims: dict, cfg: SsoSettings, issuer: str) -> SsoIdentity:
    """Who signed in and what the claims grant; :class:`Forbidden` when they name no usable address."""
    raw_email = claims.get(cfg.email_claim)
    if not isinstance(raw_email, str) or not raw_email:
        raise Forbidden(
            f"the identity provider sent no e-mail address in the {cfg.email_claim!r} claim (sso.email_claim)",
            code="sso_no_email",
        )
    if claims.get("email_verified") is False:
        raise Forbidden(f"the identity provider says {raw_email} is not verified", code="sso_email_unverified")
    email = accounts.normalize_email(raw_email)
    name = claims.get("name") if isinstance(claims.get("name"), str) else ""
    return SsoIdentity(
        subject=f"{issuer.rstrip('/')} {claims['sub']}",
        email=email,
        name=(name or email.partition("@")[0])[:200],
        claimed_role=role_from_claims(claims, cfg),
        domain_allowed=accounts.email_domain(email) in cfg.allowed_domains,
    )


@bp.get("/sso/login")
@public
def sso_login():
    """Send the browser to the identity provider."""
    cfg = gateway().settings.sso
    try:
        client = _client(cfg)
    except Forbidden as exc:
        return login_page(status=403, error=f"Single sign-on is misconfigured: {exc.message}.")
    except (AuthlibBaseError, requests.RequestException, ValueError) as exc:
        log.warning("single sign-on: discovery failed: %r", exc)
        return login_page(status=503, error=f"Single sign-on is unavailable: {_why(exc)}.")
    session[NEXT_KEY] = safe_next(request.args.get("next"))
    return client.authorize_redirect(_redirect_uri(cfg))


@bp.get("/sso/callback")
@public
def sso_callback():
    """The provider's answer: check it, find or make the account, start a session."""
    cfg = gateway().settings.sso
    target = session.pop(NEXT_KEY, None) or url_for("admin.index")
    try:
        client = _client(cfg)
        token = client.authorize_access_token()
        claims = dict(token.get("userinfo") or {})
        if "sub" not in claims:
            raise Forbidden("the identity provider sent no ID token", code="sso_no_id_token")
        wanted = [c for c in (cfg.email_claim, cfg.role_claim) if c and c not in claims]
        if wanted and client.load_server_metadata().get("userinfo_endpoint"):
            extra = client.userinfo(token=token)
            if extra.get("sub") == claims["sub"]:  # the spec's rule: userinfo of another subject is ignored
                claims = {**extra, **claims}
        identity = identity_from_claims(claims, cfg, cfg.issuer)
        account = accounts.sso_sign_in(get_db(), identity)
    except Forbidden as exc:
        log.info("single sign-on refused: %s", exc.message)
        return login_page(status=403, error=f"Single sign-on refused: {exc.message}.")
    except (AuthlibBaseError, JoseError, requests.RequestException, ValueError) as exc:
        log.warning("single sign-on failed: %r", exc)
        return login_page(status=401, error=f"Single sign-on failed: {_why(exc)}. Try again.")
    # The browser arrives here from the provider's site, and for the rest of that redirect chain it
    # withholds SameSite=Strict cookies: a redirect to the target would look signed out. A page of our
    # own that moves on by itself starts a same-site navigation, which carries the new session cookie.
    onward = make_response(page("continue.html", target=safe_next(target)))
    return start_session(onward, account=account, method="sso")


def _why(exc: Exception) -> str:
    description = getattr(exc, "description", None) or getattr(exc, "error", None)
    if isinstance(exc, requests.RequestException):
        return "the identity provider could not be reached"
    return str(description or type(exc).__name__)
