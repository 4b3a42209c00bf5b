"""Two hosts on one PostgreSQL store, as real processes (issue 18's end-to-end test).

Host A runs the platform as ``make run`` does, ``tuneloop up`` (the built-in model server with a tiny real
model, the gateway under gunicorn, the scheduler); host B runs a second gateway, ``tuneloop serve``, on
another port, answering with A's model server. Both read the store's URL from ``TUNELOOP_DATABASE__URL``
and share one ``paths.data_dir`` (on many hosts, the shared volume) and one settings file; nothing else
ties them together. The gateways sit behind a "load balancer" (127.0.0.1 is a trusted proxy), so each test
is its own set of client addresses in ``X-Forwarded-For`` and one test's chats do not use up another's
rate limit.

What holds across the two: an answer served by one is rated through the other and both ratings are in the
weekly report; a knowledge-base change made through one is served by the other within a second; a rate limit
is counted once for both; one gateway's workers killed with SIGKILL under rating load lose no acknowledged
rating while the other keeps serving. ``make run`` without a URL (SQLite) is covered by tests/test_up.py.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx2
import psutil
import pytest

from bench.gateway import seed_answers
from config.settings import load_settings
from feedback.db import open_db
from feedback.report.weeks import last_complete_week, shift_week
from tests.plugins.common import free_port, wait_for_log_line, wait_until_healthy
from tests.plugins.gateway import write_config

pytestmark = pytest.mark.slow

CHAT_LIMIT = 10  # per client address and minute, on both gateways together
QUESTION = "How long does standard delivery take?"
_addresses = itertools.count(1)


def client_address() -> str:
    """A client address nobody else in this module uses (198.18.0.0/15 is for benchmarks and tests)."""
    n = next(_addresses)
    return f"198.18.{n // 250}.{n % 250 + 1}"


@dataclass
class Host:
    """One gateway host: its URL, the process started there, and that process's log."""

    name: str
    url: str
    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def post(self, path: str, body: dict, address: str | None = None, **kwargs) -> httpx2.Response:
        headers = {"X-Forwarded-For": address or client_address(), **kwargs.pop("headers", {})}
        return httpx2.post(self.url + path, json=body, headers=headers, timeout=60, **kwargs)


@dataclass
class Platform:
    """Host A (``tuneloop up``) and host B (``tuneloop serve``) on one PostgreSQL database."""

    a: Host
    b: Host
    database_url: str
    config: Path
    env: dict
    admin_token: str

    def tuneloop(self, *args: str) -> str:
        """Run a tuneloop command as a third host would (same settings, same URL); its output."""
        done = subprocess.run(
            [str(Path(sys.executable).with_name("tuneloop")), "--config", str(self.config), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout


def _stop(host: Host, sig: int) -> None:
    """Stop a host's process and everything it started; SIGKILL whatever is left after 30 s."""
    if host.process.poll() is None:
        try:
            family = [psutil.Process(host.process.pid), *psutil.Process(host.process.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            family = []
        host.process.send_signal(sig)
        try:
            host.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            host.process.kill()
            host.process.wait()
        for leftover in family:
            if leftover.is_running():
                leftover.kill()


@pytest.fixture(scope="module")
def platform(tmp_path_factory, postgres_server, tiny_model_dir):
    root = tmp_path_factory.mktemp("many-hosts")
    database_url = postgres_server.new_database()
    ms_port, a_port, b_port = free_port(), free_port(), free_port()
    config = write_config(
        root / "tuneloop.toml",
        {
            "paths": {"data_dir": str(root / "shared-volume")},
            "model_server": {"port": ms_port, "model_dir": str(tiny_model_dir), "threads": 2},
            "model": {"base_url": f"http://127.0.0.1:{ms_port}/v1", "retries": 1, "first_token_timeout_s": 20.0},
            "gateway": {"port": a_port, "workers": 2, "trusted_proxies": ["127.0.0.1/32"]},
            "chat": {"max_tokens": 8},
            "limits": {"enabled": True, "chat": f"{CHAT_LIMIT}/minute", "feedback": "100000/minute"},
        },
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNELOOP_") and k != "DATABASE_URL"}
    env["TUNELOOP_DATABASE__URL"] = database_url
    tuneloop = str(Path(sys.executable).with_name("tuneloop"))

    def start(name: str, port: int, *command: str) -> Host:
        log_path = root / f"host-{name}.log"
        with open(log_path, "wb") as out:
            process = subprocess.Popen(
                [tuneloop, "--config", str(config), *command],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=root,
                start_new_session=True,
            )
        return Host(name, f"http://127.0.0.1:{port}", process, log_path)

    # Both hosts start at once, as two pods would: each reaches the store and one of them migrates it.
    a = start("a", a_port, "up")
    b = start("b", b_port, "serve", "--port", str(b_port))
    try:
        log = wait_for_log_line(a.log_path, "tuneloop is up.", a.process, what=f"host {a.name}", timeout_s=240)
        wait_until_healthy(b.process, b.url + "/readyz", b.log_path, what="host B's gateway", timeout_s=120)
        token = log.split("token: ", 1)[1].split()[0]
        yield Platform(a, b, database_url, config, env, token)
    finally:
        _stop(b, signal.SIGTERM)
        _stop(a, signal.SIGINT)  # Ctrl-C: up stops its model server, gateway and scheduler
        postgres_server.drop_database(database_url)


def test_both_hosts_run_on_the_one_postgresql_store(platform):
    a_ready = httpx2.get(platform.a.url + "/readyz", timeout=30).json()
    b_ready = httpx2.get(platform.b.url + "/readyz", timeout=30).json()
    assert a_ready["checks"]["database"]["ok"] is True and b_ready["checks"]["database"]["ok"] is True
    children = " ".join(" ".join(p.cmdline()) for p in psutil.Process(platform.a.process.pid).children())
    assert all(f" {name}" in children for name in ("model-server", "serve", "scheduler")), children
    shared = load_settings(platform.config, env={}).data_dir
    assert not (shared / "tuneloop.db").exists()  # neither host fell back to a SQLite file on the volume


def test_an_answer_served_by_one_gateway_is_rated_through_the_other_and_reported(platform):
    tz = load_settings(platform.config, env={}).report.timezone
    week = shift_week(last_complete_week(tz), 1)  # this week, still under way
    served = {}
    for host in (platform.a, platform.b):
        chat = host.post("/api/chat", {"message": QUESTION, "user": f"customer of {host.name}"})
        assert chat.status_code == 200, chat.text
        served[host.name] = chat.json()

    def vote(answer: dict, rating: str, comment: str, token: str | None = None) -> dict:
        body = {"message_id": answer["message_id"], "feedback_token": token or answer["feedback_token"]}
        return body | {"rating": rating, "comment": comment} | ({"reason": "wrong"} if rating == "down" else {})

    through_b = platform.b.post("/api/feedback", vote(served["a"], "down", "served by A, rated through B"))
    through_a = platform.a.post("/api/feedback", vote(served["b"], "up", "served by B, rated through A"))
    assert (through_b.status_code, through_a.status_code) == (200, 200), (through_b.text, through_a.text)
    # The token is still bound to its own message on the other host: A's token does not rate B's answer.
    forged = platform.b.post("/api/feedback", vote(served["b"], "down", "forged", token=served["a"]["feedback_token"]))
    assert forged.status_code == 403 and forged.json()["error"]["code"] == "bad_feedback_token"

    # The weekly report, written by a third process on the same store, has both ratings.
    printed = platform.tuneloop("report", "--week", week, "--no-deliver")
    json_path = next(line.split()[-1] for line in printed.splitlines() if line.strip().startswith("json"))
    report = json.loads(Path(json_path).read_text())
    comments = {(c["comment"], c["rating"], c["question"]) for c in report["comments"]}
    assert comments >= {
        ("served by A, rated through B", "down", QUESTION),
        ("served by B, rated through A", "up", QUESTION),
    }, report["comments"]
    assert report["headline"]["this"]["ratings"] >= 2 and report["headline"]["this"]["down"] >= 1


def test_a_rate_limit_is_counted_once_across_both_gateways(platform):
    address = client_address()  # one client, sent by the load balancer to either gateway
    per_gateway = 15  # each gateway alone would accept CHAT_LIMIT of these

    def chat(host: Host) -> tuple[str, int]:
        return host.name, host.post("/api/chat", {"message": "hi"}, address).status_code

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(chat, [platform.a, platform.b] * per_gateway))
    codes = [code for _, code in results]
    assert codes.count(200) == CHAT_LIMIT and codes.count(429) == 2 * per_gateway - CHAT_LIMIT, results
    for name in ("a", "b"):  # each gateway turned requests away, so each read the shared count
        assert sum(1 for host, code in results if host == name and code == 429) >= per_gateway - CHAT_LIMIT
    db = open_db(platform.database_url, migrate=False)
    try:
        counted = db.execute(
            "SELECT key, hits FROM rate_limit_counters WHERE key LIKE ?", [f"%ip:{address}/%"]
        ).fetchall()
    finally:
        db.close()
    assert [hits for _, hits in counted] == [2 * per_gateway], counted  # one counter, every request on it


def _add_entry(host: Host, token: str, questions: list[str], answer: str) -> str:
    """Add a knowledge-base entry through ``host``'s admin API (the admin token); the new entry's id."""
    added = httpx2.post(
        host.url + "/admin/knowledge",
        data={"questions": "\n".join(questions), "answer": answer, "actor": "ana", "reason": "new policy"},
        headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
        timeout=60,
    )
    assert added.status_code == 302, added.text
    return added.headers["Location"].split("/admin/knowledge/", 1)[1].split("?")[0]


def _served_within(host: Host, question: str, entry_id: str, acknowledged: float, bound_s: float) -> float:
    """Ask ``host`` ``question`` until and after ``bound_s`` past ``acknowledged``; the first delay it was served.

    Every chat that *arrives* ``bound_s`` or later after the change was acknowledged must have the entry as
    its first source (4 at once on fresh connections, to reach more than one worker); a chat arriving
    earlier may or may not. The chat's own generation time is not part of the bound.
    """

    def ask() -> tuple[float, bool]:
        sent = time.monotonic() - acknowledged
        chat = host.post("/api/chat", {"message": question})
        assert chat.status_code == 200, chat.text
        sources = chat.json()["sources"]
        return sent, bool(sources) and sources[0]["id"] == entry_id

    first = None
    while time.monotonic() - acknowledged < bound_s:
        sent, seen = ask()
        if seen and first is None:
            first = sent
    with ThreadPoolExecutor(4) as pool:
        after = list(pool.map(lambda _: ask(), range(4)))
    assert all(sent >= bound_s and seen for sent, seen in after), after
    return first if first is not None else after[0][0]


def test_a_knowledge_base_change_through_one_gateway_is_served_by_the_other_within_a_second(platform):
    question = "Do you deliver to the research station in Antarctica?"
    before = platform.b.post("/api/chat", {"message": question})
    assert before.status_code == 200, before.text

    entry_id = _add_entry(platform.a, platform.admin_token, [question], "Not yet: only within the country.")
    added_at = time.monotonic()
    assert question not in {s["question"] for s in before.json()["sources"]}  # nothing answered it before
    first = _served_within(platform.b, question, entry_id, added_at, bound_s=1.0)
    print(f"\nan entry added through A was first served by B {first:.2f} s after A acknowledged it")

    # The other way, an edit: a new wording added through B is found by A.
    wording = "Can you ship a parcel to Antarctica?"
    entry = httpx2.get(
        f"{platform.b.url}/admin/api/knowledge/{entry_id}",
        headers={"Authorization": f"Bearer {platform.admin_token}"},  # A's token works on B: one store
        timeout=60,
    )
    assert entry.status_code == 200, entry.text
    edited = httpx2.post(
        f"{platform.b.url}/admin/knowledge/{entry_id}/edit",
        data={"questions": f"{question}\n{wording}", "answer": entry.json()["answer"], "actor": "bo", "reason": "x"},
        headers={"Authorization": f"Bearer {platform.admin_token}"},
        timeout=60,
    )
    assert edited.status_code == 302, edited.text
    first = _served_within(platform.a, wording, entry_id, time.monotonic(), bound_s=1.0)
    print(f"a wording added through B was first served by A {first:.2f} s after B acknowledged it")


def _workers(host: Host) -> list[psutil.Process]:
    """The gunicorn workers of a ``tuneloop serve`` host (the children of its gunicorn master)."""
    return psutil.Process(host.process.pid).children()


def test_one_gateways_workers_killed_under_rating_load_lose_no_acknowledged_rating(platform):
    """16 clients rate distinct answers through both gateways; B's workers get SIGKILL mid-load.

    Every rating either gateway answered 200 must be in the store afterwards; A keeps acknowledging while B
    is down, and B's gunicorn master boots new workers that take ratings again. Runs last: it leaves B with
    fresh workers.
    """
    bodies = seed_answers(platform.database_url, 2400, "many-hosts-kill")
    acknowledged: dict[str, list[tuple[float, str]]] = {"a": [], "b": []}
    lock = threading.Lock()
    stop = threading.Event()

    def rate(host: Host, share: list[dict]) -> None:
        address = client_address()
        with httpx2.Client(base_url=host.url, headers={"X-Forwarded-For": address}, timeout=30) as client:
            for body in share:
                if stop.is_set():
                    return
                try:
                    response = client.post("/api/feedback", json=body)
                except httpx2.TransportError:
                    time.sleep(0.05)  # B's worker died under this request: it was never acknowledged
                    continue
                if response.status_code == 200:
                    with lock:
                        acknowledged[host.name].append((time.monotonic(), body["message_id"]))

    def counts() -> tuple[int, int]:
        with lock:
            return len(acknowledged["a"]), len(acknowledged["b"])

    hosts = [platform.a, platform.b]
    threads = [threading.Thread(target=rate, args=(hosts[i % 2], bodies[i::16])) for i in range(16)]
    victims = _workers(platform.b)
    assert len(victims) == 2, victims
    try:
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 60
        while min(counts()) < 150 and time.monotonic() < deadline:
            time.sleep(0.01)
        before_kill = counts()
        killed_at = time.monotonic()
        for worker in victims:
            os.kill(worker.pid, signal.SIGKILL)
        # B's master boots new workers; both gateways go on acknowledging ratings.
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            with lock:
                a_after = sum(1 for at, _ in acknowledged["a"] if at > killed_at)
                b_after = sum(1 for at, _ in acknowledged["b"] if at > killed_at + 0.5)
            if a_after >= 50 and b_after >= 50:
                break
            time.sleep(0.05)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert min(before_kill) >= 150, f"acknowledged before the kill (A, B): {before_kill}"
    assert (a_after, b_after) >= (50, 50), f"acknowledged after the kill (A, B): {a_after}, {b_after}"
    new_workers = {w.pid for w in _workers(platform.b)}
    assert len(new_workers) == 2 and not new_workers & {w.pid for w in victims}
    with lock:
        acked = {message_id for side in acknowledged.values() for _, message_id in side}
    assert len(acked) < len(bodies), "the load ended before the kill: nothing was in flight"
    db = open_db(platform.database_url, migrate=False)
    try:
        stored = {
            row[0]
            for row in db.execute(
                """SELECT f.message_id FROM feedback f JOIN messages m ON m.id = f.message_id
                   JOIN conversations c ON c.id = m.conversation_id WHERE c.source = ?""",
                ["many-hosts-kill"],
            ).fetchall()
        }
    finally:
        db.close()
    lost = acked - stored
    print(f"\nacknowledged (A, B): {before_kill} before the kill, {(a_after, b_after)} after; {len(lost)} lost")
    assert not lost, f"{len(lost)} of {len(acked)} acknowledged ratings are missing after B's workers were killed"
