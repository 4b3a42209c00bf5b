"""A local training run started on another host (a scheduler that took over the lead polls it) is judged by
the worker's heartbeat in the store, not by this host's process table; a cancel made here reaches a worker
through its heartbeat. On both engines; the worker here is a real process running the real heartbeat."""

from __future__ import annotations

import dataclasses
import socket
import subprocess
import sys
import textwrap
from datetime import datetime, timedelta, timezone

import pytest

from config.settings import PROJECT_ROOT
from feedback.db import new_id, utc_now, utc_text, write_transaction
from tests.test_scheduler import cli_env
from trainer.providers.local import HEARTBEAT_S, HEARTBEAT_STALE_S, job_id, worker_host, worker_pid
from trainer.providers.runs import create_run, get_run, update_run
from trainer.training import cancel_run, poll_run

pytestmark = pytest.mark.engines
OTHER_HOST = "trainer-host-2"


@pytest.fixture
def remote_run(settings, db):
    """A running local run whose worker (pid 4242) was started on another host."""
    dataset_id = new_id("ds")
    with write_transaction(db):
        db.execute(
            "INSERT INTO datasets (id, version, path, sha256, counts, manifest_path, params, created_at)"
            " VALUES (?, 1, ?, '0', '{}', ?, '{}', ?)",
            [dataset_id, str(settings.datasets_dir / "v1"), str(settings.datasets_dir / "v1/manifest.json"), utc_now()],
        )
    run = create_run(
        db,
        dataset_id=dataset_id,
        provider="local",
        base_model="starter",
        hyperparameters={},
        work_root=settings.data_dir / "runs",
    )
    return update_run(db, run.id, external_job_id=job_id(OTHER_HOST, 4242), state="running", started_at=utc_now())


def _beat_at(db, run_id: str, moment: datetime) -> None:
    with write_transaction(db):
        db.execute("UPDATE training_runs SET heartbeat_at = ? WHERE id = ?", [utc_text(moment), run_id])


def test_external_ids_name_the_host_and_older_ones_mean_this_host(remote_run):
    assert (worker_host(remote_run), worker_pid(remote_run)) == (OTHER_HOST, 4242)
    older = dataclasses.replace(remote_run, external_job_id="pid:4242")
    assert (worker_host(older), worker_pid(older)) == (socket.gethostname(), 4242)


def test_another_hosts_worker_is_running_while_its_heartbeat_is_fresh_and_failed_once_stale(settings, db, remote_run):
    # No process 4242 of this run exists here; a process-table check would have failed the run at once.
    _beat_at(db, remote_run.id, datetime.now(timezone.utc) - timedelta(seconds=2))
    assert poll_run(db, settings, remote_run.id).state == "running"
    _beat_at(db, remote_run.id, datetime.now(timezone.utc) - timedelta(seconds=HEARTBEAT_STALE_S + 30))
    failed = poll_run(db, settings, remote_run.id)
    assert failed.state == "failed"
    assert f"the local worker on {OTHER_HOST} (pid 4242) sent no heartbeat for" in failed.error


def test_a_worker_that_never_beat_is_gone(settings, db, remote_run):
    failed = poll_run(db, settings, remote_run.id)
    assert failed.state == "failed" and "sent no heartbeat for ever" in failed.error


def test_the_heartbeat_is_written_and_a_cancel_from_another_host_stops_the_worker(settings, db, remote_run):
    worker = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import time
                from feedback.db import open_store
                from config.settings import load_settings
                from trainer.providers.local_worker import Heartbeat
                Heartbeat(open_store(load_settings()), {remote_run.id!r})
                print("beating", flush=True)
                time.sleep(120)
                """
            ),
        ],
        cwd=PROJECT_ROOT,
        env=cli_env(settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert worker.stdout.readline().strip() == "beating"
        first = get_run(db, remote_run.id)
        (beat,) = db.execute("SELECT heartbeat_at FROM training_runs WHERE id = ?", [first.id]).fetchone()
        assert beat is not None
        assert poll_run(db, settings, remote_run.id).state == "running"
        cancel_run(db, settings, remote_run.id)  # the worker is on "another host": no signal can reach it
        assert worker.wait(timeout=HEARTBEAT_S * 3) == -15  # its next beat saw the cancel and stopped it
        assert "was cancelled; stopping" in worker.stdout.read()
        assert get_run(db, remote_run.id).state == "cancelled"
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(timeout=10)
        worker.stdout.close()
