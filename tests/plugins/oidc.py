"""A real OpenID Connect provider on loopback (oidc-provider-mock), started by the test.

It publishes discovery, signs ID tokens with its own RSA key, checks the client's
redirect URI, nonce and PKCE, and shows an authorization form where a test (or a
browser) picks the subject to sign in as; ``provider.person(sub, **claims)`` sets
the claims that subject's ID token carries.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx2
import pytest

CLIENT_ID = "tuneloop-test-client"
CLIENT_SECRET_ENV = "TUNELOOP_TEST_SSO_SECRET"


@dataclass
class Provider:
    issuer: str

    def person(self, sub: str, **claims) -> str:
        """Make ``sub`` a user with these claims (email, name, groups, ...); returns ``sub``."""
        response = httpx2.put(f"{self.issuer}/users/{sub}", json=claims, timeout=10)
        assert response.status_code == 204, response.text
        return sub

    def settings(self, **extra) -> dict:
        """Gateway setting overrides that point single sign-on at this provider."""
        values = {
            "sso.enabled": True,
            "sso.issuer": self.issuer,
            "sso.client_id": CLIENT_ID,
            "sso.client_secret_env": CLIENT_SECRET_ENV,
        }
        values.update(extra)
        return values


@pytest.fixture(scope="module")
def oidc_provider():
    """The provider, listening on localhost (loopback only) for the test module."""
    from oidc_provider_mock import run_server_in_thread  # imported here: only SSO tests pay for it

    with run_server_in_thread(require_nonce=True) as server:
        yield Provider(f"http://localhost:{server.server_port}")


@pytest.fixture
def sso_secret(monkeypatch):
    """The client secret, in the environment variable the settings name (never in the settings)."""
    monkeypatch.setenv(CLIENT_SECRET_ENV, "a-client-secret-from-the-environment")
