"""The demo page and the embeddable widget, driven in a real headless Chromium.

The gateway runs as a real HTTP server on the scripted upstream (which answers
"echo: <message>"), so a message containing markup makes the *model's answer* contain
it. Embedding is tested from a second server on another port — another origin.
Missing Chromium fails these tests (see tests/plugins/browser.py); nothing skips.
"""

from __future__ import annotations

import os
import re
import struct
from pathlib import Path
from urllib.request import urlopen

import pytest
from playwright.sync_api import expect

from feedback import apikeys
from tests.plugins.axe import assert_accessible

pytestmark = pytest.mark.browser

DOCS = Path(__file__).resolve().parent.parent / "docs"
XSS_IMG = '<img src=x onerror="window.__pwned=1">'
XSS_SCRIPT = "<script>window.__pwned=1</script>"
# Somebody else's site, with CSS that would wreck an unprotected widget.
HOSTILE_CSS = (
    "<style>* { color: red !important; font-size: 30px !important } button { display: none !important }</style>"
)


def doc_snippet() -> str:
    """The one-line embed snippet exactly as docs/widget.md shows it."""
    text = (DOCS / "widget.md").read_text(encoding="utf-8")
    return re.search(r"```html\n(<script .*?</script>)\n```", text).group(1)


def host_page(snippet: str) -> str:
    """Somebody else's shop, with the snippet and CSS that would wreck an unprotected widget."""
    return (
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>Acme shop</title>{HOSTILE_CSS}</head>"
        f"<body><h1>Acme shop</h1>{snippet}</body></html>"
    )


def plain_page(snippet: str) -> str:
    """A bare page for screenshots: the widget with its default title."""
    snippet = snippet.replace('data-title="Support" ', "")
    lang = re.search(r'data-lang="(\w+)"', snippet).group(1)  # the host page is in the widget's language
    return (
        f"<!doctype html><html lang='{lang}'><head><meta charset='utf-8'><title>shop</title></head>"
        f"<body style='margin:0;background:#e2e8f0'>{snippet}</body></html>"
    )


def embed(gateway_url: str, key: str, lang: str = "en") -> str:
    """The documented snippet, pointed at this gateway with this key."""
    snippet = doc_snippet().replace("http://127.0.0.1:8000", gateway_url).replace("tl_pk_YOUR_KEY", key)
    return snippet.replace('data-lang="en"', f'data-lang="{lang}"')


@pytest.fixture
def embedded(page, live_gateway, host_site, gateway_db):
    """Factory: open a page on another origin that embeds the documented snippet with a new publishable key.

    ``allowed`` puts that origin in gateway.cors_origins (otherwise only an unrelated one is listed).
    Returns the key's row.
    """

    def open_page(*, allowed: bool = True, lang: str = "en", html=host_page):
        site, site_url = host_site
        url = live_gateway(**{"gateway.cors_origins": [site_url if allowed else "https://shop.example"]})
        assert site_url != url  # two origins
        key_row, key = apikeys.create_key(gateway_db, "shop", kind="publishable")
        site.html = html(embed(url, key, lang))
        page.goto(site_url)
        return key_row

    return open_page


def send(page, text: str) -> None:
    box = page.get_by_role("textbox", name=re.compile("message|메시지"))
    box.fill(text)
    box.press("Enter")


def answers(page):
    """Assistant bubbles that carry a rating row (the greeting has none)."""
    return page.locator(".msg.assistant").filter(has=page.locator(".rate"))


def rows(db, sql: str, params=()) -> list[tuple]:
    return db.execute(sql, list(params)).fetchall()


def test_widget_js_is_served_as_cacheable_javascript(live_gateway):
    with urlopen(live_gateway() + "/widget.js") as r:
        assert r.headers["Content-Type"] == "text/javascript; charset=utf-8"
        assert "max-age=300" in r.headers["Cache-Control"] and r.headers["ETag"]
        source = r.read().decode()
    # Every string reaches the DOM as text: no HTML sink, no code from strings.
    assert not re.search(
        r"innerHTML\s*[+]?=|outerHTML|insertAdjacentHTML|document\.write|\beval\(|new Function", source
    )


def test_demo_page_streams_answers_and_a_thumbs_down_lands_on_the_right_message(page, live_gateway, gateway_db):
    url = live_gateway()
    page.goto(url + "/?lang=en")
    expect(page.get_by_role("heading", name="Support")).to_be_visible()

    send(page, "Where is my order?")
    first = answers(page).nth(0)
    expect(first.locator(".text")).to_have_text("echo: Where is my order?")

    # Six tokens 300 ms apart: the answer must show up piece by piece, not at the end.
    send(page, "!tokens 6 0.3")
    second = page.locator(".msg.assistant").nth(2).locator(".text")
    expect(second).to_contain_text("t0")
    assert "t5" not in second.inner_text()
    expect(answers(page)).to_have_count(2)
    expect(answers(page).nth(1).locator(".text")).to_have_text("t0 t1 t2 t3 t4 t5")

    first.get_by_role("button", name="Bad answer").click()
    form = first.locator("form.fb")
    form.get_by_text("Incomplete", exact=True).click()
    form.get_by_label("Comment (optional)").fill("It does not say when it ships.")
    form.get_by_label("What would the right answer have been? (optional)").fill("Orders ship within 2 days.")
    form.get_by_role("button", name="Send feedback").click()
    expect(first.locator(".note")).to_have_text("Thanks for your feedback!")
    expect(first.get_by_role("button", name="Bad answer")).to_have_attribute("aria-pressed", "true")

    stored = rows(
        gateway_db,
        "SELECT m.content, f.rating, f.reason, f.comment, f.correction, c.source FROM feedback f "
        "JOIN messages m ON m.id = f.message_id JOIN conversations c ON c.id = m.conversation_id",
    )
    assert stored == [
        (
            "echo: Where is my order?",
            -1,
            "incomplete",
            "It does not say when it ships.",
            "Orders ship within 2 days.",
            "widget",
        )
    ]
    # Both answers went into one conversation.
    assert rows(gateway_db, "SELECT COUNT(DISTINCT conversation_id) FROM messages") == [(1,)]
    assert page.errors == []


@pytest.mark.parametrize("lang", ["en", "ko"])
def test_the_chat_page_passes_the_accessibility_audit_before_and_after_an_answer_and_a_rating(page, live_gateway, lang):
    # axe-core, WCAG 2.1 A/AA, the widget's open shadow root included (tests/plugins/axe.py).
    page.goto(live_gateway() + f"/?lang={lang}")
    expect(page.get_by_role("heading", name={"en": "Support", "ko": "고객 지원"}[lang])).to_be_visible()
    assert_accessible(page, f"the chat page before a question ({lang})")
    send(page, "Where is my order?")
    answer = answers(page).nth(0)
    expect(answer.locator(".text")).to_have_text("echo: Where is my order?")
    assert_accessible(page, f"the chat page after an answer ({lang})")
    answer.get_by_role("button", name={"en": "Bad answer", "ko": "아쉬운 답변"}[lang]).click()
    expect(answer.locator("form.fb")).to_be_visible()
    assert_accessible(page, f"the chat page's feedback form open ({lang})")
    answer.get_by_text({"en": "Incomplete", "ko": "불완전함"}[lang], exact=True).click()
    answer.locator("form.fb button[type=submit]").click()
    expect(answer.locator(".note")).to_have_text(
        {"en": "Thanks for your feedback!", "ko": "소중한 의견 감사합니다!"}[lang]
    )
    answer.get_by_role("button", name={"en": "Good answer", "ko": "좋은 답변"}[lang]).click()
    expect(answer.get_by_role("button", name={"en": "Good answer", "ko": "좋은 답변"}[lang])).to_have_attribute(
        "aria-pressed", "true"
    )
    assert_accessible(page, f"the chat page after a rating ({lang})")
    assert page.errors == []


def test_a_vote_can_be_changed_and_shows_as_chosen(page, live_gateway, gateway_db):
    page.goto(live_gateway() + "/?lang=en")
    send(page, "hello")
    answer = answers(page).nth(0)
    up, down = answer.get_by_role("button", name="Good answer"), answer.get_by_role("button", name="Bad answer")
    down.click()
    expect(down).to_have_attribute("aria-pressed", "true")
    expect(answer.locator("form.fb")).to_be_visible()
    assert rows(gateway_db, "SELECT rating, reason FROM feedback") == [(-1, None)]  # counted before the form is filled

    up.click()
    expect(up).to_have_attribute("aria-pressed", "true")
    expect(down).to_have_attribute("aria-pressed", "false")
    expect(answer.locator("form.fb")).to_have_count(0)
    assert rows(gateway_db, "SELECT rating FROM feedback") == [(1,)]  # changed, not added


def test_model_output_with_markup_is_shown_as_text_and_never_runs(page, embedded):
    # On a host page with no CSP of its own, so only the widget's rendering stands between the answer and the DOM.
    embedded()
    page.get_by_role("button", name="Open chat").click()

    for i, attack in enumerate((XSS_IMG, XSS_SCRIPT)):
        send(page, attack)
        expect(answers(page).nth(i).locator(".text")).to_have_text("echo: " + attack)
    expect(page.locator(".msg.user .text").nth(0)).to_have_text(XSS_IMG)
    page.wait_for_timeout(300)  # an onerror handler would have fired by now
    assert page.evaluate("window.__pwned") is None
    assert (
        page.evaluate("document.querySelector('.tuneloop-widget').shadowRoot.querySelectorAll('img, script').length")
        == 0
    )
    assert page.errors == []


def test_embedded_on_an_allowed_origin_chats_and_votes(page, embedded, gateway_db):
    key_row = embedded()

    launcher = page.get_by_role("button", name="Open chat")
    expect(launcher).to_be_visible()  # the host's `button {display: none}` does not reach into the widget
    launcher.click()
    send(page, "Do you ship to Jeju?")
    answer = answers(page).nth(0)
    expect(answer.locator(".text")).to_have_text("echo: Do you ship to Jeju?")
    assert answer.locator(".text").evaluate("e => getComputedStyle(e).color") != "rgb(255, 0, 0)"
    answer.get_by_role("button", name="Good answer").click()
    expect(answer.get_by_role("button", name="Good answer")).to_have_attribute("aria-pressed", "true")

    assert rows(
        gateway_db,
        "SELECT f.rating, c.api_key_id, m.content FROM feedback f JOIN messages m ON m.id = f.message_id "
        "JOIN conversations c ON c.id = m.conversation_id",
    ) == [(1, key_row.id, "echo: Do you ship to Jeju?")]
    assert page.errors == []


def test_delete_this_conversation_erases_it_across_origins_and_starts_afresh(page, embedded, gateway_db):
    embedded()  # another origin: the DELETE goes through CORS's preflight
    page.get_by_role("button", name="Open chat").click()
    forget = page.get_by_role("button", name="Delete this conversation")
    expect(forget).to_be_hidden()  # nothing to delete before an answer
    send(page, "My card ends in Wmark21, where is my parcel?")
    answers(page).nth(0).get_by_role("button", name="Good answer").click()
    expect(answers(page).nth(0).get_by_role("button", name="Good answer")).to_have_attribute("aria-pressed", "true")
    send(page, "And the other one?")
    expect(answers(page)).to_have_count(2)
    expect(forget).to_be_visible()
    assert rows(gateway_db, "SELECT COUNT(*) FROM conversations") == [(1,)]
    assert rows(gateway_db, "SELECT COUNT(*) FROM feedback") == [(1,)]

    forget.click()
    confirm = page.get_by_role("alertdialog", name="Delete this conversation")
    confirm.get_by_role("button", name="Cancel").click()  # changing one's mind deletes nothing
    expect(confirm).to_be_hidden()
    assert rows(gateway_db, "SELECT COUNT(*) FROM messages") == [(4,)]
    forget.click()
    confirm.get_by_role("button", name="Delete", exact=True).click()

    expect(page.locator(".status")).to_have_text("The conversation was deleted.")
    expect(answers(page)).to_have_count(0)
    expect(forget).to_be_hidden()
    assert rows(gateway_db, "SELECT COUNT(*) FROM conversations") == [(0,)]
    assert rows(gateway_db, "SELECT COUNT(*) FROM messages") == [(0,)]
    assert rows(gateway_db, "SELECT COUNT(*) FROM feedback") == [(0,)]
    assert rows(gateway_db, "SELECT kind, via FROM erasures") == [("conversation", "api")]
    send(page, "A new question")  # the next message starts a new conversation
    expect(answers(page).nth(0).locator(".text")).to_have_text("echo: A new question")
    assert rows(gateway_db, "SELECT COUNT(*) FROM conversations") == [(1,)]
    assert page.errors == []


def test_embedded_on_an_unlisted_origin_is_refused_and_nothing_is_written(page, embedded, gateway_db):
    embedded(allowed=False)
    page.get_by_role("button", name="Open chat").click()
    send(page, "Do you ship to Jeju?")

    expect(page.locator(".msg .error")).to_contain_text("This website is not allowed to use this chat service")
    expect(page.locator(".banner")).to_contain_text("not allowed")  # the config request was refused on load
    assert rows(gateway_db, "SELECT COUNT(*) FROM messages") == [(0,)]
    assert rows(gateway_db, "SELECT COUNT(*) FROM conversations") == [(0,)]


def test_server_refuses_browser_requests_from_unlisted_origins(make_gateway, gateway_db):
    # What CORS cannot stop: a non-browser client, or a text/plain POST that skips the preflight.
    c = make_gateway(**{"gateway.cors_origins": ["https://shop.example"]}).test_client()
    _, key = apikeys.create_key(gateway_db, "shop", kind="publishable")
    _, secret = apikeys.create_key(gateway_db, "backend")
    body = '{"message": "hi"}'

    def chat(origin: str | None, key: str | None):
        headers = (
            {"Content-Type": "text/plain"}
            | ({"Origin": origin} if origin else {})
            | ({"Authorization": f"Bearer {key}"} if key else {})
        )
        return c.post("/api/chat", data=body, headers=headers)

    refused = chat("https://evil.example", key)
    assert refused.status_code == 403 and refused.get_json()["error"]["code"] == "origin_not_allowed"
    assert chat("https://evil.example", None).status_code == 403
    assert chat("https://shop.example", key).status_code == 200
    assert chat("http://localhost", key).status_code == 200  # the gateway's own origin (test client's Host)
    assert chat(None, key).status_code == 200  # no Origin: not a browser page
    assert chat("https://evil.example", secret).status_code == 200  # secret keys are for servers
    assert rows(gateway_db, "SELECT COUNT(*) FROM conversations") == [(4,)]


def test_demo_page_with_a_publishable_key_when_keys_are_required(page, live_gateway, gateway_db):
    url = live_gateway(**{"gateway.require_api_key": "always"})
    key_row, key = apikeys.create_key(gateway_db, "demo", kind="publishable")

    page.goto(url + "/?lang=en")
    expect(page.locator(".banner")).to_contain_text("an API key is required")

    page.goto(f"{url}/?lang=en&key={key}")
    expect(page.locator(".banner")).to_be_hidden()
    send(page, "hello")
    answer = answers(page).nth(0)
    answer.get_by_role("button", name="Bad answer").click()
    expect(answer.get_by_role("button", name="Bad answer")).to_have_attribute("aria-pressed", "true")
    assert rows(
        gateway_db,
        "SELECT f.rating, c.api_key_id FROM feedback f JOIN messages m ON m.id = f.message_id "
        "JOIN conversations c ON c.id = m.conversation_id",
    ) == [(-1, key_row.id)]


def test_keyboard_only_thumbs_down_with_a_reason(page, embedded, gateway_db):
    embedded()

    page.keyboard.press("Tab")  # the launcher is the page's only focusable element
    page.keyboard.press("Enter")
    launcher = page.locator(".launcher")
    expect(launcher).to_have_attribute("aria-expanded", "true")
    page.keyboard.type("hello")  # opening moved focus to the message box
    page.keyboard.press("Enter")
    answer = answers(page).nth(0)
    expect(answer.locator(".text")).to_have_text("echo: hello")

    answer.get_by_role("button", name="Good answer").focus()
    page.keyboard.press("Tab")
    page.keyboard.press("Enter")  # thumbs down; focus moves to the first reason
    expect(answer.locator("form.fb")).to_be_visible()
    page.keyboard.press("ArrowRight")  # second reason
    page.keyboard.press("Tab")
    page.keyboard.type("missing detail")
    for _ in range(3):  # correction, cancel, submit
        page.keyboard.press("Tab")
    page.keyboard.press("Enter")
    expect(answer.locator(".note")).to_have_text("Thanks for your feedback!")
    assert rows(gateway_db, "SELECT rating, reason, comment FROM feedback") == [(-1, "incomplete", "missing detail")]

    page.keyboard.press("Escape")
    expect(launcher).to_have_attribute("aria-expanded", "false")
    expect(launcher).to_be_focused()


@pytest.mark.parametrize(
    "lang, strings",
    [
        (
            "en",
            {
                "title": "Support",
                "down": "Bad answer",
                "reason": "Incomplete",
                "placeholder": "Type your message…",
                "thanks": "Thanks for your feedback!",
            },
        ),
        (
            "ko",
            {
                "title": "고객 지원",
                "down": "아쉬운 답변",
                "reason": "불완전함",
                "placeholder": "메시지를 입력하세요…",
                "thanks": "소중한 의견 감사합니다!",
            },
        ),
    ],
)
def test_both_languages_and_screenshots(page, embedded, tmp_path, lang, strings):
    page.set_viewport_size({"width": 440, "height": 780})
    embedded(lang=lang, html=plain_page)
    assert_accessible(page, f"the widget closed ({lang})")
    page.get_by_role("button", name={"en": "Open chat", "ko": "채팅 열기"}[lang]).click()
    expect(page.get_by_role("heading", name=strings["title"])).to_be_visible()
    expect(page.get_by_placeholder(strings["placeholder"])).to_be_visible()
    assert_accessible(page, f"the widget open, before a question ({lang})")

    question = {"en": "How long does delivery take?", "ko": "배송은 얼마나 걸리나요?"}[lang]
    send(page, question)
    answer = answers(page).nth(0)
    expect(answer.locator(".text")).to_have_text("echo: " + question)
    assert_accessible(page, f"the widget after an answer ({lang})")
    answer.get_by_role("button", name=strings["down"]).click()
    answer.get_by_text(strings["reason"], exact=True).click()
    comment = {"en": "It doesn't say when my order ships.", "ko": "언제 발송되는지 알려주지 않아요."}[lang]
    answer.locator("form.fb textarea").first.fill(comment)
    # Show the rated answer and its form, as a user who just pressed thumbs-down sees them.
    answer.evaluate("e => { const log = e.closest('.log'); log.scrollTop = log.scrollHeight; }")

    page.mouse.move(0, 0)  # no hover highlight in the picture
    shot = tmp_path / f"widget-{lang}.png"
    page.screenshot(path=str(shot))
    width, height = struct.unpack(">II", shot.read_bytes()[16:24])  # the PNG IHDR
    assert (width, height) == (440, 780)
    if os.environ.get("TUNELOOP_UPDATE_SCREENSHOTS"):
        (DOCS / shot.name).write_bytes(shot.read_bytes())
    assert_accessible(page, f"the widget's feedback form open ({lang})")
    answer.locator("form.fb button[type=submit]").click()
    expect(answer.locator(".note")).to_have_text(strings["thanks"])
    assert_accessible(page, f"the widget after a rating ({lang})")
