"""The weekly report: hand-computed numbers, sections, escaping, files, delivery, CLI and demo data."""

from __future__ import annotations

import email
import json
import re
from datetime import datetime, timezone
from email import policy

import pytest
from click.testing import CliRunner
from markdown_it import MarkdownIt

from bench import analytics
from cli.main import cli
from config.errors import ConfigError
from config.settings import load_settings
from feedback import sql, turns
from feedback.db import write_transaction
from feedback.demo import has_demo, remove_demo, seed_demo
from feedback.knowledge import lineage
from feedback.knowledge import store as kb
from feedback.knowledge.prompt import Snippet
from feedback.report import build, build_report, generate_report, list_reports, render_html, render_markdown
from feedback.report.deliver import deliver_report, webhook_payload
from feedback.report.weeks import iso_week_window, last_complete_week, shift_week
from tests.test_ranking import ask, make_version

pytestmark = pytest.mark.engines  # the storage tests run on SQLite and on PostgreSQL

W47 = "2026-W47"
NOW = datetime(2026, 11, 23, 0, 30, tzinfo=timezone.utc)  # Monday morning in Seoul
THIS = "2026-11-18T03:00:00.000Z"  # Wed of W47 (KST)
LAST = "2026-11-11T03:00:00.000Z"  # Wed of W46
HOSTILE = '<script>alert("q")</script> & <b>bold</b>'


def report_settings(tmp_path, **overrides):
    values = {"paths.data_dir": str(tmp_path / "var"), "report.min_votes": 1}
    values.update(overrides)
    return load_settings(env={}, overrides=values)


def failed_turn(db, version_id, at):
    turn = turns.Turn(
        conversation_id=turns.new_conversation_id(),
        question="anything",
        answer="",
        model_version_id=version_id,
        error="upstream_timeout",
        latency_ms=30000.0,
    )
    turns.record_turn(db, turn)
    with write_transaction(db):
        db.execute("UPDATE messages SET created_at = ? WHERE conversation_id = ?", [at, turn.conversation_id])


@pytest.fixture
def store(db):
    """Week W47: 4 good answers (latency 100/200/300/1000 ms) + 1 failed; 3 rated, 2 down.
    Week W46: 2 answers, both up — one of those votes cast late, during W47."""
    live = make_version(db, "starter", "live")
    ask(db, live, HOSTILE, down=1, reason="wrong", comment="<img src=x onerror=alert(1)> wrong | bad")
    ask(db, live, "How much is shipping?", up=1)
    ask(db, live, "Do points expire?", down=1, reason="outdated", correction="Points expire after 1 year.")
    ask(db, live, "Unrated question")
    failed_turn(db, live, THIS)
    with write_transaction(db):
        for ms, question in (
            (100, HOSTILE),
            (200, "How much is shipping?"),
            (300, "Do points expire?"),
            (1000, "Unrated question"),
        ):
            db.execute(
                "UPDATE messages SET latency_ms = ? WHERE role = 'assistant' AND conversation_id IN "
                "(SELECT conversation_id FROM messages WHERE content = ?)",
                [ms, question],
            )
    ask(db, live, "How much is shipping?", at=LAST, up=1)
    late = ask(db, live, "Do points expire?", at=LAST, up=1)
    with write_transaction(db):
        db.execute("UPDATE feedback SET created_at = ? WHERE message_id = ?", ["2026-11-17T01:00:00.000Z", late])
    return live


def test_week_windows_are_iso_weeks_in_the_configured_zone():
    assert iso_week_window(W47, "Asia/Seoul") == ("2026-11-15T15:00:00.000Z", "2026-11-22T15:00:00.000Z")
    assert iso_week_window(W47, "UTC") == ("2026-11-16T00:00:00.000Z", "2026-11-23T00:00:00.000Z")
    assert shift_week("2027-W01", -1) == "2026-W53"
    # Monday 00:30 UTC is already Monday 09:30 in Seoul: last week is W47 there, W47 in UTC too.
    assert last_complete_week("Asia/Seoul", NOW) == W47
    assert last_complete_week("UTC", datetime(2026, 11, 22, 20, 0, tzinfo=timezone.utc)) == "2026-W46"


def test_headline_numbers_by_hand(db, store, tmp_path):
    report = build_report(db, report_settings(tmp_path), week=W47, now=NOW)
    this, previous = report["headline"]["this"], report["headline"]["previous"]
    assert this == {
        "week": W47,
        "answers": 5,
        "failed": 1,
        "failed_rate": 0.2,
        "ratings": 3,
        "rating_rate": 0.75,
        "up": 1,
        "down": 2,
        "satisfaction": 0.3333,
        "latency_p50": 200.0,  # nearest rank: ⌈0.5·4⌉ = 2nd of 100, 200, 300, 1000
        "latency_p95": 1000.0,  # ⌈0.95·4⌉ = 4th
        "corrections": 1,
    }
    # The late vote belongs to its answer's week.
    assert (previous["answers"], previous["ratings"], previous["satisfaction"]) == (2, 2, 1.0)
    assert report["reasons"] == {"this": {"wrong": 1, "outdated": 1}, "previous": {}}
    assert [v["label"] for v in report["versions"]] == ["starter"]
    assert report["trend"]["weeks"][-2:] == ["2026-W46", W47] and len(report["trend"]["weeks"]) == 12
    assert report["trend"]["series"][0]["satisfaction"][-2:] == [1.0, 0.3333]
    worst = report["worst"]["ranking"]["groups"]
    # Both 1 of 1 down (score 0.2065), both asked once: the tie falls to the key's alphabetical order.
    assert [(g["question"], g["score"]) for g in worst][:2] == [("Do points expire?", 0.2065), (HOSTILE, 0.2065)]


class _Recorder:
    """A store handle that notes every statement run through it."""

    def __init__(self, db):
        self.db, self.statements = db, []

    def execute(self, statement, params=()):
        self.statements.append((statement, params))
        return self.db.execute(statement, params)


def test_per_week_answer_counts_and_latencies_read_only_an_index(db, store, tmp_path):
    # On PostgreSQL the covering index cannot hold the free-text error column; m017's partial index must answer
    # the per-week counts and latency samples alone, or each week reads its rows from the table (7.6 s at 1M).
    settings = report_settings(tmp_path)
    since, until = iso_week_window(W47, settings.report.timezone)
    recorder = _Recorder(db)
    build._answer_stats(recorder, _version_ids(db), [since, until])
    statements = [(s, p) for s, p in recorder.statements if "messages" in s]
    assert len(statements) >= 3  # the total, the answers without an error, the latencies
    for statement, params in statements:
        if sql.dialect(db) == "postgresql":
            db.execute("SET enable_seqscan = off")  # a tiny table is read whole otherwise, whatever its indexes
            db.execute("SET enable_bitmapscan = off")
            plan = "\n".join(row[0] for row in db.execute("EXPLAIN " + statement, params).fetchall())
            db.execute("RESET enable_seqscan")
            db.execute("RESET enable_bitmapscan")
            assert "Index Only Scan" in plan, (statement, plan)
        else:
            plan = "\n".join(row[-1] for row in db.execute("EXPLAIN QUERY PLAN " + statement, params).fetchall())
            assert "COVERING INDEX" in plan, (statement, plan)


def _version_ids(db) -> list[str]:
    return [row[0] for row in db.execute("SELECT id FROM model_versions ORDER BY id").fetchall()]


def test_warnings_few_ratings_and_announced_shutdown(db, store, tmp_path):
    settings = report_settings(tmp_path, report={"shutdown_dates": {"starter": "2026-12-01"}})
    kinds = {w["kind"]: w["message"] for w in build_report(db, settings, week=W47, now=NOW)["warnings"]}
    assert "only 3 rating(s)" in kinds["few_ratings"]
    assert "few_ratings_previous" in kinds
    assert "starter shuts down on 2026-12-01 (in 8 days)" in kinds["model_shutdown"]
    assert "20.0%" in kinds["failed_answers"]
    far = report_settings(tmp_path, report={"shutdown_dates": {"starter": "2027-12-01"}, "low_ratings_warning": 3})
    kinds = {w["kind"] for w in build_report(db, far, week=W47, now=NOW)["warnings"]}
    assert "model_shutdown" not in kinds and "few_ratings" not in kinds


def test_later_sections_say_nothing_yet_until_their_tables_exist(db, store, tmp_path):
    settings = report_settings(tmp_path)
    with write_transaction(db):
        # A store from before the review queue and training existed (later migrations add them).
        # PostgreSQL refuses to drop a table others' foreign keys point at unless told to drop those keys too.
        cascade = " CASCADE" if sql.dialect(db) == "postgresql" else ""
        for table in ("evaluations", "training_runs", "review_items"):
            db.execute(f"DROP TABLE IF EXISTS {table}{cascade}")
    report = build_report(db, settings, week=W47, now=NOW)
    assert report["review_queue"] == {"available": False}
    assert report["training"] == {"available": False, "events": []}
    html = render_html(report)
    assert "Nothing yet: the review queue has not been set up." in html
    with write_transaction(db):
        db.execute("CREATE TABLE review_items (id TEXT, question TEXT, status TEXT, created_at TEXT, decided_at TEXT)")
        db.execute(
            "INSERT INTO review_items VALUES ('r1', 'q', 'pending', '2026-11-02T00:00:00.000Z', NULL),"
            " ('r2', 'q', 'approved', '2026-11-17T00:00:00.000Z', '2026-11-18T00:00:00.000Z'),"
            " ('r3', 'q', 'pending', '2026-11-19T00:00:00.000Z', NULL)"
        )
        db.execute(
            "CREATE TABLE training_runs (id TEXT, provider TEXT, state TEXT, error TEXT, created_at TEXT, "
            "finished_at TEXT)"
        )
        db.execute(
            "INSERT INTO training_runs VALUES ('tr1', 'local', 'succeeded', NULL, "
            "'2026-11-18T00:00:00.000Z', '2026-11-18T01:00:00.000Z')"
        )
    report = build_report(db, settings, week=W47, now=NOW)
    queue = report["review_queue"]
    assert (queue["pending"], queue["added"], queue["decided"], queue["oldest_pending_days"]) == (
        2,
        2,
        {"approved": 1},
        20,
    )
    assert report["training"]["events"] == [
        {"id": "tr1", "provider": "local", "state": "succeeded", "error": None, "at": "2026-11-18T01:00:00.000Z"}
    ]
    markdown = render_markdown(report)
    assert "- pending: 2 (oldest 20 days)" in markdown
    assert "training run tr1 (local): succeeded" in markdown


def test_user_text_is_escaped_and_the_html_is_self_contained(db, store, tmp_path):
    html = render_html(build_report(db, report_settings(tmp_path), week=W47, now=NOW))
    assert "<script" not in html and "<img" not in html
    assert "&lt;script&gt;alert(&#34;q&#34;)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;" in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    # Nothing fetched from anywhere: no external URLs but the SVG namespace, no <link>, no src=.
    assert set(re.findall(r"https?://[^\s\"'<>]+", html)) == {"http://www.w3.org/2000/svg"}
    assert "<link" not in html and not re.search(r"<[^>]*\ssrc=", html)
    assert html.count("<svg") == 4


def test_markdown_keeps_tables_intact(db, store, tmp_path):
    markdown = render_markdown(build_report(db, report_settings(tmp_path), week=W47, now=NOW))
    assert "| Satisfaction (thumbs-up share) | 33.3% | 100.0% | -66.7 pts |" in markdown
    assert "wrong \\| bad" in markdown  # a pipe in a comment cannot break the table


def test_files_are_written_and_listed(db, store, tmp_path):
    settings = report_settings(tmp_path)
    report, paths = generate_report(db, settings, week=W47, now=NOW)
    assert {p.name for p in paths.values()} == {f"report-{W47}.{ext}" for ext in ("html", "md", "json")}
    assert all(p.parent == settings.reports_dir for p in paths.values())
    assert json.loads(paths["json"].read_text())["headline"] == report["headline"]
    (listed,) = list_reports(settings.reports_dir)
    assert (listed["week"], listed["formats"]) == (W47, ["html", "json", "md"])


def test_webhook_gets_slack_compatible_json(db, store, tmp_path, httpserver):
    httpserver.expect_oneshot_request("/hook", method="POST").respond_with_data("ok")
    settings = report_settings(
        tmp_path, **{"report.webhook_url": httpserver.url_for("/hook"), "report.public_url": "https://bot.example.com"}
    )
    report = build_report(db, settings, week=W47, now=NOW)
    (result,) = deliver_report(report, settings.report)
    assert result.ok and result.detail == "HTTP 200"
    ((request, _),) = httpserver.log
    body = json.loads(request.get_data())
    assert body == webhook_payload(report, settings.report)
    assert body["blocks"][0]["text"]["type"] == "mrkdwn"
    assert "weekly report 2026-W47" in body["text"] and "Satisfaction 33.3%" in body["text"]
    assert "https://bot.example.com/admin/reports/2026-W47" in body["text"]
    httpserver.expect_oneshot_request("/hook").respond_with_data("nope", status=500)
    (failed,) = deliver_report(report, settings.report)
    assert not failed.ok and "HTTP 500" in failed.detail


def test_email_carries_html_markdown_and_json(db, store, tmp_path, smtp_server):
    settings = report_settings(
        tmp_path,
        **{
            "report.smtp_host": "127.0.0.1",
            "report.smtp_port": smtp_server.server_address[1],
            "report.smtp_starttls": False,
            "report.smtp_from": "tuneloop@example.com",
            "report.smtp_to": ["lead@example.com"],
        },
    )
    report = build_report(db, settings, week=W47, now=NOW)
    (result,) = deliver_report(report, settings.report)
    assert result.ok, result.detail
    assert smtp_server.recipients == ["<lead@example.com>"]
    (raw,) = smtp_server.received
    message = email.message_from_bytes(raw, policy=policy.default)
    assert message["Subject"] == "tuneloop weekly report 2026-W47: satisfaction 33.3%"
    assert "Weekly report · 2026-W47" in message.get_body(("html",)).get_content()
    assert "# Weekly report 2026-W47" in message.get_body(("plain",)).get_content()
    (attachment,) = list(message.iter_attachments())
    assert attachment.get_filename() == "report-2026-W47.json"
    assert json.loads(attachment.get_content())["week"] == W47


def test_unreachable_smtp_is_reported_not_raised(db, store, tmp_path):
    settings = report_settings(
        tmp_path,
        **{
            "report.smtp_host": "127.0.0.1",
            "report.smtp_port": 9,
            "report.smtp_starttls": False,
            "report.smtp_from": "a@example.com",
            "report.smtp_to": ["b@example.com"],
            "report.webhook_timeout_s": 2.0,
        },
    )
    (result,) = deliver_report(build_report(db, settings, week=W47, now=NOW), settings.report)
    assert not result.ok and result.channel == "email"


def test_demo_seed_then_report_from_the_cli(tmp_path):
    runner = CliRunner()
    env = {"TUNELOOP_PATHS__DATA_DIR": str(tmp_path / "var")}
    seeded = runner.invoke(cli, ["demo", "seed", "--weeks", "3", "--turns-per-week", "300"], env=env)
    assert seeded.exit_code == 0, seeded.output
    assert "ratings" in seeded.output
    again = runner.invoke(cli, ["demo", "seed", "--weeks", "3"], env=env)
    assert again.exit_code == 1 and "already" in again.output
    made = runner.invoke(cli, ["report", "--no-deliver"], env=env)
    assert made.exit_code == 0, made.output
    assert re.search(r"html .*report-\d{4}-W\d{2}\.html", made.output)
    ranked = runner.invoke(cli, ["worst", "--json", "--top", "3"], env=env)
    assert ranked.exit_code == 0, ranked.output
    assert len(json.loads(ranked.output)["groups"]) == 3
    bad = runner.invoke(cli, ["report", "--week", "2026-W99"], env=env)
    assert bad.exit_code == 2 and "no ISO week 99" in bad.output


def test_demo_data_tells_a_story_and_can_be_removed(db, tmp_path):
    settings = report_settings(tmp_path)
    summary = seed_demo(db, settings, weeks=6, turns_per_week=600, now=NOW)
    assert 0.25 < summary.ratings / summary.answers < 0.4
    report = build_report(db, settings, week=W47, now=NOW)
    labels = [s["label"] for s in report["trend"]["series"]]
    assert labels == ["starter-v0", "starter"]
    old, new = report["trend"]["series"]
    assert old["answers"][-1] == 0 and new["answers"][-1] > 500  # the new version took over
    worst = report["worst"]["ranking"]["groups"]
    assert worst and worst[0]["evidence"]["comments"] and worst[0]["down_share"] > 0.5
    assert has_demo(db)
    assert remove_demo(db) == summary.conversations
    assert not has_demo(db)
    assert db.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 0


def test_report_settings_are_checked(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text('[report]\nshutdown_dates = { "gpt-4o-mini" = 2026-03-31, "old" = "2026-01-05" }\n')
    # Yours are added to the defaults (OpenAI's announced dates for fine-tuned models), yours winning on a key.
    openai = {f"ft:{base}": "2027-01-14" for base in ("gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini")}
    assert load_settings(env={}).report.shutdown_dates == openai
    expected = {**openai, "gpt-4o-mini": "2026-03-31", "old": "2026-01-05"}
    assert load_settings(good, env={}).report.shutdown_dates == expected
    bad = tmp_path / "bad.toml"
    bad.write_text('[report]\nshutdown_dates = { "gpt-4o-mini" = "next spring" }\n')
    with pytest.raises(ConfigError, match=r"^report.shutdown_dates.gpt-4o-mini: expected a date"):
        load_settings(bad, env={})
    with pytest.raises(ConfigError, match=r"^report.timezone: unknown time zone"):
        load_settings(env={"TUNELOOP_REPORT__TIMEZONE": "Mars/Olympus"})
    with pytest.raises(ConfigError, match=r"^report.smtp_to:"):
        load_settings(env={"TUNELOOP_REPORT__SMTP_HOST": "smtp.example.com", "TUNELOOP_REPORT__SMTP_FROM": "a@b.c"})


def test_analytics_benchmark_runs_on_a_small_store(tmp_path, capsys):
    (row,) = analytics.run([3000], tmp_path, repeat=1, rebuild=False)
    assert (row["turns"], row["messages"]) == (3000, 6000)
    assert 0.25 < row["feedback"] / row["turns"] < 0.35
    assert row["one_week"]["rated"] > 0 and row["all"]["groups"] > 0
    assert json.loads(capsys.readouterr().out.strip()) == row


def test_the_report_names_the_entries_behind_the_rated_down_answers(db, tmp_path):
    live = make_version(db, "starter", "live")
    fee = kb.add_entry(db, questions="How much is the shipping fee?", answer="2,500 won.", actor="ana")
    hours = kb.add_entry(db, questions=HOSTILE, answer="9 to 6.", actor="ana")
    built = {fee: ["postage?", "shipping cost?", "postage?"], hours: ["open when?"]}
    for entry, questions in built.items():
        for question in questions:
            message_id = ask(db, live, question, at=THIS, down=1)
            with write_transaction(db):
                lineage.record_sources(db, message_id, [Snippet(entry.id, entry.question, entry.answer, 0.6, 1)])
    ask(db, live, "old week", at=LAST, down=1)
    report = build_report(db, report_settings(tmp_path, **{"report.min_votes": 2}), week=W47, now=NOW)
    entries = report["knowledge"]["entries"]
    assert [(e["id"], e["down"], e["answers"]) for e in entries] == [(fee.id, 3, 3), (hours.id, 1, 1)]
    assert report["worst"]["ranking"]["groups"][0]["evidence"]["entries"] == [
        {"id": fee.id, "question": "How much is the shipping fee?", "down": 2}
    ]
    html, md = render_html(report), render_markdown(report)
    assert "Knowledge behind the rated-down answers" in html and fee.id in html
    assert "<script>alert" not in html and "&lt;script&gt;" in html
    assert f"| How much is the shipping fee? `{fee.id}` | 3 | 0 | 3 |" in md
    assert "answers built on entry “How much is the shipping fee?”, 👎 2" in md


# Each runs script when a Markdown viewer passes it through as HTML (issue 14 counted 7 dialogs).
MARKUP = [
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(2)>",
    "<svg onload=alert(3)>",
    "<details open ontoggle=alert(4)>",
    '<iframe srcdoc="<script>alert(5)</script>"></iframe>',
    "<video src=x onerror=alert(6)></video>",
    "<style onload=alert(7)></style>",
]
# Markdown that makes a link or an image out of user text.
MARKDOWN_LINKS = [
    "[the refund page](javascript:alert(8))",
    "![tracking pixel](http://tracker.invalid/p.png)",
    "<http://evil.example>",
]
# What the report's own Markdown may render to: headings, paragraphs, tables, lists, emphasis.
REPORT_TAGS = {"h1", "h2", "p", "table", "thead", "tbody", "tr", "th", "td", "ul", "li", "em", "strong"}


def _viewer_html(markdown: str) -> str:
    """What a Markdown viewer shows: CommonMark (raw HTML passes through, as the spec says) with tables."""
    return MarkdownIt("commonmark", {"html": True}).enable("table").render(markdown)


def _dialogs_in(page, html: str) -> int:
    """How many dialogs ``html`` opens in Chromium (each dismissed)."""
    opened = []

    def on_dialog(dialog):
        opened.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    try:
        page.set_content(html, wait_until="load")
        page.wait_for_timeout(300)  # onerror and ontoggle fire after load
    finally:
        page.remove_listener("dialog", on_dialog)
    return len(opened)


@pytest.mark.browser
def test_the_markdown_report_runs_no_markup_in_a_markdown_viewer(db, tmp_path, page):
    live = make_version(db, "starter", "live")
    for i, payload in enumerate(MARKUP + MARKDOWN_LINKS):
        ask(db, live, f"Question {i} {payload}", down=1, comment=f"comment {payload}", correction=payload)
    report = build_report(db, report_settings(tmp_path, **{"report.similarity_threshold": 1.0}), week=W47, now=NOW)
    questions = {g["question"] for g in report["worst"]["ranking"]["groups"]}
    assert questions == {f"Question {i} {p}" for i, p in enumerate(MARKUP + MARKDOWN_LINKS)}  # each one is ranked
    # The harness is not blind: the same payloads as raw Markdown open every dialog in this viewer.
    assert [_dialogs_in(page, _viewer_html(f"Question {payload}")) for payload in MARKUP] == [1] * len(MARKUP)
    rendered = _viewer_html(render_markdown(report))
    assert _dialogs_in(page, rendered) == 0
    assert set(re.findall(r"<([a-z][a-z0-9]*)", rendered)) <= REPORT_TAGS  # no link, image or raw HTML
    shown = page.inner_text("body")  # and the reader still sees exactly what the user typed
    assert "Question 1 <img src=x onerror=alert(2)>" in shown and "[the refund page](javascript:alert(8))" in shown


def test_webhook_text_cannot_ping_the_channel_or_disguise_a_link(db, tmp_path, httpserver):
    live = make_version(db, "starter", "live")
    hostile = "<!channel> read <https://evil.example/login|Full report> @here & <@U024BE7LH>\n⚠ fake warning"
    ask(db, live, hostile, down=3)
    httpserver.expect_oneshot_request("/hook", method="POST").respond_with_data("ok")
    settings = report_settings(tmp_path, **{"report.webhook_url": httpserver.url_for("/hook")})
    (result,) = deliver_report(build_report(db, settings, week=W47, now=NOW), settings.report)
    assert result.ok
    ((request, _),) = httpserver.log
    body = json.loads(request.get_data())
    for text in (body["text"], body["blocks"][0]["text"]["text"]):
        # Slack acts only on <…>; none is left, and a plain broadcast mention is broken by a word joiner.
        assert "<" not in text and ">" not in text
        assert (
            "&lt;!channel&gt; read &lt;https://evil.example/login|Full report&gt; @\u2060here &amp; &lt;@U024BE7LH&gt;"
            in text
        )
        assert "\n⚠ fake warning" not in text  # user text cannot start a line of its own
    assert body["unfurl_links"] is False and body["unfurl_media"] is False
