"""Personal data never reaches training files, and ordinary numbers are left alone.

The corpus mixes Korean and international formats inside Korean and English
sentences. The last test runs a real build over rows from every source (base
file, approved corrections, up-voted answers, preference pairs) and searches
every file written for every value, with and without separators.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from config.settings import PROJECT_ROOT, load_settings
from feedback import review
from tests.test_ranking import ask, make_version
from trainer.dataset import build_dataset
from trainer.dataset.clean import clean_text
from trainer.dataset.pii import PiiMasker, luhn_valid

# (sentence, the personal values in it, expected counts)
CORPUS = [
    ("제 번호는 010-1234-5678 입니다.", ["010-1234-5678"], {"PHONE": 1}),
    ("01012345678로 연락 부탁드려요", ["01012345678"], {"PHONE": 1}),
    ("해외에서는 +82 10-1234-5678 으로 걸어 주세요.", ["+82 10-1234-5678"], {"PHONE": 1}),
    ("회사 전화 02-123-4567, 지점 031-123-4567입니다.", ["02-123-4567", "031-123-4567"], {"PHONE": 2}),
    ("사무실은 (02)1234-5678 이에요", ["(02)1234-5678"], {"PHONE": 1}),
    ("Call me at +1 415 555 0100 after six.", ["+1 415 555 0100"], {"PHONE": 1}),
    ("Our London desk is +44 20 7946 0958.", ["+44 20 7946 0958"], {"PHONE": 1}),
    ("010.9876.5432 or 010 2222 3333 both work", ["010.9876.5432", "010 2222 3333"], {"PHONE": 2}),
    ("주민등록번호 900101-1234567 확인 부탁드립니다.", ["900101-1234567"], {"RRN": 1}),
    ("My RRN is 8505152345678, sorry.", ["8505152345678"], {"RRN": 1}),
    ("카드번호 4111 1111 1111 1111 로 결제했어요", ["4111 1111 1111 1111"], {"CARD": 1}),
    ("Card 4111-1111-1111-1111 was charged twice.", ["4111-1111-1111-1111"], {"CARD": 1}),
    ("Use 5555555555554444 please", ["5555555555554444"], {"CARD": 1}),
    ("Amex 3782 822463 10005 expired.", ["3782 822463 10005"], {"CARD": 1}),
    # 16 digits that fail Luhn: not a card, still personal (an account-like number).
    ("이 번호 4111111111111112 는 뭔가요?", ["4111111111111112"], {"ACCOUNT": 1}),
    ("환불 계좌는 110-123-456789 입니다.", ["110-123-456789"], {"ACCOUNT": 1}),
    ("Refund to 123-456789-01-012 at my bank.", ["123-456789-01-012"], {"ACCOUNT": 1}),
    ("email me: hong.gildong+shop@example.com", ["hong.gildong+shop@example.com"], {"EMAIL": 1}),
    ("kim@naver.com으로 보내주세요", ["kim@naver.com"], {"EMAIL": 1}),
    ("홍길동@회사.한국 으로 연락 주세요", ["홍길동@회사.한국"], {"EMAIL": 1}),
    ("lee_99@daum.net, park@company.co.kr 둘 다요", ["lee_99@daum.net", "park@company.co.kr"], {"EMAIL": 2}),
    ("My router is 192.168.0.1.", ["192.168.0.1"], {"IP": 1}),
    ("접속 IP 203.0.113.45 에서 로그인됐어요", ["203.0.113.45"], {"IP": 1}),
    (
        "IPv6 2001:db8::8a2e:370:7334 and fe80::1ff:fe23:4567:890a",
        ["2001:db8::8a2e:370:7334", "fe80::1ff:fe23:4567:890a"],
        {"IP": 2},
    ),
    (
        "전화 010-1234-5678, 메일 a.b@example.org, 카드 4111111111111111",
        ["010-1234-5678", "a.b@example.org", "4111111111111111"],
        {"PHONE": 1, "EMAIL": 1, "CARD": 1},
    ),
]

NOT_PERSONAL = [
    "배송비는 3,000원이며 30,000원 이상이면 무료입니다.",
    "VIP is 600,000 won or more; 1,000,000원 is a lot.",
    "Your order from 2026-11-21 ships in 2–3 business days.",
    "Open 9 a.m.–6 p.m., lunch 12:00~13:00, online 24/7.",
    "1:1 Chat in the app, or call 1588-0000.",
    "Points expire after 1 year; 1 point = 1 won; 100 for a review.",
    "Your order number is on the confirmation e-mail.",
    "Returns within 7 days; refunds in 3–5 business days.",
    "Version 1.2.3 of the app fixes it.",
]


@pytest.fixture(scope="module")
def masker():
    return PiiMasker(load_settings(env={}).dataset.pii_allowlist)


@pytest.mark.parametrize("sentence, values, counts", CORPUS, ids=[c[0][:24] for c in CORPUS])
def test_each_value_is_replaced_by_its_typed_placeholder(masker, sentence, values, counts):
    masked = masker.mask(sentence)
    assert dict(masked.counts) == counts
    for value in values:
        assert value not in masked.text
    for kind, n in counts.items():
        assert masked.text.count(f"[{kind}]") == n


def test_luhn():
    assert luhn_valid("4111111111111111") and luhn_valid("378282246310005")
    assert not luhn_valid("4111111111111112")


@pytest.mark.parametrize("sentence", NOT_PERSONAL)
def test_ordinary_numbers_are_not_masked(masker, sentence):
    assert masker.mask(sentence).text == sentence


def test_the_bundled_faq_survives_cleaning_and_masking_unchanged(masker):
    # Over-masking destroys training data: every answer and question of the shipped data must come through.
    for name in ("faq.jsonl", "golden.jsonl", "paraphrases.jsonl"):
        for line in (PROJECT_ROOT / "data" / name).read_text(encoding="utf-8").splitlines():
            for message in json.loads(line)["messages"]:
                text = message["content"]
                assert clean_text(text) == text
                masked = masker.mask(text)
                assert masked.text == text, (name, text, masked.counts)


def test_allowlisted_business_contacts_are_kept():
    masker = PiiMasker(["support@shop.example", "02-123-4567"])
    text = "Write to support@shop.example or SUPPORT@shop.example, call 02 123 4567; not 010-1234-5678."
    masked = masker.mask(text)
    assert masked.text == "Write to support@shop.example or SUPPORT@shop.example, call 02 123 4567; not [PHONE]."


def test_clean_strips_markup_decodes_entities_and_normalizes():
    decomposed = "\u1112\u1161\u1102\u1173\u11af"  # 하늘 as conjoining jamo
    raw = (
        f"<p>Hello&nbsp;<b>there</b>&amp; welcome</p><script>alert(1)</script>\r\n\r\n\r\n"
        f"<div>{decomposed}\u200b   mart</div>&lt;b&gt; stays text<br/>My Page &gt; Orders, a < b"
    )
    assert clean_text(raw) == "Hello there& welcome\n\n하늘 mart\n<b> stays text\nMy Page > Orders, a < b"


def _values_in(text: str) -> list[str]:
    """Corpus values found in ``text``, verbatim or as the same digits written with other separators."""
    numbers = ["".join(ch for ch in run if ch.isdigit()) for run in re.findall(r"[0-9][0-9 ()+.:-]*[0-9]", text)]
    found = []
    for _, values, _ in CORPUS:
        for value in values:
            digits = "".join(ch for ch in value if ch.isdigit())
            if value in text or (len(digits) >= 7 and any(digits in n for n in numbers)):
                found.append(value)
    return found


def test_a_real_build_writes_no_personal_data_anywhere(db, settings, tmp_path):
    # Every sentence reaches the build three ways: as base rows, as approved corrections
    # (with the answer users voted down for the preference pairs), and as up-voted answers.
    base = tmp_path / "base.jsonl"
    filler = [json.loads(line) for line in (PROJECT_ROOT / "data" / "faq.jsonl").read_text().splitlines()[:30]]
    rows = filler + [
        {
            "messages": [
                {"role": "user", "content": f"문의 {i}: {sentence}"},
                {"role": "assistant", "content": f"Noted ({i}): {sentence}"},
            ]
        }
        for i, (sentence, _, _) in enumerate(CORPUS)
    ]
    base.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    live = make_version(db, "live", "live")
    for i, (sentence, _, _) in enumerate(CORPUS):
        ask(db, live, f"Review question {i}: {sentence}", answer=f"Old answer {i}: {sentence}", down=1)
        review.approve(
            db,
            review.create_item(
                db,
                question=f"Review question {i}: {sentence}",
                evidence={"answers": [{"answer": f"Old answer {i}: {sentence}", "up": 0, "down": 1}]},
            ).id,
            answer=f"Corrected {i}: {sentence}",
            reviewer="ana",
        )
        ask(db, live, f"Thanks question {i}? {sentence}", answer=f"Liked answer {i}: {sentence}", up=3)
    # Rows from different sources share their sentence; a high threshold keeps them all (dedupe is tested elsewhere).
    built_settings = load_settings(
        env={},
        overrides={
            "paths.data_dir": str(settings.data_dir),
            "dataset.base_file": str(base),
            "dataset.near_duplicate_threshold": 0.99,
        },
    )
    result = build_dataset(db, built_settings, include_upvoted=3)
    expected = Counter()
    for _, _, counts in CORPUS:
        expected.update(counts)
    # Base rows carry each value twice (question and answer), corrections twice, up-voted answers twice.
    by_source = result.pii["by_source"]
    assert by_source["base"] == {t: 2 * n for t, n in expected.items() if n}
    assert by_source["review"] == {t: 2 * n for t, n in expected.items() if n}
    assert by_source["feedback"] == {t: 2 * n for t, n in expected.items() if n}
    assert result.pii["preferences"] == {t: 3 * n for t, n in expected.items() if n}  # question, chosen, rejected
    assert result.counts["sources"] == {"base": len(rows), "review": len(CORPUS), "feedback": len(CORPUS)}
    # The search below finds every value in the unmasked input, so finding none afterwards means something.
    assert sorted(set(_values_in(base.read_text(encoding="utf-8")))) == sorted({v for _, vs, _ in CORPUS for v in vs})
    written = sorted(Path(result.path).iterdir())
    assert [p.name for p in written] == ["manifest.json", "preferences.jsonl", "test.jsonl", "train.jsonl", "val.jsonl"]
    for path in written:
        text = path.read_text(encoding="utf-8")
        assert _values_in(text) == [], path.name
    manifest = json.loads((Path(result.path) / "manifest.json").read_text())
    masked_rows = [r for split in manifest["rows"].values() for r in split if r.get("masked")]
    assert len(masked_rows) == 3 * len(CORPUS) == manifest["pii"]["rows_masked"]
