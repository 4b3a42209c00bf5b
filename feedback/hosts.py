"""What a host checks before it serves: its ``paths.data_dir`` and, on a shared store, that it shares it.

One SQLite file on one disk gave two things for free that many hosts on one PostgreSQL store do not:
every process saw the same files under ``paths.data_dir`` (adapters, datasets, reports, the starter
model), and every process read its secrets from the same settings. The long-running commands
(``tuneloop serve``, ``up``, ``scheduler``) call :func:`check_data_dir` before they open the store and
:func:`check_shared_store` after, so a host that would quietly disagree with the others stops at
start-up with one line naming the setting to fix:

- ``paths.data_dir`` must exist (it is created when missing) and take a write: a probe file is created,
  fsynced and deleted.
- On PostgreSQL, ``paths.data_dir`` must be the one folder every host mounts. The first host to start on
  a store writes the store's instance id (kept in the store) into ``<data_dir>/.tuneloop-instance``; a
  host whose folder lacks that file, or holds another store's, refuses. (A SQLite store is a file on
  this host, so there is nothing to share.)
- On PostgreSQL, the secrets a host takes from its settings (``admin.token``, ``gateway.secret_key``) must be
  the same on every host: a feedback token signed by one gateway is checked by whichever gateway the load
  balancer picks, and the admin token must open every gateway. The first start records each one's
  fingerprint in the store (``feedback.secrets.check_fingerprint``); a host with another value refuses.
"""

from __future__ import annotations

import os
import secrets
import uuid
from pathlib import Path

from sqlite_utils import Database

from config.errors import ConfigError
from config.settings import Settings
from feedback.db import POSTGRESQL, dialect, utc_now, write_transaction
from feedback.secrets import check_fingerprint

MARKER_FILE = ".tuneloop-instance"
INSTANCE_ID = "instance_id"  # its name in instance_secrets (an id, not a secret: the table is the store's own)


def shared_secrets(settings: Settings) -> dict[str, str]:
    """The secrets this host takes from its settings, by setting key ("" where unset: the store's own is used)."""
    return {"admin.token": settings.admin.token, "gateway.secret_key": settings.gateway.secret_key}


def check_data_dir(settings: Settings) -> Path:
    """Create ``paths.data_dir`` when missing and prove it takes a write; :class:`ConfigError` naming it if not."""
    folder = settings.data_dir
    probe = folder / f".write-probe-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        try:
            os.write(fd, b"tuneloop write probe\n")
            os.fsync(fd)  # a volume that accepts the write but not the flush (full, gone read-only) fails here
        finally:
            os.close(fd)
        probe.unlink()
    except OSError as exc:
        raise ConfigError(
            f"paths.data_dir: {folder} is not a writable folder ({exc.strerror or exc}); create it or fix its "
            "permissions (on several hosts: mount the shared volume there)",
            field="paths.data_dir",
        ) from exc
    return folder


def check_shared_store(settings: Settings, db: Database) -> None:
    """On PostgreSQL, ``paths.data_dir`` is the store's shared folder and the secrets match every other host's.

    On SQLite there is one host and nothing to compare with: a secret changed in its settings is a rotation, and
    the next start simply uses it.
    """
    if dialect(db) != POSTGRESQL:
        return
    _check_instance_marker(db, settings.data_dir)
    for key, value in shared_secrets(settings).items():
        check_fingerprint(db, key, value)


def _check_instance_marker(db: Database, folder: Path) -> None:
    marker = folder / MARKER_FILE
    # Under a lock of its own: of two first hosts starting at once, exactly one writes the id and its file.
    with write_transaction(db, lock="instance-marker"):
        row = db.execute("SELECT value FROM instance_secrets WHERE name = ?", [INSTANCE_ID]).fetchone()
        if row is None:
            instance_id = str(uuid.uuid4())
            db.execute(
                "INSERT INTO instance_secrets (name, value, created_at) VALUES (?, ?, ?)",
                [INSTANCE_ID, instance_id, utc_now()],
            )
            _write_marker(marker, instance_id)  # inside the transaction: a failed write leaves no id behind
            return
    expected = row[0]
    try:
        found = marker.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        found = None
    except OSError as exc:
        found = f"unreadable ({exc.strerror})"
    if found == expected:
        return
    why = f"it lacks {MARKER_FILE}" if found is None else f"its {MARKER_FILE} belongs to another store"
    raise ConfigError(
        f"paths.data_dir: {folder} is not the folder the other hosts on this store use ({why}, which the first "
        f"host wrote there); mount the shared volume at paths.data_dir on every host (docs/deployment.md)",
        field="paths.data_dir",
    )


def _write_marker(marker: Path, instance_id: str) -> None:
    part = marker.with_name(f"{MARKER_FILE}.{os.getpid()}.part")
    try:
        with open(part, "w", encoding="utf-8") as out:
            out.write(instance_id + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(part, marker)
    except OSError as exc:
        raise ConfigError(
            f"paths.data_dir: cannot write {marker} ({exc.strerror or exc})", field="paths.data_dir"
        ) from exc
