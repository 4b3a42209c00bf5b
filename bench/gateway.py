"""Gateway benchmark: added latency, concurrent SSE streams, and ratings per second.

    .venv/bin/python bench/gateway.py            # full run (about 5 minutes on 2 cores)
    .venv/bin/python bench/gateway.py --quick    # smoke run (small counts, < 30 s)
    .venv/bin/python bench/gateway.py --help     # one workload, other stream counts, --hold-db, --json

Three processes, as in production: the gateway is ``tuneloop serve`` (gunicorn,
2 gevent workers, ``config/gunicorn.conf.py``) with its settings in a temporary
TOML file; the upstream is :mod:`bench.upstream`, a bare asyncio
OpenAI-protocol server that answers at once; the load is :mod:`bench.loadgen`,
started afresh for every measurement. Every figure is shown next to a baseline
taken in the same run with the same client, because a shared 2-core machine
drifts by tens of percent from one minute to the next:

1. latency: ``POST /api/chat`` through the gateway vs ``POST /v1/chat/completions``
   on the upstream directly, at 1 and 64 concurrent keep-alive clients;
2. streams: for each N (250, 1,000, 2,000), N ``/api/chat`` SSE streams of 20
   tokens 250 ms apart, started evenly over one stream's length, vs the same N
   streams taken from the upstream directly — how many completed, how many were
   mid-answer at once, and how much the gateway adds to the gap between tokens;
3. ratings: ``POST /api/feedback`` on pre-recorded answers vs ``GET /healthz``
   (the HTTP floor of the same server) and vs ``record_rating`` called in
   process (the SQLite ceiling); then every rating is counted in the database.

The CPU each process spent per request is printed too (from ``psutil``), and
how many cores other processes kept busy meanwhile, which is what tells "the
gateway is slow" apart from "the box was busy". Tables: :mod:`bench.report`.
Exit status: 0 when everything ran and checked out (no 5xx, no lost rating, no
failed request or stream); 1 otherwise. Missed performance targets are reported,
not failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):
    # `make bench` runs this file as a script; the imports below need the repository root.
    sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402

from bench import raise_fd_limit  # noqa: E402
from bench.peers import Peer, start_peers  # noqa: E402
from bench.report import SECTIONS, report  # noqa: E402
from feedback import ratings, turns  # noqa: E402
from feedback.db import open_db, write_transaction  # noqa: E402
from feedback.secrets import instance_secret  # noqa: E402
from feedback.tokens import feedback_token  # noqa: E402
from tests.plugins.gateway import RunningGateway, start_gunicorn_gateway, stop_gateway  # noqa: E402

CHAT_MESSAGE = "hello, how do refunds work?"
STREAM_TOKENS = 20  # tokens per stream in the comparison with other gateways (the "20-token stream")


@dataclass(frozen=True)
class Plan:
    """How much of each workload to run."""

    latency_counts: dict[int, int]  # concurrent clients → measured requests
    streams: tuple[int, ...]  # concurrent SSE streams, one run (direct, then gateway) per count
    stream_tokens: int
    stream_gap_s: float
    # Streams start evenly over one stream's length (tokens × gap), so arrivals
    # look like a steady state in which N streams are open; a number here
    # offers that many starts per second instead (a burst test).
    stream_starts_per_s: float | None
    ratings: int
    ratings_concurrency: int
    direct_ratings: int
    # Beside other gateways: closed-book chats at each client count (clients → requests), and
    # 20-token streams with no gap between tokens at 1 client (requests).
    peer_counts: dict[int, int]
    peer_streams: int


FULL = Plan(
    latency_counts={1: 1000, 64: 5000},
    streams=(250, 1000, 2000),
    stream_tokens=20,
    stream_gap_s=0.25,
    stream_starts_per_s=None,
    ratings=5000,
    ratings_concurrency=32,
    direct_ratings=5000,
    peer_counts={1: 1000, 32: 3000},
    peer_streams=300,
)
QUICK = Plan(
    latency_counts={1: 100, 64: 320},
    streams=(100,),
    stream_tokens=5,
    stream_gap_s=0.1,
    stream_starts_per_s=None,
    ratings=300,
    ratings_concurrency=16,
    direct_ratings=200,
    peer_counts={1: 30, 32: 96},
    peer_streams=20,
)


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), linearly interpolated; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


# --- processes ---------------------------------------------------------------


class Upstream:
    """The bench upstream in its own process (``args``: more of its command-line options)."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.upstream", "--port", "0", *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        line = self.process.stdout.readline()
        if not line.startswith("listening on "):
            self.process.kill()
            raise RuntimeError(f"bench upstream did not start: {line!r}")
        self.port = int(line.split()[-1])
        self.base_url = f"http://127.0.0.1:{self.port}/v1"

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU of a process and its live children (0 for no process)."""
    if pid is None:
        return 0.0
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for proc in procs:
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def open_fds(pid: int | None) -> int:
    """Open descriptors of a process and its live children."""
    if pid is None:
        return 0
    try:
        root = psutil.Process(pid)
        return sum(p.num_fds() for p in [root, *root.children(recursive=True)])
    except psutil.NoSuchProcess:
        return 0


def busy_cpu_seconds() -> float:
    """CPU seconds the whole machine has spent busy (all processes, all cores)."""
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0) + getattr(t, "steal", 0)


@dataclass
class Measured:
    """One load-generator run and what the servers spent meanwhile.

    ``other_cores`` is the average number of cores that processes outside the
    benchmark kept busy during the run: the noise this figure was taken under.
    """

    result: dict
    gateway_cpu_s: float
    upstream_cpu_s: float
    peak_gateway_fds: int
    other_cores: float


def run_load(spec: dict, gateway_pid: int | None, upstream_pid: int, workdir: Path) -> Measured:
    """Run one workload in a fresh load-generator process; sample the servers while it runs."""
    spec_path = workdir / "spec.json"
    spec_path.write_text(json.dumps(spec))
    gw0, up0, busy0, t0 = cpu_seconds(gateway_pid), cpu_seconds(upstream_pid), busy_cpu_seconds(), time.monotonic()
    peak_fds = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak_fds
        while not done.wait(0.5):
            peak_fds = max(peak_fds, open_fds(gateway_pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        out = subprocess.run(
            [sys.executable, "-m", "bench.loadgen", str(spec_path)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        done.set()
        sampler.join()
    if out.returncode != 0:
        raise RuntimeError(f"load generator failed ({out.returncode}):\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout)
    gw_cpu, up_cpu = cpu_seconds(gateway_pid) - gw0, cpu_seconds(upstream_pid) - up0
    others = busy_cpu_seconds() - busy0 - gw_cpu - up_cpu - result["client_cpu_s"]
    return Measured(result, gw_cpu, up_cpu, peak_fds, max(0.0, others) / (time.monotonic() - t0))


# --- workloads ---------------------------------------------------------------


@dataclass
class Context:
    plan: Plan
    gateway: RunningGateway
    gateway_port: int
    upstream: Upstream
    workdir: Path
    baseline: RunningGateway | None = None  # tuneloop from another source tree (--baseline), for before/after

    def load(self, spec: dict) -> Measured:
        return run_load(spec, self.gateway.process.pid, self.upstream.process.pid, self.workdir)


def closed_spec(
    port: int, path: str, bodies: list, concurrency: int, count: int, method: str = "POST", headers: dict | None = None
) -> dict:
    return {
        "headers": headers or {},
        "kind": "closed",
        "host": "127.0.0.1",
        "port": port,
        "method": method,
        "path": path,
        "bodies": bodies,
        "concurrency": concurrency,
        "count": count,
        "warmup": min(count // 5, 200),
    }


def summarize_closed(m: Measured, count: int) -> dict:
    r = m.result
    lat = r["latencies_ms"]
    n = max(1, len(lat))
    return {
        "requests": len(lat),
        "per_s": len(lat) / r["wall_s"] if r["wall_s"] else 0.0,
        "p50_ms": pct(lat, 50),
        "p99_ms": pct(lat, 99),
        "statuses": r["statuses"],
        "errors": r["errors"],
        "failed": count - r["statuses"].get("200", 0),  # non-200 answers, broken connections, requests never sent
        "gateway_cpu_ms": m.gateway_cpu_s * 1000 / n,
        "upstream_cpu_ms": m.upstream_cpu_s * 1000 / n,
        "client_cpu_ms": r["client_cpu_s"] * 1000 / n,
        "other_cores": m.other_cores,
    }


def latency(ctx: Context) -> dict:
    """Added latency at each client count: gateway /api/chat vs upstream /v1/chat/completions."""
    direct_body = {"model": "bench-model", "messages": [{"role": "user", "content": CHAT_MESSAGE}]}
    out = {}
    for clients, count in ctx.plan.latency_counts.items():
        base = ctx.load(closed_spec(ctx.upstream.port, "/v1/chat/completions", [direct_body], clients, count))
        gw = ctx.load(closed_spec(ctx.gateway_port, "/api/chat", [{"message": CHAT_MESSAGE}], clients, count))
        out[clients] = {"upstream": summarize_closed(base, count), "gateway": summarize_closed(gw, count)}
    return out


def stream_spec(port: int, path: str, body: dict, plan: Plan, n: int, protocol: str) -> dict:
    ramp_s = n / plan.stream_starts_per_s if plan.stream_starts_per_s else plan.stream_tokens * plan.stream_gap_s
    return {
        "kind": "streams",
        "host": "127.0.0.1",
        "port": port,
        "path": path,
        "body": body,
        "n": n,
        "ramp_s": ramp_s,
        "tokens": plan.stream_tokens,
        "protocol": protocol,
        "timeout_s": 120 + ramp_s + plan.stream_tokens * plan.stream_gap_s * 4,
    }


def summarize_streams(m: Measured, gap_ms: float) -> dict:
    r = m.result
    gaps = r["gaps_ms"]
    return {
        "n": r["n"],
        "ok": r["ok"],
        "errors": r["errors"],
        "peak_open": r["peak_open"],
        "peak_streaming": r["peak_streaming"],
        "steady_gaps": len(r["steady_gaps_ms"]),
        "steady_gap_p99_ms": pct(r["steady_gaps_ms"], 99),
        "gap_p50_ms": pct(gaps, 50),
        "gap_p99_ms": pct(gaps, 99),
        "added_gap_p99_ms": pct(gaps, 99) - gap_ms,
        "first_token_p50_ms": pct(r["first_token_ms"], 50),
        "first_token_p99_ms": pct(r["first_token_ms"], 99),
        "gateway_cpu_s": m.gateway_cpu_s,
        "upstream_cpu_s": m.upstream_cpu_s,
        "client_cpu_s": r["client_cpu_s"],
        "peak_gateway_fds": m.peak_gateway_fds,
        "other_cores": m.other_cores,
    }


def streams(ctx: Context) -> list[dict]:
    """For each count N: N concurrent SSE streams, tokens ``stream_gap_s`` apart, upstream directly, then via the
    gateway."""
    plan = ctx.plan
    script = f"!tokens {plan.stream_tokens} {plan.stream_gap_s}"
    direct_body = {
        "model": "bench-model",
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": script}],
    }
    gap_ms = plan.stream_gap_s * 1000
    out = []
    for n in plan.streams:
        base = ctx.load(stream_spec(ctx.upstream.port, "/v1/chat/completions", direct_body, plan, n, "openai"))
        time.sleep(1)  # let the direct connections close before the gateway run
        gw = ctx.load(
            stream_spec(ctx.gateway_port, "/api/chat", {"message": script, "stream": True}, plan, n, "tuneloop")
        )
        out.append(
            {
                "n": n,
                "gap_ms": gap_ms,
                "upstream": summarize_streams(base, gap_ms),
                "gateway": summarize_streams(gw, gap_ms),
            }
        )
        time.sleep(1)
    return out


@dataclass(frozen=True)
class ChatTarget:
    """Something that answers chat completions in the comparison: the upstream itself, tuneloop, or a peer."""

    name: str
    port: int
    path: str
    pid: int | None  # the process whose CPU is the target's (None: the upstream, counted as upstream)
    body: Callable[[str, bool], dict]  # (message, stream) → request body
    headers: dict = dataclasses.field(default_factory=dict)


def openai_body(message: str, stream: bool, **extra) -> dict:
    body = {"model": "bench-model", "messages": [{"role": "user", "content": message}], **extra}
    if stream:
        body.update(stream=True, stream_options={"include_usage": True})
    return body


def tuneloop_targets(name: str, port: int, pid: int) -> list[ChatTarget]:
    """A tuneloop gateway's two chat routes, closed book."""
    return [
        ChatTarget(
            f"{name} /v1",
            port,
            "/v1/chat/completions",
            pid,
            lambda m, s: openai_body(m, s, tuneloop={"knowledge": False}),
        ),
        ChatTarget(
            f"{name} /api/chat", port, "/api/chat", pid, lambda m, s: {"message": m, "stream": s, "knowledge": False}
        ),
    ]


def chat_targets(ctx: Context, peers: list[Peer]) -> list[ChatTarget]:
    """The upstream directly (the baseline), tuneloop's two chat routes, and each running peer.

    tuneloop's requests opt out of the knowledge base (closed book): the peers retrieve nothing, and
    retrieval has its own benchmark (bench/knowledge.py). Every tuneloop turn is still stored in SQLite.
    """
    baseline = []
    if ctx.baseline is not None:
        port = int(ctx.baseline.url.rsplit(":", 1)[1])
        baseline = tuneloop_targets("baseline", port, ctx.baseline.process.pid)
    return [
        ChatTarget("direct (upstream)", ctx.upstream.port, "/v1/chat/completions", None, openai_body),
        *tuneloop_targets("tuneloop", ctx.gateway_port, ctx.gateway.process.pid),
        *baseline,
        *(ChatTarget(p.name, p.port, p.path, p.process.pid, openai_body, p.headers) for p in peers),
    ]


def beside_peers(ctx: Context, peers: list[Peer], skipped: list[str]) -> dict:
    """Every target in turn, same client: closed-book chats at each client count, then 20-token streams."""
    targets = chat_targets(ctx, peers)
    rows = []
    script = f"!tokens {STREAM_TOKENS} 0"
    runs = [("chat", clients, count, CHAT_MESSAGE, False) for clients, count in ctx.plan.peer_counts.items()]
    runs.append(("stream", 1, ctx.plan.peer_streams, script, True))
    for kind, clients, count, message, stream in runs:
        for t in targets:
            spec = closed_spec(t.port, t.path, [t.body(message, stream)], clients, count, headers=t.headers)
            m = run_load(spec, t.pid, ctx.upstream.process.pid, ctx.workdir)
            rows.append({"target": t.name, "kind": kind, "clients": clients, **summarize_closed(m, count)})
    return {"rows": rows, "skipped": skipped, "stream_tokens": STREAM_TOKENS}


def seed_answers(db_path: Path | str, count: int, source: str) -> list[dict]:
    """Record ``count`` answered turns straight into the store (a SQLite path or a database URL); one rating
    request body each."""
    db = open_db(db_path)
    try:
        secret = instance_secret(db, "feedback_token")
        bodies = []
        with write_transaction(db):
            for i in range(count):
                turn = turns.Turn(
                    conversation_id=turns.new_conversation_id(),
                    question=f"question {i}",
                    answer=f"answer {i}",
                    model_version_id=None,
                    finish_reason="stop",
                    source=source,
                )
                turns.record_turn(db, turn)
                rating = "up" if i % 2 else "down"
                body = {
                    "message_id": turn.assistant_message_id,
                    "rating": rating,
                    "feedback_token": feedback_token(secret, turn.assistant_message_id),
                }
                if rating == "down":
                    body["reason"] = "wrong"
                bodies.append(body)
        return bodies
    finally:
        db.close()


def count_ratings(db_path: Path, source: str) -> int:
    """Feedback rows on the answers seeded with ``source``."""
    db = open_db(db_path, migrate=False)
    try:
        return db.execute(
            """SELECT COUNT(*) FROM feedback f JOIN messages m ON m.id = f.message_id
               JOIN conversations c ON c.id = m.conversation_id WHERE c.source = ?""",
            [source],
        ).fetchone()[0]
    finally:
        db.close()


def direct_rating_rate(db_path: Path, bodies: list[dict]) -> float:
    """Ratings per second with ``record_rating`` called in this process: the store's own ceiling."""
    db = open_db(db_path, migrate=False)
    try:
        started = time.perf_counter()
        for body in bodies:
            ratings.record_rating(
                db,
                message_id=body["message_id"],
                voter_ref="bench-direct",
                rating=body["rating"],
                reason=body.get("reason"),
            )
        return len(bodies) / (time.perf_counter() - started)
    finally:
        db.close()


def ratings_workload(ctx: Context, http_bodies: list[dict], direct_bodies: list[dict], db_path: Path) -> dict:
    """POST /api/feedback as fast as the gateway takes it; then count what was stored."""
    plan = ctx.plan
    floor = ctx.load(
        closed_spec(ctx.gateway_port, "/healthz", [""], plan.ratings_concurrency, len(http_bodies), method="GET")
    )
    spec = closed_spec(ctx.gateway_port, "/api/feedback", http_bodies, plan.ratings_concurrency, len(http_bodies))
    spec["warmup"] = 0  # every body is a distinct answer, each must be stored exactly once
    rated = ctx.load(spec)
    stored = count_ratings(db_path, "bench-http")
    direct = direct_rating_rate(db_path, direct_bodies)
    result = summarize_closed(rated, len(http_bodies))
    result["stored"] = stored
    result["lost"] = len(http_bodies) - stored
    result["server_errors"] = sum(v for k, v in rated.result["statuses"].items() if k.startswith("5"))
    return {"healthz": summarize_closed(floor, len(http_bodies)), "feedback": result, "direct_per_s": direct}


# --- main --------------------------------------------------------------------


def run(
    plan: Plan,
    mode: str,
    workdir: Path,
    *,
    only: list[str],
    hold_db: bool = False,
    workers: int = 2,
    with_peers: bool = True,
    baseline_src: Path | None = None,
) -> dict:
    """Start the upstream and the gateway, run the three workloads, stop everything.

    ``hold_db`` keeps one extra connection to the database open in this process
    for the whole run (see ``--hold-db``). ``with_peers`` starts the other gateways
    (:mod:`bench.peers`) for the ``peers`` workload; without it that workload
    compares tuneloop with the upstream alone. ``baseline_src`` is another tuneloop
    source tree (say main's, from ``git archive``) run as a second gateway beside
    this one in the ``peers`` workload: before/after in the same run.
    """
    nofile = raise_fd_limit()  # inherited by the upstream, gunicorn and the load generators
    started = time.monotonic()
    upstream = Upstream()
    try:
        gw_dir = workdir / "gateway"
        gw_dir.mkdir()
        db_path = gw_dir / "gw-var" / "tuneloop.db"
        http_bodies = seed_answers(db_path, plan.ratings, "bench-http")
        direct_bodies = seed_answers(db_path, plan.direct_ratings, "bench-direct")
        held = open_db(db_path, migrate=False) if hold_db else None
        if held is not None:
            held.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()  # takes the WAL-mode shared lock
        extra = {
            # Production defaults where the test helper tightens them for speed.
            "model": {"retries": 2, "first_token_timeout_s": 30.0, "name": "bench-model"},
            # Every bench connection comes from 127.0.0.1: the per-address cap on connections still sending
            # their request (a defence against one slow client, server/gevent_worker.py) would answer 429 to
            # the bench's own 2,000 streams whenever the busy machine is slow to read them.
            "gateway": {"workers": workers, "max_waiting_connections_per_client": 100_000},
            "limits": {"enabled": False},
        }
        gateway = start_gunicorn_gateway(gw_dir, upstream.base_url, extra=extra, timeout_s=60)
        peers: list[Peer] = []
        skipped = ["other gateways not started (--quick without --peers, or --no-peers)"]
        baseline = None
        try:
            if "peers" in only and baseline_src is not None:
                baseline = start_baseline(baseline_src, workdir, upstream.base_url, extra)
            if "peers" in only and with_peers:
                peers, skipped = start_peers(upstream.base_url, workdir, "bench-model")
            port = int(gateway.url.rsplit(":", 1)[1])
            ctx = Context(plan, gateway, port, upstream, workdir, baseline)
            figures = {
                "mode": mode + (", --hold-db" if hold_db else ""),
                "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                "cpus": os.cpu_count(),
                "loadavg": os.getloadavg(),
                "workers": workers,
                "python": platform.python_version(),
                "nofile": nofile,
                "plan": plan.__dict__,
            }
            timings = figures["timings_s"] = {"setup": time.monotonic() - started}
            workloads = {
                "latency": lambda: latency(ctx),
                "streams": lambda: streams(ctx),
                "ratings": lambda: ratings_workload(ctx, http_bodies, direct_bodies, db_path),
                "peers": lambda: beside_peers(ctx, peers, skipped),
            }
            for name, workload in workloads.items():
                if name in only:
                    began = time.monotonic()
                    figures[name] = workload()
                    timings[name] = time.monotonic() - began
        except BaseException:
            print(gateway.log()[-3000:], file=sys.stderr)
            raise
        finally:
            for peer in peers:
                peer.stop()
            if baseline is not None:
                stop_gateway(baseline)
            stop_gateway(gateway)
            if held is not None:
                held.close()
    finally:
        upstream.stop()
    return figures


def start_baseline(src: Path, workdir: Path, upstream_url: str, extra: dict) -> RunningGateway:
    """``tuneloop serve`` from the source tree ``src`` (its modules first on PYTHONPATH), own data folder."""
    base_dir = workdir / "baseline"
    base_dir.mkdir()
    previous = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(src.resolve()) + (os.pathsep + previous if previous else "")
    try:
        return start_gunicorn_gateway(base_dir, upstream_url, extra=extra, timeout_s=60)
    finally:
        if previous is None:
            os.environ.pop("PYTHONPATH")
        else:
            os.environ["PYTHONPATH"] = previous


def main(argv: list[str] | None = None) -> int:
    """Command line; returns the exit status."""
    parser = argparse.ArgumentParser(description="Benchmark the gateway against a local instant upstream.")
    parser.add_argument("--quick", action="store_true", help="small counts, for a smoke run (< 30 s)")
    parser.add_argument(
        "--streams", type=int, action="append", help=f"concurrent SSE streams, repeatable (default: {FULL.streams})"
    )
    parser.add_argument("--stream-tokens", type=int, help=f"tokens per stream (default: {FULL.stream_tokens})")
    parser.add_argument(
        "--starts-per-s",
        type=float,
        help="offered stream starts per second (default: N streams over one stream's length)",
    )
    parser.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    parser.add_argument(
        "--hold-db",
        action="store_true",
        help="hold one idle connection to the gateway's database open from the bench process (shows what the "
        "WAL checkpoint that SQLite runs whenever the last connection closes costs the gateway)",
    )
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers (gateway.workers; default 2)")
    parser.add_argument("--only", action="append", choices=list(SECTIONS), help="run only this workload (repeatable)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (gateway log, database)")
    peers = parser.add_mutually_exclusive_group()
    peers.add_argument("--peers", action="store_true", help="run the other gateways with --quick too")
    peers.add_argument("--no-peers", action="store_true", help="compare tuneloop with the upstream alone")
    parser.add_argument(
        "--baseline",
        type=Path,
        metavar="SRC",
        help="also run tuneloop from this source tree (e.g. `git archive main | tar -x -C SRC`) in the peers "
        "workload: before and after in the same run",
    )
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    changes = (
        ("streams", tuple(args.streams or ())),
        ("stream_tokens", args.stream_tokens),
        ("stream_starts_per_s", args.starts_per_s),
    )
    for field_name, value in changes:
        if value:
            plan = dataclasses.replace(plan, **{field_name: value})
    workdir = Path(tempfile.mkdtemp(prefix="tuneloop-bench-"))
    try:
        mode = "quick" if args.quick else "full"
        figures = run(
            plan,
            mode,
            workdir,
            only=args.only or list(SECTIONS),
            hold_db=args.hold_db,
            workers=args.workers,
            with_peers=not args.no_peers and (args.peers or not args.quick),
            baseline_src=args.baseline,
        )
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"kept {workdir}", file=sys.stderr)
    text, ok = report(figures)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1, default=str))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
