"""ISO weeks in the report's time zone, and the UTC windows that select their rows.

A report week runs Monday 00:00 to the next Monday 00:00 in ``report.timezone``
(Asia/Seoul by default: a support team in Seoul reads "last week" as their week,
not UTC's, which starts nine hours later). Rows are stored with ISO-8601 UTC
text timestamps, so a window is a pair of strings in the same format and the
comparison is a plain index range.
"""

from __future__ import annotations

import re
from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

from config.errors import ValidationFailed
from feedback.db import utc_text

_WEEK = re.compile(r"^(\d{4})-W(\d{2})$")


def parse_week(week: str) -> tuple[int, int]:
    """``"2026-W47"`` → ``(2026, 47)``; :class:`ValidationFailed` for anything else."""
    match = _WEEK.match(week.strip())
    if not match:
        raise ValidationFailed(f"week must look like 2026-W47, got {week!r}", field="week")
    year, number = int(match.group(1)), int(match.group(2))
    try:
        date.fromisocalendar(year, number, 1)
    except ValueError:
        raise ValidationFailed(f"{year} has no ISO week {number}", field="week") from None
    return year, number


def week_label(day: date) -> str:
    """The ISO week ``day`` falls in, as ``2026-W47``."""
    year, number, _ = day.isocalendar()
    return f"{year}-W{number:02d}"


def week_monday(week: str) -> date:
    """The Monday that starts ``week``."""
    year, number = parse_week(week)
    return date.fromisocalendar(year, number, 1)


def shift_week(week: str, weeks: int) -> str:
    """The week ``weeks`` after (negative: before) ``week``."""
    return week_label(week_monday(week) + timedelta(weeks=weeks))


def iso_week_window(week: str, tz: str) -> tuple[str, str]:
    """``[since, until)`` in stored UTC text for ``week`` as lived in time zone ``tz``."""
    zone = ZoneInfo(tz)
    monday = week_monday(week)
    start = datetime.combine(monday, time(0), tzinfo=zone)
    end = datetime.combine(monday + timedelta(weeks=1), time(0), tzinfo=zone)
    return utc_text(start), utc_text(end)


def last_complete_week(tz: str, now: datetime | None = None) -> str:
    """The most recent week that has ended in time zone ``tz`` (what a Monday report covers)."""
    now = now or datetime.now(timezone.utc)
    today = now.astimezone(ZoneInfo(tz)).date()
    return week_label(today - timedelta(weeks=1))


def local_date(stored: str, tz: str) -> date:
    """The calendar day in ``tz`` of a stored UTC timestamp."""
    return datetime.fromisoformat(stored.replace("Z", "+00:00")).astimezone(ZoneInfo(tz)).date()
