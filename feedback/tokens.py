"""Feedback tokens and pseudonymous references, both keyed HMACs.

A feedback token is handed out with every answer and proves that whoever rates
a message was served it: ``HMAC(secret, message_id)``. Without it anyone who
learns a message id could vote on it. User and voter references are HMACs of
the caller's identity, so the database never holds a raw user id or IP address.
"""

from __future__ import annotations

import base64
import hashlib
import hmac


def _mac(secret: str, purpose: str, value: str) -> str:
    digest = hmac.new(secret.encode(), f"{purpose}:{value}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def feedback_token(secret: str, message_id: str) -> str:
    """The token that lets its holder rate ``message_id``."""
    return _mac(secret, "feedback", message_id)


def token_matches(secret: str, message_id: str, token: str) -> bool:
    """Constant-time check of a feedback token."""
    # Bytes, not str: compare_digest raises TypeError on a str with non-ASCII characters (issue 14: a
    # feedback_token of "é" was a 500), and a token that is not ASCII is simply a wrong token.
    expected = feedback_token(secret, message_id).encode()
    return hmac.compare_digest(expected, (token or "").encode("utf-8", "surrogatepass"))


def pseudonym(secret: str, kind: str, value: str) -> str:
    """A stable, non-reversible reference for a user or voter (``kind`` keeps the spaces apart)."""
    return _mac(secret, kind, value)[:32]
