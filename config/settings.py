"""Typed settings: ``default.toml`` → user TOML file → ``TUNELOOP_*`` env → overrides.

``config/default.toml`` is the documentation: every key lives there with a
comment, and ``tests/test_config.py`` fails when a field below has no documented
key (or the other way round). Each section is a frozen dataclass whose
``__post_init__`` checks values, so a bad setting stops start-up with a message
that names the key, e.g. ``gateway.port: must be 1..65535, got 70000``.

Environment variables name a key as ``TUNELOOP_<SECTION>__<KEY>``
(``TUNELOOP_GATEWAY__PORT=9000``); lists are given as JSON or comma-separated.
Nothing is read at import time: callers call :func:`load_settings`.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import json
import os
import tomllib
import types
import typing
import zoneinfo
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlsplit, urlunsplit

from config.errors import ConfigError
from config.profile import Profile, read_profile

DEFAULT_TOML = Path(__file__).with_name("default.toml")
PROJECT_ROOT = Path(__file__).resolve().parent.parent
ENV_PREFIX = "TUNELOOP_"
DATABASE_URL_ENV = "DATABASE_URL"  # honoured for database.url when TUNELOOP_DATABASE__URL is not set


def env_secret(variable: str) -> str:
    """The value of the environment variable named ``variable`` ("" when unnamed or unset).

    Settings hold the *name* of the variable that carries a secret, never the
    secret; it is read at call time so a rotated key needs no restart.
    """
    return os.environ.get(variable, "") if variable else ""


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}", field=key)


# How a model is asked: "closed_book" (no knowledge block: what it knows by itself) and "as_served" (with the
# entries retrieval finds, as the gateway sends it). Training rows and evaluations come in both.
VIEWS = ("closed_book", "as_served")


def _check_views(views: list[str], key: str) -> None:
    unknown = [v for v in views if v not in VIEWS]
    _check(not unknown, key, f"unknown view(s) {unknown}; pick from {list(VIEWS)}")
    _check(bool(views) and len(set(views)) == len(views), key, "name each view at most once, and at least one")


def _is_network(entry: str) -> bool:
    try:
        ipaddress.ip_network(entry.strip(), strict=False)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class PathsSettings:
    data_dir: str = "var"

    def __post_init__(self):
        _check(bool(self.data_dir), "paths.data_dir", "must not be empty")


POSTGRES_SCHEMES = ("postgresql", "postgres")  # "postgres://" is the alias Heroku-style platforms hand out
SQLITE_URL_PREFIX = "sqlite:///"


def is_postgres_url(target: str) -> bool:
    """True for a ``postgresql://`` (or ``postgres://``) URL: the store is a PostgreSQL server."""
    return urlsplit(target).scheme in POSTGRES_SCHEMES if "://" in target else False


def sqlite_url_path(target: str) -> str:
    """The file a SQLite target names: ``sqlite:///var/x.db`` → ``var/x.db``; a plain path as it is."""
    return target[len(SQLITE_URL_PREFIX) :] if target.startswith(SQLITE_URL_PREFIX) else target


def _port_ok(url: str) -> bool:
    try:
        urlsplit(url).port  # noqa: B018 - urllib checks the port only when it is read
    except ValueError:  # "db:five"
        return False
    return True


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***``, fit for a message or a log line."""
    if "://" not in url:
        return url
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        user, colon, _password = userinfo.partition(":")
        netloc = f"{user}:***@{host}" if colon else netloc
    query = "&".join(
        f"{k}=***" if k.lower() == "password" else f"{k}={v}" if v or "=" in pair else k
        for pair in parts.query.split("&")
        if pair
        for k, _, v in [pair.partition("=")]
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


@dataclass(frozen=True)
class DatabaseSettings:
    path: str = ""
    url: str = field(default="", repr=False)  # may hold a password: never in a repr, a log line or a message
    busy_timeout_ms: int = 5000
    pool_size: int = 10
    connect_timeout_s: float = 10.0

    def __post_init__(self):
        _check(self.busy_timeout_ms >= 0, "database.busy_timeout_ms", "must be >= 0")
        _check(1 <= self.pool_size <= 1000, "database.pool_size", "must be between 1 and 1000")
        _check(self.connect_timeout_s > 0, "database.connect_timeout_s", "must be > 0")
        url = self.url.strip()
        if not url:
            return
        scheme = urlsplit(url).scheme if "://" in url else ""
        if scheme in POSTGRES_SCHEMES:
            bad_port = f"{redact_url(url)} has a bad port (postgresql://USER:PASSWORD@HOST:PORT/DATABASE)"
            _check(_port_ok(url), "database.url", bad_port)
            # One spelling from here on: libpq and psycopg accept both, messages and logs show one.
            object.__setattr__(self, "url", "postgresql" + url[len(scheme) :])
        elif scheme == "sqlite":
            _check(
                url.startswith(SQLITE_URL_PREFIX) and len(url) > len(SQLITE_URL_PREFIX),
                "database.url",
                f"{url} is not sqlite:///PATH (three slashes, then the file)",
            )
        else:
            _check(
                False,
                "database.url",
                f"{redact_url(url)} is not a database URL: use postgresql://USER:PASSWORD@HOST:PORT/DATABASE,"
                " sqlite:///PATH, or leave it empty for the embedded store",
            )

    @property
    def is_postgres(self) -> bool:
        """True when ``url`` puts the store in PostgreSQL."""
        return is_postgres_url(self.url)


@dataclass(frozen=True)
class GatewaySettings:
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 2
    worker_connections: int = 2000
    require_api_key: str = "auto"
    max_body_bytes: int = 65536
    max_message_chars: int = 4000
    cors_origins: list[str] = field(default_factory=list)
    model_cache_s: float = 0.5
    secret_key: str = ""
    request_header_timeout_s: float = 10.0
    request_body_timeout_s: float = 30.0
    max_waiting_connections_per_client: int = 100
    trusted_proxies: list[str] = field(default_factory=list)

    def __post_init__(self):
        _check(1 <= self.port <= 65535, "gateway.port", f"must be 1..65535, got {self.port}")
        _check(self.request_header_timeout_s > 0, "gateway.request_header_timeout_s", "must be > 0")
        _check(self.request_body_timeout_s > 0, "gateway.request_body_timeout_s", "must be > 0")
        _check(
            self.max_waiting_connections_per_client >= 0,
            "gateway.max_waiting_connections_per_client",
            "must be >= 0 (0: no limit)",
        )
        for entry in self.trusted_proxies:
            _check(_is_network(entry), "gateway.trusted_proxies", f"{entry!r} is not an IP address or network (CIDR)")
        _check(self.workers >= 1, "gateway.workers", f"must be >= 1, got {self.workers}")
        _check(self.worker_connections >= 1, "gateway.worker_connections", "must be >= 1")
        _check(
            self.require_api_key in ("auto", "always", "never"),
            "gateway.require_api_key",
            f"must be one of auto, always, never; got {self.require_api_key!r}",
        )
        _check(self.max_body_bytes >= 1024, "gateway.max_body_bytes", "must be >= 1024")
        _check(self.max_message_chars >= 1, "gateway.max_message_chars", "must be >= 1")
        _check(self.model_cache_s >= 0, "gateway.model_cache_s", "must be >= 0")

    @property
    def binds_publicly(self) -> bool:
        """True when the gateway listens on anything but loopback."""
        return self.host not in ("127.0.0.1", "localhost", "::1")

    @property
    def api_key_required(self) -> bool:
        """Keys are required when configured so, and by default off loopback."""
        if self.require_api_key == "auto":
            return self.binds_publicly
        return self.require_api_key == "always"


@dataclass(frozen=True)
class FallbackModel:
    name: str
    base_url: str = ""
    api_key_env: str = ""

    def __post_init__(self):
        _check(bool(self.name), "model.fallbacks.name", "must not be empty")


@dataclass(frozen=True)
class ModelSettings:
    provider: str = "builtin"
    base_url: str = "http://127.0.0.1:8001/v1"
    name: str = "starter"
    api_key_env: str = ""
    connect_timeout_s: float = 3.0
    first_token_timeout_s: float = 30.0
    timeout_s: float = 120.0
    retries: int = 2
    fallbacks: list[FallbackModel] = field(default_factory=list)
    # Other names /v1 answers with the live model (a client's default, e.g. "gpt-4o-mini"); any other name
    # that is not served is a 404 model_not_found.
    aliases: list[str] = field(default_factory=list)

    def __post_init__(self):
        for alias in self.aliases:
            _check(
                isinstance(alias, str) and alias.strip() == alias != "",
                "model.aliases",
                f"each alias must be a non-empty name without surrounding spaces, got {alias!r}",
            )
        _check(len(set(self.aliases)) == len(self.aliases), "model.aliases", "lists a name twice")
        _check(
            self.provider in ("builtin", "vllm", "openai"),
            "model.provider",
            f"must be one of builtin, vllm, openai; got {self.provider!r}",
        )
        _check(
            self.base_url.startswith(("http://", "https://")),
            "model.base_url",
            f"must be an http(s) URL, got {self.base_url!r}",
        )
        _check(bool(self.name), "model.name", "must not be empty")
        for key in ("connect_timeout_s", "first_token_timeout_s", "timeout_s"):
            _check(getattr(self, key) > 0, f"model.{key}", "must be > 0")
        _check(0 <= self.retries <= 10, "model.retries", "must be 0..10")

    def api_key(self) -> str:
        """The upstream key, read from the named environment variable at call time."""
        return env_secret(self.api_key_env)


@dataclass(frozen=True)
class ChatSettings:
    system_prompt: str = ""
    history_turns: int = 6
    max_tokens: int = 256
    temperature: float = 0.0
    # Token budget of a prompt (feedback/knowledge/budget.py): 0 asks the model server (max_model_len).
    context_window: int = 0
    tokenizer: str = ""

    def __post_init__(self):
        _check(self.history_turns >= 0, "chat.history_turns", "must be >= 0")
        _check(self.max_tokens >= 1, "chat.max_tokens", "must be >= 1")
        _check(0 <= self.temperature <= 2, "chat.temperature", "must be 0..2")
        _check(
            self.context_window == 0 or self.context_window > self.max_tokens,
            "chat.context_window",
            f"must be 0 (ask the model server) or more than chat.max_tokens ({self.max_tokens}), "
            f"got {self.context_window}",
        )


@dataclass(frozen=True)
class KnowledgeSettings:
    """Grounding answers in the knowledge base: how many entries, from what score, shown how, found how."""

    enabled: bool = True
    top_k: int = 3
    # Retrieval scores are in 0..1 (feedback/knowledge/retrieval.py); the default is measured in
    # docs/benchmarks.md ("Retrieval": the score threshold).
    min_score: float = 0.15
    header: str = "Knowledge:"
    entry_format: str = "[{n}] Q: {question}\nA: {answer}"
    empty_text: str = "(no matching entry)"
    synonyms: str = ""
    embeddings_model: str = ""
    embeddings_base_url: str = ""
    embeddings_api_key_env: str = ""
    dense_weight: float = 0.5
    # The live index (feedback/knowledge/live.py) and the first start (feedback/knowledge/seed.py).
    refresh_ms: int = 500
    base_file: str = ""
    seed: bool = True

    def __post_init__(self):
        _check(1 <= self.top_k <= 20, "knowledge.top_k", "must be 1..20")
        _check(0 <= self.refresh_ms <= 60_000, "knowledge.refresh_ms", f"must be 0..60000 ms, got {self.refresh_ms}")
        _check(0 <= self.min_score <= 1, "knowledge.min_score", f"must be within 0..1, got {self.min_score}")
        for name in ("{question}", "{answer}"):
            _check(name in self.entry_format, "knowledge.entry_format", f"must contain {name}")
        _check(
            not self.embeddings_model or self.embeddings_base_url.startswith(("http://", "https://")),
            "knowledge.embeddings_base_url",
            f"must be an http(s) URL when embeddings_model is set, got {self.embeddings_base_url!r}",
        )
        _check(0 <= self.dense_weight <= 1, "knowledge.dense_weight", f"must be within 0..1, got {self.dense_weight}")

    def embeddings_api_key(self) -> str:
        """The embeddings endpoint's API key, read from the named environment variable at call time."""
        return env_secret(self.embeddings_api_key_env)


@dataclass(frozen=True)
class FeedbackSettings:
    reasons: list[str] = field(default_factory=lambda: ["wrong", "incomplete", "unhelpful", "other"])
    max_comment_chars: int = 2000
    max_correction_chars: int = 4000

    def __post_init__(self):
        _check(bool(self.reasons), "feedback.reasons", "must list at least one reason")


@dataclass(frozen=True)
class LimitsSettings:
    enabled: bool = True
    chat: str = "60/minute"
    feedback: str = "120/minute"
    storage_uri: str = "database://"

    def __post_init__(self):
        _check("://" in self.storage_uri, "limits.storage_uri", "must be database://, memory:// or redis://HOST:PORT")


@dataclass(frozen=True)
class ModelServerSettings:
    host: str = "127.0.0.1"
    port: int = 8001
    model_dir: str = ""
    served_name: str = "starter"
    device: str = "auto"
    threads: int = 8
    max_new_tokens: int = 512
    torch_threads: int = 1
    adapter_check: str = "scratch"
    max_batch: int = 8

    def __post_init__(self):
        _check(1 <= self.port <= 65535, "model_server.port", f"must be 1..65535, got {self.port}")
        _check(
            self.adapter_check in ("scratch", "in_place"),
            "model_server.adapter_check",
            f"must be scratch or in_place, got {self.adapter_check!r}",
        )
        _check(self.device in ("auto", "cpu", "cuda"), "model_server.device", "must be auto, cpu or cuda")
        _check(self.threads >= 1, "model_server.threads", "must be >= 1")
        _check(self.max_new_tokens >= 1, "model_server.max_new_tokens", "must be >= 1")
        _check(self.torch_threads >= 0, "model_server.torch_threads", "must be >= 0 (0 = one per core)")
        _check(self.max_batch >= 1, "model_server.max_batch", "must be >= 1 (1 = one answer at a time)")


@dataclass(frozen=True)
class StarterSettings:
    """Hyperparameters of the starter model (``tuneloop starter build``); all of them feed its fingerprint."""

    seed: int = 0
    data_file: str = ""
    vocab_size: int = 2048
    hidden_size: int = 192
    layers: int = 2
    heads: int = 6
    head_dim: int = 32
    mlp_size: int = 384
    rope_theta: float = 1e12
    token_dims: int = 72
    context_length: int = 1024
    history_turns: int = 6
    batch_size: int = 4
    reading_batch: int = 6
    steps: int = 450
    finish_steps: int = 300
    learning_rate: float = 0.003
    warmup_steps: int = 40
    correction_share: float = 0.55
    new_entry_share: float = 0.4
    empty_share: float = 0.15
    unknown_answer: str = (
        "Sorry, I don't have an answer to that. Please contact customer service: call 1588-0000 "
        "(weekdays 9 a.m.-6 p.m. KST), email help@haneulmart.example, or use 1:1 Chat in the app."
    )
    unknown_answer_korean: str = (
        "죄송하지만 답변드릴 수 있는 정보가 없습니다. 고객센터(1588-0000, 평일 오전 9시~오후 6시), "
        "help@haneulmart.example 또는 앱의 1:1 채팅으로 문의해 주세요."
    )
    min_read_rate: float = 0.8
    min_unknown_rate: float = 0.9
    threads: int = 1
    time_limit_s: float = 900.0

    def __post_init__(self):
        _check(
            self.vocab_size >= 300,
            "starter.vocab_size",
            f"must be >= 300 (256 bytes + specials), got {self.vocab_size}",
        )
        _check(self.head_dim >= 8 and self.head_dim % 2 == 0, "starter.head_dim", "must be even and >= 8 (RoPE)")
        for key in ("layers", "heads", "mlp_size", "batch_size", "steps", "threads"):
            _check(getattr(self, key) >= 1, f"starter.{key}", "must be >= 1")
        _check(self.layers >= 2, "starter.layers", "must be >= 2 (the copy circuit spans two layers)")
        _check(
            self.hidden_size % self.heads == 0, "starter.heads", "must divide hidden_size (transformers requires it)"
        )
        _check(0 < self.token_dims < self.hidden_size, "starter.token_dims", "must be between 0 and hidden_size")
        _check(self.rope_theta > 1, "starter.rope_theta", "must be > 1")
        _check(self.context_length >= 64, "starter.context_length", "must be >= 64")
        _check(self.history_turns >= 0, "starter.history_turns", "must be >= 0")
        _check(self.finish_steps >= 0, "starter.finish_steps", "must be >= 0")
        _check(self.reading_batch >= 0, "starter.reading_batch", "must be >= 0 (0: closed book only)")
        _check(self.learning_rate > 0, "starter.learning_rate", "must be > 0")
        _check(self.warmup_steps >= 0, "starter.warmup_steps", "must be >= 0")
        for key in ("correction_share", "new_entry_share", "empty_share", "min_read_rate", "min_unknown_rate"):
            _check(0 <= getattr(self, key) <= 1, f"starter.{key}", "must be between 0 and 1")
        _check(
            self.correction_share + self.new_entry_share <= 1,
            "starter.new_entry_share",
            "correction_share + new_entry_share must be <= 1",
        )
        for key in ("unknown_answer", "unknown_answer_korean"):
            _check(bool(getattr(self, key).strip()), f"starter.{key}", "must not be empty")
        _check(self.time_limit_s >= 0, "starter.time_limit_s", "must be >= 0 (0 = no limit)")


@dataclass(frozen=True)
class ReportSettings:
    """The worst-answered ranking and the weekly report (``tuneloop worst``, ``tuneloop report``)."""

    reports_dir: str = ""
    timezone: str = "Asia/Seoul"
    min_votes: int = 5
    top_n: int = 20
    similarity_threshold: float = 0.45
    confidence: float = 0.95
    trend_weeks: int = 12
    low_ratings_warning: int = 30
    shutdown_dates: dict[str, str] = field(default_factory=dict)
    shutdown_warning_days: int = 90
    public_url: str = ""
    webhook_url: str = ""
    webhook_timeout_s: float = 10.0
    smtp_host: str = ""
    smtp_port: int = 587
    smtp_starttls: bool = True
    smtp_user: str = ""
    smtp_password_env: str = ""
    smtp_from: str = ""
    smtp_to: list[str] = field(default_factory=list)

    def __post_init__(self):
        try:
            zoneinfo.ZoneInfo(self.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ConfigError(
                f"report.timezone: unknown time zone {self.timezone!r}", field="report.timezone"
            ) from None
        _check(self.min_votes >= 1, "report.min_votes", f"must be >= 1, got {self.min_votes}")
        _check(self.top_n >= 1, "report.top_n", f"must be >= 1, got {self.top_n}")
        _check(0 < self.similarity_threshold <= 1, "report.similarity_threshold", "must be in (0, 1]")
        _check(0 < self.confidence < 1, "report.confidence", "must be between 0 and 1, e.g. 0.95")
        _check(2 <= self.trend_weeks <= 104, "report.trend_weeks", "must be 2..104")
        _check(self.low_ratings_warning >= 0, "report.low_ratings_warning", "must be >= 0")
        _check(self.shutdown_warning_days >= 0, "report.shutdown_warning_days", "must be >= 0")
        dates = {}
        for model, day in self.shutdown_dates.items():
            try:
                dates[str(model)] = datetime.date.fromisoformat(str(day)).isoformat()
            except ValueError:
                raise ConfigError(
                    f"report.shutdown_dates.{model}: expected a date like 2026-12-31, got {day!r}",
                    field="report.shutdown_dates",
                ) from None
        object.__setattr__(self, "shutdown_dates", dates)  # TOML dates and strings alike become "YYYY-MM-DD"
        for key in ("public_url", "webhook_url"):
            value = getattr(self, key)
            _check(
                not value or value.startswith(("http://", "https://")),
                f"report.{key}",
                "must be an http(s) URL or empty",
            )
        _check(self.webhook_timeout_s > 0, "report.webhook_timeout_s", "must be > 0")
        _check(1 <= self.smtp_port <= 65535, "report.smtp_port", f"must be 1..65535, got {self.smtp_port}")
        _check(
            not self.smtp_host or bool(self.smtp_to),
            "report.smtp_to",
            "list at least one recipient when smtp_host is set",
        )
        _check(not self.smtp_host or bool(self.smtp_from), "report.smtp_from", "must be set when smtp_host is set")

    def smtp_password(self) -> str:
        """The SMTP password, read from the named environment variable at call time."""
        return env_secret(self.smtp_password_env)


@dataclass(frozen=True)
class AdminSettings:
    """Access to the ``/admin`` pages: accounts with roles, the admin token for scripts (docs/accounts.md)."""

    token: str = ""
    session_hours: float = 12.0
    signin_attempts_per_address: int = 10
    signin_attempts_per_account: int = 100
    signin_window_s: float = 900.0
    password_signin: bool = True
    password_min_length: int = 12
    signin_link_hours: float = 24.0

    def __post_init__(self):
        _check(not self.token or len(self.token) >= 16, "admin.token", "must be at least 16 characters (or empty)")
        _check(self.session_hours > 0, "admin.session_hours", "must be > 0")
        for key in ("signin_attempts_per_address", "signin_attempts_per_account"):
            _check(getattr(self, key) >= 1, f"admin.{key}", "must be >= 1")
        _check(self.signin_window_s > 0, "admin.signin_window_s", "must be > 0")
        _check(8 <= self.password_min_length <= 128, "admin.password_min_length", "must be 8..128")
        _check(self.signin_link_hours > 0, "admin.signin_link_hours", "must be > 0")


ROLES = ("viewer", "reviewer", "admin")


def _is_loopback_http(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    return url.startswith("http://") and (host in ("localhost", "::1") or host.startswith("127."))


@dataclass(frozen=True)
class SsoSettings:
    """Single sign-on to ``/admin`` with an OpenID Connect identity provider (docs/accounts.md)."""

    enabled: bool = False
    issuer: str = ""
    client_id: str = ""
    client_secret_env: str = "TUNELOOP_SSO_CLIENT_SECRET"
    scopes: list[str] = field(default_factory=lambda: ["openid", "email", "profile"])
    redirect_uri: str = ""
    allowed_domains: list[str] = field(default_factory=list)
    email_claim: str = "email"
    role_claim: str = ""
    role_map: dict[str, str] = field(default_factory=dict)
    button_label: str = "Sign in with single sign-on"

    def __post_init__(self):
        if self.enabled:
            _check(bool(self.issuer), "sso.issuer", "must be set when sso.enabled is true")
            _check(bool(self.client_id), "sso.client_id", "must be set when sso.enabled is true")
        _check(
            not self.issuer or self.issuer.startswith("https://") or _is_loopback_http(self.issuer),
            "sso.issuer",
            f"must be an https:// URL (plain http only on loopback, for tests); got {self.issuer!r}",
        )
        _check(
            not self.redirect_uri or self.redirect_uri.startswith(("https://", "http://")),
            "sso.redirect_uri",
            "must be an http(s) URL ending in /admin/sso/callback, or empty",
        )
        _check(
            not self.redirect_uri or self.redirect_uri.rstrip("/").endswith("/admin/sso/callback"),
            "sso.redirect_uri",
            "must end in /admin/sso/callback",
        )
        _check("openid" in self.scopes, "sso.scopes", 'must include "openid"')
        _check(bool(self.email_claim), "sso.email_claim", "must not be empty")
        domains = [d.strip().lower().lstrip("@") for d in self.allowed_domains]
        _check(all(domains), "sso.allowed_domains", "must not contain empty names")
        object.__setattr__(self, "allowed_domains", domains)
        wrong = {value: role for value, role in self.role_map.items() if role not in ROLES}
        _check(not wrong, "sso.role_map", f"roles must be one of {', '.join(ROLES)}; got {wrong}")

    def client_secret(self) -> str:
        """The client secret, read from the named environment variable at call time."""
        return env_secret(self.client_secret_env)


@dataclass(frozen=True)
class ReviewSettings:
    """The review queue (``tuneloop review``, ``/admin/review``) and its optional teacher model."""

    top_n: int = 20
    window_days: int = 7
    teacher_model: str = ""
    teacher_base_url: str = ""
    teacher_api_key_env: str = ""
    teacher_max_tokens: int = 400
    auto_approve_teacher: bool = False

    def __post_init__(self):
        _check(self.top_n >= 1, "review.top_n", f"must be >= 1, got {self.top_n}")
        _check(1 <= self.window_days <= 366, "review.window_days", "must be 1..366")
        _check(
            not self.teacher_model or self.teacher_base_url.startswith(("http://", "https://")),
            "review.teacher_base_url",
            f"must be an http(s) URL when teacher_model is set, got {self.teacher_base_url!r}",
        )
        _check(self.teacher_max_tokens >= 1, "review.teacher_max_tokens", "must be >= 1")

    def teacher_api_key(self) -> str:
        """The teacher's API key, read from the named environment variable at call time."""
        return env_secret(self.teacher_api_key_env)


@dataclass(frozen=True)
class DatasetSettings:
    """Building training sets (``tuneloop dataset build``)."""

    base_file: str = ""
    include_upvoted_min: int = 0
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 0
    near_duplicate_threshold: float = 0.45
    max_tokens_per_example: int = 65536
    min_examples: int = 10
    epochs: int = 3
    prices: dict[str, float] = field(default_factory=dict)
    pii_allowlist: list[str] = field(default_factory=list)
    views: list[str] = field(default_factory=lambda: list(VIEWS))

    def __post_init__(self):
        _check_views(self.views, "dataset.views")
        _check(self.include_upvoted_min >= 0, "dataset.include_upvoted_min", "must be >= 0 (0 = off)")
        for key in ("val_fraction", "test_fraction"):
            _check(0 <= getattr(self, key) < 0.5, f"dataset.{key}", "must be in [0, 0.5)")
        _check(0 < self.near_duplicate_threshold <= 1, "dataset.near_duplicate_threshold", "must be in (0, 1]")
        _check(self.max_tokens_per_example >= 16, "dataset.max_tokens_per_example", "must be >= 16")
        _check(self.min_examples >= 1, "dataset.min_examples", "must be >= 1")
        _check(self.epochs >= 1, "dataset.epochs", "must be >= 1")
        prices = {}
        for model, price in self.prices.items():
            _check(
                isinstance(price, (int, float)) and not isinstance(price, bool) and price >= 0,
                f"dataset.prices.{model}",
                f"must be a price in USD per 1M training tokens, got {price!r}",
            )
            prices[str(model)] = float(price)
        object.__setattr__(self, "prices", prices)


EVALUATION_SUITES = ("test", "corrections", "corrections_reworded", "golden", "reworded")
GATE_METRICS = ("exact_match", "token_f1", "rouge_l", "chrf")


@dataclass(frozen=True)
class EvaluationSettings:
    """Candidate-versus-live evaluation (``tuneloop eval``); see docs/registry-and-evaluation.md."""

    golden_file: str = ""
    reworded_file: str = ""
    suites: list[str] = field(default_factory=lambda: list(EVALUATION_SUITES))
    views: list[str] = field(default_factory=lambda: list(VIEWS))
    max_tokens: int = 256
    concurrency: int = 4
    judge_name: str = ""
    judge_base_url: str = ""
    judge_api_key_env: str = ""

    def __post_init__(self):
        unknown = [s for s in self.suites if s not in EVALUATION_SUITES]
        _check(not unknown, "evaluation.suites", f"unknown suite(s) {unknown}; pick from {list(EVALUATION_SUITES)}")
        _check(bool(self.suites), "evaluation.suites", "must name at least one suite")
        _check_views(self.views, "evaluation.views")
        _check(self.max_tokens >= 1, "evaluation.max_tokens", "must be >= 1")
        _check(1 <= self.concurrency <= 64, "evaluation.concurrency", "must be 1..64")
        _check(
            not self.judge_name or self.judge_base_url.startswith(("http://", "https://")),
            "evaluation.judge_base_url",
            f"must be an http(s) URL when judge_name is set, got {self.judge_base_url!r}",
        )

    def judge_api_key(self) -> str:
        """The judge's API key, read from the named environment variable at call time."""
        return env_secret(self.judge_api_key_env)


@dataclass(frozen=True)
class GateSettings:
    """When a candidate may replace the live model (``tuneloop eval --gate``)."""

    metric: str = "chrf"
    correction_margin: float = 0.02
    tolerance: float = 0.01
    confidence: float = 0.95
    canary_weight: float = 0.0
    unload_retired: bool = True

    def __post_init__(self):
        _check(
            self.metric in GATE_METRICS, "gate.metric", f"must be one of {', '.join(GATE_METRICS)}; got {self.metric!r}"
        )
        _check(0 <= self.correction_margin <= 1, "gate.correction_margin", "must be 0..1 (metrics are on a 0..1 scale)")
        _check(0 <= self.tolerance <= 1, "gate.tolerance", "must be 0..1 (metrics are on a 0..1 scale)")
        _check(0.5 <= self.confidence < 1, "gate.confidence", f"must be in [0.5, 1), got {self.confidence}")
        _check(0 <= self.canary_weight < 1, "gate.canary_weight", "must be in [0, 1) (0 = promote directly)")


TRAINING_PROVIDERS = ("local", "openai")


@dataclass(frozen=True)
class TrainingSettings:
    """Fine-tuning runs (``tuneloop train``); see docs/training.md."""

    provider: str = "local"
    use_model_profile: bool = True
    method: str = "lora"
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    epochs: int = 5
    early_stopping_patience: int = 2
    learning_rate: float = 0.0002
    batch_size: int = 8
    gradient_accumulation: int = 1
    max_length: int = 1024
    seed: int = 0
    device: str = "auto"
    cpu_threads: int = 1
    save_total_limit: int = 2
    launcher: str = ""
    openai_base_url: str = ""
    openai_api_key_env: str = "OPENAI_API_KEY"
    openai_base_model: str = "gpt-4.1-mini-2025-04-14"
    openai_suffix: str = "tuneloop"
    openai_epochs: int = 0
    openai_lr_multiplier: float = 0.0
    openai_batch_size: int = 0
    poll_interval_s: float = 10.0
    openai_cutoff_date: str = "2027-01-06"

    def __post_init__(self):
        _check(
            self.provider in TRAINING_PROVIDERS,
            "training.provider",
            f"must be one of {', '.join(TRAINING_PROVIDERS)}; got {self.provider!r}",
        )
        _check(self.method in ("lora", "full"), "training.method", f"must be lora or full; got {self.method!r}")
        _check(self.lora_r >= 1, "training.lora_r", f"must be >= 1, got {self.lora_r}")
        _check(self.lora_alpha >= 1, "training.lora_alpha", f"must be >= 1, got {self.lora_alpha}")
        _check(0 <= self.lora_dropout < 1, "training.lora_dropout", "must be in [0, 1)")
        _check(bool(self.target_modules), "training.target_modules", 'list at least one module (or ["all-linear"])')
        for key in ("epochs", "batch_size", "gradient_accumulation", "save_total_limit"):
            _check(getattr(self, key) >= 1, f"training.{key}", "must be >= 1")
        _check(self.early_stopping_patience >= 0, "training.early_stopping_patience", "must be >= 0 (0 = off)")
        _check(self.learning_rate > 0, "training.learning_rate", "must be > 0")
        _check(self.max_length >= 16, "training.max_length", "must be >= 16")
        _check(self.device in ("auto", "cpu", "cuda"), "training.device", "must be auto, cpu or cuda")
        _check(self.cpu_threads >= 0, "training.cpu_threads", "must be >= 0 (0 = one per core)")
        _check(
            not self.openai_base_url or self.openai_base_url.startswith(("http://", "https://")),
            "training.openai_base_url",
            f"must be an http(s) URL or empty, got {self.openai_base_url!r}",
        )
        _check(bool(self.openai_base_model), "training.openai_base_model", "must not be empty")
        _check(
            len(self.openai_suffix) <= 64, "training.openai_suffix", "must be at most 64 characters (OpenAI's limit)"
        )
        _check(self.openai_epochs >= 0, "training.openai_epochs", "must be >= 0 (0 = auto)")
        _check(self.openai_lr_multiplier >= 0, "training.openai_lr_multiplier", "must be >= 0 (0 = auto)")
        _check(self.openai_batch_size >= 0, "training.openai_batch_size", "must be >= 0 (0 = auto)")
        _check(self.poll_interval_s > 0, "training.poll_interval_s", "must be > 0")
        try:
            datetime.date.fromisoformat(self.openai_cutoff_date)
        except ValueError:
            raise ConfigError(
                f'training.openai_cutoff_date: expected a date like "2027-01-06", got {self.openai_cutoff_date!r}',
                field="training.openai_cutoff_date",
            ) from None

    def openai_api_key(self) -> str:
        """The OpenAI API key, read from the named environment variable at call time."""
        return env_secret(self.openai_api_key_env)


@dataclass(frozen=True)
class MigrateSettings:
    """Moving off a hosted model onto an open one (``tuneloop migrate``); see docs/migrate-from-openai.md."""

    teacher: str = ""
    open_base_url: str = ""
    open_api_key_env: str = ""
    concurrency: int = 4
    retries: int = 6
    max_retry_wait_s: float = 60.0
    max_tokens: int = 512
    harvest_golden: bool = True
    harvest_reworded: bool = True
    tolerance: float = 0.02
    worst_answers: int = 5
    teacher_prices: dict[str, list[float]] = field(default_factory=dict)
    seconds_per_answer: float = 2.0

    def __post_init__(self):
        _check(
            not self.open_base_url or self.open_base_url.startswith(("http://", "https://")),
            "migrate.open_base_url",
            f"must be an http(s) URL or empty, got {self.open_base_url!r}",
        )
        _check(1 <= self.concurrency <= 64, "migrate.concurrency", f"must be 1..64, got {self.concurrency}")
        _check(0 <= self.retries <= 20, "migrate.retries", f"must be 0..20, got {self.retries}")
        _check(self.max_retry_wait_s > 0, "migrate.max_retry_wait_s", "must be > 0")
        _check(self.max_tokens >= 1, "migrate.max_tokens", "must be >= 1")
        _check(0 <= self.tolerance <= 1, "migrate.tolerance", "must be 0..1 (metrics are on a 0..1 scale)")
        _check(self.worst_answers >= 0, "migrate.worst_answers", "must be >= 0")
        _check(self.seconds_per_answer > 0, "migrate.seconds_per_answer", "must be > 0")
        for base, price in self.teacher_prices.items():
            _check(
                isinstance(price, list) and len(price) == 2 and all(isinstance(p, (int, float)) for p in price),
                "migrate.teacher_prices",
                f"{base}: expected [input, output] USD per million tokens, got {price!r}",
            )

    def open_api_key(self) -> str:
        """The open model server's key, read from the named environment variable at call time."""
        return env_secret(self.open_api_key_env)


SCHEDULER_JOBS = ("weekly", "monthly", "threshold", "retention")


@dataclass(frozen=True)
class SchedulerSettings:
    """The loop's schedule (``tuneloop scheduler``); see docs/loop.md."""

    timezone: str = "Asia/Seoul"
    weekly_cron: str = "0 9 * * mon"
    monthly_cron: str = "0 3 1 * *"
    retrain_threshold: int = 0
    threshold_check_minutes: float = 10.0
    jobs: list[str] = field(default_factory=lambda: list(SCHEDULER_JOBS))
    misfire_grace_s: int = 86400
    poll_interval_s: float = 10.0

    def __post_init__(self):
        try:
            zoneinfo.ZoneInfo(self.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ConfigError(
                f"scheduler.timezone: unknown time zone {self.timezone!r}", field="scheduler.timezone"
            ) from None
        for key in ("weekly_cron", "monthly_cron"):
            _check(
                len(getattr(self, key).split()) == 5,
                f"scheduler.{key}",
                f'must be five crontab fields like "0 9 * * mon"; got {getattr(self, key)!r}',
            )
        _check(self.retrain_threshold >= 0, "scheduler.retrain_threshold", "must be >= 0 (0 = off)")
        _check(self.threshold_check_minutes > 0, "scheduler.threshold_check_minutes", "must be > 0")
        unknown = [j for j in self.jobs if j not in SCHEDULER_JOBS]
        _check(not unknown, "scheduler.jobs", f"unknown job(s) {unknown}; pick from {', '.join(SCHEDULER_JOBS)}")
        _check(self.misfire_grace_s >= 0, "scheduler.misfire_grace_s", "must be >= 0 (0 = run however late)")
        _check(self.poll_interval_s > 0, "scheduler.poll_interval_s", "must be > 0")


@dataclass(frozen=True)
class PrivacySettings:
    """How long personal data is kept and when the purge runs; see docs/privacy.md."""

    retention_days: int = 180
    purge_cron: str = "30 4 * * *"

    def __post_init__(self):
        _check(self.retention_days >= 0, "privacy.retention_days", "must be >= 0 (0 = keep forever)")
        _check(
            len(self.purge_cron.split()) == 5,
            "privacy.purge_cron",
            f'must be five crontab fields like "30 4 * * *"; got {self.purge_cron!r}',
        )


@dataclass(frozen=True)
class Settings:
    """Every section of ``default.toml``, typed and checked."""

    paths: PathsSettings = field(default_factory=PathsSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    gateway: GatewaySettings = field(default_factory=GatewaySettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    chat: ChatSettings = field(default_factory=ChatSettings)
    knowledge: KnowledgeSettings = field(default_factory=KnowledgeSettings)
    feedback: FeedbackSettings = field(default_factory=FeedbackSettings)
    limits: LimitsSettings = field(default_factory=LimitsSettings)
    model_server: ModelServerSettings = field(default_factory=ModelServerSettings)
    starter: StarterSettings = field(default_factory=StarterSettings)
    report: ReportSettings = field(default_factory=ReportSettings)
    admin: AdminSettings = field(default_factory=AdminSettings)
    sso: SsoSettings = field(default_factory=SsoSettings)
    review: ReviewSettings = field(default_factory=ReviewSettings)
    dataset: DatasetSettings = field(default_factory=DatasetSettings)
    evaluation: EvaluationSettings = field(default_factory=EvaluationSettings)
    gate: GateSettings = field(default_factory=GateSettings)
    training: TrainingSettings = field(default_factory=TrainingSettings)
    migrate: MigrateSettings = field(default_factory=MigrateSettings)
    scheduler: SchedulerSettings = field(default_factory=SchedulerSettings)
    privacy: PrivacySettings = field(default_factory=PrivacySettings)
    # Where each key's value came from when it is not the default ("section.key" → "config file mine.toml",
    # "environment TUNELOOP_…", "model folder …/tuneloop-finetune.json", "flag"): filled by load_settings.
    origins: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    def origin(self, key: str) -> str:
        """Where the value of ``key`` ("training.epochs") came from: "default" unless a layer set it."""
        return self.origins.get(key, "default")

    @property
    def data_dir(self) -> Path:
        return Path(self.paths.data_dir).expanduser()

    @property
    def reports_dir(self) -> Path:
        """``report.reports_dir``, or ``<data_dir>/reports`` when it is empty."""
        return Path(self.report.reports_dir).expanduser() if self.report.reports_dir else self.data_dir / "reports"

    @property
    def db_path(self) -> Path:
        """The SQLite file: ``sqlite:///PATH`` in ``database.url``, else ``database.path``, else the data dir's."""
        if self.database.url.startswith(SQLITE_URL_PREFIX):
            return Path(sqlite_url_path(self.database.url)).expanduser()
        return Path(self.database.path).expanduser() if self.database.path else self.data_dir / "tuneloop.db"

    @property
    def store(self) -> str | Path:
        """Where the store is, as ``feedback.db.open_db`` takes it: the PostgreSQL URL, else the SQLite file."""
        return self.database.url if self.database.is_postgres else self.db_path

    @property
    def model_dir(self) -> Path:
        """Where the built-in model server's base model lives (the starter model by default)."""
        if self.model_server.model_dir:
            return Path(self.model_server.model_dir).expanduser()
        return self.data_dir / "models" / "starter"

    @property
    def datasets_dir(self) -> Path:
        """Where built training sets go: ``<data_dir>/datasets/v{n}/``."""
        return self.data_dir / "datasets"


# Settings fields that are not sections of default.toml.
NOT_SECTIONS = ("origins",)
SECTIONS = tuple(f.name for f in dataclasses.fields(Settings) if f.name not in NOT_SECTIONS)


def load_settings(
    path: str | os.PathLike | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Load settings: defaults, the base model's fine-tuning profile, ``path`` (or ``$TUNELOOP_CONFIG``), env,
    then overrides — each later layer wins, and ``Settings.origins`` says which layer set each key.

    The profile (``config/profile.py``) is the one in ``model_server.model_dir`` when the local provider trains
    and ``training.use_model_profile`` is on; it sets only the keys nobody set in a later layer. ``overrides``
    is a nested mapping (``{"gateway": {"port": 9000}}``) or dotted keys (``{"gateway.port": 9000}``), what
    a command-line flag sets. Raises :class:`ConfigError` naming the bad key (and the profile's file when the
    profile is to blame).
    """
    env = os.environ if env is None else env
    path = path or env.get(ENV_PREFIX + "CONFIG")
    layers: list[tuple[str, dict]] = []
    if path:
        layers.append((f"config file {path}", _read_toml(Path(path))))
    layers.append(("environment", _from_env(env)))
    if overrides:
        layers.append(("flag", _nest(overrides)))
    settings = _assemble(layers)
    profile = _model_profile(settings)
    if profile is None:
        return settings
    try:
        _assemble([("", profile.values)])
    except ConfigError as exc:
        raise ConfigError(f"{profile.path}: {exc.message}", field=exc.field) from None
    return _assemble([(f"model folder {profile.path}", profile.values), *layers])


def _model_profile(settings: Settings) -> Profile | None:
    """The fine-tuning profile that applies: the local provider's base model folder's, when switched on."""
    training = settings.training
    if not training.use_model_profile or training.provider != "local":
        return None
    return read_profile(settings.model_dir)


def _assemble(layers: list[tuple[str, dict]]) -> Settings:
    """``Settings`` from the defaults and ``layers`` (label, nested values), later layers winning."""
    raw = _read_toml(DEFAULT_TOML)
    origins: dict[str, str] = {}
    for label, values in layers:
        _merge(raw, values)
        for section, keys in values.items():
            for key in keys if isinstance(keys, Mapping) else ():
                origins[f"{section}.{key}"] = _env_origin(section, key, values) if label == "environment" else label
    return dataclasses.replace(_build(Settings, raw, ""), origins=origins)


def _read_toml(path: Path) -> dict:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def _merge(base: dict, extra: Mapping) -> None:
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


def _nest(flat: Mapping[str, Any]) -> dict:
    nested: dict = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        if isinstance(value, Mapping) and isinstance(node.get(leaf), dict):
            _merge(node[leaf], value)
        else:
            node[leaf] = dict(value) if isinstance(value, Mapping) else value
    return nested


def _from_env(env: Mapping[str, str]) -> dict:
    nested: dict = {}
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        section, _, key = name[len(ENV_PREFIX) :].lower().partition("__")
        nested.setdefault(section, {})[key] = _EnvString(value)
    # DATABASE_URL is what container platforms and most servers (Open WebUI, LiteLLM) read; ours wins over it.
    if env.get(DATABASE_URL_ENV) and "url" not in nested.get("database", {}):
        nested.setdefault("database", {})["url"] = _DatabaseUrlEnv(env[DATABASE_URL_ENV])
    return nested


def _env_origin(section: str, key: str, env_values: dict) -> str:
    if isinstance(env_values.get(section, {}).get(key), _DatabaseUrlEnv):
        return f"environment {DATABASE_URL_ENV}"
    return f"environment {ENV_PREFIX}{section.upper()}__{key.upper()}"


class _EnvString(str):
    """A value that came from the environment: converted to the field's type."""


class _DatabaseUrlEnv(_EnvString):
    """``database.url`` taken from ``DATABASE_URL``."""


def _build(cls: type, raw: Any, prefix: str):
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{prefix or 'config'}: expected a table, got {type(raw).__name__}", field=prefix)
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if not (cls is Settings and f.name in NOT_SECTIONS)}
    unknown = sorted(set(raw) - names)
    if unknown:
        key = f"{prefix}{unknown[0]}"
        raise ConfigError(f"{key}: unknown setting (see config/default.toml)", field=key)
    values = {name: _convert(hints[name], raw[name], f"{prefix}{name}") for name in names if name in raw}
    return cls(**values)


def _convert(hint: Any, value: Any, key: str):
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key + ".")
    if origin is list:
        (item_hint,) = typing.get_args(hint)
        if isinstance(value, _EnvString):
            value = _parse_env_list(value, key)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}", field=key)
        return [_convert(item_hint, item, key) for item in value]
    if origin in (typing.Union, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if hint is bool:
        if isinstance(value, _EnvString):
            lowered = value.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}", field=key)
    if hint in (int, float):
        if isinstance(value, _EnvString):
            try:
                return hint(value)
            except ValueError:
                raise ConfigError(f"{key}: expected a number, got {value!r}", field=key) from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (hint is int and isinstance(value, float)):
            raise ConfigError(f"{key}: expected {hint.__name__}, got {value!r}", field=key)
        return hint(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}", field=key)
        return str(value)
    if hint is dict or origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a table, got {value!r}", field=key)
        return dict(value)
    return value


def _parse_env_list(value: str, key: str) -> list:
    text = value.strip()
    if text.startswith("["):
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{key}: not a JSON list: {exc}", field=key) from None
        return parsed
    return [part.strip() for part in text.split(",") if part.strip()]
