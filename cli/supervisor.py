"""Running the platform's processes as children: start, wait until healthy, watch, restart, stop.

``tuneloop up`` uses this to run the model server, the gateway and the scheduler
together. Each child's output is passed through with its name in front, so one
terminal shows the whole platform. Start-up is strict: the children start in
order, each once the previous one is healthy, and one that fails to start stops
the rest. After that a child that dies is restarted, on its own, with backoff
(1, 2, 4 … 60 s; back to 1 s once it has run :data:`STABLE_S` seconds), and the
others keep running: a crashed model server used to end the whole platform
(issue 14), now the gateway keeps answering — 503 for chats until the model is
back — and the log and :class:`Supervisor`'s ``on_change`` (what ``/readyz``
shows) say what happened. Ctrl-C or SIGTERM stops them all.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Callable

import httpx2

from config.errors import TuneloopError
from feedback.db import utc_text

FIRST_BACKOFF_S = 1.0
MAX_BACKOFF_S = 60.0
STABLE_S = 60.0  # a child up this long has recovered: its next crash waits FIRST_BACKOFF_S again


class ChildFailed(TuneloopError):
    """A child process exited or never became healthy."""


@dataclass
class Child:
    """One process of the platform.

    ``on_ready`` runs (in a thread of its own) each time the child has become healthy: at
    start-up and after every restart.
    """

    name: str
    argv: list[str]
    health_url: str | None = None
    startup_timeout_s: float = 120.0
    env: dict[str, str] | None = None
    on_ready: Callable[[], None] | None = None
    process: subprocess.Popen | None = field(default=None, repr=False)
    state: str = "new"  # starting, running, restarting (waiting out its backoff), stopped
    restarts: int = 0
    last_exit: str | None = None
    started_at: float = 0.0  # time.monotonic() of the last start
    healthy_at: float = 0.0  # time.monotonic() it last became healthy
    down_since: float | None = None  # time.monotonic() it was first found dead, until healthy again
    restart_at: float = 0.0  # time.monotonic() of the next start while restarting
    backoff_s: float = FIRST_BACKOFF_S


def describe_exit(code: int) -> str:
    """``exit code 1`` or ``killed by SIGKILL`` for a Popen return code."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class Supervisor:
    """Starts children in order, each only after the previous one is healthy; restarts the ones that die."""

    def __init__(
        self,
        echo: Callable[[str], None] = print,
        on_change: Callable[[dict[str, dict]], None] | None = None,
    ):
        self.children: list[Child] = []
        self.echo = echo
        self.on_change = on_change
        self._stopping = False

    def start(self, child: Child) -> None:
        """Start ``child`` and wait until its health URL answers 200 (or raise :class:`ChildFailed`)."""
        self.children.append(child)
        self._spawn(child)
        if child.health_url:
            self._wait_healthy(child)
        self._became_healthy(child)

    def _spawn(self, child: Child) -> None:
        child.process = subprocess.Popen(
            child.argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=child.env or dict(os.environ),
            bufsize=1,
            text=True,
            errors="replace",
            # Its own process group, so what it leaves behind when it dies can be found (see _clean_up).
            process_group=0,
        )
        child.state, child.started_at = "starting", time.monotonic()
        threading.Thread(target=self._relay, args=(child, child.process), daemon=True).start()
        self._changed()

    def _relay(self, child: Child, process: subprocess.Popen) -> None:
        width = max(len(c.name) for c in self.children) if self.children else len(child.name)
        assert process.stdout
        for line in process.stdout:
            self.echo(f"{child.name:<{max(width, 9)}} | {line.rstrip()}")

    def _healthy(self, child: Child) -> bool:
        try:
            return httpx2.get(child.health_url, timeout=2).status_code == 200
        except httpx2.TransportError:
            return False

    def _wait_healthy(self, child: Child) -> None:
        deadline = time.monotonic() + child.startup_timeout_s
        assert child.process
        while time.monotonic() < deadline:
            code = child.process.poll()
            if code is not None:
                raise ChildFailed(f"{child.name} exited with code {code} while starting (its output is above)")
            if self._healthy(child):
                return
            time.sleep(0.3)
        raise ChildFailed(
            f"{child.name} did not become healthy within {child.startup_timeout_s:.0f} s ({child.health_url})"
        )

    def _became_healthy(self, child: Child) -> None:
        child.state, child.healthy_at, child.down_since = "running", time.monotonic(), None
        self._changed()
        if child.on_ready:
            threading.Thread(target=child.on_ready, daemon=True, name=f"{child.name}-ready").start()

    def watch(self) -> int:
        """Watch and restart children until a signal arrives; then stop them all and return 0."""
        stop = threading.Event()

        def on_signal(signum, _frame):
            self.echo(f"\n{signal.Signals(signum).name} received: stopping all processes")
            stop.set()

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            while not stop.is_set():
                for child in self.children:
                    self.tend(child)
                stop.wait(0.5)
            self.stop_all()
            return 0
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def tend(self, child: Child) -> None:
        """One look at ``child``: notice a death, restart it when its backoff is over, see it healthy."""
        now = time.monotonic()
        if child.state == "restarting":
            if now >= child.restart_at:
                child.restarts += 1
                self.echo(f"starting {child.name} again (restart {child.restarts})")
                self._spawn(child)
            return
        code = child.process.poll() if child.process else None
        if code is not None:
            self._clean_up(child)
            self._schedule_restart(child, f"{child.name} exited ({describe_exit(code)})", code)
        elif child.state == "starting":
            if not child.health_url or self._healthy(child):
                self.echo(f"{child.name} is back, {now - (child.down_since or now):.1f} s after it went down")
                self._became_healthy(child)
            elif now - child.started_at > child.startup_timeout_s:
                self.echo(f"{child.name} did not become healthy within {child.startup_timeout_s:.0f} s; stopping it")
                self._kill(child)
                self._schedule_restart(child, f"{child.name} never became healthy", None)

    def _schedule_restart(self, child: Child, what: str, code: int | None) -> None:
        now = time.monotonic()
        if child.state == "running" and now - child.healthy_at >= STABLE_S:
            child.backoff_s = FIRST_BACKOFF_S
        child.last_exit = describe_exit(code) if code is not None else "never became healthy"
        child.state, child.restart_at = "restarting", now + child.backoff_s
        child.down_since = child.down_since or now
        unavailable = " (the gateway answers chats with 503 until it is back)" if child.name == "model" else ""
        self.echo(f"error: {what}; restarting it in {child.backoff_s:g} s{unavailable}")
        child.backoff_s = min(child.backoff_s * 2, MAX_BACKOFF_S)
        self._changed()

    def _kill(self, child: Child) -> None:
        if child.process and child.process.poll() is None:
            child.process.kill()
            child.process.wait()
        self._clean_up(child)

    def _clean_up(self, child: Child) -> None:
        # The model server and the gateway are gunicorn masters. Killed with SIGKILL, a master leaves
        # its workers running: they keep the port (the restart then fails "address in use") and keep
        # answering for a while. They are in the dead child's process group; end them with it.
        try:
            os.killpg(child.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def status(self) -> dict[str, dict]:
        """Each child's state, pid, restarts, last exit and (while restarting) when it starts again."""
        out = {}
        for child in self.children:
            entry = {
                "state": child.state,
                "pid": child.process.pid if child.process and child.state != "restarting" else None,
                "restarts": child.restarts,
                "last_exit": child.last_exit,
            }
            if child.state == "restarting":
                entry["next_start"] = utc_text(
                    datetime.now(timezone.utc) + timedelta(seconds=child.restart_at - time.monotonic())
                )
            out[child.name] = entry
        return out

    def _changed(self) -> None:
        if self.on_change:
            try:
                self.on_change(self.status())
            except OSError as exc:  # a status file that cannot be written must not stop supervising
                self.echo(f"warning: could not record the processes' state: {exc}")

    def stop_all(self, grace_s: float = 15.0) -> None:
        """SIGTERM every child (last started first), then SIGKILL what is left after ``grace_s``."""
        if self._stopping:
            return
        self._stopping = True
        alive = [c for c in reversed(self.children) if c.process and c.process.poll() is None]
        for child in alive:
            child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for child in alive:
            try:
                child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.echo(f"{child.name} did not stop in {grace_s:.0f} s; killing it")
                child.process.kill()
                child.process.wait()
        for child in self.children:
            child.state = "stopped"
        self._changed()


def tuneloop_argv(config_path: str | None, *args: str) -> list[str]:
    """The command line that runs ``tuneloop <args>`` with the same interpreter and config."""
    exe = os.path.join(os.path.dirname(sys.executable), "tuneloop")
    argv = [exe] if os.path.exists(exe) else [sys.executable, "-m", "cli.main"]
    if config_path:
        argv += ["--config", config_path]
    return argv + list(args)
