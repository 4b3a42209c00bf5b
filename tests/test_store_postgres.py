"""The store on a real PostgreSQL server: the seam's translation and types, the baseline schema against
SQLite's, one migrator, advisory-lock write transactions, storage failures as StorageError, and start-up
errors through the real CLI (one line naming database.url, never the password)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import psycopg
import pytest

from config.errors import StorageError
from feedback import db_postgres, migrations_postgres
from feedback.db import open_db, savepoint, write_transaction
from feedback.db_postgres import translate
from feedback.migrations import MIGRATIONS

ROOT = Path(__file__).resolve().parent.parent
TUNELOOP = Path(sys.executable).with_name("tuneloop")


def test_placeholders_are_translated_outside_quotes_and_casts():
    assert translate("SELECT * FROM t WHERE a = ? AND b = ?") == "SELECT * FROM t WHERE a = %s AND b = %s"
    assert translate("UPDATE t SET a = :value WHERE id = :id") == "UPDATE t SET a = %(value)s WHERE id = %(id)s"
    assert translate("SELECT '?', ':x', \"a?\" , x::text, ? -- why?\n") == (
        "SELECT '?', ':x', \"a?\" , x::text, %s -- why?\n"
    )
    assert translate("SELECT 'it''s 5%' || (a % ?)") == "SELECT 'it''s 5%%' || (a %% %s)"


@pytest.fixture
def pg(postgres_url):
    database = open_db(postgres_url)
    yield database
    database.close()


def test_rows_types_and_placeholders_round_trip(pg):
    pg.execute(
        "INSERT INTO privacy_state (id, free_space_clean) VALUES (?, ?) ON CONFLICT (id) DO UPDATE"
        " SET free_space_clean = excluded.free_space_clean",
        [1, False],
    )
    assert pg.execute("SELECT free_space_clean FROM privacy_state").fetchone() == (0,)
    row = next(pg.query("SELECT SUM(seq + 2) AS total, AVG(seq + 1) AS mean, '100%' AS pct FROM kb_state"))
    assert row == {"total": 2, "mean": 1.0, "pct": "100%"}
    assert type(row["total"]) is int
    named = pg.execute("SELECT :a || :b", {"a": "x", "b": "y"}).fetchone()
    assert named == ("xy",)


def _sqlite_schema(tmp_path) -> dict:
    db = open_db(tmp_path / "parity.db")
    schema = {}
    for (table,) in db.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite%' AND name NOT LIKE '\\_%'"
        " ESCAPE '\\'"
    ).fetchall():
        columns = [
            # A primary-key column is NOT NULL on PostgreSQL; SQLite's allows NULL only through a legacy quirk.
            (name, _sqlite_type(kind), bool(notnull) or bool(pk), _default(default))
            for _cid, name, kind, notnull, default, pk in db.execute(f"PRAGMA table_info({table})")
        ]
        indexes = {
            name
            for name, origin in ((row[1], row[3]) for row in db.execute(f"PRAGMA index_list({table})").fetchall())
            if origin == "c"
        }
        schema[table] = {"columns": columns, "indexes": indexes}
    db.close()
    return schema


def _sqlite_type(kind: str) -> str:
    return {"TEXT": "text", "INTEGER": "bigint", "REAL": "double precision"}[kind.upper()]


def _default(value) -> str | None:
    if value is None:
        return None
    text = str(value).split("::")[0]
    return text.strip("'")


def _postgres_schema(pg) -> dict:
    schema = {}
    for table in pg.table_names():
        if table == migrations_postgres.LEDGER:
            continue
        columns = [
            (name, kind, nullable == "NO", None if identity == "YES" else _default(default))
            for name, kind, nullable, default, identity in pg.execute(
                "SELECT column_name, data_type, is_nullable, column_default, is_identity"
                " FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = ?"
                " ORDER BY ordinal_position",
                [table],
            )
            if name != "rowid"
        ]
        indexes = {
            name
            for (name,) in pg.execute(
                "SELECT i.relname FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid"
                " JOIN pg_class t ON t.oid = x.indrelid WHERE t.relname = ? AND NOT x.indisprimary"
                " AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = x.indexrelid)",
                [table],
            )
        }
        schema[table] = {"columns": columns, "indexes": indexes}
    return schema


def test_the_postgresql_baseline_equals_the_sqlite_schema(pg, tmp_path):
    """Same tables, same columns in the same order, same types, nullability, defaults and named indexes."""
    sqlite, postgres = _sqlite_schema(tmp_path), _postgres_schema(pg)
    assert sorted(postgres) == sorted(sqlite)
    for table in sqlite:
        assert postgres[table] == sqlite[table], table


def test_text_sorts_by_bytes_and_every_table_but_the_counters_has_a_rowid(pg):
    collations = pg.execute(
        "SELECT DISTINCT collation_name FROM information_schema.columns WHERE table_schema = current_schema()"
        " AND data_type = 'text' AND table_name <> ?",
        [migrations_postgres.LEDGER],
    ).fetchall()
    assert collations == [("C",)]
    without = {t for t in pg.table_names() if t != migrations_postgres.LEDGER and "rowid" not in _column_names(pg, t)}
    assert without == {"rate_limit_counters"}


def _column_names(pg, table: str) -> set[str]:
    return {
        name
        for (name,) in pg.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema()"
            " AND table_name = ?",
            [table],
        )
    }


def test_the_ledger_keeps_every_migration_name(pg):
    assert migrations_postgres.applied(pg) == [m.name for m in MIGRATIONS._migrations]
    assert migrations_postgres.pending(pg) == []


def test_concurrent_first_opens_migrate_once(postgres_server):
    url = postgres_server.url("race")
    postgres_server.admin("CREATE DATABASE race")  # empty: no template
    errors, applied = [], []

    def opener():
        try:
            db = open_db(url, migrate=False)
            applied.append(migrations_postgres.apply_migrations(db))
            db.close()
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=opener) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert errors == []
        assert sorted(len(done) for done in applied) == [0, 0, 0, 0, len(MIGRATIONS._migrations)]
    finally:
        postgres_server.drop_database(url)


def test_a_migration_after_the_baseline_runs_once_and_is_recorded(pg, postgres_url, monkeypatch):
    def m999_test_column(db):
        db.execute("ALTER TABLE kb_state ADD COLUMN note TEXT")

    monkeypatch.setattr(
        MIGRATIONS, "_migrations", [*MIGRATIONS._migrations, MIGRATIONS._Migration("m999", m999_test_column)]
    )
    assert migrations_postgres.pending(pg) == ["m999"]
    reopened = open_db(postgres_url)
    reopened.close()
    again = open_db(postgres_url)
    assert migrations_postgres.pending(again) == []
    assert "note" in _column_names(again, "kb_state")
    again.close()


def test_write_transactions_serialise_read_then_write(postgres_url):
    """4 writers × 40 read-then-write increments: none lost (READ COMMITTED alone would lose some)."""
    errors = []

    def writer():
        db = open_db(postgres_url, migrate=False)
        try:
            for _ in range(40):
                with write_transaction(db):
                    (seq,) = db.execute("SELECT seq FROM kb_state WHERE id = 1").fetchone()
                    db.execute("UPDATE kb_state SET seq = ? WHERE id = 1", [seq + 1])
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            db.close()

    threads = [threading.Thread(target=writer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    db = open_db(postgres_url, migrate=False)
    assert errors == []
    assert db.execute("SELECT seq FROM kb_state").fetchone() == (160,)
    db.close()


def test_a_savepoint_lets_the_transaction_survive_a_failed_statement(pg):
    with write_transaction(pg):
        pg.execute("INSERT INTO instance_secrets (name, value, created_at) VALUES ('a', 'v', 't')")
        with pytest.raises(psycopg.errors.UniqueViolation), savepoint(pg):
            pg.execute("INSERT INTO instance_secrets (name, value, created_at) VALUES ('a', 'w', 't')")
        pg.execute("INSERT INTO instance_secrets (name, value, created_at) VALUES ('b', 'v', 't')")
    assert pg.execute("SELECT name, value FROM instance_secrets ORDER BY name").fetchall() == [("a", "v"), ("b", "v")]


def test_a_writer_waiting_past_the_busy_timeout_gets_a_storage_error(postgres_url):
    holder = open_db(postgres_url, migrate=False)
    waiter = open_db(postgres_url, busy_timeout_ms=200, migrate=False)
    try:
        with write_transaction(holder):
            with pytest.raises(StorageError, match="busy_timeout_ms"), write_transaction(waiter):
                pass
        with write_transaction(waiter, lock="another"):  # a different lock name does not wait
            pass
    finally:
        holder.close()
        waiter.close()


def test_a_full_disk_is_a_storage_error_and_the_transaction_rolls_back(pg):
    pg.execute(
        "CREATE FUNCTION disk_full() RETURNS trigger LANGUAGE plpgsql AS"
        " $$ BEGIN RAISE EXCEPTION 'could not extend file' USING ERRCODE = 'disk_full'; END $$"
    )
    pg.execute("CREATE TRIGGER disk_full BEFORE INSERT ON api_keys FOR EACH ROW EXECUTE FUNCTION disk_full()")
    with pytest.raises(StorageError, match="out of disk"), write_transaction(pg):
        pg.execute("INSERT INTO instance_secrets (name, value, created_at) VALUES ('x', 'v', 't')")
        pg.execute("INSERT INTO api_keys (id, name, prefix, hash, created_at) VALUES ('k', 'n', 'p', 'h', 't')")
    assert pg.execute("SELECT COUNT(*) FROM instance_secrets").fetchone() == (0,)


def test_the_pool_hands_out_configured_connections_and_takes_them_back(postgres_url):
    pool = db_postgres.PgPool(postgres_url, size=2, busy_timeout_ms=300, connect_timeout_s=5)
    try:
        with pool.connection() as a, pool.connection() as b:
            assert a.conn is not b.conn
            with pytest.raises(StorageError, match="pool_size"):
                pool.acquire()  # both are out: waits busy_timeout_ms, then 503
            assert a.execute("SELECT ?", [True]).fetchone() == (1,)
            a.conn.execute("BEGIN")
        with pool.connection() as again:
            assert not again.in_transaction  # a connection comes back rolled back
    finally:
        pool.close_all()


def test_psycopg_imported_before_gevent_patching_is_refused():
    script = (
        "import psycopg\n"
        "from gevent import monkey; monkey.patch_all()\n"
        "from feedback.db_postgres import check_gevent_wait\n"
        "try:\n    check_gevent_wait()\nexcept RuntimeError as e:\n    print('refused:', e)\n"
    )
    patched_first = "from gevent import monkey; monkey.patch_all()\n" + script.replace(
        "from gevent import monkey; monkey.patch_all()\n", "", 1
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.startswith("refused: psycopg was imported before gevent")
    ok = subprocess.run([sys.executable, "-c", patched_first], capture_output=True, text=True, cwd=ROOT, check=True)
    assert ok.stdout == ""


def _cli(*args: str, env: dict, cwd: Path) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith("TUNELOOP_") and k != "DATABASE_URL"}
    return subprocess.run([str(TUNELOOP), *args], capture_output=True, text=True, env={**full, **env}, cwd=cwd)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        (
            "postgresql://tuneloop:s3cret-pw@127.0.0.1:1/tuneloop",
            "cannot connect to postgresql://tuneloop:***@127.0.0.1:1",
        ),
        ("mysql://tuneloop:s3cret-pw@db/tuneloop", "is not a database URL"),
        ("postgres://tuneloop:s3cret-pw@db:five/tuneloop", "port"),
    ],
)
def test_a_bad_or_unreachable_url_stops_the_cli_with_one_line(tmp_path, url, says):
    out = _cli("db", "migrate", env={"DATABASE_URL": url, "TUNELOOP_PATHS__DATA_DIR": str(tmp_path)}, cwd=tmp_path)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: database.url: ") and says in lines[0], out.stderr
    assert "s3cret-pw" not in out.stderr + out.stdout


def test_a_role_without_rights_stops_start_up_with_one_line(postgres_server, postgres_url, tmp_path):
    postgres_server.admin("DROP ROLE IF EXISTS reader")
    postgres_server.admin("CREATE ROLE reader LOGIN")
    url = postgres_url.replace(f"{db_postgres_user()}@", "reader@")
    out = _cli(
        "db", "migrate", env={"TUNELOOP_DATABASE__URL": url, "TUNELOOP_PATHS__DATA_DIR": str(tmp_path)}, cwd=tmp_path
    )
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: database.url: the role may not"), out.stderr
    assert "permission denied" in lines[0]


def db_postgres_user() -> str:
    from tests.plugins.postgres import SUPERUSER

    return SUPERUSER


def test_db_migrate_and_status_on_postgresql(postgres_server, tmp_path):
    postgres_server.admin("CREATE DATABASE cli_fresh")
    url = postgres_server.url("cli_fresh")
    env = {"TUNELOOP_DATABASE__URL": url, "TUNELOOP_PATHS__DATA_DIR": str(tmp_path)}
    try:
        before = _cli("db", "status", env=env, cwd=tmp_path)
        assert before.returncode == 0, before.stderr
        assert f"0 applied, {len(MIGRATIONS._migrations)} pending" in before.stdout
        done = _cli("db", "migrate", env=env, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert f"applied {len(MIGRATIONS._migrations)} migration(s): m001_core" in done.stdout
        after = _cli("db", "status", env=env, cwd=tmp_path)
        assert f"{len(MIGRATIONS._migrations)} applied, 0 pending" in after.stdout
        assert "store: PostgreSQL postgresql://postgres@/cli_fresh" in after.stdout
        assert not (tmp_path / "tuneloop.db").exists()  # nothing went to SQLite
    finally:
        postgres_server.drop_database(url)
