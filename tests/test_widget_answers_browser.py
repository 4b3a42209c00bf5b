"""The widget renders answers' Markdown safely and lists their sources, in a real headless Chromium.

The gateway runs as a real HTTP server on the scripted upstream, which answers "echo: <message>", so what the
test sends is what the model "answers"; its knowledge base is the seeded FAQ (plus hostile entries added here).
"""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from feedback.knowledge import store
from tests.plugins.axe import assert_accessible
from tests.test_widget_browser import XSS_IMG, XSS_SCRIPT, answers, send

pytestmark = pytest.mark.browser

SHIPPING = "How much is the shipping fee?"
ROOT = "document.querySelector('.tuneloop-widget') ? document.querySelector('.tuneloop-widget').shadowRoot : document"


def shadow_count(page, selector: str) -> int:
    """Elements matching ``selector`` inside the widget (the demo page mounts it in a shadow root too)."""
    return page.evaluate(
        """(selector) => {
            const host = document.querySelector('.tuneloop-widget');
            return (host && host.shadowRoot ? host.shadowRoot : document).querySelectorAll(selector).length;
        }""",
        selector,
    )


def test_markdown_in_answers_is_rendered_as_elements(page, live_gateway):
    page.goto(live_gateway() + "/?lang=en")
    send(page, "**Shipping** is *3,000 won*.\n\n- free from `30,000` won\n- [rates](https://shop.example/ship)")
    text = answers(page).nth(0).locator(".text")
    expect(text.locator("strong")).to_have_text("Shipping")
    expect(text.locator("em")).to_have_text("3,000 won")
    expect(text.locator("li")).to_have_count(2)
    expect(text.locator("code")).to_have_text("30,000")
    link = text.get_by_role("link", name="rates")
    expect(link).to_have_attribute("href", "https://shop.example/ship")
    expect(link).to_have_attribute("rel", "noopener noreferrer nofollow")
    expect(link).to_have_attribute("target", "_blank")
    assert "**" not in text.inner_text()
    assert_accessible(page, "an answer with Markdown lists, code and a link")
    assert page.errors == []


@pytest.mark.parametrize(
    "attack",
    [
        XSS_IMG,
        XSS_SCRIPT,
        "[click me](javascript:window.__pwned=1)",
        "[click me](javascript:window)",
        "![x](javascript:window.__pwned=1)",
        '<a href="javascript:window.__pwned=1">click me</a>',
        "`<img src=x onerror=window.__pwned=1>` and **<svg onload=window.__pwned=1>**",
        "[<img src=x onerror=window.__pwned=1>](https://shop.example)",
        "```\n<script>window.__pwned=1</script>\n```",
    ],
)
def test_markup_and_script_links_in_answers_never_run(page, live_gateway, attack):
    page.goto(live_gateway() + "/?lang=en")
    send(page, attack)
    bubble = answers(page).nth(0).locator(".text")
    expect(bubble).not_to_be_empty()
    page.wait_for_timeout(300)  # an onerror/onload handler would have fired by now
    assert page.evaluate("window.__pwned") is None
    assert shadow_count(page, ".msg .text img, .msg .text script, .msg .text svg, .msg .text iframe") == 0
    hrefs = page.evaluate(f"""Array.from(({ROOT}).querySelectorAll('.msg a')).map(a => a.getAttribute('href'))""")
    assert all(h.startswith("https://") for h in hrefs), hrefs
    assert page.errors == []


def test_sources_are_listed_under_the_answer_collapsed_and_reachable_by_keyboard(page, live_gateway, gateway_db):
    page.goto(live_gateway() + "/?lang=en")
    send(page, SHIPPING)
    answer = answers(page).nth(0)
    sources = answer.locator("details.sources")
    expect(sources).to_have_count(1)
    assert sources.get_attribute("open") is None  # collapsed by default
    summary = sources.locator("summary")
    expect(summary).to_have_text(re.compile(r"^Sources \(\d\)$"))
    expect(sources.locator("li").first).not_to_be_visible()
    summary.focus()
    page.keyboard.press("Enter")
    expect(sources.locator("li").first).to_be_visible()
    expect(sources.locator("li").first).to_have_text(SHIPPING)
    assert_accessible(page, "an answer with its sources open")
    entry = store.entry_for_question(gateway_db, SHIPPING)
    assert sources.locator("li").first.get_attribute("data-entry") == entry.id


def test_hostile_source_questions_are_shown_as_text(page, live_gateway, gateway_db):
    url = live_gateway(**{"knowledge.refresh_ms": 0})  # the entries added below are searched at once
    # "보자기" (wrapping cloth) is in no bundled entry, so both hostile entries are the question's first sources.
    store.add_entry(gateway_db, questions=XSS_IMG + " 보자기 포장 가능?", answer="네, 2,000원입니다.", actor="eve")
    markdown = "**bold** [x](javascript:alert(1)) 보자기 선물 포장"
    store.add_entry(gateway_db, questions=markdown, answer="네.", actor="eve")
    page.goto(url + "/?lang=ko")
    send(page, "보자기 포장 가능?")
    sources = answers(page).nth(0).locator("details.sources")
    expect(sources.locator("summary")).to_contain_text("출처")
    sources.locator("summary").click()
    texts = sources.locator("li").all_inner_texts()
    assert XSS_IMG + " 보자기 포장 가능?" in texts  # the characters, not an image
    assert any("**bold** [x](javascript:alert(1))" in t for t in texts)  # sources are text, not Markdown
    page.wait_for_timeout(300)
    assert page.evaluate("window.__pwned") is None
    assert shadow_count(page, ".sources img, .sources a, .sources strong") == 0
    assert page.errors == []


def test_an_answer_without_sources_has_no_sources_list(page, live_gateway):
    page.goto(live_gateway() + "/?lang=en")
    send(page, "qwzx vbnm")
    expect(answers(page).nth(0).locator(".text")).to_have_text("echo: qwzx vbnm")
    expect(answers(page).nth(0).locator("details.sources")).to_have_count(0)
