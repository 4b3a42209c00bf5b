"""What making deleted text unrecoverable costs in SQLite: ``secure_delete``, the WAL checkpoint, ``VACUUM``.

    .venv/bin/python bench/privacy.py              # about a minute on 2 cores
    .venv/bin/python bench/privacy.py --quick      # smoke run (seconds)
    .venv/bin/python bench/privacy.py --json out.json

Issue 21 asks that erased text survive neither in the database file's free pages nor in the WAL, and that the
way be chosen by measuring. Two fresh databases in the same run, identical but for ``PRAGMA secure_delete``:
each records ``turns`` turns (question, answer and a rating with a comment, each with a unique marker) — the
gateway's ordinary write — then deletes half of the conversations in batches, as the retention purge does. For
each: turns recorded per second, conversations deleted per second, how many of the deleted markers are still
in the database file's bytes after the delete (and after a ``wal_checkpoint(TRUNCATE)``), and the time a
``wal_checkpoint(TRUNCATE)`` and a ``VACUUM`` of the remaining file take. Results: docs/benchmarks.md, "Privacy".
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):
    sys.path.insert(0, str(ROOT))

from feedback import ratings, turns, versions  # noqa: E402
from feedback.db import open_db, write_transaction  # noqa: E402

BATCH = 500  # conversations per delete transaction, as feedback/privacy/retention.py


def _marker(i: int) -> str:
    return f"Zq{i:07d}xK"


def run_one(folder: Path, *, secure: bool, n: int) -> dict:
    """Record ``n`` turns, delete every other conversation, and measure (module docstring)."""
    path = folder / ("secure.db" if secure else "plain.db")
    db = open_db(path)
    db.execute(f"PRAGMA secure_delete = {'ON' if secure else 'OFF'}")
    live = versions.ensure_live_version(db, name="bench", provider="builtin")
    started = time.perf_counter()
    ids = []
    for i in range(n):
        mark = _marker(i)
        turn = turns.Turn(
            conversation_id=turns.new_conversation_id(),
            question=f"Where is my order {mark}? I live at 12 Example Street, call 010-0000-0000.",
            answer=f"Your order {mark} left the warehouse yesterday and should arrive within two days.",
            model_version_id=live.id,
        )
        turns.record_turn(db, turn)
        ratings.record_rating(
            db, message_id=turn.assistant_message_id, voter_ref="v", rating="down", comment=f"late again {mark}"
        )
        ids.append(turn.conversation_id)
    record_s = time.perf_counter() - started
    doomed = ids[::2]
    started = time.perf_counter()
    for at in range(0, len(doomed), BATCH):
        with write_transaction(db):
            db.execute(
                "DELETE FROM conversations WHERE id IN (SELECT value FROM json_each(?))",
                [json.dumps(doomed[at : at + BATCH])],
            )
    delete_s = time.perf_counter() - started
    gone = [_marker(i).encode() for i in range(0, n, 2)]
    in_wal = _survivors(Path(f"{path}-wal"), gone)
    started = time.perf_counter()
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    checkpoint_s = time.perf_counter() - started
    in_file = _survivors(path, gone)
    size = path.stat().st_size
    started = time.perf_counter()
    db.execute("VACUUM")
    vacuum_s = time.perf_counter() - started
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    after_vacuum = _survivors(path, gone)
    db.close()
    return {
        "secure_delete": secure,
        "turns": n,
        "turns_per_s": round(n / record_s, 1),
        "deleted_conversations": len(doomed),
        "deleted_per_s": round(len(doomed) / delete_s, 1),
        "deleted_markers_in_wal_before_checkpoint": in_wal,
        "deleted_markers_in_db_after_checkpoint": in_file,
        "deleted_markers_in_db_after_vacuum": after_vacuum,
        "db_bytes": size,
        "checkpoint_s": round(checkpoint_s, 4),
        "vacuum_s": round(vacuum_s, 3),
    }


def _survivors(path: Path, markers: list[bytes]) -> int:
    data = path.read_bytes() if path.exists() else b""
    return sum(1 for m in markers if m in data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--turns", type=int, default=4000)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 300 turns")
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args()
    n = 300 if args.quick else args.turns
    with tempfile.TemporaryDirectory() as tmp:
        results = [run_one(Path(tmp), secure=False, n=n), run_one(Path(tmp), secure=True, n=n)]
    plain, secure = results
    summary = {
        "results": results,
        "record_ratio_secure_vs_plain": round(secure["turns_per_s"] / plain["turns_per_s"], 3),
        "delete_ratio_secure_vs_plain": round(secure["deleted_per_s"] / plain["deleted_per_s"], 3),
    }
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
