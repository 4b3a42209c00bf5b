"""feedback/sql.py's helpers on a real SQLite file, and the SQL text they give PostgreSQL."""

from __future__ import annotations

import ast
import json
import re
import sqlite3
from pathlib import Path

import pytest
import sqlite_utils

from config.errors import StorageError
from feedback import sql
from feedback.db import write_transaction


class _PostgresText:
    """Only the dialect of a PostgreSQL handle: enough to render the SQL text the helpers give it."""

    dialect = "postgresql"


PG = _PostgresText()


@pytest.fixture
def store(tmp_path):
    database = sqlite_utils.Database(tmp_path / "t.db")
    database.execute("CREATE TABLE t (id TEXT PRIMARY KEY, name TEXT, rating INTEGER, data TEXT)")
    database.conn.executemany(
        "INSERT INTO t VALUES (?, ?, ?, ?)",
        [
            ("a", "Alice", 1, '{"score": 2.5, "report": {"week": "2026-W48"}}'),
            ("b", "bob_50%", -1, '{"score": 10, "file_id": null}'),
            ("c", None, None, "{}"),
        ],
    )
    database.conn.commit()
    yield database
    database.close()


def _ids(database, where: str, params) -> list[str]:
    return [row["id"] for row in database.query(f"SELECT id FROM t WHERE {where} ORDER BY id", params)]


def test_dialect_is_sqlite_for_sqlite_utils_and_read_from_the_handle_otherwise(store):
    assert sql.dialect(store) == "sqlite"
    assert sql.dialect(PG) == "postgresql"


@pytest.mark.parametrize(
    ("values", "negate", "expected"),
    [(["a", "c", "zz"], False, ["a", "c"]), (["a"], True, ["b", "c"]), ([], False, []), ([], True, ["a", "b", "c"])],
)
def test_in_list_matches_the_values_and_an_empty_list_matches_nothing(store, values, negate, expected):
    where, params = sql.in_list(store, "id", values, negate=negate)
    assert params == [json.dumps(values)]
    assert _ids(store, where, params) == expected


def test_in_list_with_a_name_gives_a_named_parameter(store):
    where, params = sql.in_list(store, "id", ("b", "c"), name="ids")
    assert where == "id IN (SELECT value FROM json_each(:ids))"
    assert _ids(store, where, params) == ["b", "c"]
    assert sql.in_list(PG, "id", ("b",), name="ids") == ("id = ANY(:ids)", {"ids": ["b"]})


def test_in_list_on_postgresql_binds_the_list_as_one_array():
    assert sql.in_list(PG, "m.id", ["x", "y"]) == ("m.id = ANY(?)", [["x", "y"]])
    assert sql.in_list(PG, "m.id", [], negate=True) == ("NOT (m.id = ANY(?))", [[]])


def test_json_text_and_json_number_read_a_key_and_give_null_when_absent_or_json_null(store):
    rows = store.execute(
        f"SELECT id, {sql.json_text(store, 'data', '$.report.week')}, {sql.json_number(store, 'data', '$.score')},"
        f" {sql.json_text(store, 'data', '$.file_id')} FROM t ORDER BY id"
    ).fetchall()
    assert rows == [("a", "2026-W48", 2.5, None), ("b", None, 10, None), ("c", None, None, None)]


def test_json_helpers_on_postgresql_read_the_text_as_jsonb():
    assert sql.json_text(PG, "data", "$.report.week") == "(CAST(data AS JSONB) #>> '{report,week}')"
    assert sql.json_number(PG, "e.evidence", "$.score") == (
        "CAST((CAST(e.evidence AS JSONB) #>> '{score}') AS DOUBLE PRECISION)"
    )


@pytest.mark.parametrize("key", ["score", "$.a b", "$.x'); DROP TABLE t; --", "$."])
def test_json_helpers_refuse_a_key_that_is_not_a_plain_path(store, key):
    with pytest.raises(ValueError, match="JSON key"):
        sql.json_text(store, "data", key)


def test_like_is_blind_to_case_and_its_pattern_escapes_wildcards(store):
    assert _ids(store, sql.like("name"), [sql.like_pattern("ALI")]) == ["a"]
    assert _ids(store, sql.like("name"), [sql.like_pattern("_50%")]) == ["b"]
    assert _ids(store, sql.like("name"), [sql.like_pattern("b%50")]) == []  # % is literal, not a wildcard
    assert sql.like_pattern("a\\b") == "%a\\\\b%"


def test_same_text_compares_ignoring_case(store):
    assert _ids(store, sql.same_text("name"), ["ALICE"]) == ["a"]
    assert _ids(store, sql.same_text("name", ":who"), {"who": "Bob_50%"}) == ["b"]


def test_flag_sums_a_condition_and_keeps_null_for_unknown(store):
    summed = store.execute(f"SELECT SUM({sql.flag('rating < 0')}), SUM({sql.flag('rating > 0')}) FROM t").fetchone()
    assert summed == (1, 1)
    (unknown,) = store.execute(f"SELECT SUM({sql.flag('rating < 0')}) FROM t WHERE id = 'c'").fetchone()
    assert unknown is None  # as SQLite's SUM(rating < 0) over rows whose rating is NULL
    assert sql.flag("f.rating < 0") == "CAST((f.rating < 0) AS INTEGER)"


def test_integrity_errors_catch_a_unique_violation_and_tell_it_from_other_constraints(store):
    store.execute("CREATE TABLE c (id TEXT PRIMARY KEY, n INTEGER NOT NULL CHECK (n > 0))")
    with pytest.raises(sql.integrity_errors()) as unique:
        store.execute("INSERT INTO t (id) VALUES ('a')")
    assert sql.is_unique_violation(unique.value) and sql.constraint_kind(unique.value) == "unique"
    for bad, kind in (("INSERT INTO c VALUES ('x', 0)", "check"), ("INSERT INTO c VALUES ('x', NULL)", "not_null")):
        with pytest.raises(sql.integrity_errors()) as other:
            store.execute(bad)
        assert sql.constraint_kind(other.value) == kind
        assert not sql.is_unique_violation(other.value)


def test_constraint_kind_reads_postgresql_sqlstate():
    class UniqueViolation(Exception):
        sqlstate = "23505"

    class ForeignKeyViolation(Exception):
        sqlstate = "23503"

    assert sql.is_unique_violation(UniqueViolation())
    assert sql.constraint_kind(ForeignKeyViolation()) == "foreign_key"
    assert not sql.is_unique_violation(ForeignKeyViolation())
    assert sql.constraint_kind(ValueError("UNIQUE constraint failed")) is None  # not a driver's exception


def test_driver_and_storage_errors_catch_what_a_failing_store_raises(store):
    assert sqlite3.Error in sql.driver_errors()
    assert sql.storage_errors()[0] is StorageError
    with pytest.raises(sql.driver_errors()):
        store.execute("SELECT nope FROM t")
    with pytest.raises(sql.storage_errors()):
        raise StorageError("disk full")


def test_executemany_runs_once_per_row_on_a_sqlite_utils_database(store):
    sql.executemany(store, "INSERT INTO t (id, rating) VALUES (?, ?)", [("d", 1), ("e", -1)])
    assert _ids(store, "rating = -1", []) == ["b", "e"]


# --- the guard: no new SQLite-only SQL in application code ---------------------------------------

ROOT = Path(__file__).resolve().parent.parent
APPLICATION = ("cli", "config", "feedback", "modelclient", "server", "trainer")

# The seam itself, and what is SQLite-specific on purpose (each says why).
ALLOWED = {
    "feedback/db.py": "the seam: SQLite's PRAGMAs and BEGIN IMMEDIATE live here",
    "feedback/db_postgres.py": "the seam's PostgreSQL side",
    "feedback/migrations.py": "SQLite's shipped migrations (PostgreSQL has its own baseline)",
    "feedback/migrations_postgres.py": "PostgreSQL's baseline and runner",
    "feedback/health.py": "the store's probes, per engine",
    "feedback/schema_doc.py": "reads each engine's catalogue",
    "feedback/store_copy.py": "copies between the engines: reads each one's catalogue and triggers, per engine",
    "feedback/sql.py": "renders the SQLite and the PostgreSQL form of each construct",
    "feedback/privacy/disk.py": "SQLite's free-space wipe (VACUUM, WAL checkpoint); does nothing on PostgreSQL",
    "trainer/scheduler.py": "the scheduler's own SQLite job-store file, not the store",
}

# (what, pattern over a string literal's text, the portable form to use instead)
SQLITE_ONLY = [
    ("json_each", re.compile(r"\bjson_each\s*\(", re.I), "feedback.sql.in_list"),
    ("json_extract", re.compile(r"\bjson_extract\s*\(", re.I), "feedback.sql.json_text / json_number"),
    ("INSERT OR …", re.compile(r"\bINSERT\s+OR\s+(IGNORE|REPLACE|ABORT|FAIL|ROLLBACK)\b", re.I), "ON CONFLICT …"),
    ("REPLACE INTO", re.compile(r"^\s*REPLACE\s+INTO\b", re.I), "INSERT … ON CONFLICT DO UPDATE"),
    ("COLLATE NOCASE", re.compile(r"\bCOLLATE\s+NOCASE\b", re.I), "feedback.sql.same_text"),
    ("sqlite_master", re.compile(r"\bsqlite_(master|schema|sequence)\b", re.I), "db.table_names()"),
    ("PRAGMA", re.compile(r"^\s*PRAGMA\b", re.I), "a seam function in feedback/db.py"),
    ("AUTOINCREMENT", re.compile(r"\bAUTOINCREMENT\b", re.I), "an identity column (pg-core's baseline)"),
    ("WHERE 1", re.compile(r"\bWHERE\s+1\b(?!\s*=)", re.I), "WHERE 1=1"),
    (
        "SUM of a comparison",
        re.compile(r"\bSUM\s*\([^()]*(<|>|=|\bIS\b|\bAND\b|\bOR\b)", re.I),
        "SUM(feedback.sql.flag(…))",
    ),
    ("scalar MIN/MAX", re.compile(r"\b(MIN|MAX)\s*\([^()]*,", re.I), "CASE WHEN a < b THEN a ELSE b END"),
    ("untyped NULL test", re.compile(r"(\?|:\w+)\s+IS\s+(NOT\s+)?NULL\b", re.I), "CAST(? AS TEXT) IS NULL"),
    ("bare LIKE", re.compile(r"(?<!\))\s+LIKE\s", re.I), "feedback.sql.like (case-blind on both engines)"),
    (
        "SQLite-only function",
        re.compile(
            r"\b(IFNULL|GROUP_CONCAT|IIF|INSTR|PRINTF|JULIANDAY|STRFTIME|TOTAL_CHANGES|LAST_INSERT_ROWID)\s*\(", re.I
        ),
        "a function both engines have (COALESCE, string_agg via a helper, …)",
    ),
]
# A literal is SQL (or a piece of it) when it holds one of these; the code writes SQL keywords in capitals,
# so prose ("a reply from the model") is left alone.
SQL_WORDS = re.compile(
    r"\b(SELECT|INSERT|UPDATE|DELETE|WHERE|FROM|JOIN|ORDER BY|GROUP BY|PRAGMA|REPLACE|LIKE|COLLATE|IS NULL|"
    r"IS NOT NULL|SUM|MIN|MAX|AUTOINCREMENT)\b|\b(json_each|json_extract|sqlite_\w+)\b"
)


def _sources() -> list[Path]:
    return sorted(p for top in APPLICATION for p in (ROOT / top).rglob("*.py") if ".venv" not in p.parts)


def _docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def _texts(tree: ast.AST) -> list[tuple[int, str]]:
    """Every string literal that is not a docstring, with f-strings' holes as ``{}``."""
    skip = _docstrings(tree)
    inside_fstrings = {id(v) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr) for v in node.values}
    texts = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            texts.append((node.lineno, "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if id(node) not in skip and id(node) not in inside_fstrings:
                texts.append((node.lineno, node.value))
    return texts


def sqlite_only_constructs(source: str, where: str) -> list[str]:
    """``where:line: what (use …)`` for each SQLite-only construct in the SQL literals and driver use of a
    module's ``source``."""
    tree = ast.parse(source)
    found = []
    for line, text in _texts(tree):
        if not SQL_WORDS.search(text):
            continue
        for what, pattern, instead in SQLITE_ONLY:
            if pattern.search(text):
                found.append(f"{where}:{line}: {what} (use {instead})")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr == "lastrowid":
            found.append(f"{where}:{node.lineno}: cursor.lastrowid (use INSERT … RETURNING id)")
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "sqlite3":
            found.append(f"{where}:{node.lineno}: sqlite3.{node.attr} (use feedback.sql's *_errors())")
    return found


def test_application_sql_has_no_sqlite_only_construct():
    found = [
        problem
        for path in _sources()
        if path.relative_to(ROOT).as_posix() not in ALLOWED
        for problem in sqlite_only_constructs(path.read_text(encoding="utf-8"), path.relative_to(ROOT).as_posix())
    ]
    assert found == [], "SQLite-only SQL (docs: feedback/sql.py):\n" + "\n".join(found)


def test_the_allow_list_names_files_that_exist():
    assert [name for name in ALLOWED if not (ROOT / name).is_file()] == []


@pytest.mark.parametrize(
    "source",
    [
        'db.execute("SELECT id FROM t WHERE id IN (SELECT value FROM json_each(?))", [ids])',
        "db.execute(\"SELECT json_extract(data, '$.a') FROM t\")",
        'db.execute("INSERT OR IGNORE INTO t (id) VALUES (?)", [1])',
        'db.execute("SELECT id FROM t WHERE name = ? COLLATE NOCASE", [n])',
        'db.execute("SELECT name FROM sqlite_master")',
        'db.execute("PRAGMA table_info(t)")',
        'where = "1"\ndb.execute(f"SELECT id FROM t WHERE 1 ORDER BY id")',
        'db.execute("SELECT SUM(rating < 0) FROM feedback")',
        'db.execute("UPDATE t SET at = MIN(at, ?)", [x])',
        'db.execute("SELECT COUNT(*) FROM t WHERE (? IS NULL OR at > ?)", [x, x])',
        "db.execute(\"SELECT id FROM t WHERE name LIKE ? ESCAPE '\\\\'\", [p])",
        'db.execute("SELECT IFNULL(a, 0) FROM t")',
        'db.execute("INSERT INTO t (a) VALUES (1)").lastrowid',
        "try:\n    pass\nexcept sqlite3.IntegrityError:\n    pass",
    ],
)
def test_the_guard_catches_each_construct(source):
    found = sqlite_only_constructs(source, "probe.py")
    assert len(found) == 1 and found[0].startswith("probe.py:"), found


def test_the_guard_passes_the_portable_forms():
    source = '''"""A docstring may say json_each( and INSERT OR IGNORE: it is not SQL that runs."""
in_ids, params = sql.in_list(db, "id", ids)
db.execute(f"SELECT id FROM t WHERE {in_ids} AND {sql.like('name')}", params)
db.execute("INSERT INTO t (id) VALUES (?) ON CONFLICT DO NOTHING RETURNING id", [1]).fetchall()
db.execute(f"SELECT SUM({sql.flag('rating < 0')}), MIN(at) FROM t WHERE 1=1 AND (CAST(? AS TEXT) IS NULL)", [x])
print("a reply from the model, like the last one, where the sum is min(a, b)")
'''
    assert sqlite_only_constructs(source, "probe.py") == []


@pytest.mark.engines
def test_each_helper_answers_the_same_on_both_engines(db):
    with write_transaction(db):
        db.execute("CREATE TABLE probe (id TEXT PRIMARY KEY, name TEXT, rating INTEGER, data TEXT)")
        sql.executemany(
            db,
            "INSERT INTO probe (id, name, rating, data) VALUES (?, ?, ?, ?)",
            [
                ("a", "Alice", 1, '{"score": 2.5, "report": {"week": "2026-W48"}}'),
                ("b", "bob_50%", -1, '{"score": 10, "file_id": null}'),
                ("c", None, None, "{}"),
            ],
        )

    def ids(where: str, params) -> list[str]:
        return [row[0] for row in db.execute(f"SELECT id FROM probe WHERE {where} ORDER BY id", params).fetchall()]

    assert ids(*sql.in_list(db, "id", ["a", "c", "zz"])) == ["a", "c"]
    assert ids(*sql.in_list(db, "id", [], negate=True)) == ["a", "b", "c"]
    assert ids(*sql.in_list(db, "id", [])) == []
    assert ids(*sql.in_list(db, "id", ["b"], name="ids")) == ["b"]
    assert ids(sql.like("name"), [sql.like_pattern("ALI")]) == ["a"]
    assert ids(sql.like("name"), [sql.like_pattern("_50%")]) == ["b"]
    assert ids(sql.same_text("name"), ["ALICE"]) == ["a"]
    week, score = sql.json_text(db, "data", "$.report.week"), sql.json_number(db, "data", "$.score")
    rows = db.execute(f"SELECT id, {week}, {score} FROM probe ORDER BY {score} DESC NULLS LAST, id").fetchall()
    assert [tuple(r) for r in rows] == [("b", None, 10), ("a", "2026-W48", 2.5), ("c", None, None)]
    assert ids(f"{sql.json_text(db, 'data', '$.file_id')} IS NULL", []) == ["a", "b", "c"]  # JSON null is NULL
    summed = db.execute(f"SELECT SUM({sql.flag('rating < 0')}), SUM({sql.flag('rating > 0')}) FROM probe").fetchone()
    assert tuple(summed) == (1, 1)
    with pytest.raises(sql.integrity_errors()) as unique:
        with write_transaction(db):
            db.execute("INSERT INTO probe (id) VALUES ('a')")
    assert sql.is_unique_violation(unique.value)
    with pytest.raises(sql.driver_errors()):
        db.execute("SELECT nope FROM probe")
