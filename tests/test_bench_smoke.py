"""The benchmarks run end to end: `bench/gateway.py`, `bench/retrieval.py`, `bench/write_lock.py`,
`bench/knowledge.py` (its gateway sections), `bench/rate_limits.py` and `bench/postgres.py` with `--quick`, each in a
subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_quick(script: str, tmp_path: Path, timeout: int, *extra: str) -> tuple[str, dict]:
    """Run ``bench/<script> --quick [extra…] --json FILE``; assert it exited 0; return its output and figures."""
    figures_path = tmp_path / "figures.json"
    proc = subprocess.run(
        [sys.executable, f"bench/{script}", "--quick", *extra, "--json", str(figures_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout, json.loads(figures_path.read_text())


@pytest.mark.slow
def test_quick_benchmark_runs_and_prints_its_table(tmp_path):
    out, figures = run_quick("gateway.py", tmp_path, timeout=90)
    for heading in (
        "1. Added latency",
        "2. Concurrent SSE streams",
        "3. Ratings over HTTP",
        "Checks: all requests answered",
    ):
        assert heading in out
    assert "p50 ms" in out and "added" in out
    stream = figures["streams"][0]
    assert stream["gateway"]["ok"] == stream["n"] == 100
    assert stream["gateway"]["gap_p50_ms"] > 0
    latency = figures["latency"]
    assert latency["1"]["gateway"]["requests"] == 100 and latency["64"]["gateway"]["requests"] == 320
    rated = figures["ratings"]["feedback"]
    assert rated["stored"] == rated["requests"] == 300
    assert rated["server_errors"] == 0


def test_quick_retrieval_benchmark_prints_recall_threshold_and_latency(tmp_path):
    out, figures = run_quick("retrieval.py", tmp_path, timeout=120)
    for heading in ("1. Recall", "2. Threshold", "3. Latency", "rewordings test", "paraphrases", "upsert new"):
        assert heading in out
    default = next(v for k, v in figures["methods"].items() if k.startswith("default"))
    assert default["golden"]["all"]["at1"] == default["golden"]["all"]["n"] == 40
    assert default["rewordings test"]["all"]["n"] == 61
    assert figures["sizes"]["2000"]["search_p50_ms"] > 0


@pytest.mark.slow
def test_quick_knowledge_benchmark_times_corrections_and_retrieval(tmp_path):
    out, figures = run_quick("knowledge.py", tmp_path, 300, "--only", "freshness", "--only", "latency")
    for heading in ("Approval → corrected answer served", "Retrieval's added latency per chat", "added p50 ms"):
        assert heading in out
    samples = figures["freshness"]["samples"]
    assert len(samples) == 2 and all(s["first_s"] is not None for s in samples)
    assert figures["freshness"]["stale_after_1s"] == 0  # nobody asking a second after an approval got the old answer
    size = figures["latency"]["200"]
    assert size["entries"] == 200 and size["requests"] == 60 and size["on_p50_ms"] > 0 and size["off_p50_ms"] > 0


@pytest.mark.slow
def test_write_lock_benchmark_runs_and_prints_its_table(tmp_path):
    out, figures = run_quick("write_lock.py", tmp_path, timeout=120)
    assert "added inter-token p99 under the lock:" in out
    assert figures["alone"]["ok"] == figures["locked"]["ok"] == 40
    assert figures["turns_recorded"] == figures["turns_expected"] == 80
    assert len(figures["lock_held_s"]) == 2 and all(held >= 0.5 for held in figures["lock_held_s"])


@pytest.mark.slow
def test_rate_limit_benchmark_runs_and_prints_its_table(tmp_path):
    out, figures = run_quick("rate_limits.py", tmp_path, timeout=120)
    assert "| database |" in out and "Checks: every request answered 200" in out
    assert set(figures) == {"off", "memory", "database"}
    assert all(run["statuses"] == {"200": 300} for runs in figures.values() for run in runs)


@pytest.mark.slow
def test_postgres_benchmark_compares_the_engines_and_counts_processes(tmp_path):
    out, figures = run_quick("postgres.py", tmp_path, timeout=240)
    assert "PG / SQLite" in out and "Checks: every request answered, no rating lost" in out
    assert [(r["what"], r["clients"]) for r in figures["engines"]] == [("chat", 1), ("chat", 64), ("ratings", 16)]
    ratings = [row[e] for row in figures["engines"] if row["what"] == "ratings" for e in ("sqlite", "postgresql")]
    scaled = figures["scaling"]
    assert [(r["workers"], r["engine"]) for r in scaled] == [(w, e) for w in (1, 2) for e in ("sqlite", "postgresql")]
    assert all(r["statuses"] == {"200": 200} and r["lost"] == 0 for r in [*ratings, *scaled])
    assert all(r["store_cpu_ms"] > 0 for r in scaled if r["engine"] == "postgresql")  # the server's CPU is counted
