"""The retrain pipeline on the tiny model, with real steps: approved corrections → dataset → LoRA training
→ evaluation against the live model → gate → deploy → report; a crash right after the training job was
submitted resumes at the train step with exactly one training run; nothing new approved → skipped."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from config.settings import load_settings
from feedback.db import open_db
from feedback.review import create_item
from feedback.versions import ensure_live_version, get_version
from server.context import gateway
from tests.plugins.model import qa, tiny_rows
from trainer.pipeline import get_pipeline_run, list_pipeline_runs, retrain_due, run_pipeline

TRAINING = {
    "training.epochs": 12,
    "training.learning_rate": 0.01,
    "training.batch_size": 4,
    "training.lora_r": 8,
    "training.lora_alpha": 16,
    "training.lora_dropout": 0.0,
    "training.early_stopping_patience": 2,
}


class Crash(BaseException):
    """Stands in for the process dying: not an Exception, so no step handler records it."""


@pytest.fixture
def loop(tmp_path, model_server, tiny_model_dir, tiny_model_rows):
    # The base set needs 10+ training rows after the split; the golden set is what the live model memorized.
    rows_file, base_file = tmp_path / "golden.jsonl", tmp_path / "base.jsonl"
    rows_file.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in tiny_model_rows), encoding="utf-8")
    base_file.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in tiny_rows(16)), encoding="utf-8")
    settings = load_settings(
        env={},
        overrides={
            "paths.data_dir": str(tmp_path / "var"),
            "model.base_url": model_server.base_url,
            "model.retries": 0,
            "model_server.model_dir": str(tiny_model_dir),
            "dataset.base_file": str(base_file),
            "evaluation.golden_file": str(rows_file),
            "evaluation.max_tokens": 120,
            "evaluation.concurrency": 2,
            "scheduler.poll_interval_s": 0.5,
            "scheduler.retrain_threshold": 2,
            **TRAINING,
        },
    )
    db = open_db(settings.db_path)
    ensure_live_version(db, name="starter", provider="builtin")
    yield settings, db, tiny_model_rows
    db.close()


def test_nothing_approved_skips_training(loop):
    settings, db, _ = loop
    run = run_pipeline(db, settings, "monthly")
    assert run.state == "succeeded"
    assert run.outcome("build") == {
        **run.outcome("build"),
        "state": "skipped",
        "detail": "skipped: no approved corrections since the last dataset",
    }
    assert [run.outcome(s)["state"] for s in ("train", "evaluate", "gate", "deploy")] == ["skipped"] * 4
    assert run.outcome("report")["state"] == "succeeded"
    assert db.execute("SELECT COUNT(*) FROM training_runs").fetchone()[0] == 0


def test_crash_during_training_resumes_with_one_training_run_through_the_gate(loop):
    settings, db, rows = loop
    assert not retrain_due(db, settings)
    # Two corrections: each question gets the next row's answer, something the live model never says.
    for i in range(2):
        question, _ = qa(rows[i])
        create_item(db, question=question, answer=qa(rows[i + 1])[1], reviewer="test")
    assert retrain_due(db, settings)  # K = 2 reached

    def crash(run):
        raise Crash()

    with pytest.raises(Crash):
        failed = run_pipeline(
            db, settings, "threshold", hooks={"after_submit": crash}, clock=lambda: datetime.now(timezone.utc)
        )
        pytest.fail(f"the pipeline ended before the crash: {failed.state} {failed.error}")
    (stuck,) = list_pipeline_runs(db, kind="threshold")
    assert (stuck.step, stuck.state) == ("train", "running")
    assert stuck.context["training_run_id"]

    run = run_pipeline(db, settings, "threshold")  # the restarted scheduler
    assert run.id == stuck.id
    assert db.execute("SELECT COUNT(*) FROM training_runs").fetchone()[0] == 1
    assert run.context["training_run_id"] == stuck.context["training_run_id"]
    assert run.outcome("build")["state"] == "succeeded"
    assert run.outcome("train")["state"] == "succeeded", run.error
    gate = run.outcome("gate")
    assert gate and gate["state"] == "succeeded", run.error
    assert gate["action"] in ("promoted", "rejected")
    candidate = get_version(db, run.context["candidate_id"])
    if gate["action"] == "promoted":
        assert candidate.status == "live"
        assert run.outcome("deploy")["state"] == "succeeded"
    else:
        assert candidate.status == "rejected" and gate["reasons"]
        assert run.outcome("deploy")["state"] == "skipped"
    assert run.state == "succeeded" and run.outcome("report")["state"] == "succeeded"
    assert get_pipeline_run(db, run.id).steps == run.steps
    assert not retrain_due(db, settings)  # the corrections are in a dataset now

    again = run_pipeline(db, settings, "monthly")
    assert again.outcome("build")["state"] == "skipped"
    assert db.execute("SELECT COUNT(*) FROM training_runs").fetchone()[0] == 1


def test_metrics_show_the_loop(make_gateway):
    app = make_gateway()
    with app.app_context():
        db = gateway().connect()
        create_item(db, question="Where is my parcel?")
        db.execute(
            "INSERT INTO pipeline_runs (id, kind, step, state, started_at) VALUES ('pl1', 'weekly', 'report', "
            "'failed', '2026-11-20T00:00:00Z')"
        )
        db.conn.commit()
        db.close()
    text = app.test_client().get("/metrics").get_data(as_text=True)
    assert "tuneloop_review_pending 1.0" in text
    assert 'tuneloop_pipeline_last_step{kind="weekly",state="failed",step="report"} 1.0' in text
    assert "tuneloop_satisfaction_ratio" in text and "tuneloop_live_model_info{" in text
