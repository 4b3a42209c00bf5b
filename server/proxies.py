"""The client's address behind reverse proxies, believed only from the proxies named in ``gateway.trusted_proxies``.

Behind a load balancer every request comes from the balancer's address, so rate limits, a voter's identity and
sign-in throttling would all treat every visitor as one client. ``X-Forwarded-For`` says who the client was —
but anyone can send that header, so it is believed only when the request came from a trusted proxy:

- from an address that is not in ``gateway.trusted_proxies`` (all of them, by default): every
  ``X-Forwarded-*`` header is dropped and the peer's address is the client's;
- from a trusted proxy: ``X-Forwarded-For`` is read from the right (the entry the nearest proxy added) and
  every trusted address is skipped; the first one that is not is the client. So a chain of proxies works, and
  what a client wrote into the header itself is never reached: it sits to the left of its real address.

Werkzeug's ``ProxyFix`` then sets ``REMOTE_ADDR`` and the scheme (``X-Forwarded-Proto``) from the one value left.
``X-Forwarded-Host`` is never believed: the gateway compares a browser's ``Origin`` with the request's host.
"""

from __future__ import annotations

import ipaddress
from typing import Iterable

from werkzeug.middleware.proxy_fix import ProxyFix

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
FORWARDED_HEADERS = ("HTTP_X_FORWARDED_FOR", "HTTP_X_FORWARDED_PROTO", "HTTP_X_FORWARDED_HOST", "HTTP_FORWARDED")


class TrustedProxies:
    """WSGI middleware: the client's address from ``X-Forwarded-For``, when a trusted proxy sent it."""

    def __init__(self, app, trusted: Iterable[str]):
        # Checked when the settings load (GatewaySettings.trusted_proxies).
        self.networks: list[Network] = [ipaddress.ip_network(entry.strip(), strict=False) for entry in trusted]
        self.app = app
        self.fix = ProxyFix(app, x_for=1, x_proto=1, x_host=0, x_port=0, x_prefix=0)

    def trusts(self, address: str | None) -> bool:
        try:
            ip = ipaddress.ip_address((address or "").strip())
        except ValueError:
            return False
        return any(ip in network for network in self.networks)

    def client(self, chain: str) -> str | None:
        """The client's entry of an ``X-Forwarded-For`` chain: the rightmost one that is not a trusted proxy."""
        hops = [hop.strip() for hop in chain.split(",") if hop.strip()]
        for hop in reversed(hops):
            if not self.trusts(hop):
                return hop
        return hops[0] if hops else None  # every hop is a proxy of ours: the first one is the client

    def __call__(self, environ, start_response):
        if not self.networks or not self.trusts(environ.get("REMOTE_ADDR")):
            for header in FORWARDED_HEADERS:
                environ.pop(header, None)
            return self.app(environ, start_response)
        client = self.client(environ.get("HTTP_X_FORWARDED_FOR", ""))
        if client is None:
            environ.pop("HTTP_X_FORWARDED_FOR", None)
        else:
            environ["HTTP_X_FORWARDED_FOR"] = client
        proto = environ.get("HTTP_X_FORWARDED_PROTO", "").split(",")[-1].strip()
        if proto:
            environ["HTTP_X_FORWARDED_PROTO"] = proto  # the nearest proxy's word on the scheme
        environ.pop("HTTP_X_FORWARDED_HOST", None)
        return self.fix(environ, start_response)
