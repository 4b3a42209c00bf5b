"""When a hosted model stops answering: its announced shutdown date, from ``report.shutdown_dates``.

The table is keyed by model name as served. An OpenAI fine-tuned model is served under a name of its own
(``ft:gpt-4o-mini-2024-07-18:acme::abc123``) but shuts down with its base, so a key ``ft:BASE`` covers every
fine-tuned model of BASE, with or without the base's date suffix. The most specific key wins: the exact name,
then ``ft:`` and the dated base, then ``ft:`` and the undated base.
"""

from __future__ import annotations

import datetime
import re

# The date suffix of a model snapshot: gpt-4o-mini-2024-07-18 → gpt-4o-mini.
_SNAPSHOT = re.compile(r"-\d{4}-\d{2}-\d{2}$")


def fine_tuned_base(name: str) -> str | None:
    """The base model of an OpenAI ``ft:BASE:ORG:SUFFIX:ID`` name (``gpt-4o-mini-2024-07-18``), else None."""
    if not name.startswith("ft:"):
        return None
    base = name[3:].split(":", 1)[0]
    return base or None


def undated(model: str) -> str:
    """``model`` without a snapshot's date suffix."""
    return _SNAPSHOT.sub("", model)


def shutdown_key(name: str, dates: dict[str, str]) -> str | None:
    """The key of ``dates`` that applies to the model served as ``name`` (see the module docstring)."""
    keys = [name]
    base = fine_tuned_base(name)
    if base:
        keys += [f"ft:{base}", f"ft:{undated(base)}"]
    return next((key for key in keys if key in dates), None)


def shutdown_date(name: str, dates: dict[str, str]) -> datetime.date | None:
    """The announced shutdown date of the model served as ``name``, or None when none is known."""
    key = shutdown_key(name, dates)
    return datetime.date.fromisoformat(dates[key]) if key else None
