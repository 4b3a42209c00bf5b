"""The loop's numbers on ``/metrics``, read from the database (server/ never imports trainer/).

A prometheus_client custom collector: satisfaction rate of the last 7 days,
pending review items, the live model version (an info-style gauge with its
name), and the newest pipeline run's step and state. Each scrape would cost a
few queries per gateway; the values are cached for ``CACHE_S`` seconds.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily

from feedback.sql import flag

CACHE_S = 10.0
PIPELINE_STATES = ("pending", "running", "succeeded", "failed", "skipped")


class LoopCollector:
    """Collects loop gauges from the database that ``connect()`` opens."""

    def __init__(self, connect):
        self._connect = connect
        self._lock = threading.Lock()
        self._cached: tuple[float, list] | None = None

    def collect(self):
        with self._lock:
            if self._cached is None or time.monotonic() - self._cached[0] > CACHE_S:
                self._cached = (time.monotonic(), self._read())
            return list(self._cached[1])

    def _read(self) -> list:
        db = self._connect()
        try:
            since = (datetime.now(timezone.utc) - timedelta(days=7)).strftime("%Y-%m-%dT%H:%M:%S")
            up, total = db.execute(
                f"SELECT COALESCE(SUM({flag('rating > 0')}), 0), COUNT(*) FROM feedback WHERE created_at >= ?", [since]
            ).fetchone()
            (pending,) = db.execute("SELECT COUNT(*) FROM review_items WHERE status = 'pending'").fetchone()
            live = db.execute("SELECT id, name FROM model_versions WHERE status = 'live'").fetchone()
            last = (
                db.execute(
                    "SELECT kind, step, state FROM pipeline_runs ORDER BY started_at DESC, rowid DESC LIMIT 1"
                ).fetchone()
                if "pipeline_runs" in db.table_names()
                else None
            )
        finally:
            db.close()
        satisfaction = GaugeMetricFamily(
            "tuneloop_satisfaction_ratio", "Share of thumbs-up among ratings of the last 7 days (NaN: no ratings)."
        )
        satisfaction.add_metric([], up / total if total else float("nan"))
        ratings = GaugeMetricFamily("tuneloop_ratings_7d", "Ratings received in the last 7 days.")
        ratings.add_metric([], total)
        reviews = GaugeMetricFamily("tuneloop_review_pending", "Review items waiting for a reviewer.")
        reviews.add_metric([], pending)
        model = GaugeMetricFamily(
            "tuneloop_live_model_info", "The live model version (always 1).", labels=["id", "name"]
        )
        if live:
            model.add_metric([live[0], live[1]], 1)
        pipeline = GaugeMetricFamily(
            "tuneloop_pipeline_last_step",
            "The newest pipeline run: 1 for its current state, 0 for the others.",
            labels=["kind", "step", "state"],
        )
        if last:
            for state in PIPELINE_STATES:
                pipeline.add_metric([last[0], last[1] or "", state], 1 if state == last[2] else 0)
        return [satisfaction, ratings, reviews, model, pipeline]


_REGISTRIES: dict[str, CollectorRegistry] = {}


def loop_registry(key: str, connect) -> CollectorRegistry:
    """A registry holding one :class:`LoopCollector` per database (``key``: its path), made once."""
    if key not in _REGISTRIES:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(LoopCollector(connect))
        _REGISTRIES[key] = registry
    return _REGISTRIES[key]
