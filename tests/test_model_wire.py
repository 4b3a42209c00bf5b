"""modelclient/wire.py through modelclient/chat.py, against real local HTTP servers.

The gateway's answers go over pooled ``http.client`` connections (the openai SDK cost more than half of a
chat's CPU, docs/benchmarks.md); these pin down what the pool must get right besides reuse (which
tests/test_model_client.py covers): a connection the server closed while it idled in the pool is replaced
without the caller seeing it, the server's error body is worded as before, and a configured HTTP proxy
is honoured (those answers go through the SDK, which speaks proxies).
"""

from __future__ import annotations

import asyncio
import json
import threading

import pytest

from bench.upstream import Upstream
from config.errors import UpstreamRejected, UpstreamUnavailable
from modelclient.chat import ChatClient, ClientPolicy, Target


class _Serving:
    """An asyncio server in a thread; ``handler(reader, writer)`` serves each connection."""

    def __init__(self, handler):
        self.connections = 0

        async def counted(reader, writer):
            self.connections += 1
            await handler(reader, writer)

        self.loop = asyncio.new_event_loop()
        self.server = self.loop.run_until_complete(asyncio.start_server(counted, "127.0.0.1", 0))
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.base_url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/v1"

    def stop(self) -> None:
        async def stop() -> None:
            self.server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(timeout=5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        self.loop.close()


@pytest.fixture
def serve():
    started: list[_Serving] = []

    def start(handler) -> _Serving:
        started.append(_Serving(handler))
        return started[-1]

    yield start
    for server in started:
        server.stop()


def _ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_a_pooled_connection_the_server_closed_is_replaced_unseen(serve):
    upstream = Upstream()

    async def one_answer_per_connection(reader, writer):
        # Answers one request, then closes without saying so (no "Connection: close"), as a server whose
        # keep-alive timeout passed while the connection idled in the client's pool.
        try:
            await upstream._one_request(reader, writer)
        finally:
            writer.close()

    server = serve(one_answer_per_connection)
    client = ChatClient(ClientPolicy(retries=0))
    target = Target("m", server.base_url)
    answers = []
    for i in range(3):
        answers.append(client.complete([target], _ask(f"q{i}")).text)
        asyncio.run_coroutine_threadsafe(asyncio.sleep(0.05), server.loop).result()  # let the close land
    assert answers == ["echo: q0", "echo: q1", "echo: q2"]
    assert server.connections == 3


def test_the_servers_error_body_is_worded_as_before(serve):
    body = json.dumps({"error": {"message": "max_tokens is too large", "param": "max_tokens", "code": "bad"}})

    async def refuse(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        head = f"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        writer.write((head + body).encode())
        await writer.drain()
        writer.close()

    server = serve(refuse)
    with pytest.raises(UpstreamRejected) as caught:
        ChatClient(ClientPolicy(retries=0)).generate([Target("m", server.base_url)], _ask("hi"))
    assert caught.value.message == "model 'm' refused the request (400): max_tokens is too large"
    assert caught.value.field == "max_tokens" and caught.value.upstream_code == "bad"
    assert caught.value.where == server.base_url


def test_a_configured_proxy_is_honoured(serve, monkeypatch):
    upstream = Upstream()
    server = serve(upstream.handle)
    target = Target("m", server.base_url)
    assert ChatClient(ClientPolicy(retries=0)).complete([target], _ask("direct")).text == "echo: direct"
    # A proxy that is not there: the answer must try it (and fail), not go around it.
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("NO_PROXY", "")
    with pytest.raises(UpstreamUnavailable, match="cannot reach model 'm'"):
        ChatClient(ClientPolicy(retries=0)).generate([target], _ask("via proxy"))
