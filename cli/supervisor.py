"""Running the platform's processes as children: start, wait until healthy, watch, stop.

``tuneloop up`` uses this to run the model server, the gateway and the scheduler
together. Each child's output is passed through with its name in front, so one
terminal shows the whole platform. If any child dies, the others are stopped and
the name of the one that died is reported; Ctrl-C or SIGTERM stops them all.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import httpx2

from config.errors import TuneloopError


class ChildFailed(TuneloopError):
    """A child process exited or never became healthy."""


@dataclass
class Child:
    """One process of the platform."""

    name: str
    argv: list[str]
    health_url: str | None = None
    startup_timeout_s: float = 120.0
    env: dict[str, str] | None = None
    process: subprocess.Popen | None = field(default=None, repr=False)


class Supervisor:
    """Starts children in order, each only after the previous one is healthy."""

    def __init__(self, echo: Callable[[str], None] = print):
        self.children: list[Child] = []
        self.echo = echo
        self._stopping = False

    def start(self, child: Child) -> None:
        """Start ``child`` and wait until its health URL answers 200 (or raise :class:`ChildFailed`)."""
        child.process = subprocess.Popen(
            child.argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=child.env or dict(os.environ),
            bufsize=1,
            text=True,
            errors="replace",
        )
        self.children.append(child)
        threading.Thread(target=self._relay, args=(child,), daemon=True).start()
        if child.health_url:
            self._wait_healthy(child)

    def _relay(self, child: Child) -> None:
        width = max(len(c.name) for c in self.children) if self.children else len(child.name)
        assert child.process and child.process.stdout
        for line in child.process.stdout:
            self.echo(f"{child.name:<{max(width, 9)}} | {line.rstrip()}")

    def _wait_healthy(self, child: Child) -> None:
        deadline = time.monotonic() + child.startup_timeout_s
        assert child.process
        while time.monotonic() < deadline:
            code = child.process.poll()
            if code is not None:
                raise ChildFailed(f"{child.name} exited with code {code} while starting (its output is above)")
            try:
                if httpx2.get(child.health_url, timeout=2).status_code == 200:
                    return
            except httpx2.TransportError:
                pass
            time.sleep(0.3)
        raise ChildFailed(
            f"{child.name} did not become healthy within {child.startup_timeout_s:.0f} s ({child.health_url})"
        )

    def watch(self) -> int:
        """Block until a child dies (returns 1, after stopping the rest) or a signal arrives (returns 0)."""
        stop = threading.Event()

        def on_signal(signum, _frame):
            self.echo(f"\n{signal.Signals(signum).name} received: stopping all processes")
            stop.set()

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            while not stop.is_set():
                for child in self.children:
                    code = child.process.poll() if child.process else None
                    if code is not None:
                        self.echo(f"error: {child.name} exited with code {code}; stopping the others")
                        self.stop_all()
                        return 1
                stop.wait(0.5)
            self.stop_all()
            return 0
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

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


def tuneloop_argv(config_path: str | None, *args: str) -> list[str]:
    """The command line that runs ``tuneloop <args>`` with the same interpreter and config."""
    exe = os.path.join(os.path.dirname(sys.executable), "tuneloop")
    argv = [exe] if os.path.exists(exe) else [sys.executable, "-m", "cli.main"]
    if config_path:
        argv += ["--config", config_path]
    return argv + list(args)
