"""Text cleaning before training: HTML out, entities decoded, Unicode NFC, tidy whitespace.

Answers pasted from a help-center page or a rich-text editor arrive with tags,
``&nbsp;`` and zero-width characters; a model trained on them learns to emit
them. Cleaning keeps the words and line structure and drops the markup:

- ``<script>``/``<style>`` blocks go with their content; ``<br>`` and the end of a
  block element (``</p>``, ``</li>``, ``</div>``, headings, rows) become a line break;
  every other tag is removed. Only things shaped like tags are touched, so
  ``My Page > Orders`` and ``a < b`` stay as they are;
- entities are decoded once, after tags are gone, so an escaped ``&lt;b&gt;`` in
  the text stays visible text rather than becoming markup that is then removed;
- Unicode NFC (composed Hangul; NFKC would also fold full-width forms and
  ligatures, which changes what a user wrote — that folding is for keys only);
- controls and invisible format characters (zero-width space, BOM, soft hyphen)
  removed, other spaces (no-break, ideographic) become a plain space, runs of
  spaces collapse, lines are trimmed, more than one blank line becomes one.
"""

from __future__ import annotations

import html
import re
import unicodedata

_SCRIPT = re.compile(r"<(script|style)\b[^>]*>.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
_BREAK = re.compile(r"<br\s*/?>|</(?:p|div|li|tr|h[1-6]|blockquote|pre|table|ul|ol)\s*>", re.IGNORECASE)
_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9:-]*(?:\s(?:[^<>\"']|\"[^\"]*\"|'[^']*')*)?/?>")
_INVISIBLE = {"\u200b", "\u200c", "\u2060", "\ufeff", "\u00ad"}  # ZWJ (U+200D) stays: it builds emoji
_SPACES = re.compile(r"[ \t]+")
_BLANK_LINES = re.compile(r"\n{3,}")


def clean_text(text: str) -> str:
    """``text`` without markup, NFC-normalized, with tidy whitespace (see the module docstring)."""
    text = (text or "").replace("\r\n", "\n").replace("\r", "\n")
    text = _SCRIPT.sub("", text)
    text = _COMMENT.sub("", text)
    text = _BREAK.sub("\n", text)
    text = _TAG.sub("", text)
    text = html.unescape(text)
    text = unicodedata.normalize("NFC", text)
    kept = []
    for ch in text:
        if ch in ("\n", "\t"):
            kept.append(ch)
        elif ch in _INVISIBLE or unicodedata.category(ch) == "Cc":
            continue
        elif unicodedata.category(ch) == "Zs":
            kept.append(" ")
        else:
            kept.append(ch)
    lines = [_SPACES.sub(" ", line).strip() for line in "".join(kept).split("\n")]
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


def clean_messages(messages: list[dict]) -> list[dict]:
    """A copy of chat ``messages`` with every ``content`` cleaned."""
    return [{**m, "content": clean_text(m.get("content", ""))} for m in messages]
