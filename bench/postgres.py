"""PostgreSQL vs SQLite on the gateway bench, and ratings as gateway processes are added (issue 18, "Measure").

    .venv/bin/python bench/postgres.py            # full run (about 6 minutes on 2 cores)
    .venv/bin/python bench/postgres.py --quick    # smoke run (small counts, one round)

The harness is :mod:`bench.gateway`'s: ``tuneloop serve`` (gunicorn, gevent workers) on the instant bench
upstream, a fresh load-generator process per measurement, CPU per request from ``psutil``. The PostgreSQL
server is the tests' throw-away one (:func:`tests.plugins.postgres.start_server`: Debian's binaries, a Unix
socket, ``fsync=off``, so a commit costs no disk flush on either engine: SQLite runs ``synchronous=NORMAL``
in WAL mode, which does not flush on commit either).

1. **engines**: one gateway (2 workers) on a SQLite file and one on a PostgreSQL database, both running, measured
   in turn ``--rounds`` times so drift falls on both alike: chat added latency (``POST /api/chat`` p50/p99 minus
   the upstream's own, measured in the same round, at 1 and 64 clients) and ratings/s (``POST /api/feedback`` on
   distinct pre-recorded answers, 32 clients; every acknowledged rating counted in the store afterwards).
2. **scaling**: ratings/s with 1, 2 and 4 gateway processes (gunicorn workers: each is its own process with its
   own connection pool, as a gateway on another host would be) on one PostgreSQL database, and on one SQLite file
   for comparison; CPU ms per rating in the gateway processes and in the PostgreSQL server's processes. On 2 cores
   the absolute rates stop growing at 2 processes; the CPU per rating says what another host would add.

Exit status 0 when every request was answered and no rating was lost; 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):
    sys.path.insert(0, str(ROOT))

from bench import raise_fd_limit  # noqa: E402
from bench.gateway import (  # noqa: E402
    CHAT_MESSAGE,
    Upstream,
    closed_spec,
    count_ratings,
    cpu_seconds,
    run_load,
    seed_answers,
    summarize_closed,
)
from bench.report import table  # noqa: E402
from tests.plugins.gateway import RunningGateway, start_gunicorn_gateway, stop_gateway  # noqa: E402
from tests.plugins.postgres import PostgresServer, start_server  # noqa: E402

ENGINES = ("sqlite", "postgresql")


@dataclass(frozen=True)
class Plan:
    rounds: int
    latency_counts: dict[int, int]  # concurrent clients → measured chats
    ratings: int  # ratings per measurement
    ratings_concurrency: int
    scale_workers: tuple[int, ...]


FULL = Plan(rounds=2, latency_counts={1: 300, 64: 1000}, ratings=2000, ratings_concurrency=32, scale_workers=(1, 2, 4))
QUICK = Plan(rounds=1, latency_counts={1: 30, 64: 128}, ratings=200, ratings_concurrency=16, scale_workers=(1, 2))


class Store:
    """One engine's store: where it is (a SQLite file or a database URL) and the settings that point at it."""

    def __init__(self, engine: str, workdir: Path, server: PostgresServer, name: str):
        self.engine = engine
        self.dir = workdir / f"{engine}-{name}"
        self.dir.mkdir()
        if engine == "postgresql":
            server.admin(f'CREATE DATABASE "{name}"')
            self.target: str | Path = server.url(name)
            self.database = {"url": self.target}
        else:
            self.target = self.dir / "gw-var" / "tuneloop.db"
            self.database = {}

    def seed(self, count: int, source: str) -> list[dict]:
        return seed_answers(self.target, count, source)

    def start(self, upstream: Upstream, workers: int) -> RunningGateway:
        extra = {
            "model": {"retries": 2, "first_token_timeout_s": 30.0, "name": "bench-model"},
            "gateway": {"workers": workers, "max_waiting_connections_per_client": 100_000},
            "limits": {"enabled": False},
            "database": self.database,
        }
        # Started again on the same folder, a gateway finds the same SQLite file (gw-var/tuneloop.db) or database.
        return start_gunicorn_gateway(self.dir, upstream.base_url, extra=extra, timeout_s=90)


@contextlib.contextmanager
def throwaway_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server for one bench run (the tests' own), stopped and deleted afterwards."""
    # Not under the bench's folder: the server runs as the postgres user, which cannot enter a private one.
    root = Path(tempfile.mkdtemp(prefix="tuneloop-bench-pg-"))
    try:
        server = start_server(root)
        try:
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def postmaster_pid(server: PostgresServer) -> int:
    """The PostgreSQL server's main process (its backends are its children)."""
    return int((server.data / "postmaster.pid").read_text().split()[0])


def measure(port: int, gw: RunningGateway, upstream: Upstream, workdir: Path, spec: dict, pg_pid: int | None) -> dict:
    """One load run; its summary with the PostgreSQL server's CPU per request added (0 on SQLite)."""
    before = cpu_seconds(pg_pid)
    m = run_load(spec, gw.process.pid, upstream.process.pid, workdir)
    summary = summarize_closed(m, spec["count"])
    summary["store_cpu_ms"] = (cpu_seconds(pg_pid) - before) * 1000 / max(1, summary["requests"])
    return summary


def ratings_spec(port: int, bodies: list[dict], concurrency: int) -> dict:
    spec = closed_spec(port, "/api/feedback", bodies, concurrency, len(bodies))
    spec["warmup"] = 0  # every body is a distinct answer, each must be stored exactly once
    return spec


def engines(plan: Plan, upstream: Upstream, stores: dict[str, Store], pg_pid: int, workdir: Path) -> list[dict]:
    """Workload 1: both engines' gateways up at once, measured in turn each round."""
    bodies = {e: [s.seed(plan.ratings, f"round-{r}") for r in range(plan.rounds)] for e, s in stores.items()}
    gateways = {e: s.start(upstream, 2) for e, s in stores.items()}
    rows = []
    try:
        for r in range(plan.rounds):
            for clients, count in plan.latency_counts.items():
                direct = {"model": "bench-model", "messages": [{"role": "user", "content": CHAT_MESSAGE}]}
                base = run_load(
                    closed_spec(upstream.port, "/v1/chat/completions", [direct], clients, count),
                    None,
                    upstream.process.pid,
                    workdir,
                )
                row = {"round": r, "what": "chat", "clients": clients, "upstream": summarize_closed(base, count)}
                for engine, gw in gateways.items():
                    port = int(gw.url.rsplit(":", 1)[1])
                    spec = closed_spec(port, "/api/chat", [{"message": CHAT_MESSAGE}], clients, count)
                    row[engine] = measure(port, gw, upstream, workdir, spec, pg_pid if engine == "postgresql" else None)
                rows.append(row)
            row = {"round": r, "what": "ratings", "clients": plan.ratings_concurrency}
            for engine, gw in gateways.items():
                port = int(gw.url.rsplit(":", 1)[1])
                spec = ratings_spec(port, bodies[engine][r], plan.ratings_concurrency)
                row[engine] = measure(port, gw, upstream, workdir, spec, pg_pid if engine == "postgresql" else None)
                row[engine]["lost"] = row[engine]["statuses"].get("200", 0) - count_ratings(
                    stores[engine].target, f"round-{r}"
                )
            rows.append(row)
    finally:
        for gw in gateways.values():
            stop_gateway(gw)
    return rows


def scaling(plan: Plan, upstream: Upstream, stores: dict[str, Store], pg_pid: int, workdir: Path) -> list[dict]:
    """Workload 2: ratings/s and CPU per rating with 1, 2, 4 gateway processes on each engine."""
    rows = []
    for workers in plan.scale_workers:
        for engine, store in stores.items():
            source = f"scale-{workers}"
            bodies = store.seed(plan.ratings, source)
            gw = store.start(upstream, workers)
            try:
                port = int(gw.url.rsplit(":", 1)[1])
                spec = ratings_spec(port, bodies, plan.ratings_concurrency)
                summary = measure(port, gw, upstream, workdir, spec, pg_pid if engine == "postgresql" else None)
            finally:
                stop_gateway(gw)
            summary["lost"] = summary["statuses"].get("200", 0) - count_ratings(store.target, source)
            rows.append({"workers": workers, "engine": engine, **summary})
    return rows


def _f(value: float, digits: int = 2) -> str:
    return "n/a" if value != value else f"{value:,.{digits}f}"


def report(figures: dict) -> tuple[str, bool]:
    """The printed tables (ratios first), and whether every request was answered and no rating lost."""
    ok = True
    out = [
        f"PostgreSQL vs SQLite ({figures['mode']}) — {figures['date']}, {figures['cpus']} CPUs, "
        f"load average at start {figures['loadavg'][0]:.1f}, PostgreSQL {figures['postgres']}",
        "",
        "1. Same gateway, same run: PostgreSQL / SQLite (median over rounds; added = gateway minus upstream)",
    ]
    ratio_rows, detail = [], []
    groups: dict[tuple, list[dict]] = {}
    for row in figures["engines"]:
        groups.setdefault((row["what"], row["clients"]), []).append(row)
    for (what, clients), rows in groups.items():
        if what == "chat":
            added = {
                e: {q: statistics.median(r[e][q] - r["upstream"][q] for r in rows) for q in ("p50_ms", "p99_ms")}
                for e in ENGINES
            }
            for q in ("p50_ms", "p99_ms"):
                s, p = added["sqlite"][q], added["postgresql"][q]
                ratio_rows.append([f"chat added {q[:3]}, {clients} clients", _f(s), _f(p), f"x{_f(p / s)}"])
        else:
            rate = {e: statistics.median(r[e]["per_s"] for r in rows) for e in ENGINES}
            ratio_rows.append(
                [f"ratings/s, {clients} clients", _f(rate["sqlite"], 0), _f(rate["postgresql"], 0),
                 f"x{_f(rate['postgresql'] / rate['sqlite'])}"]
            )  # fmt: skip
        for r in rows:
            for e in ENGINES:
                s = r[e]
                ok &= s["failed"] == 0 and s.get("lost", 0) == 0
                detail.append(
                    [r["round"], what, clients, e, s["requests"], _f(s["per_s"], 0), _f(s["p50_ms"]), _f(s["p99_ms"]),
                     _f(s["gateway_cpu_ms"]), _f(s["store_cpu_ms"]), _f(s["other_cores"], 1), s["failed"],
                     s.get("lost", "")]
                )  # fmt: skip
            if what == "chat":
                u = r["upstream"]
                detail.append(
                    [r["round"], what, clients, "upstream", u["requests"], _f(u["per_s"], 0), _f(u["p50_ms"]),
                     _f(u["p99_ms"]), "", "", _f(u["other_cores"], 1), u["failed"], ""]
                )  # fmt: skip
    out += [table(ratio_rows, ["what", "SQLite", "PostgreSQL", "PG / SQLite"]), ""]
    out += [
        table(
            detail,
            [
                "round",
                "what",
                "clients",
                "target",
                "requests",
                "per s",
                "p50 ms",
                "p99 ms",
                "gw cpu ms",
                "pg cpu ms",
                "others' cores",
                "failed",
                "lost",
            ],
        )  # fmt: skip
    ]
    scale = figures["scaling"]
    out += ["", "2. Ratings/s by gateway processes (gunicorn workers) on one store; CPU ms per rating"]
    rows = []
    first = {e: next(r for r in scale if r["engine"] == e) for e in ENGINES}
    for r in scale:
        ok &= r["failed"] == 0 and r["lost"] == 0
        rows.append(
            [r["workers"], r["engine"], _f(r["per_s"], 0), f"x{_f(r['per_s'] / first[r['engine']]['per_s'])}",
             _f(r["p99_ms"]), _f(r["gateway_cpu_ms"]), _f(r["store_cpu_ms"]),
             _f(r["gateway_cpu_ms"] + r["store_cpu_ms"]), _f(r["other_cores"], 1), r["failed"], r["lost"]]
        )  # fmt: skip
    out += [
        table(
            rows,
            [
                "processes",
                "engine",
                "ratings/s",
                "vs 1 process",
                "p99 ms",
                "gw cpu ms",
                "pg cpu ms",
                "total cpu ms",
                "others' cores",
                "failed",
                "lost",
            ],
        )  # fmt: skip
    ]
    out += [
        "",
        "others' cores: cores kept busy by processes outside the gateway, upstream and client (PostgreSQL's included).",
        "Checks: " + ("every request answered, no rating lost" if ok else "FAILED (see failed/lost above)"),
    ]
    return "\n".join(out), ok


def run(plan: Plan, mode: str, workdir: Path) -> dict:
    """Start PostgreSQL and the upstream, run both workloads, stop everything."""
    nofile = raise_fd_limit()
    with throwaway_postgres() as server:
        upstream = Upstream()
        try:
            return _run(plan, mode, workdir, server, upstream, nofile)
        finally:
            upstream.stop()


def _run(plan: Plan, mode: str, workdir: Path, server: PostgresServer, upstream: Upstream, nofile: int) -> dict:
    pg_pid = postmaster_pid(server)
    figures = {
        "mode": mode,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": os.cpu_count(),
        "loadavg": os.getloadavg(),
        "nofile": nofile,
        "postgres": server.bin.parent.name,
        "plan": plan.__dict__,
    }
    stores = {e: Store(e, workdir, server, "engines") for e in ENGINES}
    figures["engines"] = engines(plan, upstream, stores, pg_pid, workdir)
    stores = {e: Store(e, workdir, server, "scaling") for e in ENGINES}
    figures["scaling"] = scaling(plan, upstream, stores, pg_pid, workdir)
    figures["loadavg_end"] = os.getloadavg()
    return figures


def main(argv: list[str] | None = None) -> int:
    """Command line; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts, one round, 1 and 2 processes")
    parser.add_argument("--rounds", type=int, help=f"rounds of workload 1 (default {FULL.rounds})")
    parser.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.rounds:
        plan = Plan(**{**plan.__dict__, "rounds": args.rounds})
    workdir = Path(tempfile.mkdtemp(prefix="tuneloop-bench-"))
    started = time.monotonic()
    try:
        figures = run(plan, "quick" if args.quick else "full", workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    figures["seconds"] = round(time.monotonic() - started, 1)
    text, ok = report(figures)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1, default=str))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
