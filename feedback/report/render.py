"""Turning the report dict into HTML (self-contained), Markdown and JSON, and writing the files.

The HTML is one file with its CSS and SVG charts inline and no script, so it
opens the same from disk, in a mail client and under ``/admin/reports``. It is
rendered by Jinja2 with autoescaping on: questions, answers and comments are
user text and are never trusted as markup. The Markdown carries the same
numbers for chat tools and terminals, with user text escaped for Markdown (no raw
HTML, links or images can come from it); the JSON is the report dict itself.
"""

from __future__ import annotations

import json
import os
import re
from datetime import date, datetime, timezone
from pathlib import Path

from jinja2 import Environment, PackageLoader, select_autoescape

from feedback.report import charts

REPORT_NAME = re.compile(r"^report-(\d{4}-W\d{2})\.(html|md|json)$")

_ENV = Environment(
    loader=PackageLoader("feedback.report", "templates"),
    autoescape=select_autoescape(["html", "j2"]),
    trim_blocks=True,
    lstrip_blocks=True,
)


def pct(value: float | None, digits: int = 1) -> str:
    """0.1234 → ``12.3%``; None → ``–``."""
    return "–" if value is None else f"{value * 100:.{digits}f}%"


def num(value: float | None) -> str:
    """1234 → ``1,234``; None → ``–``."""
    return "–" if value is None else f"{value:,.0f}"


def ms(value: float | None) -> str:
    """Milliseconds: 1234.5 → ``1,235 ms``; None → ``–``."""
    return "–" if value is None else f"{value:,.0f} ms"


def short_week(week: str) -> str:
    """``2026-W47`` → ``W47``."""
    return week.split("-")[-1]


def nice_date(iso: str) -> str:
    """``2026-11-16`` → ``Mon 16 Nov 2026``."""
    return date.fromisoformat(iso).strftime("%a %d %b %Y")


# (key, label, format, which direction is good: +1 higher is better, -1 lower is better, 0 neutral)
_CARDS = (
    ("answers", "Answers", num, 0),
    ("ratings", "Ratings", num, +1),
    ("satisfaction", "Satisfaction (thumbs-up share)", pct, +1),
    ("down", "Thumbs down", num, -1),
    ("failed_rate", "Failed answers", pct, -1),
    ("latency_p50", "Latency p50", ms, -1),
    ("latency_p95", "Latency p95", ms, -1),
    ("corrections", "Corrections suggested", num, 0),
)


def headline_cards(report: dict) -> list[dict]:
    """The headline numbers with their change against the previous week."""
    this, previous = report["headline"]["this"], report["headline"]["previous"]
    cards = []
    for key, label, fmt, good in _CARDS:
        now, before = this[key], previous[key]
        card = {"key": key, "label": label, "value": fmt(now), "previous": fmt(before), "delta": "", "tone": ""}
        if now is not None and before is not None:
            change = now - before
            if fmt is pct:
                card["delta"] = f"{change * 100:+.1f} pts"
            elif before:
                card["delta"] = f"{change / before:+.0%}"
            if good and abs(change) > 1e-9:
                card["tone"] = "good" if change * good > 0 else "bad"
        if key == "ratings" and this.get("rating_rate") is not None:
            card["note"] = f"{pct(this['rating_rate'])} of answers rated"
        if key == "satisfaction" and this["ratings"] < report["settings"]["low_ratings_warning"]:
            card["note"] = "few ratings: rough signal"
        cards.append(card)
    return cards


def chart_set(report: dict) -> dict:
    """The four charts as inline SVG."""
    trend, low = report["trend"], report["settings"]["low_ratings_warning"]
    labels = [short_week(w) for w in trend["weeks"]]
    satisfaction = [
        {
            "label": s["label"],
            "values": s["satisfaction"],
            "color": charts.color(i),
            "weak": [n < low for n in s["ratings"]],
        }
        for i, s in enumerate(trend["series"])
    ]
    volume = [
        {"label": s["label"], "values": s["answers"], "color": charts.color(i)} for i, s in enumerate(trend["series"])
    ]
    latency = [
        {"label": "p50", "values": trend["total"]["latency_p50"], "color": "#2563eb"},
        {"label": "p95", "values": trend["total"]["latency_p95"], "color": "#9333ea", "dash": True},
    ]
    previous = report["reasons"]["previous"]
    reasons = [(r, n, previous.get(r, 0)) for r, n in report["reasons"]["this"].items()]
    return {
        "satisfaction": charts.line_chart(
            labels, satisfaction, title="Satisfaction per model version", fmt=lambda v: f"{v * 100:.0f}%", y_max=1.0
        ),
        "volume": charts.stacked_bars(labels, volume, title="Answers per week"),
        "latency": charts.line_chart(
            labels,
            latency,
            title="Latency p50 and p95",
            fmt=lambda v: f"{v / 1000:.1f} s" if v >= 1000 else f"{v:.0f} ms",
        ),
        "reasons": charts.hbars(reasons, title="Reasons for thumbs down") if reasons else None,
    }


def render_html(report: dict) -> str:
    """The self-contained HTML report."""
    return _ENV.get_template("report.html.j2").render(
        r=report,
        cards=headline_cards(report),
        charts=chart_set(report),
        colors=charts.color,
        events=_events(report),
        retrains=changed_by_retrain(report),
        series_index={s["model_version_id"]: i for i, s in enumerate(report["trend"]["series"])},
        pct=pct,
        num=num,
        ms=ms,
        nice_date=nice_date,
        short_week=short_week,
    )


_MD_ESCAPES = str.maketrans(
    {"&": "&amp;", "<": "&lt;", ">": "&gt;", "[": "\\[", "]": "\\]", "|": "\\|", "\n": " ", "\r": " "}
)


def _md(text) -> str:
    """User or settings text as inert Markdown.

    Markdown passes raw HTML through, so a viewer would run ``<img src=x onerror=…>`` from a question:
    ``&``, ``<`` and ``>`` become entities, which every Markdown flavour shows as the characters.
    Brackets are escaped so text cannot make a link or an image (``[x](javascript:…)``, ``![](…)``);
    pipes and newlines would break the tables and lists.
    """
    return str(text if text is not None else "").strip().translate(_MD_ESCAPES)


def render_markdown(report: dict) -> str:
    """The same report as Markdown (for chat tools, terminals and the e-mail's text part)."""
    lines = [
        f"# Weekly report {report['week']}",
        "",
        f"{nice_date(report['first_day'])} – {nice_date(report['last_day'])} ({report['timezone']}), "
        f"compared with {report['previous_week']}.",
        "",
        "## Headline",
        "",
        "| | this week | previous week | change |",
        "|---|---:|---:|---:|",
    ]
    for card in headline_cards(report):
        lines.append(f"| {card['label']} | {card['value']} | {card['previous']} | {card['delta']} |")
    if report["versions"]:
        lines += [
            "",
            "| model version | status | answers | ratings | satisfaction | p50 | p95 |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for v in report["versions"]:
            lines.append(
                f"| {_md(v['label'])} | {v['status']} | {num(v['answers'])} | {num(v['ratings'])} "
                f"| {pct(v['satisfaction'])} | {ms(v['latency_p50'])} | {ms(v['latency_p95'])} |"
            )
    lines += ["", "## Warnings", ""]
    lines += [f"- {_md(w['message'])}" for w in report["warnings"]] or ["- none"]
    lines += ["", "## Worst-answered questions", ""]
    worst = report["worst"]
    if not worst or not worst["ranking"]["groups"]:
        lines.append("Nothing ranked this week.")
    else:
        ranking = worst["ranking"]
        lines += [
            f"Model version {_md(worst['model_version']['label'])}; groups with at least "
            f"{ranking['options']['min_votes']} votes, scored by the lower bound of the "
            f"{ranking['options']['confidence']:.0%} Wilson interval on the thumbs-down share.",
            "",
            "| # | question | 👎 / votes | down share | score | asked | top reason |",
            "|---:|---|---:|---:|---:|---:|---|",
        ]
        for i, g in enumerate(ranking["groups"], 1):
            reasons = (g.get("evidence") or {}).get("reasons") or {}
            top = next((r for r in reasons if r != "no reason given"), "")
            built = ((g.get("evidence") or {}).get("entries") or [])[:1]
            on = f" (answers built on entry “{_md(built[0]['question'])}”, 👎 {built[0]['down']})" if built else ""
            lines.append(
                f"| {i} | {_md(g['question'])}{on} | {g['down']} / {g['votes']} | {pct(g['down_share'], 0)} "
                f"| {g['score']:.2f} | {num(g['asked'])} | {_md(top)} |"
            )
    lines += ["", "## Knowledge behind the rated-down answers", ""]
    entries = report.get("knowledge", {}).get("entries") or []
    if not entries:
        lines.append("No answer built on a knowledge-base entry was rated down this week.")
    else:
        lines += ["| entry | 👎 | 👍 | answers rated |", "|---|---:|---:|---:|"]
        for e in entries:
            retired = " (retired)" if e["state"] != "active" else ""
            lines.append(f"| {_md(e['question'])}{retired} `{e['id']}` | {e['down']} | {e['up']} | {e['answers']} |")
        lines += [
            "",
            "Fix an entry in /admin/knowledge or with `tuneloop kb edit ID`: every answer built on it changes.",
        ]
    lines += ["", "## Reasons and comments", ""]
    if report["reasons"]["this"]:
        previous = report["reasons"]["previous"]
        lines += [f"- {_md(r)}: {n} (previous week {previous.get(r, 0)})" for r, n in report["reasons"]["this"].items()]
    else:
        lines.append("- no thumbs-down this week")
    if report["comments"]:
        lines.append("")
        for c in report["comments"]:
            repeat = f" ×{c['count']}" if c["count"] > 1 else ""
            lines.append(
                f"- {'👎' if c['rating'] == 'down' else '👍'} “{_md(c['comment'])}”{repeat} — on “{_md(c['question'])}”"
            )
    lines += ["", "## Review queue", ""]
    queue = report["review_queue"]
    if not queue["available"]:
        lines.append("Nothing yet: the review queue has not been set up.")
    else:
        lines.append(
            f"- pending: {queue['pending']}"
            + (f" (oldest {queue['oldest_pending_days']} days)" if queue.get("oldest_pending_days") is not None else "")
        )
        if "added" in queue:
            lines.append(f"- added this week: {queue['added']}")
        for status, n in (queue.get("decided") or {}).items():
            lines.append(f"- {status} this week: {n}")
    lines += ["", "## Training, evaluation and promotion", ""]
    events = _events(report)
    lines += [f"- {e['at'][:16].replace('T', ' ')} {_md(e['text'])}" for e in events] or ["Nothing yet this week."]
    for e in changed_by_retrain(report):
        lines += [
            "",
            f"**What {_md(e['candidate_name'] or e['candidate_id'])} answers differently** ({e['outcome']}):",
            "",
        ]
        lines += ["| suite | asked | right, live → candidate | metric, live → candidate |", "|---|---|---|---|"]
        lines += [
            f"| {c['suite']} | {c['view_words']} | {c['live_right']}/{c['rows']} → {c['candidate_right']}/{c['rows']} "
            f"| {c['metric']} {c['live']:.3f} → {c['candidate']:.3f} |"
            for c in e["changes"]
        ]
    lines += ["", "## What changed, and who", ""]
    lines += changes_markdown(report.get("changes"))
    lines += ["", f"_Generated {report['generated_at']} by tuneloop._", ""]
    return "\n".join(lines)


def changes_markdown(changes: dict | None) -> list[str]:
    """The "What changed, and who" section as Markdown lines."""
    if not changes or not changes["total"]:
        return ["Nobody changed anything this week."]
    lines = []
    for person in changes["people"]:
        what = ", ".join(f"{n} × {_md(d)}" for d, n in person["counts"].items())
        lines.append(f"- **{_md(person['who'])}**: {what}")
    lines.append("")
    for e in changes["entries"]:
        detail = " — ".join(_md(part) for part in (e["subject"], e["text"]) if part)
        lines.append(
            f"- {e['at'][:16].replace('T', ' ')} {_md(e['who'])} {_md(e['description'])}"
            + (f": {detail}" if detail else "")
        )
    if changes["listed"] < changes["total"]:
        lines.append(f"- … and {changes['total'] - changes['listed']} earlier changes (the audit log has them all)")
    return lines


def changed_by_retrain(report: dict, limit: int = 3) -> list[dict]:
    """The week's evaluations (newest first, at most ``limit``) with their per-suite, per-view changes."""
    found = [e for e in report["evaluations"]["events"] if e.get("changes")]
    return sorted(found, key=lambda e: e["at"], reverse=True)[:limit]


def _events(report: dict) -> list[dict]:
    """Training, evaluation and promotion events as one dated list of sentences."""
    events = []
    for e in report["training"]["events"]:
        state = e.get("state") or "finished"
        events.append(
            {
                "at": e["at"],
                "kind": "training",
                "text": f"training run {e['id']} ({e.get('provider') or 'local'}): {state}"
                + (f" — {e['error']}" if e.get("error") else ""),
            }
        )
    for e in report["evaluations"]["events"]:
        verdict = e.get("outcome") or {1: "passed", 0: "failed"}.get(e.get("passed"), "done")  # True == 1, False == 0
        candidate = e.get("candidate_name") or e.get("candidate_id") or "?"
        against = f" against {e['incumbent_name']}" if e.get("incumbent_name") else ""
        detail = f" — {e['summary']}" if e.get("summary") else ""
        reasons = e.get("reasons") if isinstance(e.get("reasons"), list) else []
        why = f" ({'; '.join(map(str, reasons))})" if reasons and verdict in ("failed", "inconclusive") else ""
        events.append(
            {"at": e["at"], "kind": "evaluation", "text": f"evaluation of {candidate}{against}: {verdict}{detail}{why}"}
        )
    for e in report["promotions"]["events"]:
        by = f" by {e['actor']}" if e.get("actor") else ""
        reason = f": {e['reason']}" if e.get("reason") else ""
        events.append(
            {"at": e["at"], "kind": e["kind"], "text": f"{e['name']} {e['kind']} (now {e['status']}){by}{reason}"}
        )
    return sorted(events, key=lambda e: e["at"])


def render_json(report: dict) -> str:
    """The report dict as JSON."""
    return json.dumps(report, ensure_ascii=False, indent=2, sort_keys=False)


def write_report(report: dict, reports_dir: Path) -> dict[str, Path]:
    """Write ``report-<week>.html|md|json`` into ``reports_dir``; returns the paths by format."""
    reports_dir.mkdir(parents=True, exist_ok=True)
    outputs = {"html": render_html(report), "md": render_markdown(report), "json": render_json(report)}
    paths = {}
    for fmt, text in outputs.items():
        path = reports_dir / f"report-{report['week']}.{fmt}"
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)  # a reader (the admin page) never sees half a file
        paths[fmt] = path
    return paths


def list_reports(reports_dir: Path) -> list[dict]:
    """Reports in ``reports_dir``, newest week first: ``{"week", "formats", "modified"}``."""
    found: dict[str, dict] = {}
    if reports_dir.is_dir():
        for path in reports_dir.iterdir():
            match = REPORT_NAME.match(path.name)
            if not match:
                continue
            entry = found.setdefault(match.group(1), {"week": match.group(1), "formats": [], "modified": 0.0})
            entry["formats"].append(match.group(2))
            entry["modified"] = max(entry["modified"], path.stat().st_mtime)
    for entry in found.values():
        entry["formats"].sort()
        entry["modified"] = datetime.fromtimestamp(entry["modified"], timezone.utc).isoformat(timespec="seconds")
    return sorted(found.values(), key=lambda e: e["week"], reverse=True)
