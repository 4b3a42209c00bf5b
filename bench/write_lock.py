"""Open streams while another process holds the database's write lock: does a waiting write stall them?

    .venv/bin/python bench/write_lock.py            # about 45 s on 2 cores
    .venv/bin/python bench/write_lock.py --quick    # smoke run (< 30 s)
    .venv/bin/python bench/write_lock.py --json out.json

A gevent worker runs every stream it holds on one OS thread. Python's sqlite3
waits for a lock inside C (SQLite's busy handler sleeps there), so one request
whose write waits for the lock used to freeze every stream of its worker for as
long as it waited — up to ``database.busy_timeout_ms`` (issue 14). Any other
writer can hold the lock: the scheduler, a CLI command, a second gateway host.

Three processes, as in production: the gateway (``tuneloop serve``, gunicorn,
one gevent worker so every stream shares it), the instant upstream of
:mod:`bench.upstream`, and the load generator of :mod:`bench.loadgen`. N SSE
streams of ``tokens`` tokens ``gap`` apart start evenly over ``ramp`` seconds,
so streams end — and record their turn — all through the run. The same load
runs twice in the same run: first alone (the baseline), then while a fourth
process takes ``BEGIN IMMEDIATE`` on the gateway's database and holds it for
``hold`` seconds, every ``period`` seconds. Reported: the gap between two tokens
of a stream (p50, p99, max) in both runs, what the lock added at p99 against the
product's stream budget (20 ms), and that every turn of both runs was recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):
    sys.path.insert(0, str(ROOT))

from bench import raise_fd_limit  # noqa: E402
from bench.gateway import Upstream, pct, run_load  # noqa: E402
from feedback.db import open_db  # noqa: E402
from tests.plugins.gateway import start_gunicorn_gateway, stop_gateway  # noqa: E402

STREAM_BUDGET_MS = 20.0  # the product's budget for what anything may add to inter-token p99

# Runs in its own process: takes the write lock `times` times, holding it `hold` seconds each.
HOLDER = """
import sqlite3, sys, time
path = sys.argv[1]
hold, period, times, start = float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
conn = sqlite3.connect(path, isolation_level=None, timeout=30)
time.sleep(start)
for _ in range(times):
    began = time.monotonic()
    conn.execute("BEGIN IMMEDIATE")
    time.sleep(hold)
    conn.execute("COMMIT")
    print(f"held {time.monotonic() - began:.3f}", flush=True)
    time.sleep(max(0.0, period - hold))
"""


@dataclass(frozen=True)
class Plan:
    streams: int
    tokens: int
    gap_s: float
    ramp_s: float
    hold_s: float
    period_s: float


FULL = Plan(streams=200, tokens=40, gap_s=0.05, ramp_s=10.0, hold_s=1.0, period_s=2.5)
QUICK = Plan(streams=40, tokens=20, gap_s=0.05, ramp_s=3.0, hold_s=0.5, period_s=1.5)


def stream_spec(port: int, plan: Plan) -> dict:
    return {
        "kind": "streams",
        "host": "127.0.0.1",
        "port": port,
        "path": "/api/chat",
        "body": {"message": f"!tokens {plan.tokens} {plan.gap_s}", "stream": True},
        "n": plan.streams,
        "ramp_s": plan.ramp_s,
        "tokens": plan.tokens,
        "protocol": "tuneloop",
        "timeout_s": 120,
    }


def summarize(result: dict) -> dict:
    gaps = result["gaps_ms"]
    return {
        "streams": result["n"],
        "ok": result["ok"],
        "errors": result["errors"],
        "gaps": len(gaps),
        "gap_p50_ms": pct(gaps, 50),
        "gap_p99_ms": pct(gaps, 99),
        "gap_max_ms": max(gaps, default=float("nan")),
        "first_token_p99_ms": pct(result["first_token_ms"], 99),
    }


def recorded_turns(db_path: Path) -> int:
    db = open_db(db_path, migrate=False)
    try:
        return db.execute("SELECT COUNT(*) FROM messages WHERE role = 'assistant' AND error IS NULL").fetchone()[0]
    finally:
        db.close()


def run(plan: Plan, workdir: Path) -> dict:
    """Start upstream and gateway, run the load alone and under the lock holder, stop everything."""
    raise_fd_limit()
    upstream = Upstream()
    try:
        extra = {
            "model": {"retries": 2, "first_token_timeout_s": 30.0, "name": "bench-model"},
            "gateway": {"workers": 1},
            "limits": {"enabled": False},
        }
        gateway = start_gunicorn_gateway(workdir, upstream.base_url, extra=extra, timeout_s=60)
        db_path = gateway.data_dir / "tuneloop.db"
        try:
            port = int(gateway.url.rsplit(":", 1)[1])
            spec = stream_spec(port, plan)
            pid, up_pid = gateway.process.pid, upstream.process.pid
            alone = run_load(spec, pid, up_pid, workdir)
            time.sleep(1)
            holds = max(1, int((plan.ramp_s + plan.tokens * plan.gap_s) / plan.period_s))
            holder = subprocess.Popen(
                [sys.executable, "-c", HOLDER, str(db_path), str(plan.hold_s), str(plan.period_s), str(holds), "0.5"],
                stdout=subprocess.PIPE,
                text=True,
            )
            locked = run_load(spec, pid, up_pid, workdir)
            held = [float(line.split()[1]) for line in holder.communicate(timeout=120)[0].splitlines()]
            turns = recorded_turns(db_path)
        except BaseException:
            print(gateway.log()[-3000:], file=sys.stderr)
            raise
        finally:
            stop_gateway(gateway)
    finally:
        upstream.stop()
    base, under = summarize(alone.result), summarize(locked.result)
    return {
        "plan": asdict(plan),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpus": os.cpu_count(),
        "loadavg": os.getloadavg(),
        "alone": {**base, "other_cores": alone.other_cores},
        "locked": {**under, "other_cores": locked.other_cores},
        "lock_held_s": held,
        "added_p99_ms": under["gap_p99_ms"] - base["gap_p99_ms"],
        "budget_ms": STREAM_BUDGET_MS,
        "turns_recorded": turns,
        "turns_expected": 2 * plan.streams,
    }


def report(figures: dict) -> tuple[str, bool]:
    """The table, and whether every stream and turn checked out (the budget is reported, not failed)."""
    plan = figures["plan"]
    lines = [
        f"Streams while another process holds the write lock ({figures['date']}, {figures['cpus']} CPUs, "
        f"load {figures['loadavg'][0]:.2f})",
        f"{plan['streams']} SSE streams of {plan['tokens']} tokens {plan['gap_s'] * 1000:.0f} ms apart over "
        f"{plan['ramp_s']:.0f} s, one gevent worker; lock held {len(figures['lock_held_s'])}× "
        f"{plan['hold_s']:.1f} s every {plan['period_s']:.1f} s",
        "",
        f"{'run':<14}{'streams ok':>11}{'gap p50 ms':>12}{'gap p99 ms':>12}{'gap max ms':>12}{'other cores':>13}",
    ]
    for name in ("alone", "locked"):
        row = figures[name]
        lines.append(
            f"{name:<14}{row['ok']:>6} / {row['streams']:<3}{row['gap_p50_ms']:>12.1f}{row['gap_p99_ms']:>12.1f}"
            f"{row['gap_max_ms']:>12.1f}{row['other_cores']:>13.2f}"
        )
    added = figures["added_p99_ms"]
    verdict = "within" if added <= figures["budget_ms"] else "OVER"
    lines += [
        "",
        f"added inter-token p99 under the lock: {added:+.1f} ms ({verdict} the {figures['budget_ms']:.0f} ms budget)",
        f"turns recorded: {figures['turns_recorded']} of {figures['turns_expected']}",
    ]
    ok = (
        figures["alone"]["ok"] == figures["alone"]["streams"]
        and figures["locked"]["ok"] == figures["locked"]["streams"]
        and figures["turns_recorded"] == figures["turns_expected"]
    )
    return "\n".join(lines), ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Inter-token latency of open streams while the write lock is held.")
    parser.add_argument("--quick", action="store_true", help="small counts, for a smoke run")
    parser.add_argument("--streams", type=int, help="concurrent SSE streams")
    parser.add_argument("--hold", type=float, help="seconds the other process holds the lock each time")
    parser.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.streams:
        plan = replace(plan, streams=args.streams)
    if args.hold:
        plan = replace(plan, hold_s=args.hold)
    workdir = Path(tempfile.mkdtemp(prefix="tuneloop-bench-lock-"))
    try:
        figures = run(plan, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    text, ok = report(figures)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
