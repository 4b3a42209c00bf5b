"""The gateway's hot path to a model server: one streamed chat completion over a pooled keep-alive connection.

Why not the openai SDK here: profiled in the gateway (docs/benchmarks.md, "Where a chat's CPU goes"), the
SDK's request building (``_transform_recursive`` over its TypedDicts), its request machinery and
httpx/h11 underneath took more than half of the gateway's CPU per chat — far more than the HTTP it sends.
This module sends the same request (``POST {base_url}/chat/completions``, JSON body, bearer key) with the
standard library's ``http.client`` and reads the SSE body line by line; under gunicorn's gevent workers
its sockets are gevent's, like every other socket.

What it keeps from the SDK path (``modelclient.chat`` falls back to the SDK when an HTTP proxy is
configured for the server, which this module does not speak):

- connections are reused: one whose response was read to the end goes back to the pool; one abandoned
  half-read is closed, never handed out again; a pooled connection the server had closed meanwhile is
  replaced once, transparently, before anything was read from it;
- timeouts: ``connect_timeout_s`` for the TCP (and TLS) connection, ``read_timeout_s`` for every read;
- failures are typed (:class:`ConnectFailed`, :class:`ReadTimedOut`, :class:`ConnectionBroke`,
  :class:`StatusError` with the server's parsed error body) so ``modelclient.chat`` words them as before.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import threading
from typing import Any, Iterator
from urllib.parse import urlsplit
from urllib.request import getproxies, proxy_bypass


class WireError(Exception):
    """A chat-completions request failed on the way (base class)."""


class ConnectFailed(WireError):
    """No connection to the server (refused, unreachable, TLS failed, connect timeout)."""


class ReadTimedOut(WireError):
    """The server went quiet for longer than the read timeout."""


class ConnectionBroke(WireError):
    """The connection closed or broke before the response ended."""


class StatusError(WireError):
    """The server answered with a non-200 status; ``body`` is its error object (parsed JSON) or its text."""

    def __init__(self, status: int, body: Any, headers: dict[str, str] | None = None):
        self.status = status
        self.body = body
        self.headers = headers or {}  # lower-cased names: Retry-After and retry-after-ms matter to callers
        super().__init__(f"Error code: {status} - {body}")


def uses_proxy(base_url: str) -> bool:
    """Whether the environment routes ``base_url`` through an HTTP proxy (then the SDK path is used)."""
    parts = urlsplit(base_url)
    proxies = getproxies()
    return bool(proxies.get(parts.scheme) or proxies.get("all")) and not proxy_bypass(parts.hostname or "")


class ChatWire:
    """Streamed chat completions to one server (``base_url`` ends in ``/v1`` or the like), connections pooled."""

    def __init__(self, base_url: str, *, connect_timeout_s: float, read_timeout_s: float, max_idle: int = 100):
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.tls = ssl.create_default_context() if parts.scheme == "https" else None
        self.path = parts.path.rstrip("/") + "/chat/completions"
        self.host_header = parts.netloc.rpartition("@")[2]
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.max_idle = max_idle
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def stream(self, payload: dict, api_key: str) -> Iterator[bytes]:
        """The response body's lines (without line ends), read to its very end; closing stops and discards.

        Raises a :class:`WireError` subclass from the first ``next()`` when the request fails.
        """
        body = json.dumps(payload, ensure_ascii=False).encode()
        headers = {
            "Host": self.host_header,
            "Content-Type": "application/json",
            "Accept": "text/event-stream",
            "Authorization": f"Bearer {api_key}",
        }
        conn, response = self._send(body, headers)
        reusable = False
        try:
            if response.status != 200:
                data = self._read(response, response.read)
                reusable = not response.will_close
                headers = {name.lower(): value for name, value in response.getheaders()}
                raise StatusError(response.status, _error_body(data), headers)
            pending = b""
            while True:
                data = self._read(response, response.read1)
                if not data:
                    break
                pending += data
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    yield line.rstrip(b"\r")
            if pending:
                yield pending.rstrip(b"\r")
            reusable = not response.will_close
        finally:
            self._release(conn, reusable)

    def _send(self, body: bytes, headers: dict[str, str]) -> tuple[http.client.HTTPConnection, Any]:
        """Send on a pooled connection (a stale one is replaced once) and read the response head."""
        while True:
            conn, reused = self._acquire()
            try:
                conn.request("POST", self.path, body, headers)
                return conn, conn.getresponse()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as exc:
                conn.close()
                if reused:
                    continue  # the server closed an idle connection: nothing of ours was read, try a fresh one
                raise ConnectionBroke(f"connection closed before the response: {exc}") from exc
            except TimeoutError as exc:
                conn.close()
                raise ReadTimedOut("no response in time") from exc
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                raise ConnectionBroke(f"{type(exc).__name__}: {exc}") from exc

    def _read(self, response: http.client.HTTPResponse, read) -> bytes:
        try:
            return read() if read is response.read else read(65536)
        except TimeoutError as exc:
            raise ReadTimedOut("the server went quiet") from exc
        except (OSError, http.client.HTTPException) as exc:
            raise ConnectionBroke(f"{type(exc).__name__}: {exc}") from exc

    def _acquire(self) -> tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            if self._idle:
                return self._idle.pop(), True
        if self.tls is not None:
            conn = http.client.HTTPSConnection(self.host, self.port, timeout=self.connect_timeout_s, context=self.tls)
        else:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=self.connect_timeout_s)
        try:
            conn.connect()
        except OSError as exc:  # refused, unreachable, DNS, TLS, connect timeout
            conn.close()
            raise ConnectFailed(f"{type(exc).__name__}: {exc}") from exc
        conn.sock.settimeout(self.read_timeout_s)
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn, False

    def _release(self, conn: http.client.HTTPConnection, reusable: bool) -> None:
        if reusable:
            with self._lock:
                if len(self._idle) < self.max_idle:
                    self._idle.append(conn)
                    return
        conn.close()

    def close(self) -> None:
        """Close every idle connection."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


def _error_body(data: bytes) -> Any:
    """The error as the SDK would hold it: the ``error`` object of a JSON body, else the body's text."""
    text = data.decode("utf-8", errors="replace")
    try:
        parsed = json.loads(text)
    except ValueError:
        return text or None
    return parsed.get("error", parsed) if isinstance(parsed, dict) else parsed
