"""The report's view of the rest of the loop: review queue, training, evaluation, promotions.

Those tables arrive with later parts of tuneloop (``review_items``,
``training_runs``, ``evaluations``). Until a table exists its section says
"nothing yet"; once it does, the rows are read here — and only here, so a new
kind of event is one function in this module. Columns are looked up by name
rather than assumed, because these schemas may still grow; a time column is
the first of :data:`TIME_COLUMNS` the table has.
"""

from __future__ import annotations

import json
from datetime import datetime

from sqlite_utils import Database

from feedback.db import column_names

TIME_COLUMNS = ("finished_at", "decided_at", "completed_at", "updated_at", "created_at", "started_at")


def _columns(db: Database, table: str) -> set[str] | None:
    if table not in db.table_names():
        return None
    return set(column_names(db, table))


def _time_column(columns: set[str]) -> str | None:
    return next((c for c in TIME_COLUMNS if c in columns), None)


def _pick(columns: set[str], wanted: tuple[str, ...]) -> list[str]:
    return [c for c in wanted if c in columns]


def _rows(
    db: Database, table: str, columns: list[str], where: str, params: list, order: str, limit: int = 50
) -> list[dict]:
    sql = f"SELECT {', '.join(columns)} FROM {table} WHERE {where} ORDER BY {order} LIMIT {int(limit)}"
    return [dict(zip(columns, row, strict=False)) for row in db.execute(sql, params).fetchall()]


def review_queue_status(db: Database, since: str, until: str) -> dict:
    """Review queue counts: by status now, added and decided in the window, oldest pending."""
    columns = _columns(db, "review_items")
    if columns is None or "status" not in columns:
        return {"available": False}
    by_status = dict(db.execute("SELECT status, COUNT(*) FROM review_items GROUP BY status").fetchall())
    status: dict = {"available": True, "by_status": by_status, "pending": by_status.get("pending", 0)}
    if "created_at" in columns:
        (status["added"],) = db.execute(
            "SELECT COUNT(*) FROM review_items WHERE created_at >= ? AND created_at < ?", [since, until]
        ).fetchone()
        (oldest,) = db.execute("SELECT MIN(created_at) FROM review_items WHERE status = 'pending'").fetchone()
        status["oldest_pending"] = oldest
        if oldest:
            age = datetime.fromisoformat(until.replace("Z", "+00:00")) - datetime.fromisoformat(
                oldest.replace("Z", "+00:00")
            )
            status["oldest_pending_days"] = max(0, age.days)
    if "decided_at" in columns:
        status["decided"] = dict(
            db.execute(
                "SELECT status, COUNT(*) FROM review_items WHERE decided_at >= ? AND decided_at < ? GROUP BY status",
                [since, until],
            ).fetchall()
        )
    return status


def training_events(db: Database, since: str, until: str) -> dict:
    """Training runs that ended (or last changed) in the window."""
    return _events(
        db,
        "training_runs",
        since,
        until,
        ("id", "provider", "base_model", "state", "dataset_id", "metrics", "error"),
    )


def evaluation_events(db: Database, since: str, until: str) -> dict:
    """Candidate-versus-live evaluations finished in the window, with model names and a one-line summary."""
    result = _events(
        db,
        "evaluations",
        since,
        until,
        ("id", "candidate_id", "incumbent_id", "passed", "reasons", "metrics", "gate"),
    )
    names = _version_names(db)
    for row in result["events"]:
        gate = row.pop("gate", None)
        gate = json.loads(gate) if isinstance(gate, str) else gate or {}
        metric = gate.get("metric", "chrf")
        row["outcome"] = gate.get("outcome") or {1: "passed", 0: "failed"}.get(row.get("passed"))
        row["candidate_name"] = names.get(row.get("candidate_id"))
        row["incumbent_name"] = names.get(row.get("incumbent_id"))
        metrics = row.get("metrics") if isinstance(row.get("metrics"), dict) else {}
        row["summary"] = "; ".join(
            f"{suite.replace('_', ' ')}: " + ", ".join(parts)
            for suite, entry in metrics.items()
            if (parts := [_view_summary(view, m, metric) for view, m in _views(entry).items() if m.get("rows")])
        )
        row["changes"] = _changes(metrics, metric)
    return result


def _changes(metrics: dict, metric: str) -> list[dict]:
    """What the candidate answers differently, one line per suite and view: questions answered word for word
    (live, candidate) and the gate metric's means — the report's "what the retrain changed" table."""
    lines = []
    for suite, entry in metrics.items():
        for view, m in _views(entry).items():
            if not m.get("rows"):
                continue
            n = m["rows"]
            lines.append(
                {
                    "suite": suite,
                    "view": view,
                    "view_words": _VIEW_WORDS.get(view, view),
                    "rows": n,
                    "live_right": round(m["incumbent"].get("exact_match", 0) * n),
                    "candidate_right": round(m["candidate"].get("exact_match", 0) * n),
                    "metric": metric,
                    "live": m["incumbent"].get(metric, 0),
                    "candidate": m["candidate"].get(metric, 0),
                }
            )
    return lines


_VIEW_WORDS = {"closed_book": "closed book", "as_served": "as served"}


def _views(entry: dict) -> dict:
    # An evaluation stored before there were views asked closed book (trainer/evaluation/metrics.view_metrics).
    return {"closed_book": entry} if "rows" in entry else entry


def _view_summary(view: str, m: dict, metric: str) -> str:
    """``closed book 3/3 exact (live 0/3), chrF 1.000 vs 0.553``: what a reader wants to know of one view."""
    n = m["rows"]
    right = {role: round(m[role].get("exact_match", 0) * n) for role in ("candidate", "incumbent")}
    return (
        f"{_VIEW_WORDS.get(view, view)} {right['candidate']}/{n} exact (live {right['incumbent']}/{n}), "
        f"{metric} {m['candidate'].get(metric, 0):.3f} vs {m['incumbent'].get(metric, 0):.3f}"
    )


def _version_names(db: Database) -> dict[str, str]:
    if "model_versions" not in db.table_names():
        return {}
    return dict(db.execute("SELECT id, name FROM model_versions").fetchall())


# How a registry event reads in "<name> <kind> (now <status>)".
_EVENT_WORDS = {
    "promoted": "promoted",
    "canary": "made a canary",
    "rolled_back": "made live again by a rollback",
    "retired": "retired",
    "rejected": "rejected by the gate",
}


def _registry_events(db: Database, since: str, until: str) -> tuple[list[dict], set[tuple[str, str]]]:
    """Events from the registry history (``model_events``), and the (version, kind) pairs they cover."""
    if "model_events" not in db.table_names():
        return [], set()
    names = _version_names(db)
    statuses = dict(db.execute("SELECT id, status FROM model_versions").fetchall())
    events, covered = [], set()
    rows = db.execute(
        """SELECT version_id, event, previous_live_id, actor, reason, details, created_at FROM model_events
           WHERE created_at >= ? AND created_at < ? AND event NOT IN ('deployed', 'undeployed')
           ORDER BY created_at""",
        [since, until],
    ).fetchall()
    for version_id, event, previous, actor, reason, details, at in rows:
        kind = _EVENT_WORDS[event]
        if event == "canary":
            kind += f" for {json.loads(details or '{}').get('weight', 0):.0%} of conversations"
        if event in ("promoted", "rolled_back"):
            covered.add((version_id, "promoted"))
            if previous:
                covered.add((previous, "retired"))
                kind += f", replacing {names.get(previous, previous)}"
        if event == "retired":
            covered.add((version_id, "retired"))
        events.append(
            {
                "kind": kind,
                "event": event,
                "model_version_id": version_id,
                "name": names.get(version_id, version_id),
                "status": statuses.get(version_id, "?"),
                "actor": actor,
                "reason": reason,
                "at": at,
            }
        )
    return events, covered


def promotion_events(db: Database, since: str, until: str) -> dict:
    """Promotions, canaries, rollbacks, retirements and rejections in the window.

    From the registry history (``model_events``: who, why, what it replaced) where
    there is one, else from ``model_versions``' ``promoted_at``/``retired_at`` (the
    configured model, demo data, changes from before the history existed).
    """
    columns = _columns(db, "model_versions") or set()
    events, covered = _registry_events(db, since, until)
    for column, kind in (("promoted_at", "promoted"), ("retired_at", "retired")):
        if column not in columns:
            continue
        for version_id, name, status, at in db.execute(
            f"SELECT id, name, status, {column} FROM model_versions WHERE {column} >= ? AND {column} < ?",
            [since, until],
        ).fetchall():
            if (version_id, kind) in covered:
                continue
            events.append({"kind": kind, "model_version_id": version_id, "name": name, "status": status, "at": at})
    events.sort(key=lambda e: e["at"])
    return {"available": True, "events": events}


def _events(db: Database, table: str, since: str, until: str, wanted: tuple[str, ...]) -> dict:
    columns = _columns(db, table)
    if columns is None:
        return {"available": False, "events": []}
    at = _time_column(columns)
    if at is None:
        return {"available": True, "events": []}
    picked = _pick(columns, wanted) + [at]
    rows = _rows(db, table, picked, f"{at} >= ? AND {at} < ?", [since, until], f"{at}")
    for row in rows:
        row["at"] = row.pop(at)
        for key in ("metrics", "reasons"):
            if isinstance(row.get(key), str):
                try:
                    row[key] = json.loads(row[key])
                except ValueError:
                    pass
    return {"available": True, "events": rows}


def lifecycle(db: Database, since: str, until: str) -> dict:
    """Everything the report says about the loop beyond ratings, for the window."""
    return {
        "review_queue": review_queue_status(db, since, until),
        "training": training_events(db, since, until),
        "evaluations": evaluation_events(db, since, until),
        "promotions": promotion_events(db, since, until),
    }
