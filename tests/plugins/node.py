"""Node for the JavaScript clients the suite drives (tests/node/: the Vercel AI SDK, axe-core).

``make test`` installs node's packages with ``npm ci`` from tests/node/package-lock.json (``make node``). A
missing node or package FAILS the test with that instruction instead of skipping: a green run must mean the
client was tested.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

NODE_DIR = Path(__file__).resolve().parent.parent / "node"


def run_node_script(script: str, *args: str, timeout_s: float = 120) -> list[dict]:
    """Run ``tests/node/<script>`` with ``args``; its stdout's JSON lines, parsed (fails with stderr on exit != 0)."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed: run `make node` (installs Debian's nodejs and the locked packages)")
    if not (NODE_DIR / "node_modules" / ".package-lock.json").exists():
        pytest.fail("tests/node packages are not installed: run `make node` (npm ci from package-lock.json)")
    done = subprocess.run(
        [node, str(NODE_DIR / script), *args], cwd=NODE_DIR, capture_output=True, text=True, timeout=timeout_s
    )
    assert done.returncode == 0, f"{script} exited {done.returncode}:\n{done.stderr[-3000:]}"
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
