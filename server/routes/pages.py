"""The browser side: ``/`` (the demo chat page) and ``/widget.js`` (the embeddable widget).

The widget is one hand-written file served as it is: no build step. The demo page
runs the same file in "page" mode, so what a visitor tries here is what a company
embeds. How to embed it and the security model: docs/widget.md.
"""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, make_response, render_template, request, send_from_directory

from config.errors import InvalidRequest
from server.context import gateway

SERVER_DIR = Path(__file__).resolve().parent.parent
STATIC_DIR = SERVER_DIR / "static"
LANGUAGES = ("en", "ko")
PUBLISHABLE_PREFIX = "tl_pk_"
# Short enough that a fixed widget reaches every site within minutes; the ETag makes
# the revalidation after that a 304.
WIDGET_MAX_AGE_S = 300
# The demo page loads only its own script and talks only to its own origin. The widget
# styles itself with a <style> element inside its shadow root, hence 'unsafe-inline' for styles.
DEMO_CSP = (
    "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

bp = Blueprint("pages", __name__, template_folder=str(SERVER_DIR / "templates"))


@bp.get("/")
def index():
    """The demo chat page. Query: ``lang`` (en|ko), ``key`` (a publishable key), ``title``."""
    lang = request.args.get("lang", "")
    key = request.args.get("key", "")
    if key and not key.startswith(PUBLISHABLE_PREFIX):
        # A secret key in a URL ends up in browser history and logs; refuse it outright.
        raise InvalidRequest(f"only a publishable key ({PUBLISHABLE_PREFIX}…) may be put in a page", field="key")
    html = render_template(
        "index.html",
        lang=lang if lang in LANGUAGES else "",
        key=key,
        title=request.args.get("title", "")[:80],
        key_required=gateway().settings.gateway.api_key_required,
        gateway_url=request.host_url.rstrip("/"),
    )
    response = make_response(html)
    response.headers["Cache-Control"] = "no-store"
    response.headers["Content-Security-Policy"] = DEMO_CSP
    response.headers["Referrer-Policy"] = "no-referrer"  # the key may be in this page's URL
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


@bp.get("/widget.js")
def widget_js():
    """The embeddable widget: cached briefly, then revalidated by ETag; loadable from any site."""
    response = send_from_directory(STATIC_DIR, "widget.js", mimetype="text/javascript", max_age=WIDGET_MAX_AGE_S)
    response.cache_control.public = True
    # A <script> needs no CORS, but a host page that adds crossorigin/integrity (SRI) does.
    response.headers["Access-Control-Allow-Origin"] = "*"
    response.headers["Cross-Origin-Resource-Policy"] = "cross-origin"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response
