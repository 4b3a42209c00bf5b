"""The accessibility audit: axe-core (tests/node, version locked) run in the Chromium tests' pages.

:func:`assert_accessible` injects ``axe.min.js`` into the page (through the DevTools protocol, so a page's
Content-Security-Policy does not block it), runs it against WCAG 2.1 A and AA and fails with a readable list of
the violations: rule, impact, what it asks for and each offending element. axe-core walks open shadow roots
itself, so the widget's panel (an open shadow root) is audited with its host page. A missing ``tests/node``
install FAILS with the instruction (``make node``), like a missing Chromium: a green run means the audit ran.
"""

from __future__ import annotations

import json
from functools import cache

import pytest
from playwright.sync_api import Page

from tests.plugins.node import NODE_DIR

AXE_JS = NODE_DIR / "node_modules" / "axe-core" / "axe.min.js"
PINNED = json.loads((NODE_DIR / "package.json").read_text(encoding="utf-8"))["dependencies"]["axe-core"]
# WCAG 2.1 level A and AA: what the issue asks the pages to pass (axe-core's tags for those rules).
WCAG_21_AA = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]

_RUN = """async (tags) => {
  const result = await window.axe.run(document, {runOnly: {type: "tag", values: tags}, resultTypes: ["violations"]});
  return {
    version: window.axe.version,
    violations: result.violations.map(v => ({
      id: v.id, impact: v.impact, help: v.help,
      nodes: v.nodes.map(n => ({target: n.target, html: n.html, summary: n.failureSummary})),
    })),
  };
}"""


@cache
def axe_source() -> str:
    """axe-core's browser bundle, or a test failure that says how to install it."""
    if not AXE_JS.exists():
        pytest.fail("axe-core is not installed: run `make node` (npm ci from tests/node/package-lock.json)")
    return AXE_JS.read_text(encoding="utf-8")


def axe_violations(page: Page) -> list[dict]:
    """axe-core's WCAG 2.1 A/AA violations on ``page`` as it is now (open shadow roots included)."""
    if not page.evaluate("() => typeof window.axe === 'object'"):
        page.evaluate(axe_source() + "\n;undefined")  # a navigation drops it; re-inject per document
    result = page.evaluate(_RUN, WCAG_21_AA)
    assert result["version"] == PINNED, f"axe-core {result['version']} ran, {PINNED} is pinned: run `make node`"
    return result["violations"]


def describe(violations: list[dict]) -> str:
    """One readable block per violation: rule, impact, what it asks for, and each element that breaks it."""
    lines = []
    for v in violations:
        lines.append(f"- {v['id']} ({v['impact']}): {v['help']}")
        for node in v["nodes"]:
            lines.append(f"    at {' >> '.join(map(str, node['target']))}: {node['html'][:160]}")
            lines.extend(f"      {line}" for line in (node["summary"] or "").splitlines() if line.strip())
    return "\n".join(lines)


def assert_accessible(page: Page, where: str) -> None:
    """Fail unless axe-core finds 0 WCAG 2.1 A/AA violations on ``page``; ``where`` names the state audited."""
    violations = axe_violations(page)
    assert not violations, f"axe-core found {len(violations)} WCAG 2.1 AA violation(s) on {where}:\n" + describe(
        violations
    )
