"""feedback/sql.py's helpers on a real SQLite file, and the SQL text they give PostgreSQL."""

from __future__ import annotations

import json
import sqlite3

import pytest
import sqlite_utils

from config.errors import StorageError
from feedback import sql


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
