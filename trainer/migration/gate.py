"""The candidate against the model it replaces, and the switch.

:func:`evaluate_replacement` runs the ordinary evaluation (``trainer/evaluation/run.py``: the same suites,
``evaluation.suites``, closed book and as served) with the hosted model as the incumbent, then judges it by the
migration's rule instead of the retrain's: the retrain gate asks a candidate to *beat* the live model on the
corrections, but a replacement only has to be **not worse than the model it replaces beyond
``migrate.tolerance``** on every suite as served, and closed book on what the replaced model was taught
(:func:`migration_checks`) — with the same paired bootstrap interval deciding
whether a drop is real or noise (``trainer.gate``'s *not worse* rule). The verdict is stored on the evaluation
(``gate.kind = "migration"``), so ``tuneloop eval`` history and the weekly report show it like any other.

:func:`switch` acts on it through ``trainer.gate.apply`` — rejected, held (too close to tell), canary or
promoted — and when the candidate took over, keeps the hosted model as a fallback through the day before its shutdown
date (``report.shutdown_dates``): the gateway asks it when the open model fails before its first token. A rollback
(``tuneloop models rollback``) makes the hosted model live again.

:func:`closeness` is what the report prints: per suite and view, how close the candidate came, and the answers
it lost by the most.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass

from sqlite_utils import Database

from config.settings import Settings
from feedback.db import write_transaction
from feedback.shutdown import shutdown_date
from feedback.versions import ModelVersion
from trainer import gate
from trainer.evaluation.metrics import view_metrics
from trainer.evaluation.run import Evaluation, evaluate, read_rows
from trainer.migration import serving
from trainer.migration import teacher as teaching
from trainer.registry import resolve_version

CLOSED_BOOK_SUITES = ("test", "corrections")


@dataclass(frozen=True)
class SwitchOutcome:
    """What :func:`switch` did: the gate's action and version, and the date the hosted model stays a fallback
    through (None when it was not kept)."""

    action: str
    version: ModelVersion
    reasons: list[str]
    fallback_until: str | None


def migration_checks(evaluation: Evaluation, tolerance: float) -> tuple:
    """What a replacement must not be worse on: every suite that has rows as served (what users get), and
    closed book the suites the replaced model was taught (``CLOSED_BOOK_SUITES``: the harvest's test split, the
    approved corrections), where the candidate must know as much by itself. A suite without rows is reported,
    not gated: there is nothing to lose on it."""
    checks = []
    for suite in evaluation.suites:
        views = view_metrics(evaluation.metrics.get(suite))
        if not any(entry.get("rows") for entry in views.values()):
            continue
        checks.append((suite, ("as_served", "closed_book"), "not_worse", tolerance))
        if suite in CLOSED_BOOK_SUITES and "as_served" in views and "closed_book" in views:
            checks.append((suite, ("closed_book",), "not_worse", tolerance))
    return tuple(checks)


def evaluate_replacement(
    db: Database,
    settings: Settings,
    candidate: ModelVersion | str,
    *,
    suites: list[str] | None = None,
    progress: bool = False,
    actor: str = "migrate",
) -> Evaluation:
    """Evaluate ``candidate`` against the teacher on ``suites`` (default ``evaluation.suites``) and store the
    migration verdict (module docstring)."""
    teacher = serving.pin_teacher(db, settings, teaching.teacher_version(db, settings), actor=actor)
    candidate = candidate if isinstance(candidate, ModelVersion) else resolve_version(db, candidate)
    if candidate.adapter_path and candidate.provider != "openai" and not candidate.base_url:
        candidate = serving.pin_candidate(db, settings, candidate, actor=actor)
    evaluation = evaluate(db, settings, candidate, teacher, suites=suites, progress=progress, actor=actor)
    verdict = gate.decide(evaluation, settings, migration_checks(evaluation, settings.migrate.tolerance))
    evaluation.passed, evaluation.reasons = verdict.passed, verdict.reasons
    evaluation.gate = {**verdict.to_dict(), "kind": "migration", "tolerance": settings.migrate.tolerance}
    with write_transaction(db):
        db.execute(
            "UPDATE evaluations SET passed = ?, reasons = ?, gate = ? WHERE id = ?",
            [
                int(evaluation.passed),
                json.dumps(evaluation.reasons, ensure_ascii=False),
                json.dumps(evaluation.gate, ensure_ascii=False),
                evaluation.id,
            ],
        )
    return evaluation


def closeness(evaluation: Evaluation, worst: int) -> list[dict]:
    """Per suite and view: rows, both scores, the difference and its interval, what the gate said (``result``:
    passed, failed, unclear, or ``reported`` when not gated), and the ``worst`` answers the candidate lost by
    the most (question, both answers, both scores)."""
    metric = evaluation.gate.get("metric", "chrf")
    gated = {(c["suite"], c["view"]): c for c in evaluation.gate.get("checks", [])}
    rows = read_rows(evaluation)
    out = []
    for suite in evaluation.suites:
        for view, entry in view_metrics(evaluation.metrics.get(suite)).items():
            line = {"suite": suite, "view": view, "rows": entry.get("rows", 0), "result": "reported", "lost": []}
            if entry.get("rows"):
                line |= {
                    "candidate": entry["candidate"][metric],
                    "incumbent": entry["incumbent"][metric],
                    "delta": entry["delta"][metric],
                    "interval": (entry.get("interval") or {}).get(metric) or [entry["delta"][metric]] * 2,
                }
            if (suite, view) in gated:
                line["result"] = gated[(suite, view)]["result"]
            mine = [r for r in rows if r["suite"] == suite and r.get("view") == view]

            def loss(row: dict) -> float:
                return row["candidate"]["scores"][metric] - row["incumbent"]["scores"][metric]

            line["lost"] = [
                {
                    "question": r["question"],
                    "teacher": r["incumbent"]["answer"],
                    "candidate": r["candidate"]["answer"],
                    "teacher_score": r["incumbent"]["scores"][metric],
                    "candidate_score": r["candidate"]["scores"][metric],
                }
                for r in sorted((r for r in mine if loss(r) < 0), key=loss)[:worst]
            ]
            out.append(line)
    return out


def switch(
    db: Database,
    settings: Settings,
    evaluation: Evaluation,
    *,
    actor: str = "migrate",
    today: datetime.date | None = None,
) -> SwitchOutcome:
    """Act on a migration verdict (module docstring); the hosted model stays a fallback until its shutdown."""
    replaced = resolve_version(db, evaluation.incumbent_id)
    outcome = gate.apply(db, settings, evaluation, actor=actor)
    until = None
    if outcome.action == "promoted":
        today = today or datetime.datetime.now(datetime.timezone.utc).date()
        shuts = shutdown_date(replaced.name, settings.report.shutdown_dates)
        # Through the day before: on the shutdown day itself the hosted model may already be gone.
        if shuts is not None and shuts - datetime.timedelta(days=1) >= today:
            until = (shuts - datetime.timedelta(days=1)).isoformat()
            serving.keep_as_fallback(db, replaced, until, actor=actor)
    return SwitchOutcome(outcome.action, outcome.version, outcome.reasons, until)
