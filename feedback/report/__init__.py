"""The weekly report: numbers (``build``), HTML/Markdown/JSON (``render``), delivery (``deliver``).

``generate_report(db, settings, week=...)`` is what the CLI and the scheduler
call: it builds the numbers for one ISO week, writes the three files into the
reports folder and returns where they went. Delivery (webhook, e-mail) is a
separate step so a report can be re-sent without being rebuilt.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from sqlite_utils import Database

from config.settings import Settings
from feedback.report.build import build_report
from feedback.report.render import list_reports, render_html, render_markdown, write_report

__all__ = ["build_report", "generate_report", "list_reports", "render_html", "render_markdown", "write_report"]


def generate_report(
    db: Database, settings: Settings, *, week: str | None = None, now: datetime | None = None
) -> tuple[dict, dict[str, Path]]:
    """Build the report for ``week`` and write it to ``settings.reports_dir``; returns (report, paths)."""
    report = build_report(db, settings, week=week, now=now)
    return report, write_report(report, settings.reports_dir)
