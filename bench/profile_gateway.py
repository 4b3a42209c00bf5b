"""Where a chat's gateway CPU goes: cProfile of the request path, in one process.

    .venv/bin/python bench/profile_gateway.py                 # 4 paths × 300 requests, top 25 functions each
    .venv/bin/python bench/profile_gateway.py --path v1-stream --requests 1000 --top 40
    .venv/bin/python bench/profile_gateway.py --knowledge 20000   # /api/chat, knowledge base on vs off

The app is the real one (``create_app``, a real SQLite file in a temporary folder,
the knowledge base as shipped) driven through its WSGI interface by Flask's test
client, against the bench upstream (:mod:`bench.upstream`, a real HTTP server in
its own process). What this leaves out is gunicorn's and gevent's share (reading
the request off the socket, writing the response); ``bench/gateway.py`` measures
the whole of it from the gateway process's CPU time. Printed per path: CPU ms
per request (``time.process_time``, steadier than wall time on a shared machine),
then the functions with the most cumulative and own time.

``--knowledge N`` profiles what retrieval adds instead: the knowledge base filled to ``N`` entries as
``bench/knowledge.py`` fills it, then ``POST /api/chat`` with the rewordings, ``knowledge: true`` and
``false`` profiled apart (the same questions, interleaved), and the difference per request printed.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):
    sys.path.insert(0, str(ROOT))

from bench.gateway import CHAT_MESSAGE, Upstream  # noqa: E402
from tests.plugins.gateway import gateway_settings  # noqa: E402

STREAM_SCRIPT = "!tokens 20 0"  # the bench upstream streams 20 tokens with no gap

PATHS = {
    "v1": ("/v1/chat/completions", {"model": "bench-model", "messages": [{"role": "user", "content": CHAT_MESSAGE}]}),
    "v1-stream": (
        "/v1/chat/completions",
        {"model": "bench-model", "stream": True, "messages": [{"role": "user", "content": STREAM_SCRIPT}]},
    ),
    "api": ("/api/chat", {"message": CHAT_MESSAGE}),
    "api-stream": ("/api/chat", {"message": STREAM_SCRIPT, "stream": True}),
}


def drive(client, path: str, body: dict, count: int) -> None:
    """``count`` requests, each read to its end; any non-200 stops the run."""
    for _ in range(count):
        response = client.post(path, json=body)
        data = response.get_data()
        if response.status_code != 200:
            raise RuntimeError(f"{path} answered {response.status_code}: {data[:300]!r}")


def knowledge_bodies(use: bool) -> list[dict]:
    """The rewordings as /api/chat bodies, the knowledge base on or off."""
    from bench.knowledge import qa, rows

    return [{"message": qa(r)[0], "knowledge": use} for r in rows("rewordings.jsonl")]


def drive_bodies(client, bodies: list[dict], count: int) -> None:
    """``count`` requests cycling through ``bodies``; any non-200 stops the run."""
    for i in range(count):
        response = client.post("/api/chat", json=bodies[i % len(bodies)])
        data = response.get_data()
        if response.status_code != 200:
            raise RuntimeError(f"/api/chat answered {response.status_code}: {data[:300]!r}")


def profile_knowledge(client, count: int, top: int) -> None:
    """Knowledge on vs off: CPU ms per request of each (plain, interleaved in rounds), then on's profile."""
    on, off = knowledge_bodies(True), knowledge_bodies(False)
    drive_bodies(client, on, 50)
    drive_bodies(client, off, 50)
    cpu = {"on": 0.0, "off": 0.0}
    rounds = 10
    for r in range(rounds):
        for name, bodies in (("on", on), ("off", off)):
            start = time.process_time()
            drive_bodies(client, bodies[r::rounds] or bodies, count // rounds)
            cpu[name] += time.process_time() - start
    per = {name: seconds * 1000 / (count // rounds * rounds) for name, seconds in cpu.items()}
    profiler = cProfile.Profile()
    profiler.enable()
    drive_bodies(client, on, count)
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("cumulative").print_stats(top)
    stats.sort_stats("tottime").print_stats(top)
    print(out.getvalue())
    print(
        f"=== /api/chat: knowledge on {per['on']:.2f} ms CPU per request, off {per['off']:.2f}: "
        f"added {per['on'] - per['off']:+.2f} ms"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", action="append", choices=list(PATHS), help="profile only this path (repeatable)")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--knowledge", type=int, metavar="N", help="profile knowledge on vs off at N entries")
    args = parser.parse_args(argv)
    from server.app import create_app

    upstream = Upstream()
    try:
        with tempfile.TemporaryDirectory(prefix="tuneloop-profile-") as tmp:
            settings = gateway_settings(Path(tmp) / "var", upstream.base_url, **{"model.name": "bench-model"})
            if args.knowledge:
                from bench.knowledge import fill
                from feedback.db import open_db

                db = open_db(Path(tmp) / "var" / "tuneloop.db")
                print(f"knowledge base: {fill(db, args.knowledge):,} entries")
                db.close()
            client = create_app(settings=settings).test_client()
            if args.knowledge:
                profile_knowledge(client, args.requests, args.top)
                return 0
            for name in args.path or list(PATHS):
                path, body = PATHS[name]
                drive(client, path, body, 50)  # warm: imports, pools, the first connection
                profiler = cProfile.Profile()
                cpu0 = time.process_time()
                profiler.enable()
                drive(client, path, body, args.requests)
                profiler.disable()
                cpu_ms = (time.process_time() - cpu0) * 1000 / args.requests
                out = io.StringIO()
                stats = pstats.Stats(profiler, stream=out)
                stats.sort_stats("cumulative").print_stats(args.top)
                stats.sort_stats("tottime").print_stats(args.top)
                # Without the profiler's own overhead: the same requests, timed only.
                cpu0 = time.process_time()
                drive(client, path, body, args.requests)
                plain_ms = (time.process_time() - cpu0) * 1000 / args.requests
                print(f"=== {name}: {path}: {plain_ms:.2f} ms CPU per request ({cpu_ms:.2f} under cProfile)")
                print(out.getvalue())
    finally:
        upstream.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
