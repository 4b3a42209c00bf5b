"""Admin pages of the review queue (``/admin/review``): list and filter, look at the evidence, decide.

Viewers read the queue; reviewers decide. Every decision is a POST form that
carries the session's CSRF field (checked by the blueprint's ``require_role`` for
cookie sessions), or JSON to ``/admin/api/review/<id>/approve|reject`` for scripts
with the admin token. The decision is recorded as the signed-in person (the form
has no name field for an account); with the admin token the optional ``reviewer``
text is kept, marked as the token's. A refused decision (an empty answer, a question already
queued elsewhere) re-renders the item with the message and what was typed, so
nothing the reviewer wrote is lost. All text is rendered through Jinja's
autoescaping: questions and answers come from users and are never markup.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from flask import jsonify, redirect, request, url_for

from config.errors import Conflict, ValidationFailed
from feedback import review
from feedback.audit import Actor
from feedback.knowledge import corrections, store
from feedback.ranking import RankingOptions, version_to_rank
from feedback.report.weeks import utc_text
from server.admin.auth import acting_person, principal, requires
from server.admin.blueprint import bp, page
from server.context import gateway, get_db

PAGE_SIZE = 50
DEFAULT_REVIEWER = "admin"


def _list_args() -> tuple[str | None, str, int]:
    status = request.args.get("status", "pending")
    if status == "all":
        status = None
    elif status not in review.STATUSES:
        raise ValidationFailed(f"status must be all or one of {', '.join(review.STATUSES)}", field="status")
    page_number = request.args.get("page", "1")
    if not page_number.isdigit() or int(page_number) < 1:
        raise ValidationFailed("page must be a whole number from 1", field="page")
    return status, request.args.get("q", "").strip(), int(page_number)


@bp.get("/review")
@requires("viewer")
def review_list():
    """The queue, filtered by status (pending by default) and a text search."""
    status, search, page_number = _list_args()
    db = get_db()
    items = review.list_items(db, status=status, search=search, limit=PAGE_SIZE, offset=(page_number - 1) * PAGE_SIZE)
    total = review.count_items(db, status=status, search=search)
    return page(
        "review_list.html",
        items=items,
        total=total,
        status=status or "all",
        search=search,
        page_number=page_number,
        pages=max(1, -(-total // PAGE_SIZE)),
        counts=review.status_counts(db),
        message=request.args.get("message", ""),
    )


@bp.get("/api/review")
@requires("viewer")
def review_list_json():
    """The same list as JSON (``status``, ``q``, ``page`` as on the page)."""
    status, search, page_number = _list_args()
    db = get_db()
    items = review.list_items(db, status=status, search=search, limit=PAGE_SIZE, offset=(page_number - 1) * PAGE_SIZE)
    return jsonify(
        {"total": review.count_items(db, status=status, search=search), "items": [i.to_dict() for i in items]}
    )


@bp.post("/review/collect")
@requires("reviewer")
def review_collect():
    """Queue the live model's worst-answered questions of the last ``review.window_days`` days now."""
    settings = gateway().settings
    db = get_db()
    version = version_to_rank(db, None)
    now = datetime.now(timezone.utc)
    options = RankingOptions.from_settings(settings.report, top_n=settings.review.top_n)
    result = review.collect_worst(
        db,
        model_version_id=version.id,
        since=utc_text(now - timedelta(days=settings.review.window_days)),
        until=utc_text(now),
        options=options,
        actor=_reviewer(),
    )
    message = f"Added {len(result.added)} questions; {len(result.skipped)} were already pending or approved."
    return redirect(url_for("admin.review_list", status="pending", message=message))


@bp.get("/review/<item_id>")
@requires("viewer")
def review_item(item_id: str):
    """One item: its evidence and the forms to approve, edit or reject it."""
    item = review.get_item(get_db(), item_id)
    return _item_page(item, message=request.args.get("message", ""))


def _item_page(item, *, error: str = "", message: str = "", answer: str | None = None, status: int = 200):
    db = get_db()
    return page(
        "review_item.html",
        item=item,
        error=error,
        message=message,
        answer=item.suggested_answer if answer is None else answer,
        reviewer=request.form.get("reviewer", DEFAULT_REVIEWER),
        typed_reviewer=principal().account is None,
        kb_target=_target_or_none(db, item),
        kb_entry=store.find_entry(db, item.kb_entry_id) if item.kb_entry_id else None,
        phrasings=corrections.phrasings(item),
    ), status


def _target_or_none(db, item):
    try:
        return corrections.approval_target(db, item)
    except ValidationFailed:
        return None


def _reviewer(values=None) -> Actor:
    """Who decides: the signed-in account; with the admin token, the ``reviewer`` typed (marked as the token's)."""
    return acting_person("reviewer", DEFAULT_REVIEWER, values)


@bp.post("/review/<item_id>/approve")
@requires("reviewer")
def review_approve(item_id: str):
    """Approve the answer in the form (also edits an approved item's answer); it goes live in the knowledge base.

    ``kb_entry`` (optional): the entry to put it in, or ``new``; empty: the automatic choice the page shows.
    """
    db = get_db()
    answer = request.form.get("answer", "")
    target = request.form.get("kb_entry", "").strip() or None
    try:
        item = review.approve(db, item_id, answer=answer, reviewer=_reviewer(), kb_entry=target)
    except (ValidationFailed, Conflict) as exc:
        return _item_page(review.get_item(db, item_id), error=exc.message, answer=answer, status=exc.status)
    return redirect(_next_after(item.id, f"Approved: {item.question} — live now in entry {item.kb_entry_id}."))


@bp.post("/review/<item_id>/edit")
@requires("reviewer")
def review_edit(item_id: str):
    """Change the question wording (and, for an approved item, its answer)."""
    db = get_db()
    question = request.form.get("question")
    answer = request.form.get("answer")
    try:
        item = review.get_item(db, item_id)
        item = review.edit_item(
            db, item_id, reviewer=_reviewer(), question=question, answer=answer if item.status == "approved" else None
        )
    except (ValidationFailed, Conflict) as exc:
        return _item_page(review.get_item(db, item_id), error=exc.message, answer=answer, status=exc.status)
    return redirect(url_for("admin.review_item", item_id=item.id, message="Saved."))


@bp.post("/review/<item_id>/reject")
@requires("reviewer")
def review_reject(item_id: str):
    """Reject the item, with an optional note saying why."""
    db = get_db()
    try:
        item = review.reject(db, item_id, reviewer=_reviewer(), note=request.form.get("note"))
    except (ValidationFailed, Conflict) as exc:
        return _item_page(review.get_item(db, item_id), error=exc.message, status=exc.status)
    return redirect(_next_after(item.id, f"Rejected: {item.question}"))


def _next_after(item_id: str, message: str) -> str:
    """The next pending item to look at, or the list when the queue is empty."""
    pending = [i for i in review.list_items(get_db(), status="pending", limit=2) if i.id != item_id]
    if pending:
        return url_for("admin.review_item", item_id=pending[0].id, message=message)
    return url_for("admin.review_list", status="pending", message=message + " The queue is empty.")


def _json_body() -> dict:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ValidationFailed("send a JSON object", field="body")
    return body


@bp.post("/api/review/<item_id>/approve")
@requires("reviewer")
def review_approve_json(item_id: str):
    """Approve ``{"answer": …}`` (scripts: ``reviewer`` names who decided when the admin token is used)."""
    body = _json_body()
    answer = body.get("answer")
    if not isinstance(answer, str):
        raise ValidationFailed("answer must be a string", field="answer")
    item = review.approve(get_db(), item_id, answer=answer, reviewer=_reviewer(body))
    return jsonify(item.to_dict())


@bp.post("/api/review/<item_id>/reject")
@requires("reviewer")
def review_reject_json(item_id: str):
    """Reject an item, ``{"note": …}`` optional."""
    body = _json_body()
    note = body.get("note")
    if note is not None and not isinstance(note, str):
        raise ValidationFailed("note must be a string", field="note")
    item = review.reject(get_db(), item_id, reviewer=_reviewer(body), note=note)
    return jsonify(item.to_dict())
