"""The retrain pipeline on the tiny model, with real steps: approved corrections → dataset → LoRA training
→ evaluation against the live model → gate → deploy → report; a crash right after the training job was
submitted resumes at the train step with exactly one training run; nothing new approved → skipped."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import cli
from config.settings import load_settings
from feedback.db import open_db
from feedback.review import create_item
from feedback.versions import ensure_live_version, get_version
from server.context import gateway
from tests.plugins.model import qa, tiny_rows
from trainer import pipeline
from trainer.pipeline import (
    GateVerdict,
    RunContext,
    get_pipeline_run,
    list_pipeline_runs,
    retrain_due,
    run_pipeline,
)

pytestmark = pytest.mark.engines  # the storage tests run on SQLite and on PostgreSQL

TRAINING = {
    "training.epochs": 12,
    "training.learning_rate": 0.01,
    "training.batch_size": 4,
    "training.lora_r": 8,
    "training.lora_alpha": 16,
    "training.lora_dropout": 0.0,
    "training.early_stopping_patience": 2,
    # The feed-forward layers only, as for the real starter (README): its attention holds the copy circuit.
    "training.target_modules": ["gate_proj", "up_proj", "down_proj"],
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
            # The tiny model memorizes and reads no context: served closed book, and never asked the bundled rewordings.
            "knowledge.enabled": False,
            "evaluation.suites": ["test", "corrections", "golden"],
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
    build = run.outcome("build")
    assert (build.state, build.detail) == ("skipped", "skipped: no approved corrections since the last dataset")
    assert [run.outcome(s).state for s in ("train", "evaluate", "gate", "deploy")] == ["skipped"] * 4
    assert run.outcome("report").state == "succeeded"
    assert db.execute("SELECT COUNT(*) FROM training_runs").fetchone()[0] == 0


def test_crash_during_training_resumes_with_one_training_run_through_the_gate(loop, monkeypatch):
    settings, db, rows = loop
    assert not retrain_due(db, settings)
    # Two corrections: each question gets the next row's answer, something the live model never says.
    for i in range(2):
        question, _ = qa(rows[i])
        create_item(db, question=question, answer=qa(rows[i + 1])[1], reviewer="test")
    assert retrain_due(db, settings)  # K = 2 reached

    def crash(*args, **kwargs):
        raise Crash()

    # The process dies right after the training job was submitted and its id stored, before it is waited for.
    with monkeypatch.context() as patched:
        patched.setattr(pipeline, "wait_for_run", crash)
        with pytest.raises(Crash):
            failed = run_pipeline(db, settings, "threshold", clock=lambda: datetime.now(timezone.utc))
            pytest.fail(f"the pipeline ended before the crash: {failed.state} {failed.error}")
    (stuck,) = list_pipeline_runs(db, kind="threshold")
    assert (stuck.step, stuck.state) == ("train", "running")
    assert stuck.context.training_run_id

    run = run_pipeline(db, settings, "threshold")  # the restarted scheduler
    assert run.id == stuck.id
    assert db.execute("SELECT COUNT(*) FROM training_runs").fetchone()[0] == 1
    assert run.context.training_run_id == stuck.context.training_run_id
    assert run.outcome("build").state == "succeeded"
    assert run.outcome("train").state == "succeeded", run.error
    gate = run.outcome("gate")
    assert gate and gate.state == "succeeded", run.error
    # Two corrections on a tiny model: the gate may also find too few questions to tell (held).
    assert gate.action in ("promoted", "rejected", "held")
    assert run.context.gate.action == gate.action
    candidate = get_version(db, run.context.candidate_id)
    if gate.action == "promoted":
        assert candidate.status == "live"
        assert run.outcome("deploy").state == "succeeded"
    else:
        expected = {"rejected": "rejected", "held": "candidate"}[gate.action]
        assert candidate.status == expected and gate.reasons
        assert run.outcome("deploy").state == "skipped"
    assert run.state == "succeeded" and run.outcome("report").state == "succeeded"
    assert get_pipeline_run(db, run.id).steps == run.steps
    assert not retrain_due(db, settings)  # the corrections are in a dataset now

    again = run_pipeline(db, settings, "monthly")
    assert again.outcome("build").state == "skipped"
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


# --- runs stored before the hand-offs were typed: the same JSON, written as dicts by the earlier code ---

OLD_MONTHLY_CONTEXT = {
    "dataset_id": "ds_old",
    "dataset_version": 3,
    "training_run_id": "run_old",
    "candidate_id": "mv_old",
    "evaluation_id": "ev_old",
    "gate": {"action": "rejected", "passed": False, "reasons": ["golden: candidate chrF 0.186 vs live 1.000"]},
}
OLD_MONTHLY_STEPS = [
    {"step": "build", "state": "succeeded", "detail": "built dataset v3 with 2 new approved correction(s)"},
    {"step": "train", "state": "succeeded", "detail": "training run run_old succeeded; candidate mv_old"},
    {
        "step": "evaluate",
        "state": "succeeded",
        "detail": "evaluation ev_old: failed the gate",
        "passed": False,
        "reasons": ["golden: candidate chrF 0.186 vs live 1.000"],
    },
    {
        "step": "gate",
        "state": "succeeded",
        "detail": "candidate mv_old rejected; live model unchanged: golden: candidate chrF 0.186 vs live 1.000",
        "action": "rejected",
        "reasons": ["golden: candidate chrF 0.186 vs live 1.000"],
    },
]


def _store_old_run(db, run_id: str, kind: str, step: str, context: dict, steps: list[dict]) -> None:
    """A row as the dict-passing pipeline wrote it: left ``running`` at ``step`` by a process that died."""
    for i, outcome in enumerate(steps):
        outcome.update(started_at=f"2026-11-20T03:00:0{i}Z", finished_at=f"2026-11-20T03:00:0{i}Z")
    db.execute(
        "INSERT INTO pipeline_runs (id, kind, step, state, started_at, context, steps) VALUES (?, ?, ?, 'running', "
        "'2026-11-20T03:00:00Z', ?, ?)",
        [run_id, kind, step, json.dumps(context), json.dumps(steps)],
    )
    db.conn.commit()


def test_a_run_stored_as_dicts_and_left_mid_run_resumes_typed(settings, db):
    ensure_live_version(db, name="starter", provider="builtin")
    _store_old_run(db, "pl_old", "monthly", "deploy", dict(OLD_MONTHLY_CONTEXT), [dict(s) for s in OLD_MONTHLY_STEPS])

    stored = get_pipeline_run(db, "pl_old")  # read back typed, every field as it was written
    assert stored.context == RunContext(
        dataset_id="ds_old",
        dataset_version=3,
        training_run_id="run_old",
        candidate_id="mv_old",
        evaluation_id="ev_old",
        gate=GateVerdict("rejected", False, ("golden: candidate chrF 0.186 vs live 1.000",)),
    )
    assert [s.to_json() for s in stored.steps] == [
        {**s, "started_at": f"2026-11-20T03:00:0{i}Z", "finished_at": f"2026-11-20T03:00:0{i}Z"}
        for i, s in enumerate(OLD_MONTHLY_STEPS)
    ]

    run = run_pipeline(db, settings, "monthly")  # the restarted scheduler
    assert run.id == "pl_old" and run.state == "succeeded", run.error
    assert [(s.step, s.state) for s in run.steps] == [
        ("build", "succeeded"),
        ("train", "succeeded"),
        ("evaluate", "succeeded"),
        ("gate", "succeeded"),
        ("deploy", "skipped"),  # read from the stored gate verdict: rejected, so nothing to load
        ("report", "succeeded"),
    ]
    assert run.outcome("deploy").detail == "skipped: the gate kept the live model"
    assert run.outcome("gate").action == "rejected" and run.outcome("evaluate").passed is False
    assert db.execute("SELECT COUNT(*) FROM training_runs").fetchone()[0] == 0
    # What the earlier steps stored is still there, in the same JSON, next to what the report step added.
    (context,) = db.execute("SELECT context FROM pipeline_runs WHERE id = 'pl_old'").fetchone()
    assert json.loads(context) == {
        **OLD_MONTHLY_CONTEXT,
        "report": {"week": run.context.report.week, "paths": run.context.report.paths},
    }
    assert all(Path(p).is_file() for p in run.context.report.paths.values())


def test_a_weekly_run_stored_as_dicts_resumes_at_its_report(settings, db):
    ensure_live_version(db, name="starter", provider="builtin")
    collect = {"step": "collect", "state": "succeeded", "detail": "queued 2 question(s) of starter", "added": 2}
    _store_old_run(db, "pl_week", "weekly", "report", {"collected": ["ri_a", "ri_b"]}, [collect])
    run = run_pipeline(db, settings, "weekly")
    assert run.id == "pl_week" and run.state == "succeeded", run.error
    assert [(s.step, s.state) for s in run.steps] == [("collect", "succeeded"), ("report", "succeeded")]
    assert run.context.collected == ("ri_a", "ri_b") and run.outcome("collect").added == 2
    assert run.outcome("report").delivered == ()


def test_a_step_missing_what_an_earlier_one_makes_fails_the_run_saying_so(settings, db):
    run = run_pipeline(db, settings, "manual", steps=["train"])  # build never ran: no dataset to train
    assert run.state == "failed"
    assert run.error == "train: the train step needs a dataset from an earlier step; this run has none"
    assert db.execute("SELECT COUNT(*) FROM training_runs").fetchone()[0] == 0


def test_a_stored_hand_off_this_version_does_not_know_is_refused_by_name(settings, db):
    _store_old_run(db, "pl_new", "manual", "train", {"dataset_id": "ds_x", "datset_version": 1}, [])
    with pytest.raises(ValueError, match=r"context has field\(s\) this version does not know: \['datset_version'\]"):
        get_pipeline_run(db, "pl_new")


def test_pipeline_status_shows_a_stored_run_as_text_and_json(tmp_path, settings, db):
    _store_old_run(db, "pl_old", "monthly", "deploy", dict(OLD_MONTHLY_CONTEXT), [dict(s) for s in OLD_MONTHLY_STEPS])
    env = {"TUNELOOP_PATHS__DATA_DIR": str(tmp_path / "var"), "TUNELOOP_DATABASE__URL": settings.database.url}
    text = CliRunner().invoke(cli, ["pipeline", "status"], env=env, catch_exceptions=False).output
    assert "pl_old  monthly   running   step deploy" in text
    assert "  gate     succeeded candidate mv_old rejected; live model unchanged: golden" in text
    listed = CliRunner().invoke(cli, ["pipeline", "status", "--json"], env=env, catch_exceptions=False).output
    (row,) = json.loads(listed)
    assert (row["id"], row["state"], row["step"]) == ("pl_old", "running", "deploy")
    assert row["context"] == OLD_MONTHLY_CONTEXT
    assert [s["step"] for s in row["steps"]] == ["build", "train", "evaluate", "gate"]
    stamps = {"started_at": "2026-11-20T03:00:03Z", "finished_at": "2026-11-20T03:00:03Z"}
    assert row["steps"][3] == {**OLD_MONTHLY_STEPS[3], **stamps}
