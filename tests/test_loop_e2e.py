"""The loop runs itself on the shipped defaults: a demo platform on the real starter model, a simulated month.

Only the clock is simulated (``run_due(scheduler, now)``); everything else is real: the demo database, the
scheduler's persistent job store, a ``tuneloop model-server`` process on the starter model as ``make run``
builds it, LoRA training in a worker process, evaluation over HTTP, the gate, runtime adapter loading, and a
gateway answering ``/api/chat``. Nothing here calls build, train, evaluate or promote, and no setting of the loop
is changed: the test only does what users and a reviewer do — rate answers with corrections, approve them.

The demo traffic fills the weeks before now; real users then get outdated answers to three FAQ questions
(the policy changes of ``tests/test_loop_cli_e2e.py``) and rate them down with the new answer. At the next
Monday 09:00 Seoul the weekly job writes the report and queues the worst questions, the users' three among
them. The reviewer approves the three corrections (live at once through the knowledge base). At the next 1st of
the month 03:00 the monthly job builds a dataset (closed book and as served), trains with the starter's
fine-tuning profile, evaluates both views, gates, promotes and deploys the candidate: the same gateway answers
the corrected questions with the new answers closed book and as served, and every golden question as before,
and the evaluation shows rewordings answered no worse. The weekly report says what changed. On the month after,
the monthly job finds nothing new approved and trains nothing.

The clock starts at the real now because ratings posted through the gateway are stamped with the wall
clock, and the weekly collect only looks at the last 7 days.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from feedback.db import open_db
from feedback.demo import seed_demo
from feedback.report import generate_report
from feedback.review import approve, open_items
from feedback.text import question_key
from feedback.versions import get_version, live_version
from server.app import create_app
from tests.plugins.gateway import gateway_settings
from tests.plugins.model import start_model_server, stop_model_server
from tests.test_loop_cli_e2e import CORRECTIONS, FAQ, GOLDEN, VOTERS
from trainer.evaluation.run import get_evaluation
from trainer.pipeline import list_pipeline_runs
from trainer.scheduler import build_scheduler, run_due

# The whole loop — hundreds of generations, a training run, two evaluations — on 2 shared cores takes minutes; the
# suite's 300 s per test is for single features.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

# Test plumbing only — no setting of the loop (dataset, training, evaluation, gate, schedule) is touched: which
# model server, a promotion seen by the next request (make run caches the registry 2 s), and the pipeline polling
# its training run every half second instead of every 10 s.
LOOP = {
    "model.name": "starter",
    "model.provider": "builtin",
    "model.retries": 0,
    "model.first_token_timeout_s": 30.0,
    "gateway.model_cache_s": 0.0,
    "scheduler.poll_interval_s": 0.5,
}


@pytest.fixture
def server(tmp_path, starter_model_dir):
    # Its own model server on the shared starter build: the loop loads adapters into it, which must not
    # reach the session's starter_model_server that other tests assert exact answers against.
    running = start_model_server(starter_model_dir, tmp_path / "model-server", name="starter")
    yield running
    stop_model_server(running, quick=True)


def ask(app, question: str, user: str = "checker", knowledge: bool = True) -> dict:
    """One question in a new conversation through the gateway."""
    response = app.test_client().post("/api/chat", json={"message": question, "user": user, "knowledge": knowledge})
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


def rate_down_with_corrections(app) -> None:
    """Each user asks each changed question, gets the FAQ's old answer and rates it down with the new one."""
    client = app.test_client()
    for question, new_answer in CORRECTIONS.items():
        for voter in VOTERS:
            reply = ask(app, question, user=voter)
            assert reply["answer"] == FAQ[question] != new_answer
            vote = client.post(
                "/api/feedback",
                json={
                    "message_id": reply["message_id"],
                    "feedback_token": reply["feedback_token"],
                    "user": voter,
                    "rating": "down",
                    "reason": "outdated",
                    "correction": new_answer,
                },
            )
            assert vote.status_code == 200, vote.get_json()


def test_a_month_on_the_shipped_defaults_with_no_command_typed(tmp_path, server, starter_model_dir):
    assert not set(CORRECTIONS) & {q for q, _ in GOLDEN}, "a corrected question must not be a golden one"
    start = datetime.now(timezone.utc)
    settings = gateway_settings(
        tmp_path / "var", server.base_url, **LOOP, **{"model_server.model_dir": str(starter_model_dir)}
    )
    db = open_db(settings.db_path)
    seed_demo(db, settings, weeks=2, now=start)
    first_live = live_version(db)
    app = create_app(settings=settings)
    scheduler = build_scheduler(settings, clock=lambda: start)
    try:
        # The shipped schedule: weekly collect + report, monthly retrain, the retention purge (the threshold
        # job is off by default).
        assert {job.id for job in scheduler.get_jobs()} == {"weekly", "monthly", "retention"}
        rate_down_with_corrections(app)

        # The next Monday 09:00 Seoul (within 7 days of the ratings): the weekly report is written and the
        # worst questions are queued — the users' three among the demo's.
        monday = scheduler.get_job("weekly").next_run_time
        assert (monday.weekday(), monday.hour, monday.minute) == (0, 9, 0) and monday - start < timedelta(days=7)
        fired = dict(run_due(scheduler, monday + timedelta(minutes=1)))
        weekly = fired["weekly"]
        assert weekly.state == "succeeded", weekly.error
        assert all((tmp_path / "var").joinpath(p).exists() for p in weekly.context.report.paths.values())
        if "monthly" in fired:  # the 1st fell before that Monday: nothing was approved yet, nothing trained
            assert fired["monthly"].outcome("build").state == "skipped"
        queued = {item.question_key: item for item in open_items(db) if item.id in weekly.context.collected}
        missing = [q for q in CORRECTIONS if question_key(q) not in queued]
        assert not missing, f"not queued by the weekly job: {missing}; queued: {[i.question for i in queued.values()]}"

        # The reviewer approves the users' corrections (the demo's queued questions stay open).
        for question, new_answer in CORRECTIONS.items():
            item = approve(db, queued[question_key(question)].id, answer=new_answer, reviewer="reviewer@test")
            # Served at once, long before the retrain: the corrected entry is the answer's first source.
            assert ask(app, question)["sources"][0]["id"] == item.kb_entry_id

        # The next 1st of the month, 03:00 Seoul: the monthly job retrains and promotes — no command typed.
        first_of_month = scheduler.get_job("monthly").next_run_time
        assert (first_of_month.day, first_of_month.hour) == (1, 3) and first_of_month > monday
        fired = dict(run_due(scheduler, first_of_month + timedelta(minutes=1)))
        retrain = fired["monthly"]
        steps = "\n".join(f"{s.step} {s.state} {s.detail}" for s in retrain.steps)
        assert retrain.state == "succeeded", f"{retrain.error}\n{steps}"
        assert [(s.step, s.state) for s in retrain.steps] == [
            (step, "succeeded") for step in ("build", "train", "evaluate", "gate", "deploy", "report")
        ], steps
        assert retrain.outcome("gate").action == "promoted", steps
        assert db.execute("SELECT COUNT(*) FROM training_runs").fetchone()[0] == 1
        now_live = live_version(db)
        assert now_live.id == retrain.context.candidate_id != first_live.id
        assert get_version(db, first_live.id).status != "live"
        # The gate's checks, all passed: the corrections learned closed book; golden and reworded as served
        # no worse.
        evaluation = get_evaluation(db, retrain.context.evaluation_id)
        checks = {(c["suite"], c["view"]): c["result"] for c in evaluation.gate["checks"]}
        assert checks == {
            ("corrections", "closed_book"): "passed",
            ("golden", "as_served"): "passed",
            ("reworded", "as_served"): "passed",
        }

        # The same gateway (no model cache): the corrected questions get the new answers closed book and as
        # served, the golden the old.
        closed = {q: ask(app, q, knowledge=False) for q in [*CORRECTIONS, *(q for q, _ in GOLDEN)]}
        served = {q: ask(app, q) for q in CORRECTIONS}
        assert {reply["model"] for reply in [*closed.values(), *served.values()]} == {now_live.name}
        unlearned = {q: closed[q]["answer"] for q, a in CORRECTIONS.items() if closed[q]["answer"] != a}
        unserved = {q: served[q]["answer"] for q, a in CORRECTIONS.items() if served[q]["answer"] != a}
        forgotten = {q: closed[q]["answer"] for q, a in GOLDEN if closed[q]["answer"] != a}
        assert unlearned == {}, "corrections not learned"
        assert unserved == {}, "corrections not answered as served"
        assert forgotten == {}, "golden answers lost"

        # The report of the week the retrain ran in (the wall clock's) says what changed.
        week = datetime.now(timezone.utc).astimezone(ZoneInfo(settings.report.timezone)).strftime("%G-W%V")
        _, paths = generate_report(db, settings, week=week)
        report = paths["md"].read_text(encoding="utf-8")
        assert f"**What {now_live.name} answers differently** (passed):" in report
        assert "| corrections | closed book | 0/3 → 3/3 |" in report

        # The month turns again: nothing new was approved, so the monthly job trains nothing.
        next_month = scheduler.get_job("monthly").next_run_time
        assert next_month > first_of_month
        fired = dict(run_due(scheduler, next_month + timedelta(minutes=1)))
        build = fired["monthly"].outcome("build")
        assert build.state == "skipped" and "no approved corrections since the last dataset" in build.detail
        assert fired["monthly"].state == "succeeded", fired["monthly"].error
        assert db.execute("SELECT COUNT(*) FROM training_runs").fetchone()[0] == 1
        assert [r.kind for r in list_pipeline_runs(db)].count("monthly") >= 2
        assert live_version(db).id == now_live.id
    finally:
        scheduler.shutdown()
        db.close()
