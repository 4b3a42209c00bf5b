"""Copy a whole store from one engine to the other (SQLite ↔ PostgreSQL), resumably, and prove the copy equal.

What ``tuneloop db copy SRC DST`` runs. The destination is migrated first and both migration ledgers must
list the same names, so every table has the same columns on both sides. Tables are copied parents first
(foreign-key order), each in keyset batches in the order its rows were written (SQLite's rowid, where the
source is SQLite; primary-key order otherwise), so a table's rows lie in the destination as they would in a live
store: a week's messages together, not spread over the whole table by random ids (the weekly report at 1M
turns took 8.1 s on PostgreSQL when they were, 2.2 s in time order; docs/benchmarks.md). SQLite's rowid and PostgreSQL's
``rowid``/identity columns are carried, so queries that break ties by rowid order rows the same after the
move, and PostgreSQL's identity sequences are set past the copied values. Each batch commits together with
its resume point (the table and the last key written, in the order read) in ``_copy_progress`` in the destination, so
an interrupted copy continues where it stopped (``resume=True``) and never writes a row twice.

The source is read in one snapshot: one read transaction on SQLite (WAL readers see the file as it was
when they began), ``REPEATABLE READ`` on PostgreSQL; nothing is written to it. At the end every table is
counted and hashed on both sides (sha256 over its canonical rows in primary-key order), in the same
snapshot the copy read. A resumed copy reads a new snapshot: rows written to the source between the two
runs make the comparison fail, naming the table, rather than go unnoticed.

Not copied: the migration ledgers (each engine has its own, checked equal instead), ``sqlite_sequence``
(SQLite keeps it by itself), ``rate_limit_counters`` (a minute's counters) and ``_copy_progress``.
Triggers are off while a batch is written: rows arrive as they were, not as an insert would derive them.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from config.errors import Conflict, InvalidRequest
from config.settings import is_postgres_url, redact_url, sqlite_url_path
from feedback import sql
from feedback.db import POSTGRESQL, column_names, dialect, open_db, write_transaction
from feedback.migrations import MIGRATIONS

PROGRESS = "_copy_progress"
SKIPPED = frozenset({"_sqlite_migrations", "_migrations", "sqlite_sequence", "rate_limit_counters", PROGRESS})
DEFAULT_BATCH = 5000

PROGRESS_SQL = f"""
CREATE TABLE IF NOT EXISTS {PROGRESS} (
    table_name text PRIMARY KEY,
    last_key text,
    rows bigint NOT NULL DEFAULT 0,
    done bigint NOT NULL DEFAULT 0
)
"""


@dataclass(frozen=True)
class TableShape:
    """What the copy needs to know about one table (the same on both sides, checked)."""

    name: str
    columns: list[str]  # the named columns, sorted (engine-independent order), without rowid
    key: list[str]  # the primary key's columns, in key order ("rowid" when it has none)
    has_rowid: bool
    writes_rowid: bool = False  # the target takes the rowid as a value (not derived from the id)
    order: list[str] = field(default_factory=list)  # the copy's read order; the primary key when empty
    triggers: list[tuple[str, str]] = field(default_factory=list)  # the target's (name, SQL) for this table


@dataclass
class TableCheck:
    """One table's figures on both sides after the copy."""

    name: str
    source_rows: int
    target_rows: int
    source_sha256: str
    target_sha256: str

    @property
    def equal(self) -> bool:
        return self.source_rows == self.target_rows and self.source_sha256 == self.target_sha256


@dataclass
class CopyResult:
    """What a copy did: rows written now, and the per-table comparison."""

    copied: dict[str, int] = field(default_factory=dict)
    checks: list[TableCheck] = field(default_factory=list)

    @property
    def mismatched(self) -> list[str]:
        return [c.name for c in self.checks if not c.equal]


def describe(target: str) -> str:
    """A store's name for messages: its engine and where it is (a password never shown)."""
    if is_postgres_url(target):
        return f"PostgreSQL {redact_url(target)}"
    return f"SQLite {sqlite_url_path(target)}"


def open_source(target: str):
    """The source store, opened without migrating or creating anything."""
    if not is_postgres_url(target) and not Path(sqlite_url_path(target)).is_file():
        raise InvalidRequest(f"SRC: no SQLite store at {sqlite_url_path(target)}", field="SRC")
    return open_db(target, migrate=False)


def applied_migrations(db) -> list[str]:
    """The names in the store's migration ledger."""
    if dialect(db) == POSTGRESQL:
        from feedback import migrations_postgres

        return migrations_postgres.applied(db)
    return [m.name for m in MIGRATIONS.applied(db)]


def check_ledgers(source, target) -> None:
    """Refuse (naming the migrations) unless both stores have applied exactly the same migrations."""
    src, dst = set(applied_migrations(source)), set(applied_migrations(target))
    if src == dst:
        return
    parts = []
    if dst - src:
        parts.append(f"SRC lacks {', '.join(sorted(dst - src))} (upgrade it first: `tuneloop db migrate` on SRC)")
    if src - dst:
        parts.append(f"DST lacks {', '.join(sorted(src - dst))} (SRC was migrated by a newer tuneloop)")
    raise Conflict("the two stores' migration ledgers differ: " + "; ".join(parts))


# ---------------------------------------------------------------------------------------------- schema


def table_names(db) -> list[str]:
    """The store's own tables (no ledgers, no SQLite internals)."""
    if dialect(db) == POSTGRESQL:
        names = db.table_names()
    else:
        names = [
            name
            for (name,) in db.execute(
                "SELECT name FROM pragma_table_list WHERE schema = 'main' AND type = 'table'"
                " AND substr(name, 1, 7) <> 'sqlite_'"
            )
        ]
    return sorted(n for n in names if n not in SKIPPED)


def _primary_key(db, table: str) -> list[str]:
    if dialect(db) == POSTGRESQL:
        rows = db.execute(
            "SELECT a.attname FROM pg_index i"
            " JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n) ON true"
            " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum"
            " WHERE i.indrelid = ?::regclass AND i.indisprimary ORDER BY k.n",
            [table],
        ).fetchall()
    else:
        rows = db.execute("SELECT name FROM pragma_table_info(?) WHERE pk > 0 ORDER BY pk", [table]).fetchall()
    return [name for (name,) in rows] or ["rowid"]


def _has_rowid(db, table: str) -> bool:
    if dialect(db) == POSTGRESQL:
        return "rowid" in column_names(db, table)
    return not db.execute("SELECT wr FROM pragma_table_list WHERE name = ?", [table]).fetchone()[0]


def shape(source, target, table: str) -> TableShape:
    """The table's shape, or a refusal naming what differs between the two stores."""
    shapes = []
    for db in (source, target):
        columns = sorted(c for c in column_names(db, table) if c != "rowid")
        shapes.append((columns, _primary_key(db, table), _has_rowid(db, table)))
    if shapes[0] != shapes[1]:
        raise Conflict(f"table {table} differs between the two stores (columns, primary key or rowid): {shapes}")
    columns, key, has_rowid = shapes[0]
    return TableShape(
        table,
        columns,
        key,
        has_rowid,
        writes_rowid=has_rowid and _writes_rowid(target, table),
        # SQLite's rowid is its table's own key and insertion order; PostgreSQL's rowid has no index to read by.
        order=["rowid"] if has_rowid and dialect(source) != POSTGRESQL else [],
        triggers=_triggers(target, table),
    )


def _references(db, table: str) -> set[str]:
    if dialect(db) == POSTGRESQL:
        rows = db.execute(
            "SELECT confrelid::regclass::text FROM pg_constraint WHERE contype = 'f' AND conrelid = ?::regclass",
            [table],
        ).fetchall()
    else:
        rows = db.execute('SELECT "table" FROM pragma_foreign_key_list(?)', [table]).fetchall()
    return {name for (name,) in rows}


def foreign_key_order(db, tables: list[str]) -> list[str]:
    """``tables`` with every table after the tables it references (alphabetical among equals)."""
    needs = {t: _references(db, t) & set(tables) - {t} for t in tables}
    ordered: list[str] = []
    while needs:
        ready = sorted(t for t, parents in needs.items() if not parents - set(ordered))
        if not ready:
            raise Conflict(f"the foreign keys between {', '.join(sorted(needs))} form a cycle; cannot order the copy")
        ordered += ready
        for t in ready:
            del needs[t]
    return ordered


# ---------------------------------------------------------------------------------------------- reading


def _select_list(db, table: TableShape) -> str:
    columns = [f'"{c}"' for c in table.columns]
    if table.has_rowid:
        columns.append('rowid AS "rowid"' if dialect(db) != POSTGRESQL else '"rowid"')
    return ", ".join(columns)


def read_batches(
    db, table: TableShape, *, after: list | None, size: int, by: list[str] | None = None
) -> Iterator[list[tuple]]:
    """The table's rows (named columns sorted, then rowid) ordered by ``by`` (a unique key; default the primary
    key), ``size`` at a time, after the key values ``after``."""
    by = by or table.key
    key = ", ".join(f'"{k}"' if k != "rowid" else "rowid" for k in by)
    select = f'SELECT {_select_list(db, table)} FROM "{table.name}"'
    while True:
        if after is None:
            rows = db.execute(f"{select} ORDER BY {key} LIMIT ?", [size]).fetchall()
        else:
            marks = ", ".join("?" for _ in after)
            rows = db.execute(f"{select} WHERE ({key}) > ({marks}) ORDER BY {key} LIMIT ?", [*after, size]).fetchall()
        if not rows:
            return
        yield [tuple(r) for r in rows]
        after = key_of(table, rows[-1], by)


def key_of(table: TableShape, row: tuple, by: list[str] | None = None) -> list:
    """The values of the key ``by`` (default the primary key) of a row as :func:`read_batches` gives it."""
    return [row[(table.columns + ["rowid"]).index(k)] for k in by or table.key]


def canonical(row: tuple) -> bytes:
    """One row as the bytes the checksum hashes: the same values give the same bytes on either engine."""
    values = [{"hex": bytes(v).hex()} if isinstance(v, (bytes, memoryview)) else v for v in row]
    return json.dumps(values, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def checksum(db, table: TableShape, *, size: int = DEFAULT_BATCH) -> tuple[int, str]:
    """The table's row count and sha256 over its canonical rows in primary-key order."""
    digest, count = hashlib.sha256(), 0
    for batch in read_batches(db, table, after=None, size=size):
        for row in batch:
            digest.update(canonical(row))
        count += len(batch)
    return count, digest.hexdigest()


# ---------------------------------------------------------------------------------------------- writing


def _write_batch(db, table: TableShape, rows: list[tuple]) -> None:
    """Insert one batch (inside the caller's transaction), the table's triggers off."""
    columns = list(table.columns)
    if table.writes_rowid:
        columns.append("rowid")
    else:
        rows = [row[: len(table.columns)] for row in rows]
    names = ", ".join(f'"{c}"' for c in columns)
    if dialect(db) == POSTGRESQL:
        with db.conn.cursor().copy(f'COPY "{table.name}" ({names}) FROM STDIN') as copy:
            for row in rows:
                copy.write_row(row)
    else:
        marks = ", ".join("?" for _ in columns)
        sql.executemany(db, f'INSERT INTO "{table.name}" ({names}) VALUES ({marks})', rows)


def _writes_rowid(db, table: str) -> bool:
    # The rowid is written unless it is derived from the id: a PostgreSQL rowid GENERATED ALWAYS AS (id), or a
    # SQLite INTEGER PRIMARY KEY, which is the rowid itself.
    if dialect(db) == POSTGRESQL:
        generated = db.execute(
            "SELECT attgenerated FROM pg_attribute WHERE attrelid = ?::regclass AND attname = 'rowid'", [table]
        ).fetchone()[0]
        return generated == ""
    (alias,) = db.execute(
        "SELECT COUNT(*) FROM pragma_table_info(?) WHERE pk = 1 AND upper(type) = 'INTEGER'"
        " AND (SELECT COUNT(*) FROM pragma_table_info(?) WHERE pk > 0) = 1",
        [table, table],
    ).fetchone()
    return not alias


def _triggers(db, table: str) -> list[tuple[str, str]]:
    if dialect(db) == POSTGRESQL:
        sql = "SELECT tgname, '' FROM pg_trigger WHERE tgrelid = ?::regclass AND NOT tgisinternal"
    else:
        sql = "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = ?"
    return [(name, text) for name, text in db.execute(sql, [table]).fetchall()]


class _TriggersOff:
    """Within the current transaction, the table's own triggers do not fire (restored before it commits).

    PostgreSQL: ``DISABLE TRIGGER USER`` (foreign keys stay checked). SQLite has no switch: the triggers
    are dropped and created again from their SQL, inside the same transaction.
    """

    def __init__(self, db, table: TableShape):
        self.db, self.table = db, table

    def _each(self, postgres: str) -> None:
        if dialect(self.db) == POSTGRESQL:
            self.db.execute(f'ALTER TABLE "{self.table.name}" {postgres} TRIGGER USER')

    def __enter__(self):
        if self.table.triggers:
            self._each("DISABLE")
            if dialect(self.db) != POSTGRESQL:
                for name, _ in self.table.triggers:
                    self.db.execute(f'DROP TRIGGER "{name}"')
        return self

    def __exit__(self, kind, exc, tb):
        if kind is None and self.table.triggers:  # on an error the transaction rolls back, triggers with it
            self._each("ENABLE")
            if dialect(self.db) != POSTGRESQL:
                for _, sql in self.table.triggers:
                    self.db.execute(sql)
        return False


def _refused(table: TableShape, batch: list[tuple], exc: BaseException) -> Conflict:
    # DST would not take a row (a NUL character in text on PostgreSQL, a value of the wrong type): say which
    # batch, keep what committed before it, and let the operator fix the row and resume.
    reason = next(iter(str(exc).strip().splitlines()), type(exc).__name__)
    return Conflict(
        f"DST refused a row of {table.name} in the batch from key {key_of(table, batch[0])} to"
        f" {key_of(table, batch[-1])}: {reason}; the batches before it are committed — fix the row in SRC,"
        " then run again with --resume"
    )


def _progress(target) -> dict[str, tuple[list | None, int, bool]]:
    rows = target.execute(f"SELECT table_name, last_key, rows, done FROM {PROGRESS}").fetchall()
    return {name: (json.loads(key) if key else None, count, bool(done)) for name, key, count, done in rows}


def _save_progress(target, table: str, last_key: list | None, rows: int, done: bool) -> None:
    target.execute(f"DELETE FROM {PROGRESS} WHERE table_name = ?", [table])
    target.execute(
        f"INSERT INTO {PROGRESS} (table_name, last_key, rows, done) VALUES (?, ?, ?, ?)",
        [table, json.dumps(last_key) if last_key is not None else None, rows, int(done)],
    )


def _count(db, table: str) -> int:
    return db.execute(f'SELECT COUNT(*) FROM "{table}"').fetchone()[0]


def fresh_counts() -> dict[str, int]:
    """Rows per table in a store that migrations alone made (the one-row state tables): what "empty" means."""
    with tempfile.TemporaryDirectory(prefix="tuneloop-copy-") as folder:
        db = open_db(os.path.join(folder, "fresh.db"))
        try:
            return {t: _count(db, t) for t in table_names(db)}
        finally:
            db.close()


def check_empty(target, tables: list[str]) -> None:
    """Refuse to copy into a store that holds data beyond what its migrations wrote."""
    fresh = fresh_counts()
    full = [(t, n) for t in tables if (n := _count(target, t)) > fresh.get(t, 0)]
    if full:
        listed = ", ".join(f"{t} ({n} rows)" for t, n in full[:5])
        raise Conflict(
            f"DST is not empty: {listed}{' …' if len(full) > 5 else ''}; pass --overwrite to replace its rows,"
            " or --resume to continue an interrupted copy"
        )


def _reset_identities(target, tables: list[TableShape]) -> None:
    # Rows arrived with their identity values; the next insert must not reuse one.
    for table in tables:
        for (column,) in target.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = ?::regclass AND attidentity <> ''", [table.name]
        ).fetchall():
            target.execute(
                f'SELECT setval(pg_get_serial_sequence(?, ?), COALESCE(MAX("{column}"), 0) + 1, false)'
                f' FROM "{table.name}"',
                [f'"{table.name}"', column],
            )


class _Snapshot:
    """The source read in one snapshot for the whole run (SQLite read transaction / REPEATABLE READ)."""

    def __init__(self, db):
        self.db = db

    def __enter__(self):
        if dialect(self.db) == POSTGRESQL:
            self.db.execute("SET idle_in_transaction_session_timeout = 0")  # the copy waits on the target
            self.db.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        else:
            self.db.execute("BEGIN")
        self.db.execute("SELECT COUNT(*) FROM sqlite_master" if dialect(self.db) != POSTGRESQL else "SELECT 1")
        return self.db

    def __exit__(self, kind, exc, tb):
        try:
            self.db.execute("ROLLBACK")
        except Exception:  # noqa: BLE001 - the connection may be the failure being raised; keep that error
            if kind is None:
                raise
        return False


def copy_store(
    source,
    target,
    *,
    overwrite: bool = False,
    resume: bool = False,
    batch_size: int = DEFAULT_BATCH,
    progress: Callable[[str, int], None] | None = None,
    on_total: Callable[[int], None] | None = None,
) -> CopyResult:
    """Copy every table of ``source`` into the migrated ``target``, then compare both sides table by table.

    ``progress(table, rows)`` is called after each committed batch; ``on_total(rows)`` once with the
    number of rows the run will copy. Raises :class:`Conflict` for differing ledgers or schemas, or a
    non-empty target without ``overwrite``/``resume``.
    """
    if batch_size < 1:
        raise InvalidRequest("--batch-size must be at least 1", field="batch_size")
    check_ledgers(source, target)
    result = CopyResult()
    with _Snapshot(source):
        names = foreign_key_order(target, table_names(source))
        missing = sorted(set(names) ^ set(table_names(target)))
        if missing:
            raise Conflict(f"the two stores' tables differ: {', '.join(missing)}")
        tables = [shape(source, target, name) for name in names]
        target.execute(PROGRESS_SQL)
        done = _progress(target) if resume else {}
        if resume and not done:
            raise Conflict("nothing to resume: DST records no interrupted copy; run without --resume")
        if not resume:
            if not overwrite:
                check_empty(target, names)
            with write_transaction(target, lock="copy"):
                for table in reversed(tables):
                    with _TriggersOff(target, table):
                        target.execute(f'DELETE FROM "{table.name}"')
                target.execute(f"DELETE FROM {PROGRESS}")
        if on_total:
            on_total(sum(_count(source, t.name) - done.get(t.name, (None, 0, False))[1] for t in tables))
        for table in tables:
            last_key, rows, finished = done.get(table.name, (None, 0, False))
            if finished:
                continue
            for batch in read_batches(source, table, after=last_key, size=batch_size, by=table.order):
                last_key = key_of(table, batch[-1], table.order)
                try:
                    with write_transaction(target, lock="copy"):
                        with _TriggersOff(target, table):
                            _write_batch(target, table, batch)
                        _save_progress(target, table.name, last_key, rows + len(batch), False)
                except sql.driver_errors() as exc:
                    raise _refused(table, batch, exc) from exc
                rows += len(batch)
                result.copied[table.name] = result.copied.get(table.name, 0) + len(batch)
                if progress:
                    progress(table.name, len(batch))
            with write_transaction(target, lock="copy"):
                _save_progress(target, table.name, last_key, rows, True)
        if dialect(target) == POSTGRESQL:
            with write_transaction(target, lock="copy"):
                _reset_identities(target, tables)
        for table in tables:
            src_rows, src_sum = checksum(source, table, size=batch_size)
            dst_rows, dst_sum = checksum(target, table, size=batch_size)
            result.checks.append(TableCheck(table.name, src_rows, dst_rows, src_sum, dst_sum))
    if not result.mismatched:
        target.execute(f"DROP TABLE {PROGRESS}")
    return result
