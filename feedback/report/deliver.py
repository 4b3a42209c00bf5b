"""Sending a written report: a Slack-compatible webhook and e-mail over SMTP, both from ``[report]``.

The webhook gets a short summary (``text`` for any Slack-compatible receiver,
plus ``blocks`` for Slack's richer layout); the full report stays on the admin
page, linked when ``report.public_url`` is set. Text from users and settings is
escaped for Slack's mrkdwn (:func:`mrkdwn_text`), so a question cannot ping the
channel or post a disguised link. The e-mail carries the whole
HTML report with the Markdown as its plain-text part and the JSON attached.
Each channel is tried on its own: one failing does not stop the other, and the
result says what happened to each.
"""

from __future__ import annotations

import json
import re
import smtplib
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from config.errors import UpstreamError
from config.settings import ReportSettings
from feedback.report.render import headline_cards, pct, render_html, render_json, render_markdown


@dataclass(frozen=True)
class Delivery:
    """What happened on one channel."""

    channel: str  # "webhook" or "email"
    ok: bool
    detail: str


def deliver_report(report: dict, cfg: ReportSettings) -> list[Delivery]:
    """Send ``report`` on every configured channel; an empty list when none is configured."""
    results = []
    if cfg.webhook_url:
        results.append(_attempt("webhook", lambda: post_webhook(report, cfg)))
    if cfg.smtp_host:
        results.append(_attempt("email", lambda: send_email(report, cfg)))
    return results


def _attempt(channel: str, send) -> Delivery:
    try:
        return Delivery(channel, True, send())
    except (UpstreamError, OSError, smtplib.SMTPException) as exc:
        message = exc.message if isinstance(exc, UpstreamError) else f"{type(exc).__name__}: {exc}"
        return Delivery(channel, False, message)


# @channel, @here, @everyone and @all notify a whole channel in Slack-compatible receivers that read
# plain mentions (Mattermost, Slack with link_names); a word joiner after the @ keeps them as text.
_BROADCAST = re.compile(r"@(?=(?:channel|here|everyone|all)\b)", re.IGNORECASE)


def mrkdwn_text(value) -> str:
    """``value`` as inert text inside Slack mrkdwn.

    Slack reads ``<…>`` as a command: ``<!channel>`` pings everyone, ``<https://evil|Full report>``
    is a link that shows other text, ``<@U123>`` mentions a person. Slack's rule is to escape ``&``,
    ``<`` and ``>`` as entities; a newline is folded so user text cannot start lines of its own.
    """
    text = " ".join(str(value if value is not None else "").split())
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _BROADCAST.sub("@\u2060", text)


def report_link(report: dict, cfg: ReportSettings) -> str | None:
    """The report's URL under ``/admin/reports`` when ``report.public_url`` is set."""
    if not cfg.public_url:
        return None
    return f"{cfg.public_url.rstrip('/')}/admin/reports/{report['week']}"


def summary_text(report: dict, cfg: ReportSettings) -> str:
    """A few lines for chat: headline numbers, the worst question, warnings, the link."""
    cards = {c["key"]: c for c in headline_cards(report)}
    sat = cards["satisfaction"]
    lines = [
        f"*tuneloop weekly report {report['week']}* ({report['first_day']} – {report['last_day']})",
        f"Satisfaction {sat['value']}"
        + (f" ({sat['delta']})" if sat["delta"] else "")
        + f" · {cards['answers']['value']} answers · {cards['ratings']['value']} ratings"
        + f" · p95 {cards['latency_p95']['value']}",
    ]
    worst = report.get("worst") or {}
    groups = (worst.get("ranking") or {}).get("groups") or []
    if groups:
        top = groups[0]
        lines.append(
            f"Worst answered: “{mrkdwn_text(top['question'])}” — {top['down']} of {top['votes']} down "
            f"({pct(top['down_share'], 0)})"
        )
    for warning in report["warnings"][:3]:
        lines.append(f"⚠ {mrkdwn_text(warning['message'])}")
    link = report_link(report, cfg)
    if link:
        lines.append(f"Full report: {mrkdwn_text(link)}")
    return "\n".join(lines)


def webhook_payload(report: dict, cfg: ReportSettings) -> dict:
    """The JSON posted to the webhook: ``text`` (works everywhere) and Slack ``blocks``."""
    text = summary_text(report, cfg)
    return {
        "text": text,
        "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}}],
        # A link a user typed into a question must not be previewed (fetched) in the channel.
        "unfurl_links": False,
        "unfurl_media": False,
    }


def post_webhook(report: dict, cfg: ReportSettings) -> str:
    """POST the summary to ``report.webhook_url``; raises :class:`UpstreamError` on failure."""
    body = json.dumps(webhook_payload(report, cfg), ensure_ascii=False).encode()
    request = urllib.request.Request(
        cfg.webhook_url, data=body, method="POST", headers={"Content-Type": "application/json; charset=utf-8"}
    )
    try:
        with urllib.request.urlopen(request, timeout=cfg.webhook_timeout_s) as response:
            return f"HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        raise UpstreamError(f"webhook answered HTTP {exc.code}") from exc
    except (urllib.error.URLError, TimeoutError) as exc:
        raise UpstreamError(f"webhook unreachable: {getattr(exc, 'reason', exc)}") from exc


def build_email(report: dict, cfg: ReportSettings) -> EmailMessage:
    """The report e-mail: Markdown text part, HTML part, JSON attachment."""
    message = EmailMessage()
    satisfaction = report["headline"]["this"]["satisfaction"]
    message["Subject"] = f"tuneloop weekly report {report['week']}: satisfaction {pct(satisfaction)}"
    message["From"] = cfg.smtp_from
    message["To"] = ", ".join(cfg.smtp_to)
    message["Date"] = formatdate(localtime=False)
    message["Message-ID"] = make_msgid(domain="tuneloop.invalid")
    message.set_content(render_markdown(report))
    message.add_alternative(render_html(report), subtype="html")
    message.add_attachment(
        render_json(report).encode(),
        maintype="application",
        subtype="json",
        filename=f"report-{report['week']}.json",
    )
    return message


def send_email(report: dict, cfg: ReportSettings) -> str:
    """Mail the report through ``report.smtp_host``; STARTTLS and login as configured."""
    message = build_email(report, cfg)
    with smtplib.SMTP(cfg.smtp_host, cfg.smtp_port, timeout=cfg.webhook_timeout_s) as smtp:
        if cfg.smtp_starttls:
            smtp.starttls(context=ssl.create_default_context())
        if cfg.smtp_user:
            smtp.login(cfg.smtp_user, cfg.smtp_password())
        refused = smtp.send_message(message)
    sent = [r for r in cfg.smtp_to if r not in refused]
    return f"sent to {', '.join(sent)}"
