"""Generates ``docs/schema.md`` from the migrated schema: ``python -m feedback.schema_doc``.

``tests/test_schema_doc.py`` regenerates it in memory and fails when the file on
disk differs, so the documented schema cannot drift from the migrations.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from feedback.db import open_db
from feedback.migrations import MIGRATIONS

DOC_PATH = Path(__file__).resolve().parent.parent / "docs" / "schema.md"

TABLE_NOTES = {
    "api_keys": (
        "API keys, stored as SHA-256 hashes. `kind` is `secret` (server-to-server) or `publishable` (widget: chat and "
        "rate only)."
    ),
    "model_versions": (
        "Every model that ever answered or was trained: the configured model, fallbacks (`standby`), candidates, the "
        "one `live` version (a partial unique index allows only one), `canary` versions with a `traffic_weight`, "
        "`retired` and `rejected` ones."
    ),
    "conversations": (
        "A conversation, with the API key that started it (others cannot read it) and a keyed hash of the caller's "
        "user id."
    ),
    "responses": (
        "Responses stored by `POST /v1/responses` (unless the request said `store: false`): the turn that "
        "answered it (`message_id`, whose conversation it continues), the response it followed, and what the "
        "Responses API echoes back that a turn does not hold (instructions, sampling, the client's metadata). "
        "`GET /v1/responses/{id}` rebuilds the response from this row and its message; the conversation's key "
        "rule (feedback/access.py) decides who may read or continue it."
    ),
    "rate_limit_counters": (
        'Rate-limit counts (`limits.storage_uri = "database://"`, the default), shared by every gateway '
        "worker on the database: one row per limit and caller (`key`: flask-limiter's, naming the route, the "
        "limit and the API key and/or client address), the `hits` of its fixed window and when that window "
        "ends. Rows of ended windows are deleted about once a minute."
    ),
    "messages": (
        "User and assistant messages in order (`seq`). Every assistant message records the `model_version_id` that "
        "wrote it, its latency, token counts and finish reason; a failed answer keeps its `error`."
    ),
    "feedback": (
        "Ratings (+1/−1) with reason, comment and suggested correction; unique per (message, voter), so a voter "
        "changes a vote instead of adding one."
    ),
    "instance_secrets": (
        "Secrets shared by every process on this database (the feedback-token signing key), the fingerprints of"
        " secrets set in the hosts' settings, and the instance id written to paths.data_dir on PostgreSQL."
    ),
    "review_items": (
        "The review queue: a worst-answered question (`origin` `ranking`, or an `import`ed / `manual` one) with its "
        "`evidence` as JSON (votes, answers given with their votes, comments, reasons, suggested corrections, "
        "phrasings, down-voted message ids). `status` pending → approved (with a non-empty `answer`; `answer_source` "
        "reviewer, teacher or user) or rejected (with a `note`); `draft` is a teacher model's suggestion. A partial "
        "unique index keeps one pending-or-approved item per `question_key`. `kb_entry_id` is the knowledge-base "
        "entry its approval upserted and `kb_entry_version_before` that entry's version before (0: the approval "
        "created it), which rejecting the item restores."
    ),
    "kb_entries": (
        "The knowledge base answers are grounded in (`feedback/knowledge/store.py`): `questions` is a JSON list (the "
        "first is shown as the source; the rest are phrasings learned from approved corrections or added by "
        "reviewers), `answer`, `lang` (`ko`/`en`), where it came from (`source_kind` `base` / `review` / `import` / "
        "`manual`, `source_ref` such as `data/faq.jsonl:12` or a review item id), `state` `active` or `retired` (never "
        "deleted, so lineage keeps pointing at it), `version` (+1 per change) and `changed_seq`, the change counter "
        "when it last changed (what gateway workers re-index by)."
    ),
    "kb_history": (
        "Every version of every knowledge-base entry: its questions, answer, language and state, with `actor` (who) "
        "and `reason` (why), written in the same transaction as the change."
    ),
    "kb_question_keys": (
        "The normalized question keys of active entries; the primary key keeps a question to one active entry, and an "
        "approval finds the entry of its question here."
    ),
    "kb_state": (
        "One row: `seq`, the knowledge base's change counter (raised with every entry change; every gateway worker "
        "polls it), and the base file imported on first start (`base_path`, `base_sha256`, `seeded_at`), so it is "
        "imported once."
    ),
    "message_sources": (
        "Lineage: the knowledge-base entries each assistant message was given (`rank` from 1, the entry's "
        "`entry_version`, the retrieval `score`), written with the turn, so a thumbs-down can be traced to the entry "
        "behind it."
    ),
    "dataset_bases": (
        "Company FAQ files imported with `tuneloop dataset import` (copied into `<data_dir>/base/`); the newest is "
        "the base dataset of the next build unless `dataset.base_file` is set."
    ),
    "evaluations": (
        "Candidate-versus-incumbent evaluations (`tuneloop eval`): `metrics` per suite (`test`, `corrections`, "
        "`golden`: rows, each model's mean exact match / token F1 / ROUGE-L / chrF on a 0..1 scale, the delta, failed "
        "answers), the gate's verdict (`passed`, `reasons`, and in `gate` the settings and checks it used), the "
        "optional LLM `judge` summary, and `rows_path`: a JSONL file with every question, both answers and their "
        "scores."
    ),
    "model_events": (
        "History of the model registry, one row per change: `promoted`, `canary`, `rolled_back`, `retired`, "
        "`rejected`, `deployed`, `undeployed`, with `actor`, `reason`, the `evaluation_id` behind it and `details` "
        "JSON. For `promoted` and `rolled_back`, `version_id` became live and `previous_live_id` is the version it "
        "replaced, which is what `tuneloop models rollback` follows."
    ),
    "datasets": (
        "Built training sets: `version` n lives in `path` (`<data_dir>/datasets/vN/`: train/val/test JSONL, "
        "preference pairs, and `manifest_path` with per-row lineage); `sha256` fingerprints the files, `counts` and "
        "`params` say what went in."
    ),
    "training_runs": (
        "Fine-tuning runs (`tuneloop train`): `provider` `local` or `openai`, the `hyperparameters` used and "
        "`config_key` (their fingerprint with provider and base model; a partial unique index allows one "
        "queued-or-running run per dataset and config). `external_job_id` is the OpenAI job id or the local worker's "
        "`pid:HOST:N` (`pid:N` before m016), so a restarted process resumes polling instead of submitting "
        "again; the local worker writes `heartbeat_at` every few seconds, by which a poller on another host "
        "judges whether it lives. `state` queued → running → "
        "succeeded / failed / cancelled; `metrics` (losses, tokens/s, epochs) as JSON; `output` is the adapter or "
        "model folder, or the `ft:` model name; `work_dir` holds checkpoints and the worker log; "
        "`candidate_version_id` is the model version registered from the output."
    ),
    "pipeline_runs": (
        "Runs of the loop (`tuneloop pipeline`, the scheduler): `kind` weekly (collect + report), monthly / threshold "
        "/ manual (build → train → evaluate → gate → deploy → report); `step` is the step running or last run and "
        "`state` pending / running / succeeded / failed / skipped; `context` JSON holds what the steps made (dataset, "
        "training run, candidate, evaluation, gate action, report path) and `steps` JSON each step's outcome in "
        "order, so a restarted scheduler resumes at the step it stopped without submitting a second training job. "
        "A partial unique index allows one open (pending or running) run per kind."
    ),
    "scheduler_jobs": (
        "The scheduler's jobs (APScheduler's job store, trainer/scheduler.py): `id` (weekly, monthly, threshold, "
        "retention), `next_run_time` (Unix seconds) and `job_state`, APScheduler's pickled job as base64. Every "
        "scheduler process on the store reads the one schedule; only the leader runs it."
    ),
    "scheduler_leader": (
        "One row: the scheduler that took the leader lock last (`host`, `pid`, `started_at`; on PostgreSQL "
        "`backend_pid`, the server process of the session holding the advisory lock). `tuneloop scheduler status` "
        "shows it while the lock is held."
    ),
    "users": (
        "Named accounts of the admin pages (`tuneloop users`, /admin/users): `email` (lowercased, unique), display "
        "`name`, `role` viewer / reviewer / admin, an argon2id `password_hash` (NULL: single sign-on only), "
        "`sso_subject` (the identity provider's issuer and subject it is bound to), how it was made (`source`), and "
        "`disabled_at` (a disabled account cannot sign in and its sessions ended)."
    ),
    "signin_links": (
        "One-time sign-in links (to set a first password): the SHA-256 of the link's secret, whose account it is, "
        "when it expires and when it was used (once)."
    ),
    "audit_log": (
        "Every change users can see, attributed to a person: `actor` (an account's e-mail, an operating-system user "
        "for the CLI, `admin token`, or `gate` / `pipeline` for the loop's own moves), their display `actor_name`, "
        "`via` web / api / cli / system, `action` (`review.approve`, `model.promoted`, `key.create`, `user.role`, "
        "...), its `target` id and `details` JSON — never a secret."
    ),
    "privacy_state": (
        "One row (feedback/privacy/): when an operator last saw a dry run of the retention purge (`purge_seen_at`, "
        "`purge_seen_by`, for `purge_seen_days` of retention or more: the purge deletes nothing until then), the "
        "last purge and its cutoff, and `free_space_clean` (0: the file may hold text deleted before "
        "`secure_delete` was on, so the next erasure runs one VACUUM)."
    ),
    "erasures": (
        "The erasure log: every erasure on request (`kind` user / conversation) and retention purge — `requested_by` "
        "(who asked), `run_by` / `run_by_name` / `via` (who ran it), when, `counts` per kind of row, `left_machine` "
        "(copies already outside: delivered reports, uploaded training files, trained models, backups) and what the "
        "disk wipe did. Never the content; `subject` is a keyed hash of the user or conversation. `state` "
        "files_pending → done (`pending` keeps the ids and weeks the files still have to follow) or failed."
    ),
    "activity_counts": (
        "What outlives deleted rows: answers, failed answers, ratings and thumbs-down per model version and UTC "
        "`hour` (a vote in its answer's hour), rolled up by a retention purge or an erasure in the transaction that "
        "deletes the rows; the weekly report adds them to its trends."
    ),
    "training_events": (
        "The run log: progress, losses and evaluation results of the local worker, and OpenAI's job events "
        "(`external_id` is OpenAI's event id, unique per run, so events polled twice are stored once). `data` is the "
        "event's JSON payload (step, total_steps, loss, ...)."
    ),
}


def render(db) -> str:
    """The Markdown document for ``db``'s tables."""
    lines = [
        "# Database schema",
        "",
        "Generated by `python -m feedback.schema_doc` from the migrations in `feedback/migrations.py`;",
        "`tests/test_schema_doc.py` fails when this file drifts. SQLite in WAL mode; timestamps are",
        "ISO-8601 UTC text, ids are opaque strings.",
        "",
        "Migrations applied, in order: " + ", ".join(f"`{m.name}`" for m in MIGRATIONS.applied(db)) + ".",
        "",
    ]
    for name in sorted(t for t in db.table_names() if not t.startswith(("_", "sqlite_"))):
        table = db[name]
        lines += [f"## `{name}`", ""]
        if name in TABLE_NOTES:
            lines += [TABLE_NOTES[name], ""]
        refs = {fk[3]: f"{fk[2]}.{fk[4]}" for fk in db.execute(f"PRAGMA foreign_key_list('{name}')").fetchall()}
        lines += ["| column | type | not null | default | references |", "|---|---|---|---|---|"]
        for col in db.execute(f"PRAGMA table_info('{name}')").fetchall():
            _, col_name, col_type, notnull, default, pk = col
            lines.append(
                f"| `{col_name}`{' (pk)' if pk else ''} | {col_type} | {'yes' if notnull else ''} "
                f"| {default if default is not None else ''} | {refs.get(col_name, '')} |"
            )
        indexes = [
            (ix.name, ix.columns, ix.unique) for ix in table.indexes if not ix.name.startswith("sqlite_autoindex")
        ]
        if indexes:
            lines += [
                "",
                "Indexes: " + "; ".join(f"`{n}` ({', '.join(c)}){' unique' if u else ''}" for n, c, u in indexes) + ".",
            ]
        lines.append("")
    return "\n".join(lines)


def render_fresh() -> str:
    """Render the schema of a newly migrated, empty database."""
    with tempfile.TemporaryDirectory() as tmp:
        db = open_db(Path(tmp) / "schema.db")
        try:
            return render(db)
        finally:
            db.close()


if __name__ == "__main__":
    text = render_fresh()
    if "--check" in sys.argv:
        sys.exit(0 if DOC_PATH.read_text() == text else 1)
    DOC_PATH.write_text(text)
    print(f"wrote {DOC_PATH}")
