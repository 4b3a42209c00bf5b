"""A fast OpenAI-protocol upstream for the gateway benchmark, in its own process.

The gateway's added cost can only be measured against an upstream that costs
next to nothing, so this one is a bare asyncio HTTP/1.1 server (keep-alive,
chunked SSE) rather than the werkzeug test double in tests/plugins/upstream.py,
whose wire format it copies: ``GET /v1/models``, ``POST /v1/chat/completions``
streaming (``data:`` chunks, the usage chunk when
``stream_options.include_usage`` is set, ``[DONE]``) and non-streaming.

The last message scripts the answer, as in the test double:

    "!tokens 20 0.25"   stream 20 tokens, 250 ms apart (the first after 250 ms)
    anything else       "echo: <message>" in three chunks, at once

With ``--read-context`` it answers every message instead with the answer of the first entry of the
knowledge block in the system message (``[1] Q: …\nA: <answer>``, the default ``[knowledge]
entry_format``), or "I don't know." when there is none: a perfect reader of its context, so
``bench/knowledge.py`` can time how soon a corrected entry reaches answers apart from any model.

Run ``python -m bench.upstream [--port 0]``; it prints ``listening on PORT``
once it accepts connections.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time

from bench import raise_fd_limit
from tests.plugins.upstream import _completion as completion  # the test double's wire format, shared

MODEL = "bench-model"
JSON_HEADERS = "Content-Type: application/json\r\nContent-Length: {length}\r\n"
SSE_HEADERS = "Content-Type: text/event-stream\r\nCache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n"


def script(text: str) -> tuple[list[str], float]:
    """The pieces to answer ``text`` with, and the gap before each piece (seconds)."""
    words = text.split()
    if len(words) == 3 and words[0] == "!tokens":
        return [f"t{i} " for i in range(int(words[1]))], float(words[2])
    answer = f"echo: {text}"
    third = max(1, len(answer) // 3)
    return [answer[:third], answer[third : 2 * third], answer[2 * third :]], 0.0


FIRST_ENTRY = re.compile(r"^\[1\] Q: [^\n]*\nA: (.*?)(?=\n\[2\] Q: |\Z)", re.S | re.M)


def read_context(messages: list[dict]) -> str:
    """The answer of the first knowledge-base entry in the system message, or "I don't know."."""
    system = next((m.get("content") or "" for m in messages if m.get("role") == "system"), "")
    found = FIRST_ENTRY.search(system)
    return found.group(1) if found else "I don't know."


def _event(choices: list, usage: dict | None = None) -> bytes:
    """One ``data:`` event carrying a chat.completion.chunk."""
    body = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": int(time.time()), "model": MODEL}
    body["choices"] = choices
    if usage is not None:
        body["usage"] = usage
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def _chunk(delta: dict, finish: str | None = None) -> bytes:
    return _event([{"index": 0, "delta": delta, "finish_reason": finish}])


def _usage_chunk(tokens: int) -> bytes:
    return _event([], {"prompt_tokens": 5, "completion_tokens": tokens, "total_tokens": 5 + tokens})


class Upstream:
    """The connection handler; one instance serves every connection of the process."""

    def __init__(self, read_context: bool = False):
        self.read_context = read_context

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await self._one_request(reader, writer):
                pass
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the gateway closed a pooled connection, or gave up on a stream
        finally:
            writer.close()

    async def _one_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False
        request_line, *lines = head.decode("latin-1").split("\r\n")
        method, path, _ = request_line.split(" ", 2)
        headers = {}
        for line in lines:
            if ":" in line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length") or 0)
        body = await reader.readexactly(length) if length else b""
        keep_alive = headers.get("connection", "").lower() != "close"
        if method == "GET" and path.endswith("/models"):
            listing = {"object": "list", "data": [{"id": MODEL, "object": "model", "created": 0, "owned_by": "bench"}]}
            await self._json(writer, 200, json.dumps(listing).encode())
        elif method == "POST" and path.endswith("/chat/completions"):
            await self._chat(writer, json.loads(body or b"{}"))
        else:
            await self._json(writer, 404, b'{"error": {"message": "not found", "type": "invalid_request_error"}}')
        return keep_alive

    async def _json(self, writer: asyncio.StreamWriter, status: int, body: bytes) -> None:
        head = f"HTTP/1.1 {status} {'OK' if status == 200 else 'Error'}\r\n" + JSON_HEADERS.format(length=len(body))
        writer.write(head.encode() + b"\r\n" + body)
        await writer.drain()

    async def _chat(self, writer: asyncio.StreamWriter, payload: dict) -> None:
        if self.read_context:
            pieces, gap = [read_context(payload["messages"])], 0.0
        else:
            pieces, gap = script(payload["messages"][-1]["content"])
        if not payload.get("stream"):
            if gap:
                await asyncio.sleep(gap * len(pieces))
            await self._json(writer, 200, json.dumps(completion(MODEL, "".join(pieces), len(pieces))).encode())
            return
        writer.write(b"HTTP/1.1 200 OK\r\n" + SSE_HEADERS.encode() + b"\r\n")
        send = _chunked(writer)
        await send(_chunk({"role": "assistant", "content": ""}))
        for piece in pieces:
            if gap:
                await asyncio.sleep(gap)
            await send(_chunk({"content": piece}))
        tail = _chunk({}, "stop")
        if (payload.get("stream_options") or {}).get("include_usage"):
            tail += _usage_chunk(len(pieces))
        await send(tail + b"data: [DONE]\n\n")
        writer.write(b"0\r\n\r\n")
        await writer.drain()


def _chunked(writer: asyncio.StreamWriter):
    async def send(data: bytes) -> None:
        writer.write(b"%x\r\n%s\r\n" % (len(data), data))
        await writer.drain()

    return send


async def serve(host: str, port: int, read_context: bool = False) -> None:
    """Serve until killed; prints ``listening on PORT`` when ready."""
    handler = Upstream(read_context).handle
    server = await asyncio.start_server(handler, host, port, backlog=4096, reuse_address=True)
    print(f"listening on {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m bench.upstream --host 127.0.0.1 --port 0``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--read-context", action="store_true", help="Answer from the prompt's knowledge block.")
    args = parser.parse_args(argv)
    raise_fd_limit()
    try:
        asyncio.run(serve(args.host, args.port, args.read_context))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
