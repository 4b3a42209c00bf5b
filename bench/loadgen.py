"""The benchmark's load generator: a lean asyncio HTTP/1.1 client in its own process.

It is the same client for the baseline (the upstream called directly) and for
the gateway, so its own cost cancels out of the ratios. It is hand-rolled on
asyncio streams, not httpx, because on a 2-core box every microsecond the client
spends is taken from the server it measures, and 2,000 SSE streams through httpx
cost more CPU than the gateway under test.

Two workloads, each described by a JSON spec (``python -m bench.loadgen SPEC.json``
prints the result as JSON on stdout):

- ``closed``: ``concurrency`` keep-alive connections (with ``headers``, if given,
  on every request), each sending its next request as soon as the last one answered, ``count`` requests in all (bodies
  cycled), after ``warmup`` unrecorded ones. Result: per-request latencies in
  ms, status counts, errors, wall time.
- ``streams``: ``n`` concurrent SSE requests, started evenly over ``ramp_s``.
  Result: per-stream outcome, the gaps between consecutive tokens in ms (all, and
  those of the steady state when every stream is mid-answer), time to the first
  token, the peak number of connections open at once and the peak number of
  streams between their first and last token at once.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

from bench import raise_fd_limit


class HttpError(Exception):
    """The server broke the HTTP exchange (closed early, malformed response)."""


class Connection:
    """One keep-alive HTTP/1.1 connection."""

    def __init__(self, host: str, port: int, headers: dict[str, str] | None = None):
        self.host, self.port = host, port
        self.extra_head = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def _ensure_open(self) -> None:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port, limit=1 << 20)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def send(self, method: str, path: str, body: bytes) -> tuple[int, dict[str, str]]:
        """Send a request and read the response head; the body is read with :meth:`body_chunks`."""
        await self._ensure_open()
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{self.extra_head}\r\n"
        )
        self.writer.write(head.encode() + body)
        try:
            raw = await self.reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            raise HttpError("connection closed before the response") from exc
        status_line, *lines = raw.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            if ":" in line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        return int(status_line.split(" ", 2)[1]), headers

    async def body_chunks(self, headers: dict[str, str]):
        """The response body as it arrives (chunked, sized, or until close)."""
        reader = self.reader
        if headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    while (await reader.readuntil(b"\r\n")) != b"\r\n":
                        pass  # trailers
                    break
                data = await reader.readexactly(size + 2)
                yield data[:-2]
        elif "content-length" in headers:
            length = int(headers["content-length"])
            if length:
                yield await reader.readexactly(length)
        else:
            while chunk := await reader.read(65536):
                yield chunk
            self.close()
            return
        if headers.get("connection", "").lower() == "close":
            self.close()

    async def request(self, method: str, path: str, body: bytes) -> tuple[int, bytes]:
        """A whole request: status and body."""
        status, headers = await self.send(method, path, body)
        data = b"".join([chunk async for chunk in self.body_chunks(headers)])
        return status, data


async def closed_loop(spec: dict) -> dict:
    """``concurrency`` clients, each sending its next request when the last one is answered."""
    bodies = [json.dumps(b).encode() if not isinstance(b, str) else b.encode() for b in spec["bodies"]]
    method, path = spec.get("method", "POST"), spec["path"]
    warmup, count = spec.get("warmup", 0), spec["count"]
    latencies: list[float] = []
    statuses: Counter = Counter()
    errors: Counter = Counter()
    next_index = 0

    async def client() -> None:
        nonlocal next_index
        conn = Connection(spec["host"], spec["port"], spec.get("headers"))
        while next_index < warmup + count:
            index = next_index
            next_index += 1
            body = bodies[index % len(bodies)]
            started = time.perf_counter()
            try:
                status, _ = await conn.request(method, path, body)
            except (OSError, HttpError, asyncio.IncompleteReadError) as exc:
                conn.close()
                if index >= warmup:
                    errors[type(exc).__name__] += 1
                continue
            if index >= warmup:
                latencies.append((time.perf_counter() - started) * 1000)
                statuses[str(status)] += 1
        conn.close()

    cpu0 = time.process_time()
    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(spec["concurrency"])))
    return {
        "latencies_ms": latencies,
        "statuses": dict(statuses),
        "errors": dict(errors),
        "wall_s": time.perf_counter() - started,
        "client_cpu_s": time.process_time() - cpu0,
    }


@dataclass
class StreamOutcome:
    ok: bool = False
    error: str = ""
    token_times: list[float] = field(default_factory=list)
    first_token_ms: float | None = None


def _classify(event: bytes, protocol: str) -> str:
    """``token``, ``done``, ``error`` or ``other`` for one SSE event."""
    if protocol == "tuneloop":
        if event.startswith(b"event: delta"):
            return "token"
        if event.startswith(b"event: done"):
            return "done"
        if event.startswith(b"event: error"):
            return "error"
        return "other"
    data = event.partition(b"data: ")[2]
    if data.strip() == b"[DONE]":
        return "done"
    try:
        chunk = json.loads(data)
    except ValueError:
        return "error"
    choices = chunk.get("choices") or []
    return "token" if choices and (choices[0].get("delta") or {}).get("content") else "other"


async def streams(spec: dict) -> dict:
    """``n`` concurrent SSE requests; records when each token arrives."""
    n, ramp = spec["n"], spec.get("ramp_s", 1.0)
    body = json.dumps(spec["body"]).encode()
    protocol = spec["protocol"]
    open_now = peak = 0
    outcomes: list[StreamOutcome] = []

    async def one(i: int) -> None:
        nonlocal open_now, peak
        await asyncio.sleep(ramp * i / max(1, n))
        outcome = StreamOutcome()
        outcomes.append(outcome)
        conn = Connection(spec["host"], spec["port"])
        started = time.perf_counter()
        open_now += 1
        peak = max(peak, open_now)
        try:
            status, headers = await conn.send("POST", spec["path"], body)
            if status != 200:
                outcome.error = f"HTTP {status}"
                return
            buffer = b""
            async for chunk in conn.body_chunks(headers):
                now = time.perf_counter()
                buffer += chunk
                while b"\n\n" in buffer:
                    event, _, buffer = buffer.partition(b"\n\n")
                    kind = _classify(event, protocol)
                    if kind == "token":
                        outcome.token_times.append(now)
                        if outcome.first_token_ms is None:
                            outcome.first_token_ms = (now - started) * 1000
                    elif kind == "done":
                        outcome.ok = True
                    elif kind == "error":
                        outcome.error = "error event: " + event.decode(errors="replace")[:200]
            if not outcome.ok and not outcome.error:
                outcome.error = "stream ended without done"
        except (OSError, HttpError, asyncio.IncompleteReadError, ValueError) as exc:
            outcome.error = f"{type(exc).__name__}: {exc}"[:200]
        finally:
            open_now -= 1
            conn.close()
        if outcome.ok and len(outcome.token_times) != spec["tokens"]:
            outcome.ok, outcome.error = False, f"got {len(outcome.token_times)} of {spec['tokens']} tokens"

    cpu0 = time.process_time()
    started = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(n))), spec.get("timeout_s", 120))
    done = [o for o in outcomes if o.ok and o.token_times]
    gaps = [(b - a) * 1000 for o in done for a, b in zip(o.token_times, o.token_times[1:], strict=False)]
    # The steady state: every stream has its first token and none has its last yet,
    # so nothing is being started or recorded; gaps there measure holding alone.
    all_started = max((o.token_times[0] for o in done), default=0.0)
    first_ended = min((o.token_times[-1] for o in done), default=0.0)
    steady = [
        (b - a) * 1000
        for o in done
        for a, b in zip(o.token_times, o.token_times[1:], strict=False)
        if a >= all_started and b <= first_ended
    ]
    return {
        "n": n,
        "ok": sum(o.ok for o in outcomes),
        "errors": dict(Counter(o.error for o in outcomes if not o.ok)),
        "gaps_ms": gaps,
        "steady_gaps_ms": steady,
        "peak_streaming": _peak_overlap([(o.token_times[0], o.token_times[-1]) for o in done]),
        "first_token_ms": [o.first_token_ms for o in outcomes if o.first_token_ms is not None],
        "peak_open": peak,
        "wall_s": time.perf_counter() - started,
        "client_cpu_s": time.process_time() - cpu0,
    }


def _peak_overlap(intervals: list[tuple[float, float]]) -> int:
    """Most intervals open at one instant (streams between their first and last token)."""
    edges = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals])
    peak = current = 0
    for _, step in edges:
        current += step
        peak = max(peak, current)
    return peak


WORKLOADS = {"closed": closed_loop, "streams": streams}


def main(argv: list[str] | None = None) -> None:
    """``python -m bench.loadgen SPEC.json``: run the workload, print its result as JSON."""
    argv = sys.argv[1:] if argv is None else argv
    with open(argv[0]) as fh:
        spec = json.load(fh)
    raise_fd_limit()
    result = asyncio.run(WORKLOADS[spec["kind"]](spec))
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
