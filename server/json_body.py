"""Reading a request's JSON body the one safe way, before any wire model sees it.

Every route that takes JSON goes through :func:`read_json` (via
``server.protocol.parse_body``), so what the gateway accepts here is what the
store, the model and the response encoder can hold. Found by an outside test
(issue 14), each of these used to be a 500 — some after the model had already
answered, with the turn lost, and in a stream a cut-off answer:

- a lone UTF-16 surrogate (``"\\ud800"``) anywhere: Python keeps it in a str,
  but it cannot be encoded as UTF-8, so storing or sending it fails;
- nesting 10,000 deep: the parser runs out of stack (:data:`MAX_DEPTH` bounds it);
- a 5,000-digit integer: Python refuses to convert it. Every number must lie in
  the signed 64-bit range (±9.2e18) — integers as SQLite and JSON clients hold
  them, and other numbers too, so ``1e20`` and ``100000000000000000000`` are
  the same to the gateway as they are to JSON Schema (``/openapi.json`` says so);
- ``NaN``, ``Infinity`` and ``1e999``: Python reads them, but they are not JSON,
  and stored they make the row unreadable to strict parsers;
- a chunked body over the size limit: Werkzeug cut it at the limit without saying
  so, and the cut text was then reported as invalid JSON (400) instead of 413.

Each is a 400 ``invalid_json`` whose ``field`` is the dotted path to the value.
"""

from __future__ import annotations

import json
import re
from typing import Any

from flask import Request
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.wsgi import get_input_stream

from config.errors import InvalidRequest

# Deep enough for any real metadata; shallow enough that every later recursive walk (pydantic, the JSON
# encoder, the store's readers) has stack to spare.
MAX_DEPTH = 32
INT_MIN, INT_MAX = -(2**63), 2**63 - 1
# Digits that can still be a 64-bit integer; longer text is refused before int() spends time on it.
_MAX_INT_DIGITS = 20
_SURROGATE = re.compile("[\ud800-\udfff]")


class _Refused:
    """A number the parser met that the gateway does not take; reported with its path by :func:`_check`."""

    def __init__(self, why: str):
        self.why = why


def read_body(request: Request) -> bytes:
    """The raw body, refused with 413 when it is over ``MAX_CONTENT_LENGTH`` (also a chunked one)."""
    limit = request.max_content_length
    if limit is None:
        return request.get_data(cache=True)
    # One byte past the limit tells "exactly at the limit" from "over it" for a body of unknown length;
    # Werkzeug's own stream stops at the limit and cannot tell them apart.
    data = get_input_stream(request.environ, max_content_length=limit + 1).read()
    if len(data) > limit:
        raise RequestEntityTooLarge()
    return data


def read_json(request: Request) -> Any:
    """The body parsed as JSON and checked (see the module docstring); 400 ``invalid_json`` otherwise."""
    return loads_checked(read_body(request))


def loads_checked(raw: bytes | str) -> Any:
    """``json.loads`` that refuses what the gateway cannot store or send back (module docstring)."""
    try:
        data = json.loads(raw or b"null", parse_int=_integer, parse_constant=_constant)
    except RecursionError:
        raise _invalid(f"JSON is nested deeper than {MAX_DEPTH} levels", None) from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise _invalid(f"body is not valid JSON: {exc}", None) from None
    _check(data)
    return data


def _integer(text: str) -> int | _Refused:
    digits = text.lstrip("-")
    if len(digits) > _MAX_INT_DIGITS:
        return _Refused(f"an integer of {len(digits)} digits is outside the accepted range of numbers (±2^63)")
    value = int(text)
    if not INT_MIN <= value <= INT_MAX:
        return _Refused(f"{text} is outside the accepted range of numbers (±2^63)")
    return value


def _constant(name: str) -> _Refused:
    return _Refused(f"{name} is not a JSON number")


def _check(data: Any) -> None:
    """Walk the parsed value without recursion; raise for the first thing the gateway cannot hold."""
    stack: list[tuple[Any, tuple, int]] = [(data, (), 1)]
    while stack:
        value, path, depth = stack.pop()
        if isinstance(value, (dict, list)):
            if depth > MAX_DEPTH:
                raise _invalid(f"JSON is nested deeper than {MAX_DEPTH} levels", path)
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                if isinstance(key, str):
                    _check_text(key, path + (key,), "key")
                stack.append((item, path + (key,), depth + 1))
        elif isinstance(value, str):
            _check_text(value, path, "text")
        elif isinstance(value, _Refused):
            raise _invalid(value.why, path)
        elif isinstance(value, float) and not INT_MIN <= value <= INT_MAX:  # also false for NaN
            raise _invalid(f"{value} is outside the accepted range of numbers (±2^63)", path)


def _check_text(text: str, path: tuple, what: str) -> None:
    if text.isascii():
        return
    found = _SURROGATE.search(text)
    if found:
        code = f"\\u{ord(found.group()):04x}"
        raise _invalid(
            f"{what} contains a lone UTF-16 surrogate ({code}), which is not a character; send valid Unicode", path
        )


def _invalid(message: str, path: tuple | None) -> InvalidRequest:
    field = dotted(path) if path else None
    return InvalidRequest(f"{field}: {message}" if field else message, field=field, code="invalid_json")


def dotted(path: tuple | list) -> str:
    """``("metadata", "x", 0)`` → ``"metadata.x.0"``; a key that is not valid Unicode is shown escaped."""
    return ".".join(str(part).encode("utf-8", "backslashreplace").decode("utf-8") for part in path)
