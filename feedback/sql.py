"""SQL that runs on both engines: the few constructs where SQLite and PostgreSQL differ.

Application SQL is written once, with ``?`` / ``:name`` placeholders, and runs on a store
handle that is either a ``sqlite_utils.Database`` or the PostgreSQL handle of
``feedback/db_postgres.py`` (which translates the placeholders). Most statements are already
portable; this module holds the rest, each helper returning the form each engine accepts:

==========================================  =============================================
SQLite-only                                 here
==========================================  =============================================
``x IN (SELECT value FROM json_each(?))``   :func:`in_list` (``x = ANY(?)`` on PostgreSQL)
``json_extract(col, '$.a.b')``              :func:`json_text`, :func:`json_number`
``x LIKE ?`` (case-blind), ``COLLATE NOCASE``  :func:`like`, :func:`same_text`
``SUM(rating < 0)``                         ``SUM(`` :func:`flag` ``)``
``except sqlite3.IntegrityError``           :func:`integrity_errors`, :func:`is_unique_violation`
``except sqlite3.Error``                    :func:`driver_errors`, :func:`storage_errors`
``db.conn.executemany(…)``                  :func:`executemany`
==========================================  =============================================

Written elsewhere by hand, because no helper makes them shorter: ``INSERT … ON CONFLICT DO
NOTHING`` for ``INSERT OR IGNORE``, ``RETURNING id`` for ``cursor.lastrowid``, ``WHERE 1=1`` for
``WHERE 1``, ``CASE`` for the scalar ``MIN(a, b)``, explicit ``NULLS FIRST/LAST`` where the order
of NULLs matters (SQLite sorts them first, PostgreSQL last), ``CAST(? AS TEXT) IS NULL`` where a
parameter is only tested for NULL (PostgreSQL must know its type), every selected column in
``GROUP BY`` and explicit column lists where a row becomes a dataclass.

``tests/test_sql_portable.py`` fails when application code gains one of the SQLite-only forms.
This module never imports psycopg (only ``feedback/db_postgres.py`` does): it recognises
psycopg's exceptions only once that module has loaded it.
"""

from __future__ import annotations

import json
import sqlite3
import sys
from collections.abc import Iterable, Sequence
from typing import Any, Literal

from config.errors import StorageError

Dialect = Literal["sqlite", "postgresql"]

# The constraint a violation broke: SQLite says it in the message, PostgreSQL in the SQLSTATE.
_CONSTRAINTS = {
    "unique": ("UNIQUE constraint failed", "23505"),  # a primary key too
    "check": ("CHECK constraint failed", "23514"),
    "not_null": ("NOT NULL constraint failed", "23502"),
    "foreign_key": ("FOREIGN KEY constraint failed", "23503"),
}


def dialect(db: Any) -> Dialect:
    """``"postgresql"`` for the PostgreSQL store handle, ``"sqlite"`` for a ``sqlite_utils.Database``."""
    return getattr(db, "dialect", "sqlite")


def in_list(
    db: Any, column: str, values: Iterable[Any], *, negate: bool = False, name: str | None = None
) -> tuple[str, list | dict]:
    """``column IN values`` (or ``NOT IN``) as ``(sql, params)``, with the whole list bound as ONE parameter.

    One parameter however long the list (no limit on the number of placeholders, one statement
    text for the plan cache): a JSON array read by ``json_each`` on SQLite, an array compared with
    ``= ANY`` on PostgreSQL. An empty list matches nothing (``NOT``: everything). ``name`` gives a
    ``:name`` placeholder and a dict of params for statements written with named parameters.
    """
    values = list(values)
    slot = f":{name}" if name else "?"
    if dialect(db) == "postgresql":
        sql = f"{column} = ANY({slot})"
        sql = f"NOT ({sql})" if negate else sql
        value: Any = values
    else:
        sql = f"{column} {'NOT IN' if negate else 'IN'} (SELECT value FROM json_each({slot}))"
        value = json.dumps(values)
    return sql, ({name: value} if name else [value])


def _json_path(key: str) -> list[str]:
    parts = key.removeprefix("$.").split(".")
    if not key.startswith("$.") or not all(part.isidentifier() for part in parts):
        raise ValueError(f"JSON key must look like '$.name' or '$.a.b', got {key!r}")  # it is pasted into SQL
    return parts


def json_text(db: Any, column: str, key: str) -> str:
    """SQL for the value at ``key`` (``'$.a'`` or ``'$.a.b'``) of the JSON text in ``column``: NULL when
    absent or JSON null. On PostgreSQL always text; on SQLite the JSON type (what ``json_extract`` gives)."""
    parts = _json_path(key)
    if dialect(db) == "postgresql":
        return f"(CAST({column} AS JSONB) #>> '{{{','.join(parts)}}}')"
    return f"json_extract({column}, '{key}')"


def json_number(db: Any, column: str, key: str) -> str:
    """SQL for the number at ``key`` of the JSON text in ``column`` (NULL when absent), comparable and sortable."""
    if dialect(db) == "postgresql":
        return f"CAST({json_text(db, column, key)} AS DOUBLE PRECISION)"
    return json_text(db, column, key)


def like(column: str, placeholder: str = "?") -> str:
    """``column LIKE placeholder``, blind to ASCII case on both engines (SQLite's ``LIKE``; PostgreSQL's is not).

    Pair with :func:`like_pattern` or :func:`escape_like`, whose ``\\`` escapes this clause declares.
    """
    return f"lower({column}) LIKE lower({placeholder}) ESCAPE '\\'"


def escape_like(text: str) -> str:
    """``text`` with ``\\``, ``%`` and ``_`` escaped, to match itself literally in a :func:`like` pattern."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def like_pattern(text: str) -> str:
    """``%text%``, ``text`` escaped: a :func:`like` parameter that finds ``text`` anywhere."""
    return f"%{escape_like(text)}%"


def same_text(column: str, placeholder: str = "?") -> str:
    """``column = placeholder`` blind to ASCII case (SQLite's ``COLLATE NOCASE``, which PostgreSQL lacks)."""
    return f"lower({column}) = lower({placeholder})"


def flag(condition: str) -> str:
    """``condition`` as 1, 0 or NULL, so it can be summed: ``SUM(flag('rating < 0'))``.

    SQLite's comparisons already are integers; PostgreSQL's are booleans, which ``SUM`` refuses.
    A cast keeps SQLite's NULL for an unknown condition (so ``SUM`` over no known row stays NULL).
    """
    return f"CAST(({condition}) AS INTEGER)"


def _loaded(module: str, attribute: str) -> tuple[type[BaseException], ...]:
    # psycopg is imported by feedback/db_postgres.py alone; if it is not loaded yet, no handle can
    # have raised one of its exceptions, so there is nothing to catch.
    loaded = sys.modules.get(module)
    found = getattr(loaded, attribute, None) if loaded else None
    return (found,) if isinstance(found, type) else ()


def integrity_errors() -> tuple[type[BaseException], ...]:
    """The exception classes a broken constraint raises (unique, check, foreign key, not null), for ``except``."""
    return (sqlite3.IntegrityError, *_loaded("psycopg", "IntegrityError"))


def constraint_kind(exc: BaseException) -> str | None:
    """Which kind of constraint ``exc`` broke: ``"unique"`` (primary keys too), ``"check"``, ``"not_null"``,
    ``"foreign_key"``; None for anything else."""
    sqlite = isinstance(exc, sqlite3.IntegrityError)
    sqlstate = getattr(exc, "sqlstate", None)
    for kind, (message, code) in _CONSTRAINTS.items():
        if (sqlite and message in str(exc)) or (not sqlite and sqlstate == code):
            return kind
    return None


def is_unique_violation(exc: BaseException) -> bool:
    """Whether ``exc`` is a unique / primary-key violation (not a check, foreign-key or not-null one)."""
    return constraint_kind(exc) == "unique"


def driver_errors() -> tuple[type[BaseException], ...]:
    """Every exception class the database drivers raise (``sqlite3.Error``, ``psycopg.Error``, a pool timeout)."""
    return (sqlite3.Error, *_loaded("psycopg", "Error"), *_loaded("psycopg_pool", "PoolTimeout"))


def storage_errors() -> tuple[type[BaseException], ...]:
    """:class:`StorageError` and every driver error: what a caller that must survive a failing store catches."""
    return (StorageError, *driver_errors())


def executemany(db: Any, sql: str, rows: Iterable[Sequence[Any]]) -> None:
    """Run ``sql`` once per row of parameters: the PostgreSQL handle's ``executemany`` (which translates the
    placeholders), or the SQLite connection's (``sqlite_utils.Database`` has none of its own)."""
    if dialect(db) == "postgresql":
        db.executemany(sql, rows)
    else:
        db.conn.executemany(sql, rows)
