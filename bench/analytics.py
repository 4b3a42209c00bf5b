"""Benchmark: ranking the worst-answered questions and building the weekly report on big stores.

    .venv/bin/python bench/analytics.py                      # quick: 100k turns
    .venv/bin/python bench/analytics.py --sizes 100k,1M,5M   # what docs/benchmarks.md records

For each size it builds a synthetic store (cached in ``--dir`` and reused when
it exists), then times, best of ``--repeat`` runs on a warm page cache:

- ``rank all``: rank the live version over every answer it wrote (75 % of turns);
- ``rank week``: rank the live version over the last complete week;
- ``report``: build the weekly report of the last complete week (12-week trend
  included), without writing files.

With ``--postgresql`` each store is also copied into a throw-away PostgreSQL
server (the tests' :func:`tests.plugins.postgres.start_server`) with
``tuneloop db copy`` (which compares every table's rows and checksum after the
copy), ``ANALYZE``d as autovacuum would, and the same three steps are timed there
in the same run, after SQLite's; both engines must rank the same questions.

The store is built with ``INSERT … SELECT`` over a recursive CTE — no Python per
row — through the real migrations, so it has exactly the production schema and
indexes. Its traffic, over 12 weeks: two model versions (the newer one live for
the last 75 %), 80 % of questions drawn from the bundled FAQ and paraphrases in
many surface variants, 20 % a long tail of near-unique questions ("where is my
order 48213"), 30 % of answers rated, thumbs-down far likelier on a few
questions the model answers badly, comments and corrections on some down-votes.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import random
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.postgres import throwaway_postgres  # noqa: E402
from config.settings import load_settings  # noqa: E402
from feedback.db import open_db  # noqa: E402
from feedback.ranking import RankingOptions, rank_worst  # noqa: E402
from feedback.report.build import build_report  # noqa: E402
from feedback.report.render import render_html, render_json, render_markdown  # noqa: E402
from feedback.report.weeks import iso_week_window, last_complete_week  # noqa: E402
from feedback.text import question_key  # noqa: E402

WEEKS = 12
RATED_PERCENT = 30
# A store "ends" here, so report weeks are the same on every run.
END = datetime(2026, 11, 23, 0, 0, tzinfo=timezone.utc)
TAIL_TEMPLATES = [
    "where is my order {}",
    "order {} has not arrived yet",
    "can i change the address of order {}",
    "주문번호 {} 배송 언제 와요",
    "주문 {} 취소해 주세요",
]


def parse_size(text: str) -> int:
    """``100k`` → 100000, ``1M`` → 1000000, ``5m`` → 5000000."""
    text = text.strip().lower()
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1:], 1)
    return int(float(text.rstrip("km")) * scale)


def _pool(rng: random.Random) -> list[tuple[str, str, str, float]]:
    """(question, key, answer, chance of a thumbs-down) for the head of the traffic."""
    rows = []
    for name in ("faq.jsonl", "paraphrases.jsonl"):
        for line in (ROOT / "data" / name).read_text().splitlines():
            messages = json.loads(line)["messages"]
            rows.append((messages[0]["content"], messages[1]["content"]))
    pool = []
    for question, answer in rows:
        bad = rng.random() < 0.08
        p_down = rng.uniform(0.45, 0.8) if bad else rng.uniform(0.03, 0.15)
        variants = {
            question,
            question.lower(),
            question.rstrip("?.!"),
            question.upper(),
            question + "?",
            "  " + question.replace(" ", "  "),
            question.rstrip("?.!") + "!!",
        }
        for variant in sorted(variants):
            pool.append((variant, question_key(variant), answer, p_down))
    return pool


def build_store(path: Path, turns: int, *, seed: int = 7) -> None:
    """Create the synthetic store at ``path`` with ``turns`` question/answer pairs."""
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    db = open_db(path)
    conn = db.conn
    conn.execute("PRAGMA cache_size = -1000000")  # 1 GB: the build is index-append heavy
    start = END - timedelta(weeks=WEEKS)
    step = WEEKS * 7 * 86400 / turns
    pool = _pool(rng)
    conn.execute("CREATE TEMP TABLE pool (pid INTEGER PRIMARY KEY, question TEXT, key TEXT, answer TEXT, p_down REAL)")
    conn.executemany("INSERT INTO temp.pool VALUES (?, ?, ?, ?, ?)", [(i, *row) for i, row in enumerate(pool)])
    conn.execute("CREATE TEMP TABLE tail (tid INTEGER PRIMARY KEY, template TEXT)")
    conn.executemany(
        "INSERT INTO temp.tail VALUES (?, ?)", list(enumerate(t.replace("{}", "%d") for t in TAIL_TEMPLATES))
    )
    with conn:
        conn.execute(
            """INSERT INTO model_versions
                   (id, name, provider, base_model, status, traffic_weight, created_at, promoted_at)
               VALUES ('mv_old', 'starter', 'builtin', 'starter', 'retired', 0, ?, ?),
                      ('mv_live', 'starter-ft-1', 'builtin', 'starter', 'live', 1, ?, ?)""",
            [_iso(start), _iso(start), _iso(start + (END - start) / 4), _iso(start + (END - start) / 4)],
        )
    # Random per-turn draws are made once into a temp table; ids are random like
    # production's (new_id), so index look-ups by id hit the disk pattern they really do.
    sql = """
        WITH RECURSIVE t(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM t WHERE n < :turns - 1)
        SELECT n, n / 2 AS c, n % 2 AS second, :start + n * :step AS ts,
               'msg_' || lower(hex(randomblob(9))) AS uid, 'msg_' || lower(hex(randomblob(9))) AS aid,
               CASE WHEN abs(random()) % 100 < 80 THEN abs(random()) % :pool END AS pid,
               abs(random()) % (SELECT COUNT(*) FROM temp.tail) AS tid,
               abs(random()) % 100000 AS order_no,
               abs(random()) % 1000 < 5 AS failed,
               abs(random()) % 100 < :rated AS rated,
               abs(random()) % 1000 AS draw,
               CASE WHEN n * 4 < :turns THEN 'mv_old' ELSE 'mv_live' END AS version
        FROM t"""
    params = {"turns": turns, "start": start.timestamp(), "step": step, "pool": len(pool), "rated": RATED_PERCENT}
    with conn:
        conn.execute(f"CREATE TEMP TABLE turns AS {sql}", params)
        conn.execute(
            """INSERT INTO conversations (id, created_at, source)
               SELECT printf('conv_%012d', c), strftime('%Y-%m-%dT%H:%M:%fZ', ts, 'unixepoch'), 'bench'
               FROM temp.turns WHERE second = 0"""
        )
        conn.execute(
            """INSERT INTO messages (id, conversation_id, seq, role, content, created_at)
               SELECT uid, printf('conv_%012d', c), second * 2 + 1, 'user',
                      COALESCE(p.question, printf(tl.template, order_no)),
                      strftime('%Y-%m-%dT%H:%M:%fZ', ts, 'unixepoch')
               FROM temp.turns LEFT JOIN temp.pool p USING (pid) JOIN temp.tail tl USING (tid)"""
        )
        conn.execute(
            """INSERT INTO messages (id, conversation_id, seq, role, content, model_version_id, created_at,
                    latency_ms, tokens_out, finish_reason, error, question_key)
               SELECT aid, printf('conv_%012d', c), second * 2 + 2, 'assistant',
                      CASE WHEN failed THEN '' ELSE COALESCE(p.answer, 'Please check My Page > Orders.') END,
                      version, strftime('%Y-%m-%dT%H:%M:%fZ', ts + 0.4, 'unixepoch'),
                      150 + abs(random()) % 600 + (abs(random()) % 100 = 0) * 2500, 40,
                      CASE WHEN failed THEN NULL ELSE 'stop' END,
                      CASE WHEN failed THEN 'upstream_timeout' END,
                      COALESCE(p.key, printf(tl.template, order_no))
               FROM temp.turns LEFT JOIN temp.pool p USING (pid) JOIN temp.tail tl USING (tid)"""
        )
        conn.execute(
            """INSERT INTO feedback
                   (id, message_id, voter_ref, rating, reason, comment, correction, created_at, updated_at)
               SELECT 'fb_' || lower(hex(randomblob(9))), aid, printf('voter_%d', c),
                      CASE WHEN draw < COALESCE(p.p_down, 0.2) * 1000 THEN -1 ELSE 1 END,
                      NULL, NULL, NULL,
                      strftime('%Y-%m-%dT%H:%M:%fZ', ts + 30, 'unixepoch'),
                      strftime('%Y-%m-%dT%H:%M:%fZ', ts + 30, 'unixepoch')
               FROM temp.turns LEFT JOIN temp.pool p USING (pid)
               WHERE rated AND NOT failed"""
        )
        conn.execute(
            """UPDATE feedback SET
                   reason = json_extract('["wrong","incomplete","unhelpful","outdated","other"]',
                                         '$[' || (abs(random()) % 5) || ']'),
                   comment = CASE WHEN abs(random()) % 4 = 0 THEN 'That is not what the site says.' END,
                   correction = CASE WHEN abs(random()) % 12 = 0 THEN 'Shipping is free from 30,000 won.' END
               WHERE rating = -1"""
        )
        conn.execute("DROP TABLE temp.turns")
    # No ANALYZE: production stores have no statistics either, so the plans timed here are theirs.
    db.close()


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _rank_into(rankings: dict, db, options, label: str, since: str, until: str) -> None:
    rankings[label] = rank_worst(db, model_version_id="mv_live", since=since, until=until, options=options)


def _best_of(repeat: int, fn) -> dict:
    """Wall and CPU seconds of the first run (cold Python caches) and the best of ``repeat`` runs."""
    walls, cpus = [], []
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return {"first_s": round(walls[0], 3), "best_s": round(min(walls), 3), "cpu_s": round(min(cpus), 3)}


def _report(db, settings, week: str) -> None:
    report = build_report(db, settings, week=week)
    render_html(report), render_markdown(report), render_json(report)


def copy_to_postgres(server, path: Path, name: str) -> tuple[str, float]:
    """``tuneloop db copy`` the SQLite store at ``path`` into a new database ``name``; its URL and the seconds taken."""
    server.admin(f'CREATE DATABASE "{name}"')
    url = server.url(name)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNELOOP_")}
    started = time.perf_counter()
    subprocess.run(
        [str(Path(sys.executable).with_name("tuneloop")), "db", "copy", str(path), url],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    seconds = time.perf_counter() - started
    db = open_db(url, migrate=False)
    try:
        # What autovacuum does to a table after this many inserts: statistics, and the visibility map that lets
        # the report's counts be index-only scans (without it every counted row is also read from the table).
        db.execute("VACUUM ANALYZE")
    finally:
        db.close()
    return url, seconds


def _timings(db, settings, repeat: int, week: str, since: str, until: str) -> tuple[dict, dict]:
    """Best-of-``repeat`` timings of the three steps on ``db``; and the rankings they produced."""
    first = db.execute("SELECT MIN(created_at) FROM messages").fetchone()[0]
    options = RankingOptions.from_settings(settings.report)
    rankings = {}
    # functools.partial binds this iteration's values now (a lambda would look them up when called).
    rank = functools.partial(_rank_into, rankings, db, options)
    steps = {
        "rank_all": _best_of(repeat, functools.partial(rank, "all", first, "9999")),
        "rank_week": _best_of(repeat, functools.partial(rank, "week", since, until)),
        "report": _best_of(repeat, functools.partial(_report, db, settings, week)),
    }
    return steps, rankings


def run(sizes: list[int], directory: Path, repeat: int, rebuild: bool, postgresql: bool = False) -> list[dict]:
    """Build (or reuse) a store per size and time ranking and the report on it (and on a PostgreSQL copy)."""
    settings = load_settings(env={}, overrides={"paths.data_dir": str(directory)})
    with throwaway_postgres() if postgresql else contextlib.nullcontext() as server:
        return [_run_size(turns, directory, repeat, rebuild, settings, server) for turns in sizes]


def _rankings_seen(rankings: dict) -> dict:
    return {
        label: {"distinct": r.distinct_questions, "rated": r.rated_questions, "groups": r.candidate_groups}
        for label, r in (("all", rankings["all"]), ("one_week", rankings["week"]))
    }


def _run_size(turns: int, directory: Path, repeat: int, rebuild: bool, settings, server) -> dict:
    """One size: build or reuse its store, time the three steps on it, and on its PostgreSQL copy with a server."""
    path = directory / f"analytics-{turns}.db"
    built = None
    if rebuild or not path.exists():
        started = time.perf_counter()
        build_store(path, turns)
        built = time.perf_counter() - started
    db = open_db(path)
    counts = {
        "messages": db.execute("SELECT COUNT(*) FROM messages").fetchone()[0],
        "feedback": db.execute("SELECT COUNT(*) FROM feedback").fetchone()[0],
    }
    week = last_complete_week(settings.report.timezone, END)
    since, until = iso_week_window(week, settings.report.timezone)
    try:
        steps, rankings = _timings(db, settings, repeat, week, since, until)
    finally:
        db.close()
    size_mb = sum(Path(str(path) + s).stat().st_size for s in ("", "-wal") if Path(str(path) + s).exists()) / 2**20
    row = {
        "turns": turns,
        **counts,
        "db_mb": round(size_mb),
        "build_s": round(built, 1) if built else None,
        **steps,
        "week": week,
        **_rankings_seen(rankings),
    }
    if server is not None:
        url, copy_s = copy_to_postgres(server, path, f"analytics_{turns}")
        pg = open_db(url, migrate=False)
        try:
            pg_steps, pg_rankings = _timings(pg, settings, repeat, week, since, until)
        finally:
            pg.close()
        # Both engines must have ranked the same questions, or the timings compare different work.
        assert _rankings_seen(pg_rankings) == _rankings_seen(rankings), (_rankings_seen(pg_rankings), row)
        row["postgresql"] = {"copy_s": round(copy_s, 1), **pg_steps}
        row["pg_over_sqlite"] = {k: round(pg_steps[k]["best_s"] / steps[k]["best_s"], 2) for k in steps}
    print(json.dumps(row), flush=True)
    return row


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100k", help="comma-separated turn counts, e.g. 100k,1M,5M")
    parser.add_argument("--dir", default=str(ROOT / "var" / "bench"), help="where the synthetic stores are kept")
    parser.add_argument("--repeat", type=int, default=3, help="time each step this many times, keep the best")
    parser.add_argument("--rebuild", action="store_true", help="rebuild stores even when they exist")
    parser.add_argument(
        "--postgresql", action="store_true", help="also copy each store into a throw-away PostgreSQL and time it there"
    )
    args = parser.parse_args(argv)
    run([parse_size(s) for s in args.sizes.split(",")], Path(args.dir), args.repeat, args.rebuild, args.postgresql)


if __name__ == "__main__":
    main()
