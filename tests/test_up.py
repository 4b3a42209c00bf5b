"""``tuneloop up`` rides out a crash: the child is restarted with backoff, the rest keeps serving.

The first test runs the platform as a user does (``tuneloop up``: the built-in model
server with a tiny real model, the gateway under gunicorn, the scheduler) and kills
the model server with SIGKILL. The second drives the supervisor over a real process
that keeps dying, to pin the backoff down.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx2
import psutil
import pytest

from cli import supervisor
from cli.supervisor import Child, Supervisor
from feedback.db import open_db
from feedback.process_status import status_file
from tests.plugins.common import free_port, wait_for_log_line
from tests.plugins.gateway import write_config


def _children(process: subprocess.Popen) -> dict[str, int]:
    """pid of each child of ``tuneloop up``, by the tuneloop command it runs."""
    found = {}
    for child in psutil.Process(process.pid).children():
        cmdline = " ".join(child.cmdline())
        for name in ("model-server", "serve", "scheduler"):
            if f" {name}" in cmdline:
                found[name] = child.pid
    return found


def _up(tmp_path: Path, tiny_model_dir: Path, extra: dict | None = None):
    """``tuneloop up`` on free ports, serving the tiny model; stopped (the whole session) afterwards."""
    ms_port, gw_port = free_port(), free_port()
    values = {
        "paths": {"data_dir": str(tmp_path / "var")},
        "model_server": {"port": ms_port, "model_dir": str(tiny_model_dir), "threads": 4},
        "model": {"base_url": f"http://127.0.0.1:{ms_port}/v1", "retries": 1, "first_token_timeout_s": 10.0},
        "gateway": {"port": gw_port, "workers": 1},
        "chat": {"max_tokens": 16},
        "limits": {"enabled": False},
    }
    for section, keys in (extra or {}).items():
        values.setdefault(section, {}).update(keys)
    config = write_config(tmp_path / "up.toml", values)
    log = tmp_path / "up.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNELOOP_")}
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [str(Path(sys.executable).with_name("tuneloop")), "--config", str(config), "up"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=tmp_path,
            start_new_session=True,
        )
    try:
        wait_for_log_line(log, "tuneloop is up.", process, what="tuneloop up", timeout_s=240)
        yield process, f"http://127.0.0.1:{gw_port}", log, tmp_path / "var"
    finally:
        if process.poll() is None:  # the test failed half-way: take down up and every process it started
            for leftover in [*psutil.Process(process.pid).children(recursive=True), psutil.Process(process.pid)]:
                leftover.kill()
            process.wait()


@pytest.fixture
def platform(tmp_path, tiny_model_dir):
    """``tuneloop up`` on the embedded SQLite store."""
    yield from _up(tmp_path, tiny_model_dir)


@pytest.mark.slow
def test_a_killed_model_server_is_restarted_while_the_gateway_answers_503(platform):
    process, url, log, data_dir = platform
    assert httpx2.post(url + "/api/chat", json={"message": "hello"}, timeout=30).status_code == 200
    before = _children(process)
    assert set(before) == {"model-server", "serve", "scheduler"}
    os.kill(before["model-server"], signal.SIGKILL)

    outcomes: Counter = Counter()
    first_outcome = None
    down_readyz = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            chat = httpx2.post(url + "/api/chat", json={"message": "are you there?"}, timeout=30)
            ready = httpx2.get(url + "/readyz", timeout=10)
        except httpx2.TransportError as exc:
            outcomes[f"no answer: {type(exc).__name__}"] += 1
            time.sleep(0.2)
            continue
        outcome = f"{chat.status_code} {chat.json().get('error', {}).get('code', '')}".strip()
        first_outcome = first_outcome or outcome
        outcomes[outcome] += 1
        if ready.status_code == 503 and down_readyz is None:
            down_readyz = ready.json()
        if chat.status_code == 200 and ready.status_code == 200 and down_readyz is not None:
            break
        time.sleep(0.2)
    print(f"\nrequests while the model server was down and after: {dict(outcomes)}")

    # The gateway never stopped answering: chats got a clear 503 until the model was back, then 200.
    assert not [k for k in outcomes if k.startswith("no answer")], outcomes
    assert outcomes["503 upstream_unavailable"] >= 1 and outcomes["200"] >= 1
    # SIGKILL lands asynchronously: on a busy machine the first chat after os.kill() can reach the dying
    # server and lose its answer half-way, an honest 502 "the answer broke off" (at most that one).
    assert outcomes["502 upstream_error"] == 0 or (outcomes["502 upstream_error"], first_outcome) == (
        1,
        "502 upstream_error",
    ), outcomes
    assert set(outcomes) <= {"503 upstream_unavailable", "502 upstream_error", "200"}, outcomes
    # /readyz said what was going on.
    model_check = down_readyz["checks"]["model_server"]
    assert model_check["ok"] is False and down_readyz["error"]["code"] == "not_ready"
    assert model_check["process"]["last_exit"] == "killed by SIGKILL"
    assert model_check["process"]["state"] in ("restarting", "starting")
    # The supervisor marks the child running after its own health check, which can come a moment after the
    # gateway already reaches the model again.
    deadline = time.monotonic() + 30
    while True:
        ready = httpx2.get(url + "/readyz", timeout=10).json()
        if ready["checks"]["model_server"]["process"]["state"] == "running" or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert ready["checks"]["model_server"]["process"] == {
        "state": "running",
        "pid": _children(process)["model-server"],
        "restarts": 1,
        "last_exit": "killed by SIGKILL",
    }
    # Only the model server was restarted; the log says so.
    after = _children(process)
    assert after["model-server"] != before["model-server"]
    assert (after["serve"], after["scheduler"]) == (before["serve"], before["scheduler"])
    text = log.read_text()
    assert "error: model exited (killed by SIGKILL); restarting it in 1 s" in text
    assert "starting model again (restart 1)" in text and "model is back, " in text
    # Ctrl-C still stops everything, cleanly.
    children = [psutil.Process(pid) for pid in after.values()]
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=40) == 0
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    assert status_file(data_dir).exists()


def test_a_child_that_keeps_dying_is_restarted_with_growing_backoff(monkeypatch):
    monkeypatch.setattr(supervisor, "FIRST_BACKOFF_S", 0.2)
    lines: list[str] = []
    states: list[dict] = []
    watcher = Supervisor(echo=lines.append, on_change=lambda children: states.append(children["flaky"]))
    flaky = Child("flaky", [sys.executable, "-c", "import sys; sys.exit(3)"], backoff_s=0.2)
    watcher.start(flaky)
    deadline = time.monotonic() + 10

    def crashes() -> list[str]:
        return [line for line in lines if line.startswith("error: flaky exited")]

    while time.monotonic() < deadline and len(crashes()) < 4:
        watcher.tend(flaky)
        time.sleep(0.02)
    watcher.stop_all()
    assert crashes() == [
        "error: flaky exited (exit code 3); restarting it in 0.2 s",
        "error: flaky exited (exit code 3); restarting it in 0.4 s",
        "error: flaky exited (exit code 3); restarting it in 0.8 s",
        "error: flaky exited (exit code 3); restarting it in 1.6 s",
    ]
    assert "starting flaky again (restart 3)" in lines
    restarting = [s for s in states if s["state"] == "restarting"]
    assert (
        restarting[0]["last_exit"] == "exit code 3" and restarting[0]["pid"] is None and "next_start" in restarting[0]
    )
    assert states[-1]["state"] == "stopped"


@pytest.mark.slow
def test_up_runs_the_platform_on_postgresql_and_a_host_without_its_data_dir_is_refused(
    tmp_path, tiny_model_dir, postgres_url
):
    """``TUNELOOP_DATABASE__URL=postgresql://… tuneloop up``: answers land in PostgreSQL, not in a SQLite file, the
    store's instance marker is in paths.data_dir, and ``tuneloop serve`` on another data_dir is refused."""
    platform = _up(tmp_path, tiny_model_dir, {"database": {"url": postgres_url}})
    process, url, log, data_dir = next(platform)
    try:
        assert set(_children(process)) == {"model-server", "serve", "scheduler"}
        chat = httpx2.post(url + "/api/chat", json={"message": "hello", "user": "u1"}, timeout=30)
        assert chat.status_code == 200, chat.text
        answer = chat.json()
        vote = {"message_id": answer["message_id"], "feedback_token": answer["feedback_token"], "user": "u1"}
        assert httpx2.post(url + "/api/feedback", json=vote | {"rating": "up"}, timeout=30).status_code == 200
        db = open_db(postgres_url, migrate=False)
        try:
            rated = db.execute("SELECT rating FROM feedback WHERE message_id = ?", [answer["message_id"]]).fetchall()
            (instance_id,) = db.execute("SELECT value FROM instance_secrets WHERE name = 'instance_id'").fetchone()
        finally:
            db.close()
        assert rated == [(1,)]
        assert (data_dir / ".tuneloop-instance").read_text().strip() == instance_id
        assert not (data_dir / "tuneloop.db").exists()
        other = write_config(
            tmp_path / "host-b.toml",
            {"paths": {"data_dir": str(tmp_path / "host-b")}, "database": {"url": postgres_url}},
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("TUNELOOP_")}
        refused = subprocess.run(
            [str(Path(sys.executable).with_name("tuneloop")), "--config", str(other), "serve", "--port", "1"],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert refused.stderr.startswith(f"error: paths.data_dir: {tmp_path / 'host-b'} is not the folder the other")
        assert "Traceback" not in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=40) == 0
    finally:
        platform.close()
