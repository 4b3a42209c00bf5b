"""What had already left the machine before an erasure, so the operator can act on it.

An erasure reaches every copy on this machine; it cannot call back a report that was mailed, a training file
uploaded to a hosted provider, or a backup. So it lists them, with what to do, in the erasure log:

- **reports** of the weeks it rebuilt that the weekly job delivered by webhook or e-mail (``pipeline_runs``
  records the channels); with delivery configured, a report may also have been sent by hand
  (``tuneloop report --deliver``), which is said too;
- **training files** uploaded for fine-tuning runs on dataset versions it rewrote (``training_events`` keeps
  the file ids) and the hosted models trained from them;
- **models** trained on those versions on this machine: they may still reflect the rows (docs/privacy.md says
  how to retrain);
- **backups**: tuneloop makes none itself, but any copy of the database or data folder made before the
  erasure still holds what it removed.
"""

from __future__ import annotations

import json

from sqlite_utils import Database

from config.settings import Settings
from feedback.sql import in_list, json_text


def _delivered_reports(db: Database, settings: Settings, weeks: list[str]) -> list[dict]:
    found = []
    configured = [c for c, on in (("webhook", settings.report.webhook_url), ("email", settings.report.smtp_host)) if on]
    for week in weeks:
        sent = []
        report_week = json_text(db, "context", "$.report.week")
        for steps, finished in db.execute(
            f"SELECT steps, finished_at FROM pipeline_runs WHERE {report_week} = ?", [week]
        ):
            for step in json.loads(steps or "[]"):
                if step.get("step") == "report" and step.get("delivered"):
                    sent.append((step["delivered"], step.get("finished_at") or finished))
        for channels, at in sent:
            found.append(
                {
                    "kind": "report",
                    "what": f"weekly report {week} (as it was before the erasure)",
                    "where": ", ".join(channels),
                    "when": at,
                    "action": "ask the recipients to delete it; the rebuilt report is in the reports folder",
                }
            )
        if not sent and configured:
            found.append(
                {
                    "kind": "report",
                    "what": f"weekly report {week} (as it was before the erasure)",
                    "where": ", ".join(configured) + " (configured; no delivery by the weekly job is recorded)",
                    "when": None,
                    "action": "if it was sent with `tuneloop report --deliver`, ask the recipients to delete it",
                }
            )
    return found


def _training(db: Database, dataset_ids: list[str]) -> list[dict]:
    found = []
    if not dataset_ids:
        return found
    in_datasets, params = in_list(db, "r.dataset_id", dataset_ids)
    runs = db.execute(
        f"""SELECT r.id, r.provider, r.output, d.version, v.name, v.status FROM training_runs r
           JOIN datasets d ON d.id = r.dataset_id LEFT JOIN model_versions v ON v.id = r.candidate_version_id
           WHERE {in_datasets} ORDER BY r.created_at""",
        params,
    ).fetchall()
    for run_id, provider, output, version, model, status in runs:
        if provider == "openai":
            file_id = json_text(db, "data", "$.file_id")
            files = [
                row[0]
                for row in db.execute(
                    f"SELECT DISTINCT {file_id} FROM training_events WHERE run_id = ? AND {file_id} IS NOT NULL",
                    [run_id],
                )
            ]
            for file_id in files:
                found.append(
                    {
                        "kind": "training_file",
                        "what": f"file {file_id}: dataset v{version} as uploaded for training run {run_id}",
                        "where": "the OpenAI-compatible fine-tuning service (training.openai_base_url)",
                        "when": None,
                        "action": f"delete it there (DELETE /v1/files/{file_id}); the local copy is rewritten",
                    }
                )
            if output:
                found.append(
                    {
                        "kind": "hosted_model",
                        "what": f"{output}, fine-tuned on dataset v{version}",
                        "where": "the OpenAI-compatible fine-tuning service",
                        "when": None,
                        "action": "retrain from the rewritten dataset and delete this model (docs/privacy.md)",
                    }
                )
        elif model:
            found.append(
                {
                    "kind": "model",
                    "what": f"model version {model} ({status}), trained on dataset v{version} in run {run_id}",
                    "where": "this machine (not retrained by the erasure)",
                    "when": None,
                    "action": "retrain from the rewritten dataset to stop it reflecting the rows (docs/privacy.md)",
                }
            )
    return found


def copies_outside(
    db: Database, settings: Settings, *, report_weeks: list[str], dataset_ids: list[str], before: str
) -> list[dict]:
    """Everything already outside the reach of an erasure made at ``before`` (module docstring)."""
    backups = {
        "kind": "backups",
        "what": f"copies of the database or of {settings.data_dir} made before {before}",
        "where": "wherever your backups go (tuneloop makes none itself)",
        "when": None,
        "action": "they still hold the erased rows: let them expire, or restore-and-erase before use",
    }
    return [*_delivered_reports(db, settings, report_weeks), *_training(db, dataset_ids), backups]
