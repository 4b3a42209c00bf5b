"""The audit log (``/admin/audit``, admins only): who changed what, when — filtered, paged, exported as CSV."""

from __future__ import annotations

import io

from flask import Response, jsonify, request

from config.errors import ValidationFailed
from feedback import audit
from server.admin.auth import requires
from server.admin.blueprint import bp, page
from server.context import get_db

PAGE_SIZE = 100
CSV_LIMIT = 100_000


def _filters() -> tuple[audit.Filters, int]:
    args = request.args
    number = args.get("page", "1")
    if not number.isdigit() or int(number) < 1:
        raise ValidationFailed("page must be a whole number from 1", field="page")
    filters = audit.Filters(
        actor=args.get("actor", "").strip(),
        action=args.get("action", "").strip(),
        target=args.get("target", "").strip(),
        since=args.get("since", "").strip(),
        until=args.get("until", "").strip(),
    )
    return filters, int(number)


@bp.get("/audit", endpoint="audit")
@requires("admin")
def audit_log():
    """Entries newest first, filtered by person, action, target and dates."""
    filters, number = _filters()
    db = get_db()
    total = audit.count(db, filters)
    return page(
        "audit.html",
        entries=audit.entries(db, filters, limit=PAGE_SIZE, offset=(number - 1) * PAGE_SIZE),
        filters=filters,
        actions=audit.ACTIONS,
        total=total,
        page_number=number,
        pages=max(1, -(-total // PAGE_SIZE)),
    )


@bp.get("/audit.csv")
@requires("admin")
def audit_csv():
    """The filtered entries as a CSV file (newest first, at most 100,000)."""
    filters, _ = _filters()
    buffer = io.StringIO()
    audit.write_csv(audit.entries(get_db(), filters, limit=CSV_LIMIT), buffer)
    return Response(
        buffer.getvalue(),
        mimetype="text/csv",
        headers={"Content-Disposition": 'attachment; filename="tuneloop-audit.csv"'},
    )


@bp.get("/api/audit")
@requires("admin")
def audit_json():
    """The filtered entries as JSON (``page`` of 100)."""
    filters, number = _filters()
    db = get_db()
    entries = audit.entries(db, filters, limit=PAGE_SIZE, offset=(number - 1) * PAGE_SIZE)
    return jsonify({"total": audit.count(db, filters), "entries": [e.to_dict() for e in entries]})
