"""Masking personal data with typed placeholders before anything is written for training.

Users paste their phone number, card number or e-mail into chats and into the
corrections they suggest; a model trained on that text can repeat it to anyone.
Every training text is masked, and the build reports how many of each type it
masked per row source (never the values themselves).

| placeholder | what | how it is found |
|---|---|---|
| ``[EMAIL]`` | e-mail addresses, Korean domains too (``홍길동@회사.한국``) | regex |
| ``[IP]`` | IPv4 and IPv6 addresses | regex candidates, confirmed by ``ipaddress`` |
| ``[RRN]`` | Korean resident registration numbers, ``YYMMDD-GNNNNNN`` with or without the hyphen | regex; the date must be a real month/day and G 1–8 (no checksum: numbers issued since October 2020 have none) |
| ``[CARD]`` | payment card numbers, 13–19 digits plain or in 4-digit groups (Amex 4-6-5) | regex, confirmed by the Luhn checksum |
| ``[PHONE]`` | phone numbers: Korean mobile and landline in any usual writing (``010-1234-5678``, ``01012345678``, ``(02)1234-5678``, ``+82 10 …``) and international numbers with a country code (``+1 415 555 0100``) | Google's ``phonenumbers`` (region KR, only numbers valid in their country's plan), plus a regex for Korean shapes it rejects as unassigned |
| ``[ACCOUNT]`` | bank-account-like numbers: 2–5 hyphen-joined digit groups with 10–16 digits in all (``110-123-456789``, ``123-456789-01-012``), or a plain run of 10–16 digits | regex |

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
  separators here), dates (``2026-11-21``: 8 digits), times, ``1:1``, ranges
  (``2–3 business days``), short numbers. ``tests/test_pii.py`` checks that the
  bundled FAQ comes out of masking unchanged.
- Space-separated digit groups are not read as account numbers (``3 5 10`` in a
  sentence is not an account), so an account number written with spaces
  survives unless it is card- or phone-shaped; write-ups of that are rare.

Overlaps are settled by type priority (e-mail, IP, RRN, card, phone, account):
the first type to claim a span owns it, so ``900101-1234567`` is one ``[RRN]``, not
a phone number plus digits.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from dataclasses import dataclass, field

import phonenumbers

TYPES = ("EMAIL", "IP", "RRN", "CARD", "PHONE", "ACCOUNT")
_PRIORITY = {t: i for i, t in enumerate(TYPES)}

_EMAIL = re.compile(
    r"(?<![A-Za-z0-9가-힣._%+-])[A-Za-z0-9가-힣._%+-]+@"
    r"(?:[A-Za-z0-9가-힣](?:[A-Za-z0-9가-힣-]*[A-Za-z0-9가-힣])?\.)+(?:[A-Za-z]{2,63}|[가-힣]{2,})(?![A-Za-z0-9])"
)
_IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?!\.?\d)")
_IPV6 = re.compile(
    r"(?<![0-9A-Fa-f:.])(?:(?:[0-9A-Fa-f]{0,4}:){2,6}(?:\d{1,3}\.){3}\d{1,3}|(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4})"
    r"(?:%[0-9A-Za-z]+)?(?![0-9A-Fa-f:])"
)
_RRN = re.compile(r"(?<![\d-])(\d{2})(\d{2})(\d{2})[- ]?[1-8]\d{6}(?![\d-])")
_CARD = re.compile(
    r"(?<![\d-])(?:\d{4}([ -])\d{4}\1\d{4}\1\d{1,4}(?:\1\d{1,3})?|\d{4}([ -])\d{6}\2\d{4,5}|\d{13,19})(?![\d-])"
)
_KR_PHONE = re.compile(
    r"(?<![\d-])(?:\+82[- ]?(?:\(0\))?[- ]?|\(?0)(?:1[016789]|2|[3-6][1-5]|70|50[2-8])\)?[-. ]?\d{3,4}[-. ]?\d{4}(?![\d-])"
)
_ACCOUNT = re.compile(r"(?<![\d-])(?:\d{2,8}(?:-\d{1,8}){1,4}|\d{10,16})(?![\d-])")
_KEPT_PHONE_TYPES = {phonenumbers.PhoneNumberType.UAN, phonenumbers.PhoneNumberType.TOLL_FREE}


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
        if 10 <= len(_digits(m.group())) <= 16:
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
        self._allowed_text = {a.strip().casefold() for a in allowlist if a.strip()}
        self._allowed_digits = {_digits(a) for a in allowlist if len(_digits(a)) >= 7 and "@" not in a}

    def _allowed(self, value: str) -> bool:
        if value.strip().casefold() in self._allowed_text:
            return True
        digits = _digits(value)
        return bool(digits) and digits in self._allowed_digits

    def find(self, text: str) -> list[Span]:
        """Non-overlapping spans to replace, in text order (kept values are left out)."""
        claimed: list[Span] = []
        for detector in _DETECTORS:
            for span in detector(text):
                if any(span.start < c.end and c.start < span.end for c in claimed):
                    continue
                if span.type != "KEEP" and self._allowed(text[span.start : span.end]):
                    span = Span(span.start, span.end, "KEEP")
                claimed.append(span)
        return sorted((s for s in claimed if s.type != "KEEP"), key=lambda s: s.start)

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
