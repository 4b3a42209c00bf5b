"""The openai provider against a local HTTP server that follows OpenAI's documented fine-tuning API:
``/files``, ``/fine_tuning/jobs`` (create, list, retrieve, events, checkpoints, cancel).

The fake moves a job along one step per retrieve (validating_files → queued → running → succeeded),
publishing events as it goes, so the run is followed across polls the way a real one would be.
"""

from __future__ import annotations

import datetime
import itertools
import json
import re
from dataclasses import dataclass, field

import pytest
from click.testing import CliRunner
from werkzeug.wrappers import Request, Response

from cli.main import cli
from config.settings import PROJECT_ROOT, load_settings
from feedback.db import open_db
from feedback.versions import get_version
from trainer.dataset import build_dataset
from trainer.providers import ProviderError, ProviderRetired, get_provider
from trainer.providers.runs import create_run, get_run, list_events
from trainer.training import cancel_run, poll_run, resume_runs, run_checkpoints, start_run

pytestmark = pytest.mark.engines  # the storage tests run on SQLite and on PostgreSQL

BEFORE_CUTOFF = datetime.date(2026, 11, 20)
KEY_ENV = "TUNELOOP_TEST_OPENAI_KEY"
FAQ_ROWS = [json.loads(line) for line in (PROJECT_ROOT / "data" / "faq.jsonl").read_text(encoding="utf-8").splitlines()]
# The job's life, one step per retrieve; the last step repeats.
LIFE = ["validating_files", "queued", "running", "running", "succeeded"]


@dataclass
class FakeOpenAI:
    """State of the fake OpenAI: uploaded files, jobs, their events and checkpoints, and every request seen."""

    requests: list[dict] = field(default_factory=list)
    files: dict[str, dict] = field(default_factory=dict)
    jobs: dict[str, dict] = field(default_factory=dict)
    events: dict[str, list[dict]] = field(default_factory=dict)  # oldest first
    retrieves: dict[str, int] = field(default_factory=dict)
    fail_with: dict | None = None
    ids: itertools.count = field(default_factory=lambda: itertools.count(1))

    def handle(self, request: Request) -> Response:
        path = request.path.removeprefix("/v1")
        body = request.get_json(silent=True) if request.mimetype == "application/json" else None
        self.requests.append(
            {
                "method": request.method,
                "path": path,
                "json": body,
                "args": request.args.to_dict(),
                "form": request.form.to_dict(),
                "auth": request.headers.get("Authorization"),
            }
        )
        if request.method == "POST" and path == "/files":
            return self._json(self._upload(request))
        if request.method == "POST" and path == "/fine_tuning/jobs":
            return self._json(self._create(body))
        if request.method == "GET" and path == "/fine_tuning/jobs":
            wanted = {k[len("metadata[") : -1]: v for k, v in request.args.items() if k.startswith("metadata[")}
            jobs = [j for j in self.jobs.values() if all((j["metadata"] or {}).get(k) == v for k, v in wanted.items())]
            return self._json({"object": "list", "data": jobs[::-1], "has_more": False})
        match = re.fullmatch(r"/fine_tuning/jobs/([^/]+)(/events|/checkpoints|/cancel)?", path)
        if not match or match.group(1) not in self.jobs:
            return self._json(
                {
                    "error": {
                        "message": "No such job",
                        "type": "invalid_request_error",
                        "param": None,
                        "code": "not_found",
                    }
                },
                status=404,
            )
        job_id, action = match.groups()
        if action is None:
            return self._json(self._advance(job_id))
        if action == "/events":
            return self._json(self._event_page(job_id, request.args))
        if action == "/checkpoints":
            return self._json(
                {
                    "object": "list",
                    "data": self._checkpoints(job_id),
                    "has_more": False,
                    "first_id": None,
                    "last_id": None,
                }
            )
        job = self.jobs[job_id]
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return self._json(
                {
                    "error": {
                        "message": f"Job {job_id} is already {job['status']}",
                        "type": "invalid_request_error",
                        "param": None,
                        "code": None,
                    }
                },
                status=400,
            )
        job["status"] = "cancelled"
        self._event(job_id, "Fine-tuning job cancelled")
        return self._json(job)

    def _upload(self, request: Request) -> dict:
        upload = request.files["file"]
        data = upload.read()
        file_id = f"file-{next(self.ids)}"
        self.files[file_id] = {
            "id": file_id,
            "object": "file",
            "bytes": len(data),
            "created_at": 1763700000,
            "filename": upload.filename,
            "purpose": request.form["purpose"],
            "status": "processed",
            "content": data.decode(),
        }
        return {k: v for k, v in self.files[file_id].items() if k != "content"}

    def _create(self, body: dict) -> dict:
        job_id = f"ftjob-{next(self.ids)}"
        hp = body["method"]["supervised"]["hyperparameters"]
        self.jobs[job_id] = {
            "id": job_id,
            "object": "fine_tuning.job",
            "created_at": 1763700000,
            "error": None,
            "fine_tuned_model": None,
            "finished_at": None,
            "model": body["model"],
            "organization_id": "org-test",
            "result_files": [],
            "seed": body.get("seed", 42),
            "status": "validating_files",
            "trained_tokens": None,
            "training_file": body["training_file"],
            "validation_file": body.get("validation_file"),
            "estimated_finish": None,
            "integrations": [],
            "metadata": body.get("metadata"),
            "method": body["method"],
            "hyperparameters": {
                "n_epochs": 3 if hp.get("n_epochs") == "auto" else hp["n_epochs"],
                "batch_size": 1 if hp.get("batch_size") == "auto" else hp["batch_size"],
                "learning_rate_multiplier": 2.0
                if hp.get("learning_rate_multiplier") == "auto"
                else hp["learning_rate_multiplier"],
            },
            "suffix": body.get("suffix"),
        }
        self.events[job_id] = []
        self._event(job_id, f"Created fine-tuning job: {job_id}")
        return self.jobs[job_id]

    def _advance(self, job_id: str) -> dict:
        job = self.jobs[job_id]
        if job["status"] in ("cancelled", "failed", "succeeded"):
            return job
        step = self.retrieves[job_id] = self.retrieves.get(job_id, -1) + 1
        status = LIFE[min(step, len(LIFE) - 1)]
        if status == "running" and self.fail_with:
            job.update(status="failed", error=self.fail_with, finished_at=1763703600)
            self._event(job_id, "Fine-tuning job failed", level="error")
            return job
        if status != job["status"]:
            self._event(
                job_id,
                {
                    "queued": "Validating training file: done",
                    "running": "Fine-tuning job started",
                    "succeeded": "The job has successfully completed",
                }.get(status, status),
            )
        if status == "running":
            done = sum(1 for e in self.events[job_id] if e["type"] == "metrics")
            self._event(
                job_id,
                f"Step {done + 1}/4: training loss={1.5 / (done + 1):.2f}",
                type_="metrics",
                data={
                    "step": done + 1,
                    "train_loss": 1.5 / (done + 1),
                    "total_steps": 4,
                    "train_mean_token_accuracy": 0.5 + done / 10,
                },
            )
        if status == "succeeded":
            job.update(
                fine_tuned_model=f"ft:{job['model']}:org-test:{job['suffix']}:AbC123xy",
                trained_tokens=5123,
                finished_at=1763703600,
                result_files=["file-results"],
            )
        job["status"] = status
        return job

    def _event(self, job_id: str, message: str, *, level: str = "info", type_: str = "message", data=None) -> None:
        events = self.events[job_id]
        events.append(
            {
                "object": "fine_tuning.job.event",
                "id": f"ftevent-{job_id}-{len(events) + 1}",
                "created_at": 1763700000 + len(events),
                "level": level,
                "message": message,
                "data": data or {},
                "type": type_,
            }
        )

    def _event_page(self, job_id: str, args) -> dict:
        newest_first = self.events[job_id][::-1]
        if "after" in args:  # the id of the last (oldest) event of the previous page
            ids = [e["id"] for e in newest_first]
            newest_first = newest_first[ids.index(args["after"]) + 1 :]
        limit = int(args.get("limit", 20))
        return {"object": "list", "data": newest_first[:limit], "has_more": len(newest_first) > limit}

    def _checkpoints(self, job_id: str) -> list[dict]:
        if self.jobs[job_id]["status"] != "succeeded":
            return []
        return [
            {
                "object": "fine_tuning.job.checkpoint",
                "id": f"ftckpt-{step}",
                "created_at": 1763703000 + step,
                "fine_tuned_model_checkpoint": (
                    f"ft:{self.jobs[job_id]['model']}:org-test:tuneloop:AbC123xy:ckpt-step-{step}"
                ),
                "fine_tuning_job_id": job_id,
                "step_number": step,
                "metrics": {"step": step, "train_loss": 1.5 / step, "valid_loss": 1.6 / step},
            }
            for step in (4, 2)
        ]  # newest first, as OpenAI lists them

    @staticmethod
    def _json(body: dict, status: int = 200) -> Response:
        return Response(json.dumps(body), status=status, mimetype="application/json")


@pytest.fixture
def fake_openai(httpserver):
    fake = FakeOpenAI()
    httpserver.expect_request(re.compile(r"^/v1/.*")).respond_with_handler(fake.handle)
    return fake


@pytest.fixture
def ft_settings(tmp_path, httpserver, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-test-123")
    base = tmp_path / "base.jsonl"
    base.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in FAQ_ROWS[:30]), encoding="utf-8")
    return load_settings(
        env={},
        overrides={
            "paths.data_dir": str(tmp_path / "var"),
            "dataset.base_file": str(base),
            "training.provider": "openai",
            "training.openai_base_url": httpserver.url_for("/v1"),
            "training.openai_api_key_env": KEY_ENV,
            "training.openai_epochs": 3,
            "training.openai_lr_multiplier": 0.5,
            "training.openai_suffix": "support-bot",
            "training.seed": 7,
        },
    )


@pytest.fixture
def ft_db(ft_settings):
    database = open_db(ft_settings.db_path)
    yield database
    database.close()


def test_a_job_is_followed_from_upload_to_a_registered_ft_model(fake_openai, ft_settings, ft_db):
    dataset = build_dataset(ft_db, ft_settings)
    started = start_run(ft_db, ft_settings, today=lambda: BEFORE_CUTOFF)
    run = started.run
    assert started.created and run.provider == "openai" and run.state == "queued"
    assert run.external_job_id in fake_openai.jobs and run.dataset_id == dataset.dataset_id
    # Both splits uploaded for fine-tuning, then one job with the documented body.
    uploads = [r for r in fake_openai.requests if r["path"] == "/files"]
    assert [r["form"]["purpose"] for r in uploads] == ["fine-tune", "fine-tune"]
    assert all(r["auth"] == "Bearer sk-test-123" for r in fake_openai.requests)
    files = list(fake_openai.files.values())
    assert files[0]["content"] == (dataset.path / "train.jsonl").read_text(encoding="utf-8")
    assert files[1]["content"] == (dataset.path / "val.jsonl").read_text(encoding="utf-8")
    (create,) = [r["json"] for r in fake_openai.requests if r["path"] == "/fine_tuning/jobs" and r["method"] == "POST"]
    assert create == {
        "model": "gpt-4.1-mini-2025-04-14",
        "training_file": files[0]["id"],
        "validation_file": files[1]["id"],
        "method": {
            "type": "supervised",
            "supervised": {"hyperparameters": {"n_epochs": 3, "batch_size": "auto", "learning_rate_multiplier": 0.5}},
        },
        "suffix": "support-bot",
        "seed": 7,
        "metadata": {"tuneloop_run_id": run.id},
    }

    states = [run.state]
    while not get_run(ft_db, run.id).finished:
        states.append(poll_run(ft_db, ft_settings, run.id).state)
    assert states == ["queued", "queued", "running", "running", "succeeded"]
    done = get_run(ft_db, run.id)
    assert done.output == "ft:gpt-4.1-mini-2025-04-14:org-test:support-bot:AbC123xy"
    assert done.metrics["trained_tokens"] == 5123 and done.metrics["train_loss"] == pytest.approx(0.75)
    assert done.progress == 1.0
    # Every OpenAI event is in the run log once, in order, whatever the number of polls.
    poll_run(ft_db, ft_settings, run.id)
    theirs = [
        e
        for e in list_events(ft_db, run.id)
        if e["message"] in [ev["message"] for ev in fake_openai.events[run.external_job_id]]
    ]
    assert [e["message"] for e in theirs] == [e["message"] for e in fake_openai.events[run.external_job_id]]
    assert any(e["data"].get("total_steps") == 4 for e in theirs)
    # The ft: name is registered as a candidate that the gateway reaches at the same API.
    version = get_version(ft_db, done.candidate_version_id)
    assert (version.name, version.provider, version.status) == (done.output, "openai", "candidate")
    assert version.base_url == ft_settings.training.openai_base_url and version.training_run_id == run.id
    # Same dataset and configuration: nothing is submitted again.
    jobs_before = len(fake_openai.jobs)
    assert start_run(ft_db, ft_settings, today=lambda: BEFORE_CUTOFF).created is False
    assert len(fake_openai.jobs) == jobs_before

    checkpoints = run_checkpoints(ft_db, ft_settings, run.id)
    assert [c["step"] for c in checkpoints] == [2, 4]
    assert checkpoints[-1]["name"].endswith("ckpt-step-4") and checkpoints[-1]["metrics"]["valid_loss"] == 0.4


def test_events_are_paged_until_the_last_one_stored(fake_openai, ft_settings, ft_db):
    build_dataset(ft_db, ft_settings)
    run = start_run(ft_db, ft_settings, today=lambda: BEFORE_CUTOFF).run
    for i in range(250):  # more than two pages of 100
        fake_openai._event(run.external_job_id, f"note {i}")
    poll_run(ft_db, ft_settings, run.id)
    notes = [e["message"] for e in list_events(ft_db, run.id) if e["message"].startswith("note ")]
    assert notes == [f"note {i}" for i in range(250)]
    assert any(r["args"].get("after") for r in fake_openai.requests if r["path"].endswith("/events"))


def test_cancel_stops_the_job(fake_openai, ft_settings, ft_db):
    build_dataset(ft_db, ft_settings)
    run = start_run(ft_db, ft_settings, today=lambda: BEFORE_CUTOFF).run
    cancelled = cancel_run(ft_db, ft_settings, run.id)
    assert cancelled.state == "cancelled" and cancelled.finished_at
    assert fake_openai.jobs[run.external_job_id]["status"] == "cancelled"
    assert any(r["path"].endswith("/cancel") and r["method"] == "POST" for r in fake_openai.requests)
    assert poll_run(ft_db, ft_settings, run.id).state == "cancelled"


def test_a_failed_job_fails_the_run_with_openais_reason(fake_openai, ft_settings, ft_db):
    fake_openai.fail_with = {
        "code": "invalid_training_file",
        "message": "line 3: missing messages",
        "param": "training_file",
    }
    build_dataset(ft_db, ft_settings)
    run = start_run(ft_db, ft_settings, today=lambda: BEFORE_CUTOFF).run
    while not (run := poll_run(ft_db, ft_settings, run.id)).finished:
        pass
    assert run.state == "failed" and "invalid_training_file: line 3: missing messages" in run.error
    assert run.candidate_version_id is None


def test_after_the_cutoff_date_submission_is_refused(fake_openai, ft_settings, ft_db):
    build_dataset(ft_db, ft_settings)
    with pytest.raises(ProviderRetired) as info:
        start_run(ft_db, ft_settings, today=lambda: datetime.date(2027, 1, 7))
    message = info.value.message
    assert "2027-01-06" in message and "--provider local" in message and "deprecations page" in message
    assert "docs/migrate-from-openai.md" in message and (PROJECT_ROOT / "docs" / "migrate-from-openai.md").is_file()
    assert fake_openai.requests == [] and ft_db.execute("SELECT COUNT(*) FROM training_runs").fetchone() == (0,)
    # On the date itself OpenAI still takes jobs.
    assert start_run(ft_db, ft_settings, today=lambda: datetime.date(2027, 1, 6)).created


def test_a_job_created_before_a_crash_is_found_not_submitted_again(fake_openai, ft_settings, ft_db):
    ds = build_dataset(ft_db, ft_settings)
    provider = get_provider("openai", ft_settings, ft_db, today=lambda: BEFORE_CUTOFF)
    run = create_run(
        ft_db,
        dataset_id=ds.dataset_id,
        provider="openai",
        base_model=provider.base_model(),
        hyperparameters=provider.hyperparameters(),
        work_root=ft_settings.data_dir / "training",
    )
    provider.submit(run)  # the job exists at OpenAI; the process "dies" before storing its id
    assert get_run(ft_db, run.id).external_job_id is None
    (resumed,) = resume_runs(ft_db, ft_settings, today=lambda: BEFORE_CUTOFF)
    assert resumed.external_job_id in fake_openai.jobs and len(fake_openai.jobs) == 1


def test_a_missing_api_key_is_named(fake_openai, ft_settings, ft_db, monkeypatch):
    monkeypatch.delenv(KEY_ENV)
    build_dataset(ft_db, ft_settings)
    with pytest.raises(ProviderError, match=KEY_ENV):
        start_run(ft_db, ft_settings, today=lambda: BEFORE_CUTOFF)


def test_cli_shows_status_events_and_checkpoints(fake_openai, ft_settings, ft_db):
    build_dataset(ft_db, ft_settings)
    run = start_run(ft_db, ft_settings, today=lambda: BEFORE_CUTOFF).run
    while not get_run(ft_db, run.id).finished:
        poll_run(ft_db, ft_settings, run.id)
    env = {
        "TUNELOOP_PATHS__DATA_DIR": str(ft_settings.data_dir),
        "TUNELOOP_TRAINING__OPENAI_BASE_URL": ft_settings.training.openai_base_url,
        "TUNELOOP_TRAINING__OPENAI_API_KEY_ENV": KEY_ENV,
    }
    runner = CliRunner()
    status = runner.invoke(cli, ["train", "status", run.id, "--json"], env=env)
    assert status.exit_code == 0, status.output
    (shown,) = json.loads(status.output)
    assert shown["state"] == "succeeded" and shown["output"].startswith("ft:")
    events = runner.invoke(cli, ["train", "events", run.id], env=env)
    assert "Fine-tuning job started" in events.output and "registered candidate model version" in events.output
    checkpoints = runner.invoke(cli, ["train", "checkpoints", run.id], env=env)
    assert checkpoints.exit_code == 0 and "ckpt-step-4" in checkpoints.output
    missing = runner.invoke(cli, ["train", "events", "run_nope"], env=env)
    assert missing.exit_code == 1 and "no training run 'run_nope'" in missing.output
