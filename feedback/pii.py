"""Masking personal data with typed placeholders: before training, and before a report leaves.

Users paste their phone number, card number or e-mail into chats and into the
corrections they suggest; a model trained on that text can repeat it to anyone,
and a weekly report mailed or posted to a chat channel spreads it further. Every
training text and every user text in the weekly report is masked, and the build
reports how many of each type it masked per row source (never the values).

Placeholders, what each covers and how it is found:

- ``[EMAIL]`` — e-mail addresses, Korean domains too (``홍길동@회사.한국``), with spaces around the ``@``
  or written ``(at)``; a regex.
- ``[IP]`` — IPv4 and IPv6 addresses; regex candidates, confirmed by ``ipaddress``.
- ``[RRN]`` — Korean resident registration numbers, ``YYMMDD-GNNNNNN`` with a hyphen, dash, dot, spaces or
  nothing between; a regex, the date must be a real month/day and G 1–8 (no checksum: numbers issued since
  October 2020 have none).
- ``[CARD]`` — payment card numbers, 13–19 digits plain or in 4-digit groups (Amex 4-6-5) split by spaces,
  hyphens, dashes or dots; a regex, confirmed by the Luhn checksum.
- ``[PHONE]`` — Korean mobile and landline numbers in any usual writing (``010-1234-5678``, ``01012345678``,
  ``(02)1234-5678``, ``+82 10 …``) and international numbers with a country code (``+1 415 555 0100``);
  Google's ``phonenumbers`` (region KR, only numbers valid in their country's plan), plus a regex for Korean
  shapes it rejects as unassigned.
- ``[ACCOUNT]`` — bank-account-like numbers: 2–5 digit groups joined by hyphens or spaces with 10–16 digits
  in all (``110-123-456789``, ``110 123 456789``), or a plain run of 10–16 digits; a regex.

Every rule runs on a *folded* copy of the text, so the writing of a value does
not hide it: full-width forms become ASCII (``９００１０１－１２３４５６７``), every
dash (``–``, ``—``, ``−``, ``－``) becomes ``-``, unusual spaces become a space and
invisible characters (zero-width space, soft hyphen) are dropped. What is found
is replaced in the original text, so everything around it is kept as written.

Decisions, each made to keep real training data intact or to err on the safe side:

- A 16-digit number that fails the Luhn check is not a card, but it is still
  masked, as ``[ACCOUNT]``: in a support chat a long digit string a user typed is
  an account, membership or order number tied to a person far more often than
  anything a model should learn.
- Company numbers are not personal data: Korean nationwide representative
  numbers (``1588-0000``, the 15xx/16xx/18xx range ``phonenumbers`` calls UAN)
  and toll-free numbers are kept. Anything in ``dataset.pii_allowlist`` (your
  support e-mail address, say) is kept too.
- What must never be masked: prices (``30,000원``: commas are not group
  separators here), dates (``2026-11-21``, ``2026.11.21``: 8 digits), times,
  ``1:1``, ranges (``2–3 business days``), version numbers, short numbers.
  ``tests/test_pii.py`` checks that the bundled FAQ comes out of masking unchanged.
- Space-separated digit groups count as an account number only with 10–16
  digits in all, at least 2 digits a group, and either a group of 5 or more
  digits (``110 123 456789``) or a word such as 계좌, 입금 or "account" just
  before them (``계좌 352 1234 5678 91``): sizes or years listed in a sentence
  (``90 95 100 105``, ``3 5 10``) are kept.

Overlaps are settled by type priority (e-mail, IP, RRN, card, phone, account):
the first type to claim a span owns it, so ``900101-1234567`` is one ``[RRN]``, not
a phone number plus digits.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field

import phonenumbers

TYPES = ("EMAIL", "IP", "RRN", "CARD", "PHONE", "ACCOUNT")
_PRIORITY = {t: i for i, t in enumerate(TYPES)}

# The rules below run on folded text (see _fold): one kind of dash, single spaces, ASCII digits.
# _GAP is what may stand between two digit groups: a hyphen or a dot, with or without a space
# on either side, or a space alone.
_GAP = r"(?: ?[-.] ?| )"
_EMAIL = re.compile(
    r"(?<![A-Za-z0-9가-힣._%+-])[A-Za-z0-9가-힣._%+-]+ ?(?:@|(?i:\(at\)|\[at\])) ?"
    r"(?:[A-Za-z0-9가-힣](?:[A-Za-z0-9가-힣-]*[A-Za-z0-9가-힣])?\.)+(?:[A-Za-z]{2,63}|[가-힣]{2,})(?![A-Za-z0-9])"
)
_IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?!\.?\d)")
_IPV6 = re.compile(
    r"(?<![0-9A-Fa-f:.])(?:(?:[0-9A-Fa-f]{0,4}:){2,6}(?:\d{1,3}\.){3}\d{1,3}|(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4})"
    r"(?:%[0-9A-Za-z]+)?(?![0-9A-Fa-f:])"
)
_RRN = re.compile(rf"(?<![\d-])(\d{{2}})(\d{{2}})(\d{{2}}){_GAP}?[1-8]\d{{6}}(?![\d-])")
_CARD = re.compile(
    rf"(?<![\d-])(?:\d{{4}}(?:{_GAP}\d{{4}}){{2}}{_GAP}\d{{1,4}}(?:{_GAP}\d{{1,3}})?"
    rf"|\d{{4}}{_GAP}\d{{6}}{_GAP}\d{{4,5}}|\d{{13,19}})(?![\d-])"
)
_KR_PHONE = re.compile(
    r"(?<![\d-])(?:\+82[- ]?(?:\(0\))?[- ]?|\(?0)(?:1[016789]|2|[3-6][1-5]|70|50[2-8])\)?"
    rf"{_GAP}?\d{{3,4}}{_GAP}?\d{{4}}(?![\d-])"
)
# Hyphen-joined groups may be one digit long (123-456789-01-2). Space-joined groups need two digits
# each, and either one group of five or more or a word about accounts just before them: a list of
# sizes or years ("90 95 100 105") is no account, "계좌 352 1234 5678 91" is.
_ACCOUNT = re.compile(r"(?<![\d-])(?:\d{2,8}(?: ?- ?\d{1,8}){1,4}|(\d{2,8}(?: \d{2,8}){1,4})|\d{10,16})(?![\d-])")
_ACCOUNT_WORDS = re.compile(r"(?i:계좌|통장|은행|입금|송금|환불|예금주|account|acct|bank|refund|transfer|deposit)")
_ACCOUNT_CONTEXT = 24  # characters before the number searched for such a word
_KEPT_PHONE_TYPES = {phonenumbers.PhoneNumberType.UAN, phonenumbers.PhoneNumberType.TOLL_FREE}

_DASHES = frozenset("\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe58\ufe63\uff0d")
_INVISIBLE = frozenset("\u200b\u200c\u200d\u2060\ufeff\u00ad")


def _fold(text: str) -> tuple[str, list[int] | None]:
    """The text the rules read, and for each of its characters the index it came from in ``text``.

    Full-width and other compatibility forms become ASCII where NFKC makes them ASCII, every dash
    a hyphen, every run of spaces (no-break, ideographic, tabs) one space, invisible characters
    nothing. Plain ASCII with single spaces comes back as is (None: the identity map).
    """
    if text.isascii() and "  " not in text and "\t" not in text:
        return text, None
    out: list[str] = []
    origin: list[int] = []
    for i, ch in enumerate(text):
        if ch in _INVISIBLE:
            continue
        if ch in _DASHES:
            folded = "-"
        elif ch == "\t" or unicodedata.category(ch) == "Zs":
            folded = " "
        elif ch.isascii():
            folded = ch
        else:
            compat = unicodedata.normalize("NFKC", ch)
            folded = compat if compat and compat.isascii() else ch
        if folded == " " and out and out[-1] == " ":
            continue
        out.extend(folded)
        origin.extend([i] * len(folded))
    return "".join(out), origin


def luhn_valid(digits: str) -> bool:
    """True when the digit string passes the Luhn checksum (every payment card number does)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return len(digits) >= 2 and total % 10 == 0


def _digits(text: str) -> str:
    return "".join(ch for ch in text if ch.isdigit())


@dataclass(frozen=True)
class Span:
    start: int
    end: int
    type: str


def _emails(text: str):
    for m in _EMAIL.finditer(text):
        yield Span(m.start(), m.end(), "EMAIL")


def _ips(text: str):
    for m in _IPV4.finditer(text):
        try:
            ipaddress.IPv4Address(m.group())
        except ValueError:
            continue
        yield Span(m.start(), m.end(), "IP")
    for m in _IPV6.finditer(text):
        candidate = m.group()
        if sum(c in "0123456789abcdefABCDEF" for c in candidate) < 2:
            continue
        try:
            ipaddress.IPv6Address(candidate.split("%", 1)[0])
        except ValueError:
            continue
        yield Span(m.start(), m.end(), "IP")


def _rrns(text: str):
    for m in _RRN.finditer(text):
        month, day = int(m.group(2)), int(m.group(3))
        if 1 <= month <= 12 and 1 <= day <= 31:
            yield Span(m.start(), m.end(), "RRN")


def _cards(text: str):
    for m in _CARD.finditer(text):
        if luhn_valid(_digits(m.group())):
            yield Span(m.start(), m.end(), "CARD")


def _phones(text: str):
    for match in phonenumbers.PhoneNumberMatcher(text, "KR", leniency=phonenumbers.Leniency.VALID):
        if phonenumbers.number_type(match.number) in _KEPT_PHONE_TYPES:
            yield Span(match.start, match.end, "KEEP")  # claims the span so no other rule masks it
        else:
            yield Span(match.start, match.end, "PHONE")
    for m in _KR_PHONE.finditer(text):
        yield Span(m.start(), m.end(), "PHONE")


def _accounts(text: str):
    for m in _ACCOUNT.finditer(text):
        if not 10 <= len(_digits(m.group())) <= 16:
            continue
        spaced = m.group(1)
        if spaced and max(map(len, spaced.split())) < 5:
            if not _ACCOUNT_WORDS.search(text, max(0, m.start() - _ACCOUNT_CONTEXT), m.start()):
                continue
        yield Span(m.start(), m.end(), "ACCOUNT")


_DETECTORS = (_emails, _ips, _rrns, _cards, _phones, _accounts)


@dataclass
class Masked:
    """A masked text and how many values of each type were replaced."""

    text: str
    counts: Counter = field(default_factory=Counter)


class PiiMasker:
    """Finds and replaces personal data; ``allowlist`` values (exact e-mails, phone numbers) are kept."""

    def __init__(self, allowlist: list[str] | tuple[str, ...] = ()):
        folded = [_fold(a.strip())[0] for a in allowlist if a.strip()]
        self._allowed_text = {a.replace(" ", "").casefold() for a in folded}
        self._allowed_digits = {_digits(a) for a in folded if len(_digits(a)) >= 7 and "@" not in a}

    def _allowed(self, value: str) -> bool:
        if value.replace(" ", "").casefold() in self._allowed_text:  # "help @ shop.example" is the same address
            return True
        digits = _digits(value)
        return bool(digits) and digits in self._allowed_digits

    def find(self, text: str) -> list[Span]:
        """Non-overlapping spans of ``text`` to replace, in text order (kept values are left out)."""
        folded, origin = _fold(text)
        claimed: list[Span] = []
        for detector in _DETECTORS:
            for span in detector(folded):
                if any(span.start < c.end and c.start < span.end for c in claimed):
                    continue
                if span.type != "KEEP" and self._allowed(folded[span.start : span.end]):
                    span = Span(span.start, span.end, "KEEP")
                claimed.append(span)
        found = sorted((s for s in claimed if s.type != "KEEP"), key=lambda s: s.start)
        if origin is None:
            return found
        # Back to the original text: from the first folded character's source to the last one's.
        return [Span(origin[s.start], origin[s.end - 1] + 1, s.type) for s in found]

    def mask(self, text: str) -> Masked:
        """``text`` with every found value replaced by its ``[TYPE]`` placeholder."""
        spans = self.find(text or "")
        counts: Counter = Counter(s.type for s in spans)
        pieces, last = [], 0
        for span in spans:
            pieces.append(text[last : span.start])
            pieces.append(f"[{span.type}]")
            last = span.end
        pieces.append((text or "")[last:])
        return Masked("".join(pieces), counts)

    def mask_messages(self, messages: list[dict]) -> tuple[list[dict], Counter]:
        """A masked copy of chat ``messages`` and the counts over all of them."""
        total: Counter = Counter()
        out = []
        for message in messages:
            masked = self.mask(message.get("content", ""))
            total.update(masked.counts)
            out.append({**message, "content": masked.text})
        return out, total
