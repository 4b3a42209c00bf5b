"""Prometheus metrics of the built-in model server (``GET /metrics``): adapter loads, failures, pauses, batches.

The server is one process, so each :class:`ServerMetrics` keeps its own registry
(tests run several engines in one process; a global registry would refuse the
second).
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_PAUSE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class ServerMetrics:
    """The counters the engine updates; :meth:`render` is the ``/metrics`` body."""

    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.adapter_loads = Counter(
            "tuneloop_model_server_adapter_loads",
            "POST /v1/load_lora_adapter calls by outcome: loaded, or refused (the adapter failed its checks).",
            ["result"],
            registry=r,
        )
        self.switch_failures = Counter(
            "tuneloop_model_server_adapter_switch_failures",
            "Requests failed because switching the model to their adapter (or back to the base) raised.",
            ["model"],
            registry=r,
        )
        self.reloads = Counter(
            "tuneloop_model_server_model_reloads",
            "Models reloaded from disk because they could no longer be trusted, by outcome (ok, failed).",
            ["model", "result"],
            registry=r,
        )
        self.adapters_dropped = Counter(
            "tuneloop_model_server_adapters_dropped",
            "Loaded adapters unloaded because they failed while serving (each stays listed under /health).",
            ["model"],
            registry=r,
        )
        self.pause_seconds = Histogram(
            "tuneloop_model_server_pause_seconds",
            "Time a model's worker spent on adapter work (answers wait meanwhile), by reason.",
            ["reason"],
            buckets=_PAUSE_BUCKETS,
            registry=r,
        )
        self.check_seconds = Histogram(
            "tuneloop_model_server_adapter_check_seconds",
            "Time to check an adapter in a scratch copy of the base model (answers do not wait).",
            buckets=_PAUSE_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "tuneloop_model_server_batch_size",
            "Answers decoded together in one batch (model_server.max_batch at most).",
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.failed_adapters = Gauge(
            "tuneloop_model_server_failed_adapters",
            "Adapters that failed while serving and have not been loaded again.",
            registry=r,
        )
        self.degraded = Gauge(
            "tuneloop_model_server_degraded",
            "1 while an adapter has failed or a model could not be reloaded, else 0.",
            registry=r,
        )

    def render(self) -> tuple[bytes, str]:
        """(body, content type) for ``GET /metrics``."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
