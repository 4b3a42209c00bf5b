"""modelclient/chat.py against a real HTTP/1.1 keep-alive server speaking the chat-completions wire format.

The client reads every upstream SSE body to its very end, past ``[DONE]``, so the connection goes back to the
pool: without that each answer cost a new TCP connection (openai-python #3440; measured 1.0 connect per chat
in bench/gateway.py). Retries and fallbacks before the first token are covered through the gateway in
tests/test_gateway_upstream.py.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

from bench.upstream import Upstream
from config.errors import UpstreamError
from modelclient.chat import ChatClient, ClientPolicy, Reply, Target


@pytest.fixture
def keepalive_upstream():
    """(base_url, one entry per TCP connection accepted) for the benchmark's keep-alive upstream (bench/upstream.py:
    HTTP/1.1, chunked SSE; werkzeug's server in tests/plugins/upstream.py closes every connection itself)."""
    connections: list[tuple] = []

    class Counting(Upstream):
        async def handle(self, reader, writer):
            connections.append(writer.get_extra_info("peername"))
            await super().handle(reader, writer)

    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(asyncio.start_server(Counting().handle, "127.0.0.1", 0))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1", connections

    async def stop() -> None:  # the client's pool still holds a connection open: end its handler too
        server.close()
        handlers = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)

    asyncio.run_coroutine_threadsafe(stop(), loop).result(timeout=5)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=5)
    loop.close()


def _ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_answers_read_to_the_end_reuse_one_connection(keepalive_upstream):
    base_url, connections = keepalive_upstream
    client = ChatClient(ClientPolicy(retries=0))
    target = Target("bench-model", base_url)
    answers = [client.complete([target], _ask(f"question {i}")).text for i in range(3)]
    streamed = client.generate([target], _ask("streamed"))
    pieces = list(streamed)
    assert answers == [f"echo: question {i}" for i in range(3)]
    assert "".join(pieces) == streamed.text == "echo: streamed" and len(pieces) == 3
    assert streamed.usage == {"prompt_tokens": 5, "completion_tokens": 3} and streamed.finish_reason == "stop"
    assert len(connections) == 1, f"4 answers took {len(connections)} connections"


def test_a_reply_reports_timing_and_calls_back_once_done(keepalive_upstream):
    base_url, _ = keepalive_upstream
    done: list[Reply] = []
    reply = ChatClient(ClientPolicy(retries=0)).generate(
        [Target("bench-model", base_url, tag="mv_1")], _ask("hello"), on_done=done.append
    )
    assert reply.latency_ms is None and done == [] and reply.elapsed_ms() >= 0
    reply.collect()
    assert done == [reply] and reply.target.tag == "mv_1"
    assert 0 <= reply.first_token_ms <= reply.latency_ms


def test_a_reply_closed_early_frees_its_connection_for_the_next_answer(keepalive_upstream):
    base_url, connections = keepalive_upstream
    client = ChatClient(ClientPolicy(retries=0))
    target = Target("bench-model", base_url)
    reply = client.generate([target], _ask("!tokens 40 0.01"))
    assert next(iter(reply)) == "t0 "
    reply.close()  # the caller went away mid-answer
    assert client.complete([target], _ask("after")).text == "echo: after"
    assert len(connections) == 2  # the abandoned one is not handed out again half-read


def test_no_target_is_a_clear_error():
    with pytest.raises(UpstreamError, match="no model is configured"):
        ChatClient().generate([], _ask("hi"))
