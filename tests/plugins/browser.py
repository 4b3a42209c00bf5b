"""Browser fixtures: Debian's Chromium driven by playwright, the gateway on a real port, host sites on others.

Playwright's own browser download cannot work here, so it launches the system
``chromium`` (``make browser`` installs it). A missing Chromium FAILS the test with
that instruction instead of skipping: a green run must mean the widget was tested.
"""

from __future__ import annotations

import shutil
from typing import Callable

import pytest
from playwright.sync_api import Browser, Page, sync_playwright
from werkzeug.serving import make_server
from werkzeug.wrappers import Response

from tests.plugins.common import serve_in_thread

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


def chromium_executable() -> str:
    """Path of the system Chromium, or a test failure that says how to install it."""
    path = shutil.which("chromium")
    if path is None:
        pytest.fail("Chromium is not installed: run `make browser` (installs Debian's chromium package)", pytrace=False)
    return path


@pytest.fixture(scope="module")
def browser() -> Browser:
    """One headless Chromium per test module; each test gets a fresh context from ``page``."""
    executable = chromium_executable()
    with sync_playwright() as p:
        instance = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield instance
        instance.close()


@pytest.fixture
def page(browser) -> Page:
    """A new page in its own context (own localStorage, so its own voter id).

    ``page.errors`` collects uncaught page errors, so a test can assert there were none.
    """
    context = browser.new_context(viewport={"width": 1180, "height": 820}, locale="en-US")
    tab = context.new_page()
    tab.set_default_timeout(10_000)
    tab.errors = []
    tab.on("pageerror", lambda error: tab.errors.append(error))
    yield tab
    context.close()


@pytest.fixture
def serve() -> Callable[..., str]:
    """Factory: ``serve(wsgi_app)`` → its base URL on a free loopback port; stopped after the test."""
    servers = []

    def start(app) -> str:
        server = make_server("127.0.0.1", 0, app, threaded=True)
        serve_in_thread(server)
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def live_gateway(make_gateway, serve) -> Callable[..., str]:
    """Factory: ``live_gateway(**setting_overrides)`` → URL of a real HTTP gateway on the fake upstream."""

    def start(**overrides) -> str:
        return serve(make_gateway(**overrides))

    return start


class HostSite:
    """Somebody else's website: serves ``html`` at every path, from its own origin."""

    def __init__(self) -> None:
        self.html = "<!doctype html><title>empty</title>"

    def __call__(self, environ, start_response):
        return Response(self.html, mimetype="text/html")(environ, start_response)


@pytest.fixture
def host_site(serve) -> tuple[HostSite, str]:
    """A second web server on another port (another origin); set ``site.html`` before loading it."""
    site = HostSite()
    return site, serve(site)
