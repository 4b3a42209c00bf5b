"""Where a chat's gateway CPU goes: cProfile of the request path, in one process.

    .venv/bin/python bench/profile_gateway.py                 # 4 paths × 300 requests, top 25 functions each
    .venv/bin/python bench/profile_gateway.py --path v1-stream --requests 1000 --top 40

The app is the real one (``create_app``, a real SQLite file in a temporary folder,
the knowledge base as shipped) driven through its WSGI interface by Flask's test
client, against the bench upstream (:mod:`bench.upstream`, a real HTTP server in
its own process). What this leaves out is gunicorn's and gevent's share (reading
the request off the socket, writing the response); ``bench/gateway.py`` measures
the whole of it from the gateway process's CPU time. Printed per path: CPU ms
per request (``time.process_time``, steadier than wall time on a shared machine),
then the functions with the most cumulative and own time.
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", action="append", choices=list(PATHS), help="profile only this path (repeatable)")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    from server.app import create_app

    upstream = Upstream()
    try:
        with tempfile.TemporaryDirectory(prefix="tuneloop-profile-") as tmp:
            settings = gateway_settings(Path(tmp) / "var", upstream.base_url, **{"model.name": "bench-model"})
            client = create_app(settings=settings).test_client()
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
