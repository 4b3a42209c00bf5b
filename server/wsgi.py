"""WSGI entry point for gunicorn (``server.wsgi:app``); settings come from ``$TUNELOOP_CONFIG`` and env."""

from server.app import create_app

app = create_app()
