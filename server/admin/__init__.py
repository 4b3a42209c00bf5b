"""Admin pages under ``/admin``: the blueprint and its route modules.

``bp`` is registered by ``server/app.py``. A new group of pages is a module that
adds views to :data:`server.admin.blueprint.bp` and is imported here; the
blueprint's ``before_request`` already guards it (see ``auth.py``); each view declares
its role with ``@requires(...)``.
"""

from server.admin import (
    audit,  # noqa: F401  (the audit log's views)
    knowledge,  # noqa: F401  (the knowledge base's views)
    pages,  # noqa: F401  (its views register on the blueprint)
    privacy,  # noqa: F401  (erasure, export, retention)
    review,  # noqa: F401  (the review queue's views)
    signin,  # noqa: F401  (password, link and token sign-in)
    sso,  # noqa: F401  (single sign-on)
    users,  # noqa: F401  (accounts)
)
from server.admin.auth import admin_token
from server.admin.blueprint import bp

__all__ = ["admin_token", "bp"]
