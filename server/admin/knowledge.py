"""Admin pages of the knowledge base (``/admin/knowledge``): list and search, try a question, add, edit, retire.

Behind the admin blueprint's authentication and CSRF check like every admin page: viewers read, reviewers change.
Every change is a POST made as the signed-in person (with the admin token, the typed ``actor``, "admin" when left
empty, marked as the token's) and may say why; it becomes a new version in
the entry's history, and every gateway worker serves it within ``knowledge.refresh_ms``. A refused change (an
empty answer, a question another entry has) re-renders the form with the message and what was typed. All text
is rendered through Jinja's autoescaping: questions and answers are never markup.
"""

from __future__ import annotations

from flask import jsonify, redirect, request, url_for

from config.errors import Conflict, NotFound, ValidationFailed
from feedback.knowledge import lineage, store
from server.admin.auth import acting_person, principal, requires
from server.admin.blueprint import bp, page
from server.context import gateway, get_db

PAGE_SIZE = 50
DEFAULT_ACTOR = "admin"


def _list_args() -> tuple[str | None, str, int]:
    state = request.args.get("state", "active")
    if state == "all":
        state = None
    elif state not in store.STATES:
        raise ValidationFailed(f"state must be all or one of {', '.join(store.STATES)}", field="state")
    number = request.args.get("page", "1")
    if not number.isdigit() or int(number) < 1:
        raise ValidationFailed("page must be a whole number from 1", field="page")
    return state, request.args.get("q", "").strip(), int(number)


@bp.get("/knowledge")
@requires("viewer")
def knowledge_list():
    """Entries by state (active by default) and text, with how their answers were rated; and a question to try."""
    state, search, number = _list_args()
    db = get_db()
    entries = store.list_entries(db, state=state, search=search, limit=PAGE_SIZE, offset=(number - 1) * PAGE_SIZE)
    total = store.count_entries(db, state=state, search=search)
    trial = request.args.get("try", "").strip()
    return page(
        "knowledge_list.html",
        entries=entries,
        ratings=lineage.ratings_by_entry(db, [e.id for e in entries]),
        total=total,
        state=state or "all",
        search=search,
        page_number=number,
        pages=max(1, -(-total // PAGE_SIZE)),
        counts=store.state_counts(db),
        trial=trial,
        found=gateway().knowledge.search(trial, k=gateway().settings.knowledge.top_k, min_score=0.0) if trial else [],
        min_score=gateway().settings.knowledge.min_score,
        message=request.args.get("message", ""),
    )


@bp.get("/api/knowledge")
@requires("viewer")
def knowledge_list_json():
    """The same list as JSON (``state``, ``q``, ``page`` as on the page)."""
    state, search, number = _list_args()
    db = get_db()
    entries = store.list_entries(db, state=state, search=search, limit=PAGE_SIZE, offset=(number - 1) * PAGE_SIZE)
    return jsonify(
        {"total": store.count_entries(db, state=state, search=search), "entries": [e.to_dict() for e in entries]}
    )


@bp.get("/knowledge/new")
@requires("reviewer")
def knowledge_new():
    """The form for a new entry."""
    return _form_page(None, questions="", answer="")


@bp.post("/knowledge")
@requires("reviewer")
def knowledge_create():
    """Add an entry from the form."""
    form = _form()
    try:
        entry = store.add_entry(
            get_db(),
            questions=form["questions"],
            answer=form["answer"],
            lang=form["lang"] or None,
            actor=form["actor"],
            reason=form["reason"] or None,
        )
    except (ValidationFailed, Conflict) as exc:
        return _form_page(None, error=exc.message, status=exc.status, **_typed(form))
    return redirect(url_for("admin.knowledge_entry", entry_id=entry.id, message="Added; served within a second."))


@bp.get("/knowledge/<entry_id>")
@requires("viewer")
def knowledge_entry(entry_id: str):
    """One entry: the edit form, its state, the answers built on it and how they were rated, its history."""
    entry = store.get_entry(get_db(), entry_id)
    return _form_page(entry, message=request.args.get("message", ""))


@bp.get("/api/knowledge/<entry_id>")
@requires("viewer")
def knowledge_entry_json(entry_id: str):
    """One entry with its ratings and history, as JSON."""
    db = get_db()
    entry = store.get_entry(db, entry_id)
    return jsonify(
        {
            **entry.to_dict(),
            "ratings": lineage.entry_ratings(db, entry_id),
            "history": [h.to_dict() for h in store.history(db, entry_id)],
        }
    )


@bp.post("/knowledge/<entry_id>/edit")
@requires("reviewer")
def knowledge_edit(entry_id: str):
    """Save the form as the entry's next version."""
    db = get_db()
    form = _form()
    try:
        store.update_entry(
            db,
            entry_id,
            actor=form["actor"],
            reason=form["reason"] or None,
            questions=form["questions"],
            answer=form["answer"],
            lang=form["lang"] or None,
        )
    except (ValidationFailed, Conflict) as exc:
        return _form_page(store.get_entry(db, entry_id), error=exc.message, status=exc.status, **_typed(form))
    return redirect(url_for("admin.knowledge_entry", entry_id=entry_id, message="Saved; served within a second."))


@bp.post("/knowledge/<entry_id>/retire")
@requires("reviewer")
def knowledge_retire(entry_id: str):
    """Stop serving the entry."""
    form = _form()
    store.retire_entry(get_db(), entry_id, actor=form["actor"], reason=form["reason"] or None)
    return redirect(url_for("admin.knowledge_entry", entry_id=entry_id, message="Retired: no longer served."))


@bp.post("/knowledge/<entry_id>/restore")
@requires("reviewer")
def knowledge_restore(entry_id: str):
    """Serve a retired entry again, or (with ``version``) make an earlier version current."""
    db = get_db()
    form = _form()
    version = request.form.get("version", "").strip()
    try:
        if version:
            if not version.isdigit():
                raise ValidationFailed("version must be a whole number", field="version")
            store.revert_entry(
                db, entry_id, int(version), actor=form["actor"], reason=form["reason"] or f"restored version {version}"
            )
        else:
            store.restore_entry(db, entry_id, actor=form["actor"], reason=form["reason"] or None)
    except (ValidationFailed, Conflict, NotFound) as exc:
        return _form_page(store.get_entry(db, entry_id), error=exc.message, status=exc.status)
    return redirect(url_for("admin.knowledge_entry", entry_id=entry_id, message="Restored; served within a second."))


def _form() -> dict:
    return {
        "questions": [line for line in request.form.get("questions", "").splitlines() if line.strip()],
        "answer": request.form.get("answer", ""),
        "lang": request.form.get("lang", "").strip(),
        "actor": acting_person("actor", DEFAULT_ACTOR),
        "reason": request.form.get("reason", "").strip(),
    }


def _typed(form: dict) -> dict:
    """What the admin typed, to put back in a refused form."""
    return {"questions": "\n".join(form["questions"]), "answer": form["answer"], "actor": form["actor"]}


def _form_page(entry, *, questions=None, answer=None, actor=None, error="", message="", status=200):
    db = get_db()
    return page(
        "knowledge_entry.html",
        entry=entry,
        questions="\n".join(entry.questions) if questions is None and entry else questions or "",
        answer=entry.answer if answer is None and entry else answer or "",
        actor=actor or request.form.get("actor", DEFAULT_ACTOR),
        typed_actor=principal().account is None,
        history=store.history(db, entry.id) if entry else [],
        ratings=lineage.entry_ratings(db, entry.id) if entry else None,
        rated_down=lineage.rated_down_answers(db, entry.id) if entry else [],
        error=error,
        message=message,
    ), status
