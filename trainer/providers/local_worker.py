"""The local provider's worker: ``python -m trainer.providers.local_worker RUN_ID [--db PATH]``.

Started by ``tuneloop train start`` (through ``LocalProvider.submit``), it trains
one run and leaves ``result.json`` (output folder and metrics) or ``error.json``
in the run's folder; progress and losses go to ``training_events``. It may also
be started by hand, e.g. on a machine with several GPUs::

    accelerate launch --multi_gpu --num_processes 4 -m trainer.providers.local_worker RUN_ID --db var/tuneloop.db

(``training.launcher`` does the same for runs the CLI or the scheduler start).
Only the main process (rank 0) logs and writes results, and writes the run's
heartbeat (``training_runs.heartbeat_at``) every ``HEARTBEAT_S`` seconds on a
connection of its own: a scheduler on another host judges the run by it. When a
beat finds the run cancelled (``tuneloop train cancel`` on any host), the worker
stops itself. Exit codes: 0 trained (or the run had already finished), 1
training failed, 3 another worker holds this run.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import threading
import traceback
from pathlib import Path

from filelock import FileLock, Timeout

from config.settings import load_settings
from feedback.db import open_db, open_store, utc_now, write_transaction
from trainer.providers.local import ERROR_FILE, HEARTBEAT_S, LOCK_FILE, RESULT_FILE, write_json_atomic
from trainer.providers.runs import RunEvent, add_event, get_run, log


def read_jsonl(path: Path) -> list[dict]:
    """Rows of a JSONL file; a missing file is an empty split."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def main(argv: list[str] | None = None) -> int:
    """Train the run named on the command line; see the module docstring for exit codes."""
    parser = argparse.ArgumentParser(
        prog="python -m trainer.providers.local_worker", description=__doc__.split("\n")[0]
    )
    parser.add_argument("run_id")
    parser.add_argument("--db", help="SQLite database (default: the configured store, database.url included)")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    args = parser.parse_args(argv)

    def connect():
        return open_db(args.db) if args.db else open_store(load_settings())

    db = connect()
    run = get_run(db, args.run_id)
    work = Path(run.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    main_process = int(os.environ.get("RANK", "0")) == 0
    lock = FileLock(str(work / LOCK_FILE))
    if main_process:
        try:
            lock.acquire(timeout=0)
        except Timeout:
            print(f"another worker is training {run.id}; exiting", file=sys.stderr)
            return 3
    try:
        if run.finished or (work / RESULT_FILE).exists():
            print(f"{run.id} already finished ({run.state}); nothing to do", file=sys.stderr)
            return 0
        heartbeat = Heartbeat(connect(), run.id) if main_process else None
        try:
            return _train(db, run, work, main_process, progress=not args.no_progress)
        finally:
            if heartbeat:
                heartbeat.stop()
    finally:
        if lock.is_locked:
            lock.release()


class Heartbeat:
    """Writes the run's ``heartbeat_at`` now and every ``HEARTBEAT_S`` seconds; stops this worker once the run
    is cancelled. A failed beat (the store away for a moment) is reported and retried, never fatal."""

    def __init__(self, db, run_id: str):
        self.db, self.run_id = db, run_id
        self._stopped = threading.Event()
        self._beat()
        self._thread = threading.Thread(target=self._loop, name="heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        with write_transaction(self.db, lock=None):
            self.db.execute("UPDATE training_runs SET heartbeat_at = ? WHERE id = ?", [utc_now(), self.run_id])
        (state,) = self.db.execute("SELECT state FROM training_runs WHERE id = ?", [self.run_id]).fetchone()
        if state == "cancelled":
            print(f"{self.run_id} was cancelled; stopping", file=sys.stderr)
            os.kill(os.getpid(), signal.SIGTERM)

    def _loop(self) -> None:
        while not self._stopped.wait(HEARTBEAT_S):
            try:
                self._beat()
            except Exception as exc:  # noqa: BLE001 — training goes on; a poller sees the heartbeat's age
                print(f"heartbeat of {self.run_id} failed: {exc}", file=sys.stderr)

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=HEARTBEAT_S)
        self.db.close()


def _train(db, run, work: Path, main_process: bool, *, progress: bool) -> int:
    if main_process:
        # Logged before the slow imports: from now on the run's log says which process trains it.
        log(
            db,
            run.id,
            "worker started",
            pid=os.getpid(),
            host=socket.gethostname(),
            world_size=int(os.environ.get("WORLD_SIZE", "1")),
        )
    # Imported here: torch and transformers are the slow part of starting, and the checks above need neither.
    from trainer.providers.local_train import train_local

    def on_event(event: RunEvent) -> None:
        if main_process:
            add_event(db, run.id, event)

    dataset = Path(run.dataset_path)
    try:
        result = train_local(
            run.hyperparameters,
            run.hyperparameters["base_model_path"],
            read_jsonl(dataset / "train.jsonl"),
            read_jsonl(dataset / "val.jsonl"),
            work,
            on_event=on_event,
            progress=progress,
        )
    except Exception as exc:  # noqa: BLE001 - every failure must reach error.json, whatever raised it
        traceback.print_exc()
        if main_process:
            message = f"{type(exc).__name__}: {exc}"
            write_json_atomic(work / ERROR_FILE, {"error": message})
            log(db, run.id, f"training failed: {message}", level="error")
        return 1
    if main_process:
        write_json_atomic(work / RESULT_FILE, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
