"""The gateway's gunicorn worker: gevent, plus bounds on what one slow or greedy client can hold.

gunicorn's gevent worker gives every connection a greenlet from a pool of
``gateway.worker_connections`` and waits for a request body for ever. 4,200
connections that each sent headers, ``Content-Length: 1000`` and one byte filled
every slot of both workers, and ``/healthz`` stopped answering for over 70 s
(issue 14). :class:`GatewayWorker` is the same gevent worker with three bounds:

- **headers**: a connection has ``gateway.request_header_timeout_s`` to send a
  request's line and headers, from connecting or from the end of the previous
  response (so it also bounds an idle kept-alive connection); then it is closed
  (gunicorn's own wait for the next request, given this timeout);
- **body**: once the headers are in, the whole body must arrive within
  ``gateway.request_body_timeout_s``; reading past that raises
  :class:`config.errors.RequestTimeout` inside the app, which answers 408 in the
  one error shape, and the connection is closed;
- **per client**: a client address may have at most
  ``gateway.max_waiting_connections_per_client`` connections in this worker that
  are *waiting on the client* — not yet sent a request, sending one, or idle
  between requests. A new connection over that is answered 429 and closed at once.
  A connection whose answer is streaming is not waiting on the client and does
  not count, so one client can still hold thousands of legitimate streams.

The bookkeeping is in :class:`ClientSocket`, a thin wrapper the worker puts
around each accepted socket: its ``recv`` is the only place the worker waits on
a client, so it knows who is waiting and enforces the body deadline.
"""

from __future__ import annotations

import json
import socket
import time
from collections import Counter

import gevent
from gunicorn.workers.ggevent import GeventWorker

from config.errors import RequestTimeout
from config.settings import load_settings

LOG_EVERY_S = 10.0  # at most one "refused connections" line per client address this often


class ClientSocket:
    """An accepted socket that counts itself as waiting on its client and enforces a read deadline.

    It is *waiting* from accept until its first ``recv`` returns, and again whenever it is
    blocked in ``recv``; between those the server is working on a request or writing a response.
    Everything but ``recv``/``recv_into`` is the wrapped socket's own.
    """

    def __init__(self, sock, address: str, waiting: Counter):
        self._sock = sock
        self._address = address
        self._waiting_by_address = waiting
        self._waiting = False
        self.deadline: float | None = None  # time.monotonic() by which reading must be done
        self.request = None  # gunicorn's request being read, told to close the connection on a timeout
        self.mark_waiting(True)

    def mark_waiting(self, waiting: bool) -> None:
        if waiting != self._waiting:
            self._waiting = waiting
            self._waiting_by_address[self._address] += 1 if waiting else -1
            if not self._waiting_by_address[self._address]:
                del self._waiting_by_address[self._address]

    def _read(self, method, *args):
        self.mark_waiting(True)
        try:
            if self.deadline is None:
                return method(*args)
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout
            self._sock.settimeout(left)
            try:
                return method(*args)
            finally:
                self._sock.settimeout(None)
        except socket.timeout:
            if self.request is not None:
                self.request.must_close = True  # answer with "Connection: close", then close
            raise RequestTimeout(
                "the request body did not arrive in time; the connection is closed", code="request_timeout"
            ) from None
        finally:
            self.mark_waiting(False)

    def recv(self, *args):
        return self._read(self._sock.recv, *args)

    def recv_into(self, *args):
        return self._read(self._sock.recv_into, *args)

    def close(self) -> None:
        self.mark_waiting(False)
        self._sock.close()

    def __getattr__(self, name):
        return getattr(self._sock, name)


def refusal(waiting: int, limit: int, retry_after_s: int) -> bytes:
    """The whole HTTP response for a connection refused for its address: 429 in the one error shape."""
    body = json.dumps(
        {
            "error": {
                "code": "too_many_connections",
                "message": f"this address already has {waiting} connections waiting to send a request "
                f"(at most {limit}); finish or close them and try again",
            }
        }
    ).encode()
    head = (
        "HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nRetry-After: {retry_after_s}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


class GatewayWorker(GeventWorker):
    """gunicorn's gevent worker with header, body and per-client bounds (see the module docstring)."""

    def init_process(self):
        gw = load_settings().gateway
        self.header_timeout_s = gw.request_header_timeout_s
        self.body_timeout_s = gw.request_body_timeout_s
        self.max_waiting = gw.max_waiting_connections_per_client
        self.waiting: Counter = Counter()
        self._refused: Counter = Counter()
        self._last_logged: dict[str, float] = {}
        super().init_process()

    def timeout_ctx(self):
        # gunicorn waits for each request's head under this (silent) timeout, then closes.
        return gevent.Timeout(self.header_timeout_s, False)

    def handle(self, listener, client, addr):
        address = addr[0] if isinstance(addr, tuple) else str(addr)
        if self.max_waiting and self.waiting[address] >= self.max_waiting:
            self._refuse(client, address)
            return
        super().handle(listener, ClientSocket(client, address, self.waiting), addr)

    def handle_request(self, listener_name, req, sock, addr):
        if not isinstance(sock, ClientSocket):
            return super().handle_request(listener_name, req, sock, addr)
        sock.deadline, sock.request = time.monotonic() + self.body_timeout_s, req
        try:
            return super().handle_request(listener_name, req, sock, addr)
        finally:
            sock.deadline, sock.request = None, None

    def _refuse(self, client, address: str) -> None:
        try:
            client.settimeout(1.0)
            client.sendall(refusal(self.waiting[address], self.max_waiting, int(self.header_timeout_s)))
            client.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        finally:
            client.close()
        self._refused[address] += 1
        now = time.monotonic()
        if len(self._last_logged) > 10_000:  # many addresses: forget who was logged when, not the limit
            self._last_logged.clear()
        if now - self._last_logged.get(address, 0.0) >= LOG_EVERY_S:
            self.log.warning(
                "refused %d connection(s) from %s: %d already waiting to send a request "
                "(gateway.max_waiting_connections_per_client = %d)",
                self._refused.pop(address),
                address,
                self.waiting[address],
                self.max_waiting,
            )
            self._last_logged[address] = now
