"""What ``tuneloop up`` says about the processes it supervises, kept where ``/readyz`` can read it.

``tuneloop up`` writes ``<paths.data_dir>/run/processes.<host name>.json`` whenever one of its
children changes state (starting, running, restarting after a crash, stopped),
and the gateway's ``/readyz`` adds the model server's entry to its model check:
a probe during a crash says "restarting after it was killed by SIGKILL, next
start at …", not only "cannot connect". The file names the supervisor's pid; one
left behind by a supervisor that is gone is ignored. Without ``tuneloop up``
(``tuneloop serve`` under systemd, compose, Kubernetes) there is no file and
nothing is added. The host's name is in the file's name because on many hosts ``paths.data_dir`` is one shared
volume: a gateway reads only its own host's supervisor, never the model server another host runs.
"""

from __future__ import annotations

import json
import os
import re
import socket
from pathlib import Path


def status_file(data_dir: Path) -> Path:
    """Where this host's supervisor of ``data_dir`` writes its children's state."""
    host = re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname()) or "localhost"
    return Path(data_dir) / "run" / f"processes.{host}.json"


def write_status(data_dir: Path, children: dict[str, dict]) -> None:
    """Replace the file atomically with ``children`` (name → state) and this process's pid."""
    path = status_file(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"supervisor_pid": os.getpid(), "children": children}, indent=1))
    os.replace(tmp, path)


def read_status(data_dir: Path) -> dict[str, dict] | None:
    """The children's state, or None when no live supervisor wrote one."""
    try:
        data = json.loads(status_file(data_dir).read_text())
        os.kill(int(data["supervisor_pid"]), 0)  # raises when that process is gone
        return dict(data["children"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
