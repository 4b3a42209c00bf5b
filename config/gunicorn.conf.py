"""gunicorn settings for the gateway (``tuneloop serve`` passes this file with ``-c``).

gevent workers: each holds thousands of concurrent streams (measured while
designing: 2,000 concurrent 5-second streams on 2 cores; a sync worker holds one),
and none can be held by a client that sends its request slowly or opens too many
connections (``server/gevent_worker.py``).
The scheduler is never started here: inside every worker an APScheduler job ran
17 times in 6 s. Values come from the same settings as everything else.
"""

import os
import shutil
import tempfile

from config.settings import load_settings

_settings = load_settings()

bind = f"{_settings.gateway.host}:{_settings.gateway.port}"
workers = _settings.gateway.workers
# gunicorn's gevent worker plus bounds on slow clients: request head and body deadlines and a cap on
# connections per client address still sending a request (server/gevent_worker.py).
worker_class = "server.gevent_worker.GatewayWorker"
worker_connections = _settings.gateway.worker_connections
# Long streams are normal; the model's own timeouts bound them, not gunicorn's.
timeout = max(60, int(_settings.model.timeout_s) + 30)
graceful_timeout = 20
# Non-zero turns keep-alive on; how long a kept-alive connection may idle is gateway.request_header_timeout_s.
keepalive = 5
accesslog = "-"
# %(p)s is the worker's pid ("<1234>"): which worker served a request (tests/test_knowledge_e2e.py reads it).
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms %(p)s'
errorlog = "-"
proc_name = "tuneloop-gateway"


def on_starting(server):
    # Prometheus needs a shared folder to add up every worker's counters.
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="tuneloop-metrics-")
        server._tuneloop_metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"]


def post_worker_init(worker):
    # Warm the worker before it accepts traffic: imports, database connection,
    # model-router cache and the upstream connection pool are all set up by one
    # internal readiness probe, so the first user request pays none of that.
    client = worker.wsgi.test_client()
    response = client.get("/readyz")
    worker.log.info("worker %s warmed (readyz %s)", worker.pid, response.status_code)


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    folder = getattr(server, "_tuneloop_metrics_dir", None)
    if folder:
        shutil.rmtree(folder, ignore_errors=True)


# gunicorn 27's control socket defaults to one path per user; several gateways
# (or test runs) on one machine would fight over it, and nothing here uses it.
control_socket_disable = True
