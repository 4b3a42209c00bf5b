"""``tuneloop migrate plan``: what replacing the hosted model takes, on one screen.

The figures are counts from the database and the suites, and estimates said to be estimates:

- **harvest** — questions still to ask (the journal's are paid for), tokens in from the prompts as built
  (``trainer.dataset.validate.estimate_tokens``, a deliberately high count) and tokens out from the length of
  the answers users were served, priced with ``migrate.teacher_prices`` for the teacher's base model; time is
  questions × ``migrate.seconds_per_answer`` / ``migrate.concurrency``;
- **train** — local, no fee; time from the newest finished local run here, scaled by rows × epochs (unknown
  before a first run);
- **evaluate** — both models answer every suite question in each view: the teacher's share is priced the same
  way, time as for the harvest at ``evaluation.concurrency``.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass, field

from sqlite_utils import Database

from config.settings import Settings
from feedback import review
from feedback.shutdown import fine_tuned_base, shutdown_date, undated
from trainer.dataset.validate import estimate_tokens
from trainer.evaluation.suites import golden_cases, reworded_cases
from trainer.migration import harvest as harvesting
from trainer.migration import serving
from trainer.migration import teacher as teaching


@dataclass
class Plan:
    """Everything ``migrate plan`` prints (and ``--json`` returns)."""

    teacher: dict
    data: dict
    open_base: dict
    steps: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _price(settings: Settings, model: str) -> list[float] | None:
    base = fine_tuned_base(model) or model
    prices = settings.migrate.teacher_prices
    return prices.get(base) or prices.get(undated(base))


def _cost(price: list[float] | None, tokens_in: int, tokens_out: int) -> float | None:
    return None if price is None else round((tokens_in * price[0] + tokens_out * price[1]) / 1e6, 4)


def _counts(db: Database) -> dict:
    one = lambda sql: db.execute(sql).fetchone()[0]  # noqa: E731
    rated = """SELECT COUNT(DISTINCT u.question_key) FROM feedback f
               JOIN messages a ON a.id = f.message_id
               JOIN messages u ON u.conversation_id = a.conversation_id AND u.seq = a.seq - 1
               WHERE f.rating = {}"""
    return {
        "answers_served": one("SELECT COUNT(*) FROM messages WHERE role = 'assistant' AND error IS NULL"),
        "questions_rated_up": one(rated.format(1)),
        "questions_rated_down": one(rated.format(-1)),
    }


def _last_local_run(db: Database) -> dict | None:
    row = db.execute(
        """SELECT r.id, r.started_at, r.finished_at, r.hyperparameters, d.counts FROM training_runs r
           JOIN datasets d ON d.id = r.dataset_id
           WHERE r.provider = 'local' AND r.state = 'succeeded' AND r.started_at IS NOT NULL
           ORDER BY r.finished_at DESC NULLS LAST LIMIT 1"""
    ).fetchone()
    if row is None:
        return None
    run_id, started, finished, hyper, counts = row
    seconds = (datetime.datetime.fromisoformat(finished) - datetime.datetime.fromisoformat(started)).total_seconds()
    rows = (json.loads(counts or "{}") or {}).get("train") or 0
    epochs = (json.loads(hyper or "{}") or {}).get("epochs") or 1
    if not rows or seconds <= 0:
        return None
    return {"run_id": run_id, "seconds_per_row_epoch": seconds / (rows * epochs)}


def make_plan(db: Database, settings: Settings, *, today: datetime.date | None = None) -> Plan:
    """The plan for replacing the teacher (module docstring)."""
    today = today or datetime.datetime.now(datetime.timezone.utc).date()
    m = settings.migrate
    teacher = teaching.teacher_version(db, settings)
    shuts = shutdown_date(teacher.name, settings.report.shutdown_dates)
    cutoff = datetime.date.fromisoformat(settings.training.openai_cutoff_date)
    teacher_info = {
        "name": teacher.name,
        "id": teacher.id,
        "status": teacher.status,
        "server": teaching.teacher_target(settings, teacher).base_url,
        "shutdown_date": shuts.isoformat() if shuts else None,
        "days_left": (shuts - today).days if shuts else None,
        "openai_training_cutoff": cutoff.isoformat(),
    }
    todo, corrected, masked = harvesting.questions(db, settings, teacher)
    done = harvesting.read_journal(harvesting.journal_path(settings, teacher))
    pending = [q for q in todo if q.key not in done]
    users = harvesting.user_questions(db)
    served = db.execute(
        "SELECT AVG(length(content)) FROM messages WHERE role = 'assistant' AND error IS NULL"
    ).fetchone()[0]
    answer_tokens = estimate_tokens("x" * int(served or 200))
    data = {
        "questions_answered": len(users),
        **_counts(db),
        "approved_corrections": len(review.approved_items(db)),
        "golden_questions": len(golden_cases(settings)),
        "reworded_held_out": len(reworded_cases(settings)),
        "to_ask": {
            origin: sum(1 for q in todo if q.asked == origin and q.view == "closed_book")
            for origin in ("user", "golden", "reworded")
        },
        "views": [v for v in ("closed_book", "as_served") if any(q.view == v for q in todo)],
        "kept_corrections": corrected,
        "masked_questions": masked,
        "already_harvested": len(todo) - len(pending),
    }
    open_base = {
        "name": settings.model_server.served_name,
        "folder": str(settings.model_dir),
        "server": serving.open_base_url(settings),
        "folder_exists": settings.model_dir.is_dir(),
    }
    price = _price(settings, teacher.name)
    tokens_in = sum(sum(estimate_tokens(msg["content"]) for msg in q.messages) for q in pending)
    tokens_out = answer_tokens * len(pending)
    steps = [
        {
            "step": "harvest",
            "what": f"ask {teacher.name} {len(pending)} prompt(s) ({len(todo) - len(pending)} already answered)",
            "cost_usd": _cost(price, tokens_in, tokens_out),
            "seconds": round(len(pending) * m.seconds_per_answer / m.concurrency),
        }
    ]
    train_rows = len(todo) + data["approved_corrections"]  # a question's rows closed book and as served
    epochs = settings.training.epochs
    last = _last_local_run(db)
    steps.append(
        {
            "step": "train",
            "what": f"LoRA on {open_base['name']} (local), about {train_rows} teacher and correction rows plus the "
            f"base file, {epochs} epochs",
            "cost_usd": 0.0,
            "seconds": round(last["seconds_per_row_epoch"] * train_rows * epochs) if last else None,
            "basis": f"measured on run {last['run_id']}" if last else "no local run here yet to measure",
        }
    )
    asks = (data["golden_questions"] + data["reworded_held_out"] + data["approved_corrections"]) * len(
        settings.evaluation.views
    )
    steps.append(
        {
            "step": "evaluate",
            "what": f"candidate and {teacher.name} answer {asks} prompt(s) each (suites × views)",
            "cost_usd": _cost(price, asks * 60, asks * answer_tokens),
            "seconds": round(2 * asks * m.seconds_per_answer / settings.evaluation.concurrency),
        }
    )
    steps.append(
        {"step": "switch", "what": "promote; the hosted model stays a fallback", "cost_usd": 0.0, "seconds": 0}
    )
    warnings = []
    if shuts is None:
        warnings.append(f"no shutdown date known for {teacher.name} (report.shutdown_dates)")
    elif shuts < today:
        warnings.append(f"{teacher.name} was shut down on {shuts}: it cannot be a teacher any more")
    if price is None:
        warnings.append(f"no price for {teacher.name} in migrate.teacher_prices: costs unknown")
    if not open_base["folder_exists"]:
        warnings.append(f"the open base's folder {open_base['folder']} does not exist (model_server.model_dir)")
    if today > cutoff:
        warnings.append(f"OpenAI accepts no new fine-tuning jobs since {cutoff}: train locally (this plan does)")
    return Plan(teacher_info, data, open_base, steps, warnings)
