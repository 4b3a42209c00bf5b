"""Sign-in throttling kept in the store: so many failed attempts per address and per account, then 429.

Each attempt is *reserved* before the secret is compared — counted and inserted
in one ``BEGIN IMMEDIATE`` transaction — and the reservation is deleted when the
secret was right. So the rows of a window are its failures, and a burst of
parallel guesses cannot all pass the check before any of them is counted: the
transaction serializes them, and the ones over the limit are refused without
their secret being compared at all. The counts live in the database, so every
gateway worker, process and host that shares it enforces the same limit.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlite_utils import Database

from config.errors import RateLimited
from feedback.db import utc_text, write_transaction


@dataclass(frozen=True)
class Limit:
    """At most ``attempts`` failures for ``key`` (an address or an account name) within ``window_s``."""

    scope: str  # "address" or "account"
    key: str
    attempts: int
    window_s: float


class Throttled(RateLimited):
    """Too many failed sign-ins; ``retry_after`` says in how many seconds one is allowed again."""

    def __init__(self, message: str, *, retry_after: int, scope: str):
        super().__init__(message, code="signin_throttled")
        self.retry_after = retry_after
        self.scope = scope


def reserve_attempt(db: Database, limits: list[Limit], now: datetime | None = None) -> list[int]:
    """Count one attempt against every limit, or raise :class:`Throttled` if any is used up.

    Returns the reservation's row ids: pass them to :func:`attempt_succeeded` when the secret
    was right, so only failures stay counted.
    """
    now = now or datetime.now(timezone.utc)
    with write_transaction(db):
        for limit in limits:
            since = utc_text(now - timedelta(seconds=limit.window_s))
            # The failure that must leave the window before another attempt fits: the attempts-th newest.
            row = db.execute(
                """SELECT at FROM signin_attempts WHERE scope = ? AND key = ? AND at >= ?
                   ORDER BY at DESC LIMIT 1 OFFSET ?""",
                [limit.scope, limit.key, since, limit.attempts - 1],
            ).fetchone()
            if row is not None:
                frees_at = datetime.fromisoformat(row[0].replace("Z", "+00:00")) + timedelta(seconds=limit.window_s)
                wait = max(1, int((frees_at - now).total_seconds()) + 1)
                raise Throttled(
                    f"too many failed sign-ins {_whose(limit)} ({limit.attempts} in {_span(limit.window_s)}); "
                    f"try again in {_span(wait)}",
                    retry_after=wait,
                    scope=limit.scope,
                )
        at = utc_text(now)
        ids = [
            db.execute(
                "INSERT INTO signin_attempts (scope, key, at) VALUES (?, ?, ?) RETURNING id",
                [limit.scope, limit.key, at],
            ).fetchall()[0][0]  # fetchall: an INSERT … RETURNING left unfinished would hold the transaction open
            for limit in limits
        ]
        longest = max((limit.window_s for limit in limits), default=0)
        db.execute("DELETE FROM signin_attempts WHERE at < ?", [utc_text(now - timedelta(seconds=longest))])
    return ids


def attempt_succeeded(db: Database, reservation: list[int]) -> None:
    """The secret was right: the attempt does not count as a failure."""
    if not reservation:
        return
    with write_transaction(db):
        db.execute(f"DELETE FROM signin_attempts WHERE id IN ({', '.join('?' * len(reservation))})", reservation)


def _whose(limit: Limit) -> str:
    return "from this address" if limit.scope == "address" else f"for {limit.key}"


def _span(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds} s"
    return f"{round(seconds / 60)} min"
