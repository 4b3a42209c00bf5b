"""Other gateways, run beside tuneloop in the gateway benchmark on the same instant upstream.

- Portkey's AI gateway (``@portkey-ai/gateway`` from npm; Node, one process, no database),
- LiteLLM's proxy (``litellm[proxy]`` from PyPI, in a virtual environment of its own so it never enters
  tuneloop's lock; 2 workers under gunicorn, no database: its uvicorn multi-worker mode lost every worker at
  start here, silently).

Each is installed on first use into ``.bench-peers/`` at the repository root (ignored by git) at the
pinned version below, and reused afterwards. A peer that cannot be installed or started (no ``node``, no
registry, an install that fails) is skipped with the reason, and the benchmark goes on without it.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PEERS_DIR = ROOT / ".bench-peers"
PORTKEY_VERSION = "1.15.2"
# 1.106.12: the newest release whose `proxy` extra resolves (1.110's names a `litellm-proxy` that is not published).
LITELLM_VERSION = "1.106.12"
INSTALL_TIMEOUT_S = 600


@dataclass
class Peer:
    """A running peer gateway: where to send chat completions, with which headers."""

    name: str
    process: subprocess.Popen
    port: int
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    log_path: Path | None = None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


class PeerUnavailable(Exception):
    """The peer cannot be installed or started here; the message says why."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cmd: list[str], what: str, **kwargs) -> None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, **kwargs)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PeerUnavailable(f"{what} failed: {exc}") from exc
    if out.returncode != 0:
        raise PeerUnavailable(f"{what} failed ({out.returncode}): {(out.stderr or out.stdout)[-400:].strip()}")


def install_portkey() -> Path:
    """The Portkey gateway's ``start-server.js``, installed at the pinned version if it is not yet."""
    home = PEERS_DIR / "portkey"
    package = home / "node_modules" / "@portkey-ai" / "gateway"
    installed = json.loads((package / "package.json").read_text()).get("version") if package.exists() else None
    if installed != PORTKEY_VERSION:
        if not shutil.which("node") or not shutil.which("npm"):
            raise PeerUnavailable("node and npm are not installed")
        home.mkdir(parents=True, exist_ok=True)
        (home / "package.json").write_text('{"private": true}\n')
        print(f"bench: installing @portkey-ai/gateway@{PORTKEY_VERSION} (npm)…", file=sys.stderr, flush=True)
        _run(
            ["npm", "install", "--no-audit", "--no-fund", "--loglevel=error", f"@portkey-ai/gateway@{PORTKEY_VERSION}"],
            "npm install @portkey-ai/gateway",
            cwd=home,
        )
    script = package / "build" / "start-server.js"
    if not script.exists():
        raise PeerUnavailable(f"{script} is missing after the install")
    return script


def install_litellm() -> Path:
    """The ``litellm`` command of the bench's own virtual environment, installed at the pinned version."""
    venv = PEERS_DIR / "litellm-venv"
    command = venv / "bin" / "litellm"
    if command.exists():
        out = subprocess.run([str(command), "--version"], capture_output=True, text=True, timeout=120)
        if LITELLM_VERSION in out.stdout + out.stderr:
            return command
    print(f"bench: installing litellm[proxy]=={LITELLM_VERSION} in {venv}…", file=sys.stderr, flush=True)
    _run([sys.executable, "-m", "venv", str(venv)], "creating the LiteLLM virtual environment")
    _run(
        [
            str(venv / "bin" / "pip"),
            "install",
            "--quiet",
            "--disable-pip-version-check",
            f"litellm[proxy]=={LITELLM_VERSION}",
        ],
        "pip install litellm[proxy]",
    )
    if not command.exists():
        raise PeerUnavailable(f"{command} is missing after the install")
    return command


def _wait_ready(peer: Peer, url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if peer.process.poll() is not None:
            log = peer.log_path.read_text(errors="replace")[-600:] if peer.log_path else ""
            raise PeerUnavailable(f"{peer.name} exited with {peer.process.returncode} at start: {log}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status < 500:
                    return
        except urllib.error.HTTPError as exc:
            if exc.code < 500:
                return
        except OSError:
            pass
        time.sleep(0.5)
    peer.stop()
    raise PeerUnavailable(f"{peer.name} did not answer {url} within {timeout_s:.0f} s")


def start_portkey(upstream_base_url: str, workdir: Path) -> Peer:
    """Portkey's gateway on a free port, sending every request to the bench upstream."""
    script = install_portkey()
    port = _free_port()
    log_path = workdir / "portkey.log"
    process = subprocess.Popen(
        ["node", str(script), f"--port={port}", "--headless"],
        cwd=script.parent,
        stdout=open(log_path, "wb"),
        stderr=subprocess.STDOUT,
    )
    headers = {"x-portkey-provider": "openai", "x-portkey-custom-host": upstream_base_url, "Authorization": "Bearer x"}
    peer = Peer("Portkey " + PORTKEY_VERSION, process, port, "/v1/chat/completions", headers, log_path)
    _wait_ready(peer, f"http://127.0.0.1:{port}/", 60)
    return peer


def start_litellm(upstream_base_url: str, workdir: Path, model: str, workers: int = 2) -> Peer:
    """LiteLLM's proxy on a free port with ``workers`` workers and no database, routing ``model`` upstream."""
    command = install_litellm()
    port = _free_port()
    config = workdir / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        f"  - model_name: {model}\n"
        "    litellm_params:\n"
        f"      model: openai/{model}\n"
        f"      api_base: {upstream_base_url}\n"
        "      api_key: not-needed\n"
        "litellm_settings:\n"
        "  telemetry: false\n"
    )
    log_path = workdir / "litellm.log"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("LITELLM_", "DATABASE_URL"))},
        # A keyless proxy on loopback, as the measurement ran it; LiteLLM refuses that unless told.
        "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true",
        "LITELLM_LOG": "ERROR",
        # Without it LiteLLM fetches its model-price map from the internet at start and waits for that.
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_TELEMETRY": "False",
    }
    process = subprocess.Popen(
        [
            str(command),
            "--config",
            str(config),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--num_workers",
            str(workers),
            "--run_gunicorn",
        ],
        cwd=workdir,
        stdout=open(log_path, "wb"),
        stderr=subprocess.STDOUT,
        env=env,
    )
    peer = Peer(f"LiteLLM {LITELLM_VERSION}", process, port, "/v1/chat/completions", {}, log_path)
    _wait_ready(peer, f"http://127.0.0.1:{port}/health/liveliness", 180)
    return peer


def start_peers(upstream_base_url: str, workdir: Path, model: str) -> tuple[list[Peer], list[str]]:
    """Every peer that starts here, and one line per peer that was skipped, saying why."""
    peers, skipped = [], []
    for name, start in (
        ("Portkey", lambda: start_portkey(upstream_base_url, workdir)),
        ("LiteLLM", lambda: start_litellm(upstream_base_url, workdir, model)),
    ):
        try:
            peers.append(start())
        except PeerUnavailable as exc:
            skipped.append(f"{name} skipped: {exc}")
            print(f"bench: {name} skipped: {exc}", file=sys.stderr, flush=True)
    return peers, skipped
