"""The weekly report's "What changed, and who": the week's audit-log entries, by person.

Read from the audit log (:mod:`feedback.audit`) — approvals, rejections, knowledge-base
edits and imports, promotions and rollbacks, API keys and accounts — so the report names
the people behind every change users can see. Each entry becomes a ``subject`` (what was
changed: a model version, a key's name, an account — staff-facing, shown as is) and a
``text`` (a reviewed question: user text, masked with the rest of the report's user text
by :mod:`feedback.report.privacy`).
"""

from __future__ import annotations

from collections import Counter, defaultdict

from sqlite_utils import Database

from feedback import audit

MAX_ENTRIES = 60  # listed one by one; the per-person counts cover every entry


def _version_names(db: Database) -> dict[str, str]:
    return dict(db.execute("SELECT id, name FROM model_versions").fetchall())


def _subject(entry: audit.Entry, names: dict[str, str]) -> str:
    details = entry.details
    group = entry.action.partition(".")[0]
    if group == "model":
        return names.get(entry.target or "", entry.target or "")
    if group == "key":
        return details.get("name") or entry.target or ""
    if group == "user":
        role = f": {details['from']} → {details['to']}" if "to" in details else ""
        return f"{details.get('email', entry.target or '')}{role}"
    if entry.action in ("review.import", "kb.import"):
        return details.get("file", "")
    return entry.target or ""


def _text(entry: audit.Entry) -> str:
    details = entry.details
    parts = [details[k] for k in ("question", "reason", "note") if isinstance(details.get(k), str) and details[k]]
    return " — ".join(parts)


def changes(db: Database, since: str, until: str) -> dict:
    """Who changed what in ``[since, until)``: per-person counts and the entries (at most :data:`MAX_ENTRIES`)."""
    entries = audit.in_window(db, since, until)
    names = _version_names(db)
    per_person: dict[str, Counter] = defaultdict(Counter)
    for e in entries:
        per_person[e.actor_name][e.description] += 1
    people = [
        {"who": who, "total": sum(counts.values()), "counts": dict(counts.most_common())}
        for who, counts in sorted(per_person.items(), key=lambda item: (-sum(item[1].values()), item[0]))
    ]
    listed = [
        {
            "at": e.at,
            "who": e.actor_name,
            "via": e.via,
            "action": e.action,
            "description": e.description,
            "subject": _subject(e, names),
            "text": _text(e),
        }
        for e in entries[-MAX_ENTRIES:]
    ]
    return {"total": len(entries), "people": people, "entries": listed, "listed": len(listed)}
