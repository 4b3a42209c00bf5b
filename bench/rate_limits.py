"""Rate-limit storage benchmark: does counting in the database slow chat down?

    .venv/bin/python bench/rate_limits.py            # full run (about 2 minutes on 2 cores)
    .venv/bin/python bench/rate_limits.py --quick    # smoke run (< 40 s)

The same ``POST /api/chat`` load (64 keep-alive clients, one client address, so every request hits the same
counter row: the worst case for contention) against ``tuneloop serve`` (gunicorn, 2 gevent workers) on the
instant bench upstream (:mod:`bench.upstream`), three ways: limits off, ``limits.storage_uri = "memory://"``
(per worker), and ``"database://"`` (the default: shared through SQLite). The limit is set so high that
nothing is refused: what is measured is the cost of counting. The three run in turn, ``--rounds`` times, so
drift on a shared machine falls on each alike; the report gives each one's requests/s and gateway CPU per
request, and their ratio to "off" in the same round.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):
    sys.path.insert(0, str(ROOT))

from bench import raise_fd_limit  # noqa: E402
from bench.gateway import CHAT_MESSAGE, Upstream, closed_spec, run_load, summarize_closed  # noqa: E402
from tests.plugins.gateway import start_gunicorn_gateway, stop_gateway  # noqa: E402

STORAGES = {"off": None, "memory": "memory://", "database": "database://"}


def measure(upstream: Upstream, workdir: Path, storage: str | None, count: int, clients: int) -> dict:
    """One gateway with ``storage`` (None: limits off), one closed-loop chat load; its summary."""
    limits = (
        {"enabled": False} if storage is None else {"enabled": True, "chat": "1000000/minute", "storage_uri": storage}
    )
    extra = {"model": {"name": "bench-model", "retries": 2}, "gateway": {"workers": 2}, "limits": limits}
    gateway = start_gunicorn_gateway(workdir, upstream.base_url, extra=extra, timeout_s=60)
    try:
        port = int(gateway.url.rsplit(":", 1)[1])
        m = run_load(
            closed_spec(port, "/api/chat", [{"message": CHAT_MESSAGE}], clients, count),
            gateway.process.pid,
            upstream.process.pid,
            workdir,
        )
        return summarize_closed(m, count)
    finally:
        stop_gateway(gateway)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Chat throughput with rate limits off, in memory, in the database.")
    parser.add_argument("--quick", action="store_true", help="small counts, one round (< 40 s)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the three configurations (default 3)")
    parser.add_argument("--requests", type=int, default=3000, help="chat requests per measurement (default 3000)")
    parser.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    args = parser.parse_args(argv)
    rounds, count = (1, 300) if args.quick else (args.rounds, args.requests)
    raise_fd_limit()
    upstream = Upstream()
    runs: dict[str, list[dict]] = {name: [] for name in STORAGES}
    try:
        for r in range(rounds):
            for name, storage in STORAGES.items():
                workdir = Path(tempfile.mkdtemp(prefix=f"tuneloop-rl-{name}-"))
                runs[name].append(measure(upstream, workdir, storage, count, clients=64))
                print(f"round {r + 1} {name}: {runs[name][-1]['per_s']:.0f} requests/s", file=sys.stderr)
    finally:
        upstream.stop()
    ok = all(run["failed"] == 0 for results in runs.values() for run in results)
    print(f"POST /api/chat, 64 clients, {count} requests per run, {rounds} round(s); gunicorn 2 gevent workers")
    print("| limits | requests/s (median) | vs off, same round (median) | gateway CPU ms/request | failed |")
    print("|---|---:|---:|---:|---:|")
    for name in STORAGES:
        per_s = [run["per_s"] for run in runs[name]]
        ratios = [run["per_s"] / off["per_s"] for run, off in zip(runs[name], runs["off"], strict=True)]
        cpu = statistics.median(run["gateway_cpu_ms"] for run in runs[name])
        failed = sum(run["failed"] for run in runs[name])
        print(f"| {name} | {statistics.median(per_s):.0f} | {statistics.median(ratios):.2f} | {cpu:.2f} | {failed} |")
    print("Checks: " + ("every request answered 200" if ok else "SOME REQUESTS FAILED"))
    if args.json:
        args.json.write_text(json.dumps(runs, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
