"""The weekly report's numbers: one plain dict that the HTML, Markdown and JSON all render.

Everything is computed from the store for one ISO week in ``report.timezone``
plus the ``report.trend_weeks`` weeks before it (for the charts). Each number
per model version and week is an index range scan: answers, failures and
latencies on ``messages_version_time_question``, votes on
``feedback_version_answered`` (each vote carries its answer's version and time,
migration m002), so no query joins votes to answers except to fetch the few
comments shown. A vote belongs to the week its *answer* was written in, so a
late vote on last week's answer changes last week's numbers, not this week's.
Counts kept from rows that a retention purge or an erasure deleted (``activity_counts``)
are added in, so trends outlive the words; their latencies are not kept. Latency
percentiles use every answer of a week up to :data:`LATENCY_SAMPLE`, and an even,
deterministic sample of that size beyond. User text in the dict is
masked before it is returned (:mod:`feedback.report.privacy`), so no format can
carry personal data.
"""

from __future__ import annotations

import math
from collections import Counter
from datetime import date, datetime, timezone

from sqlite_utils import Database

from config.settings import Settings
from feedback.db import utc_now
from feedback.knowledge import lineage
from feedback.pii import PiiMasker
from feedback.privacy.counts import kept_counts
from feedback.ranking import RankingOptions, rank_worst
from feedback.report import lifecycle
from feedback.report.changes import changes
from feedback.report.privacy import mask_report
from feedback.report.weeks import iso_week_window, last_complete_week, local_date, shift_week, week_monday
from feedback.shutdown import shutdown_date
from feedback.sql import flag
from feedback.text import question_key

FAILED_ANSWERS_WARNING = 0.02  # share of failed answers in a week that earns a warning
LATENCY_SAMPLE = 20_000  # latencies per week that percentiles are computed from, at most


def build_report(db: Database, settings: Settings, *, week: str | None = None, now: datetime | None = None) -> dict:
    """All numbers of the weekly report for ``week`` (default: the last complete week)."""
    cfg = settings.report
    tz = cfg.timezone
    week = week or last_complete_week(tz, now)
    since, until = iso_week_window(week, tz)
    weeks = [shift_week(week, offset) for offset in range(1 - cfg.trend_weeks, 1)]
    bounds = [iso_week_window(w, tz)[0] for w in weeks] + [until]

    versions = _versions(db)
    answers = _answer_stats(db, list(versions), bounds)
    votes = _vote_stats(db, list(versions), bounds)
    _add_kept_counts(db, list(versions), bounds, answers, votes)
    active = [v for v in versions if sum(answers[v]["answers"]) or any(votes[v]["ratings"])]
    trend = _trend(weeks, versions, active, answers, votes)
    this_week, last_week = _week_feedback(db, since, until), _week_feedback(db, bounds[-3], since)
    this, previous = _headline(trend, -1, this_week), _headline(trend, -2, last_week)

    week_versions = sorted((v for v in active if answers[v]["answers"][-1]), key=lambda v: -answers[v]["answers"][-1])
    worst = None
    if week_versions:
        ranked = week_versions[0]
        ranking = rank_worst(
            db, model_version_id=ranked, since=since, until=until, options=RankingOptions.from_settings(cfg)
        )
        worst = {"model_version": versions[ranked], "ranking": ranking.to_dict()}

    monday = week_monday(week)
    report = {
        "week": week,
        "previous_week": weeks[-2],
        "timezone": tz,
        "since": since,
        "until": until,
        "first_day": monday.isoformat(),
        "last_day": date.fromordinal(monday.toordinal() + 6).isoformat(),
        "generated_at": utc_now(),
        "settings": {
            "min_votes": cfg.min_votes,
            "top_n": cfg.top_n,
            "similarity_threshold": cfg.similarity_threshold,
            "confidence": cfg.confidence,
            "low_ratings_warning": cfg.low_ratings_warning,
            "trend_weeks": cfg.trend_weeks,
        },
        "headline": {"this": this, "previous": previous},
        "versions": [{**versions[v], **_week_numbers(answers[v], votes[v], -1)} for v in week_versions],
        "trend": trend,
        "worst": worst,
        "reasons": {
            "this": dict(this_week["reasons"].most_common()),
            "previous": dict(last_week["reasons"].most_common()),
        },
        "comments": _comments(db, since, until, versions),
        # Entries whose answers this week were rated down most: what a reviewer fixes in the knowledge base.
        "knowledge": {"entries": lineage.rated_entries(db, since=since, until=until, limit=cfg.top_n)},
        **lifecycle.lifecycle(db, since, until),
        "changes": changes(db, since, until),
    }
    report["warnings"] = _warnings(report, versions, week_versions, answers, cfg, now)
    report["personal_data_masked"] = dict(mask_report(report, PiiMasker(settings.dataset.pii_allowlist)))
    return report


def _versions(db: Database) -> dict[str, dict]:
    rows = db.execute(
        "SELECT id, name, provider, base_model, status FROM model_versions ORDER BY created_at, id"
    ).fetchall()
    names = Counter(row[1] for row in rows)
    return {
        vid: {
            "id": vid,
            "name": name,
            "label": name if names[name] == 1 else f"{name} ({vid[-6:]})",
            "provider": provider,
            "base_model": base_model,
            "status": status,
        }
        for vid, name, provider, base_model, status in rows
    }


def _answer_stats(db: Database, versions: list[str], bounds: list[str]) -> dict[str, dict]:
    """Per version and week: answers, failed answers and (a sample of) the good ones' latencies."""
    weeks = len(bounds) - 1
    stats = {
        v: {"answers": [0] * weeks, "failed": [0] * weeks, "latencies": [[] for _ in range(weeks)]} for v in versions
    }
    serving = []
    for version in versions:
        (total,) = db.execute(
            "SELECT COUNT(*) FROM messages WHERE model_version_id = ? AND created_at >= ? AND created_at < ?",
            [version, bounds[0], bounds[-1]],
        ).fetchone()
        if total:
            serving.append(version)
    for i in range(weeks):
        for version in serving:
            # Two counts rather than COUNT(error): each is an index-only scan on both engines, where reading
            # the free-text error column made PostgreSQL read every row of the week from the table.
            window = [version, bounds[i], bounds[i + 1]]
            (n,) = db.execute(
                "SELECT COUNT(*) FROM messages WHERE model_version_id = ? AND created_at >= ? AND created_at < ?",
                window,
            ).fetchone()
            (ok,) = db.execute(
                """SELECT COUNT(*) FROM messages WHERE model_version_id = ? AND created_at >= ? AND created_at < ?
                   AND error IS NULL""",
                window,
            ).fetchone()
            stats[version]["answers"][i], stats[version]["failed"][i] = n, n - ok
        # One sampling step for the whole week, so merging versions' latencies stays unbiased.
        # The multiply-and-shift spreads rowids, which alternate user/assistant, over the step.
        step = max(1, math.ceil(sum(stats[v]["answers"][i] for v in serving) / LATENCY_SAMPLE))
        for version in serving:
            if stats[version]["answers"][i] > stats[version]["failed"][i]:
                stats[version]["latencies"][i] = [
                    ms
                    for (ms,) in db.execute(
                        """SELECT latency_ms FROM messages WHERE model_version_id = ? AND created_at >= ?
                           AND created_at < ? AND error IS NULL AND latency_ms IS NOT NULL
                           AND ((rowid * 2654435761) >> 7) % ? = 0""",
                        [version, bounds[i], bounds[i + 1], step],
                    )
                ]
    return stats


def _vote_stats(db: Database, versions: list[str], bounds: list[str]) -> dict[str, dict]:
    """Per version and week: ratings and thumbs-down (index-only counts)."""
    weeks = len(bounds) - 1
    stats = {}
    for version in versions:
        entry = stats[version] = {"ratings": [0] * weeks, "down": [0] * weeks}
        (total,) = db.execute(
            "SELECT COUNT(*) FROM feedback WHERE model_version_id = ? AND answered_at >= ? AND answered_at < ?",
            [version, bounds[0], bounds[-1]],
        ).fetchone()
        if not total:
            continue
        for i in range(weeks):
            entry["ratings"][i], entry["down"][i] = db.execute(
                f"""SELECT COUNT(*), COALESCE(SUM({flag("rating < 0")}), 0) FROM feedback
                   WHERE model_version_id = ? AND answered_at >= ? AND answered_at < ?""",
                [version, bounds[i], bounds[i + 1]],
            ).fetchone()
    return stats


def _add_kept_counts(db: Database, versions: list[str], bounds: list[str], answers: dict, votes: dict) -> None:
    """Add the counts kept from purged and erased rows (``activity_counts``, feedback/privacy/counts.py), so
    the trends do not change when the words behind them are deleted."""
    for version in versions:
        if not any(kept_counts(db, version, bounds[0], bounds[-1])):
            continue
        for i in range(len(bounds) - 1):
            n, failed, ratings, down = kept_counts(db, version, bounds[i], bounds[i + 1])
            answers[version]["answers"][i] += n
            answers[version]["failed"][i] += failed
            votes[version]["ratings"][i] += ratings
            votes[version]["down"][i] += down


def _week_feedback(db: Database, since: str, until: str) -> dict:
    """Thumbs-down reasons and suggested corrections on the week's answers."""
    # A vote is cast after its answer, so created_at >= since bounds the scan by an index.
    rows = db.execute(
        f"""SELECT reason, COUNT(*), SUM({flag("correction IS NOT NULL AND trim(correction) != ''")}) FROM feedback
           WHERE created_at >= :since AND answered_at >= :since AND answered_at < :until AND rating < 0
           GROUP BY reason""",
        {"since": since, "until": until},
    ).fetchall()
    reasons = Counter()
    for reason, n, _ in rows:
        reasons[reason or "no reason given"] += n
    return {"reasons": reasons, "corrections": sum(c for _, _, c in rows)}


def percentile(values: list[float], share: float) -> float | None:
    """Nearest-rank percentile (``share`` 0.5 for the median) of unsorted ``values``; None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    return round(float(ordered[max(0, math.ceil(share * len(ordered)) - 1)]), 1)


def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _trend(weeks, versions, active, answers, votes) -> dict:
    series = []
    for v in active:
        a, r = answers[v], votes[v]
        series.append(
            {
                "model_version_id": v,
                "label": versions[v]["label"],
                "status": versions[v]["status"],
                "answers": a["answers"],
                "failed": a["failed"],
                "ratings": r["ratings"],
                "down": r["down"],
                "satisfaction": [_ratio(n - d, n) for n, d in zip(r["ratings"], r["down"], strict=False)],
            }
        )
    n = len(weeks)
    merged = [[ms for v in active for ms in answers[v]["latencies"][i]] for i in range(n)]
    total = {
        "answers": [sum(s["answers"][i] for s in series) for i in range(n)],
        "failed": [sum(s["failed"][i] for s in series) for i in range(n)],
        "ratings": [sum(s["ratings"][i] for s in series) for i in range(n)],
        "down": [sum(s["down"][i] for s in series) for i in range(n)],
        "latency_p50": [percentile(values, 0.5) for values in merged],
        "latency_p95": [percentile(values, 0.95) for values in merged],
    }
    total["satisfaction"] = [_ratio(r - d, r) for r, d in zip(total["ratings"], total["down"], strict=False)]
    return {"weeks": weeks, "series": series, "total": total}


def _headline(trend: dict, i: int, feedback: dict) -> dict:
    t = trend["total"]
    answers, ratings, down = t["answers"][i], t["ratings"][i], t["down"][i]
    return {
        "week": trend["weeks"][i],
        "answers": answers,
        "failed": t["failed"][i],
        "failed_rate": _ratio(t["failed"][i], answers),
        "ratings": ratings,
        "rating_rate": _ratio(ratings, answers - t["failed"][i]),
        "up": ratings - down,
        "down": down,
        "satisfaction": t["satisfaction"][i],
        "latency_p50": t["latency_p50"][i],
        "latency_p95": t["latency_p95"][i],
        "corrections": feedback["corrections"],
    }


def _week_numbers(answers: dict, votes: dict, i: int) -> dict:
    ratings, down = votes["ratings"][i], votes["down"][i]
    return {
        "answers": answers["answers"][i],
        "failed": answers["failed"][i],
        "ratings": ratings,
        "down": down,
        "satisfaction": _ratio(ratings - down, ratings),
        "latency_p50": percentile(answers["latencies"][i], 0.5),
        "latency_p95": percentile(answers["latencies"][i], 0.95),
    }


def _comments(db: Database, since: str, until: str, versions: dict, limit: int = 8) -> list[dict]:
    """The week's comments, down-votes first, repeated ones counted once with their count."""
    rows = db.execute(
        """SELECT f.comment, f.rating, f.reason, u.content, f.model_version_id, f.updated_at
           FROM feedback f
           JOIN messages a ON a.id = f.message_id
           JOIN messages u ON u.conversation_id = a.conversation_id AND u.seq = a.seq - 1
           WHERE f.created_at >= :since AND f.answered_at >= :since AND f.answered_at < :until
             AND f.comment IS NOT NULL AND trim(f.comment) != ''
           ORDER BY f.rating, f.updated_at DESC""",
        {"since": since, "until": until},
    ).fetchall()
    merged: dict[tuple, dict] = {}
    for comment, rating, reason, question, version, at in rows:
        key = (rating, question_key(comment))
        if key in merged:
            merged[key]["count"] += 1
            continue
        merged[key] = {
            "comment": comment.strip(),
            "rating": "up" if rating > 0 else "down",
            "reason": reason,
            "question": question,
            "model": versions.get(version, {}).get("label", version),
            "at": at,
            "count": 1,
        }
    ordered = sorted(merged.values(), key=lambda c: (c["rating"] != "down", -c["count"]))
    return ordered[:limit]


def _warnings(report: dict, versions: dict, week_versions: list[str], answers: dict, cfg, now) -> list[dict]:
    warnings = []
    this, previous = report["headline"]["this"], report["headline"]["previous"]
    low = cfg.low_ratings_warning
    if not this["answers"]:
        warnings.append({"kind": "no_traffic", "message": f"No answers were recorded in {report['week']}."})
    elif this["ratings"] < low:
        warnings.append(
            {
                "kind": "few_ratings",
                "message": f"The satisfaction rate rests on only {this['ratings']} rating(s) this week "
                f"(fewer than {low}); treat it as a rough signal.",
            }
        )
    if this["answers"] and previous["ratings"] < low:
        warnings.append(
            {
                "kind": "few_ratings_previous",
                "message": f"The previous week had only {previous['ratings']} rating(s); "
                "the week-over-week comparison is not reliable.",
            }
        )
    for row in report["versions"]:
        if len(report["versions"]) > 1 and row["ratings"] < low:
            warnings.append(
                {
                    "kind": "few_ratings_version",
                    "message": f"{row['label']}: {row['ratings']} rating(s) this week, too few to compare it "
                    "with the other versions.",
                }
            )
    if this["failed_rate"] is not None and this["failed_rate"] >= FAILED_ANSWERS_WARNING:
        warnings.append(
            {
                "kind": "failed_answers",
                "message": f"{this['failed']} answers ({this['failed_rate']:.1%}) failed this week "
                "(model server errors or timeouts).",
            }
        )
    worst = report["worst"]
    if worst and not worst["ranking"]["groups"] and this["ratings"]:
        warnings.append(
            {
                "kind": "nothing_ranked",
                "message": f"No question got {cfg.min_votes} or more votes this week, so none is ranked "
                "among the worst answered.",
            }
        )
    warnings.extend(_shutdown_warnings(versions, week_versions, answers, cfg, now))
    return warnings


def _shutdown_warnings(versions: dict, week_versions: list[str], answers: dict, cfg, now) -> list[dict]:
    today = local_date((now or datetime.now(timezone.utc)).isoformat().replace("+00:00", "Z"), cfg.timezone)
    week_total = sum(answers[v]["answers"][-1] for v in week_versions) or 1
    live = [v for v, row in versions.items() if row["status"] in ("live", "canary")]
    warnings = []
    for v in dict.fromkeys(week_versions + live):
        row = versions[v]
        for model in dict.fromkeys((row["name"], row["base_model"])):
            shuts = shutdown_date(model, cfg.shutdown_dates)
            if not shuts:
                continue
            day = shuts.isoformat()
            left = (shuts - today).days
            if left > cfg.shutdown_warning_days:
                continue
            share = answers[v]["answers"][-1] / week_total
            when = f"was shut down on {day}" if left < 0 else f"shuts down on {day} (in {left} days)"
            warnings.append(
                {
                    "kind": "model_shutdown",
                    "message": f"{model} {when}, as announced by its provider; {row['label']} "
                    f"({row['status']}) served {share:.0%} of this week's answers. Plan a replacement.",
                }
            )
    return warnings
