"""The candidate against the model it replaces, and the switch.

:func:`evaluate_replacement` runs the ordinary evaluation (``trainer/evaluation/run.py``: the same suites,
``evaluation.suites``, closed book and as served) with the hosted model as the incumbent, then judges it by the
migration's rule instead of the retrain's: the retrain gate asks a candidate to *beat* the live model on the
corrections, but a replacement only has to be **not worse than the model it replaces beyond
``migrate.tolerance``, on every suite, in every view** — with the same paired bootstrap interval deciding
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
from trainer.evaluation.run import Evaluation, evaluate, read_rows
from trainer.migration import serving
from trainer.migration import teacher as teaching
from trainer.registry import resolve_version

VIEWS_CHECKED = ("as_served", "closed_book")


@dataclass(frozen=True)
class SwitchOutcome:
    """What :func:`switch` did: the gate's action and version, and the date the hosted model stays a fallback
    through (None when it was not kept)."""

    action: str
    version: ModelVersion
    reasons: list[str]
    fallback_until: str | None


def migration_checks(suites: list[str], tolerance: float) -> tuple:
    """Every suite in both views: not worse than the replaced model by more than ``tolerance``."""
    return tuple((suite, (view,), "not_worse", tolerance) for suite in suites for view in VIEWS_CHECKED)


def evaluate_replacement(
    db: Database,
    settings: Settings,
    candidate: ModelVersion | str,
    *,
    progress: bool = False,
    actor: str = "migrate",
) -> Evaluation:
    """Evaluate ``candidate`` against the teacher and store the migration verdict (module docstring)."""
    teacher = serving.pin_teacher(db, settings, teaching.teacher_version(db, settings), actor=actor)
    candidate = candidate if isinstance(candidate, ModelVersion) else resolve_version(db, candidate)
    if candidate.adapter_path and candidate.provider != "openai" and not candidate.base_url:
        candidate = serving.pin_candidate(db, settings, candidate, actor=actor)
    evaluation = evaluate(db, settings, candidate, teacher, progress=progress, actor=actor)
    views = [v for v in VIEWS_CHECKED if v in evaluation.params.get("views", VIEWS_CHECKED)]
    checks = tuple(c for c in migration_checks(evaluation.suites, settings.migrate.tolerance) if c[1][0] in views)
    verdict = gate.decide(evaluation, settings, checks)
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
    """Per gate check: suite, view, both scores, the difference and interval, its result, and the ``worst``
    answers the candidate lost by the most (question, both answers, both scores)."""
    metric = evaluation.gate.get("metric", "chrf")
    rows = read_rows(evaluation)
    out = []
    for check in evaluation.gate.get("checks", []):
        mine = [r for r in rows if r["suite"] == check["suite"] and r.get("view") == check["view"]]

        def loss(row: dict) -> float:
            return row["candidate"]["scores"][metric] - row["incumbent"]["scores"][metric]

        lost = sorted((r for r in mine if loss(r) < 0), key=loss)[:worst]
        out.append(
            {
                **check,
                "lost": [
                    {
                        "question": r["question"],
                        "teacher": r["incumbent"]["answer"],
                        "candidate": r["candidate"]["answer"],
                        "teacher_score": r["incumbent"]["scores"][metric],
                        "candidate_score": r["candidate"]["scores"][metric],
                    }
                    for r in lost
                ],
            }
        )
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
