"""No acknowledged rating is lost when the gateway is killed with SIGKILL mid-load (issue 19's floor).

Real gunicorn (2 gevent workers) on a real SQLite file: 16 client threads rate distinct answers as fast as the
gateway takes them; after a few hundred acknowledgements every gateway process gets SIGKILL at once. Every
rating answered 200 must then be in the database: a rating is committed before its acknowledgement.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import httpx2
import psutil
import pytest

from bench.gateway import seed_answers
from feedback.db import open_db
from tests.plugins.gateway import start_gunicorn_gateway


@pytest.mark.slow
def test_every_acknowledged_rating_survives_a_sigkill(tmp_path, module_fake_upstream):
    db_path = tmp_path / "gw-var" / "tuneloop.db"
    bodies = seed_answers(db_path, 3000, "kill-test")
    gw = start_gunicorn_gateway(tmp_path, module_fake_upstream.base_url)
    acknowledged: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def rate(share: list[dict]) -> None:
        with httpx2.Client(timeout=10) as client:
            for body in share:
                if stop.is_set():
                    return
                try:
                    response = client.post(gw.url + "/api/feedback", json=body)
                except httpx2.TransportError:
                    return  # the gateway is gone
                if response.status_code == 200:
                    with lock:
                        acknowledged.append(body["message_id"])

    threads = [threading.Thread(target=rate, args=(bodies[i::16],)) for i in range(16)]
    try:
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 60
        while len(acknowledged) < 300 and time.monotonic() < deadline:
            time.sleep(0.01)
        processes = [psutil.Process(gw.process.pid), *psutil.Process(gw.process.pid).children(recursive=True)]
        for proc in processes:
            os.kill(proc.pid, signal.SIGKILL)
        gw.process.wait(timeout=10)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
        if gw.process.poll() is None:
            gw.process.kill()
    with lock:
        acked = set(acknowledged)
    assert len(acked) >= 300, f"only {len(acked)} ratings were acknowledged before the kill"
    assert len(acked) < len(bodies), "the kill came after the load ended: nothing was in flight"
    db = open_db(db_path)
    try:
        stored = {row[0] for row in db.execute("SELECT message_id FROM feedback").fetchall()}
    finally:
        db.close()
    lost = acked - stored
    assert not lost, f"{len(lost)} acknowledged ratings are missing after SIGKILL"
