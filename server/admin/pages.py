"""Admin pages: dashboard, weekly reports, worst-answered questions (viewers read them; reviewers build reports)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

from flask import abort, jsonify, make_response, redirect, request, send_file, url_for

from config.errors import NotFound, ValidationFailed
from feedback import versions
from feedback.ranking import RankingOptions, rank_worst, version_to_rank
from feedback.report import generate_report, list_reports
from feedback.report.weeks import last_complete_week, parse_week, utc_text
from server.admin.auth import requires
from server.admin.blueprint import bp, page
from server.context import gateway, get_db

REPORT_TYPES = {"html": "text/html; charset=utf-8", "md": "text/markdown; charset=utf-8", "json": "application/json"}


@bp.get("/")
@requires("viewer")
def index():
    """Dashboard: the latest report's headline and where to go next."""
    settings = gateway().settings
    reports = list_reports(settings.reports_dir)
    latest = None
    if reports and "json" in reports[0]["formats"]:
        path = settings.reports_dir / f"report-{reports[0]['week']}.json"
        latest = json.loads(path.read_text(encoding="utf-8"))
    live = versions.live_version(get_db())
    return page("index.html", reports=reports[:5], latest=latest, live=live)


@bp.get("/reports")
@requires("viewer")
def reports():
    """Every weekly report in the reports folder, newest first."""
    settings = gateway().settings
    return page(
        "reports.html",
        reports=list_reports(settings.reports_dir),
        default_week=last_complete_week(settings.report.timezone),
        folder=str(settings.reports_dir),
    )


@bp.get("/api/reports")
@requires("viewer")
def reports_json():
    """The list of reports as JSON."""
    return jsonify({"reports": list_reports(gateway().settings.reports_dir)})


@bp.post("/reports")
@requires("reviewer")
def reports_generate():
    """Build (or rebuild) the report of a week now; no delivery."""
    settings = gateway().settings
    week = request.form.get("week", "").strip() or last_complete_week(settings.report.timezone)
    parse_week(week)
    report, _ = generate_report(get_db(), settings, week=week)
    return redirect(url_for("admin.report_file", name=f"{report['week']}"))


@bp.get("/reports/<name>")
@requires("viewer")
def report_file(name: str):
    """One report: ``2026-W47`` (HTML), ``2026-W47.md`` or ``2026-W47.json``."""
    week, _, ext = name.partition(".")
    ext = ext or "html"
    try:
        parse_week(week)
    except ValidationFailed:
        abort(404)
    if ext not in REPORT_TYPES:
        abort(404)
    path = gateway().settings.reports_dir / f"report-{week}.{ext}"
    if not path.is_file():
        raise NotFound(f"no {ext} report for {week}; generate it with 'tuneloop report --week {week}'")
    response = make_response(send_file(path, mimetype=REPORT_TYPES[ext], max_age=0))
    if ext != "html":
        response.headers["Content-Disposition"] = f'inline; filename="report-{week}.{ext}"'
    return response


def _ranking_from_args():
    settings = gateway().settings
    db = get_db()
    version = version_to_rank(db, request.args.get("version") or None)
    days = request.args.get("days", "7")
    if not days.isdigit() or not 1 <= int(days) <= 366:
        raise ValidationFailed("days must be a whole number from 1 to 366", field="days")
    now = datetime.now(timezone.utc)
    since, until = utc_text(now - timedelta(days=int(days))), utc_text(now)
    top = request.args.get("top")
    options = RankingOptions.from_settings(settings.report, top_n=int(top) if top and top.isdigit() else None)
    return version, int(days), rank_worst(db, model_version_id=version.id, since=since, until=until, options=options)


@bp.get("/worst")
@requires("viewer")
def worst():
    """The worst-answered questions of a version over the last N days (default: live, 7)."""
    version, days, ranking = _ranking_from_args()
    all_versions = versions_list()
    return page("worst.html", version=version, days=days, ranking=ranking.to_dict(), versions=all_versions)


@bp.get("/api/worst")
@requires("viewer")
def worst_json():
    """The same ranking as JSON."""
    _, _, ranking = _ranking_from_args()
    return jsonify(ranking.to_dict())


def versions_list() -> list[dict]:
    """Model versions for the version picker, newest first."""
    rows = get_db().execute("SELECT id, name, status FROM model_versions ORDER BY created_at DESC").fetchall()
    return [{"id": i, "name": n, "status": s} for i, n, s in rows]
