"""Text analysis for retrieval: how a Korean or English question becomes the terms the index matches on.

One :class:`Analyzer` turns a text into weighted terms, the same way for the index and for the query
(like a Lucene analyzer chain, all in plain Python, no model):

1. **normalise** — apostrophes inside English words dropped (``can't`` → ``cant``), then
   :func:`feedback.text.question_key`: Unicode NFKC, case folded, punctuation to spaces, digit groups
   joined (``30,000`` → ``30000``);
2. **stem** — English words by a light stemmer (``deliveries`` → ``delivery``, ``cancelled`` →
   ``cancel``, ``changed`` → ``chang``), so synonyms and matches see one form per word;
3. **synonyms** — words and phrases of the same meaning rewritten to one canonical form (``적립금`` →
   ``포인트``, ``postage`` → ``shipping fee``): :mod:`feedback.knowledge.synonyms` and the bundled
   ``synonyms.txt`` (its English side stemmed the same way);
4. **words** — English stop words and question filler dropped; Korean words (어절) lose their trailing
   particle or ending (``배송비는`` → ``배송비``) and filler stems are dropped (``어떻게``, ``가능``,
   ``싶``). Irregular Korean verb stems are not restored (``바꿀``/``바꿔`` → ``바꾸``): that needs a
   morphological analyser with a 100 MB model in every worker; the synonym list covers the common ones;
5. **character n-grams** — Korean: bigrams and trigrams of the kept stems with the spaces removed, so
   ``회원 가입`` and ``회원가입`` match and spacing never matters; English: trigrams inside each content
   word, with its boundaries, so typos (``pasword``) and inflections still share most terms.

Terms carry a kind prefix (``w:`` word, ``k:`` Korean n-gram, ``e:`` English n-gram); the index weighs
them by kind (see :class:`TermWeights`).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from feedback.knowledge.synonyms import Synonyms
from feedback.text import question_key

_HANGUL = re.compile(r"[\uac00-\ud7a3]")
_LATIN = re.compile(r"[a-z]")
_APOSTROPHE = re.compile(r"(?<=[A-Za-z])['’](?=[A-Za-z])")

# English function words and question filler: they say how something is asked, not what.
ENGLISH_STOP_WORDS = frozenset(
    """a about after again all am an and any are as at be been before being but by can cannot could did do
    does doing done for from get got had has have having he her here him his how i i'd i'm if in into is it
    its it's just me might more most my myself no not now of off on once only or other our out over own
    please same she should so some still such than that the their them then there these they this those
    through to too under until up us very was way we were what when where which while who whom why will
    with would you your yours im id ive dont cant didnt doesnt isnt hasnt havent wont whats wheres hows
    thats theres also any anything something someone really actually exactly possible okay ok want wanna
    need like let know tell does hi hello thanks thank""".split()
)

# Korean particles and endings, longest first: stripped from the end of a word (어절) for word terms.
# Character n-grams are computed on the whole text, so nothing here can lose a match, only sharpen one.
_KOREAN_SUFFIXES = sorted(
    """은 는 이 가 을 를 에 의 도 만 로 으로 에서 에게 한테 께 와 과 랑 이랑 하고 까지 부터 보다 처럼 이나 나 요 이요
    에요 예요 이에요 이예요 어요 아요 해요 세요 나요 까요 가요 죠 지요 습니다 합니다 입니다 니까 는데 은데 인데 던데
    거든요 네요 는요 은요 인가요 한가요 하나요 되나요 있나요 없나요 할까요 될까요 인지 는지 을지 려면 으려면 하려면
    이라 이라서 라서 라고 이라고 인데요 는데요
    고 면 으면 서 어서 아서 해서 게 지 야 돼요 되요 돼 됨 함 임""".split(),
    key=len,
    reverse=True,
)


# Korean question filler, as stems (after the ending is stripped): how something is asked, not what.
KOREAN_STOP_STEMS = frozenset(
    """가능 가능한 가능할 어떻게 어떡 어떤 어떻 되 돼 된 될 되나요 됩니까 있 있나요 있어요 있을까요 없 없나요
    하 해 할 한 해야 해야하 해야돼 하는 하는거 하는건 하나요 해요 싶 싶어 싶은데 싶습니다
    알려주 알려 알려줘 알려주세 궁금 궁금해
    궁금합 문의 좀 제 저 저희 내 나 그 이 그거 이거 것 거 건 게 때 뭐 뭔 뭐예 뭐에 무엇 무슨 왜 혹시 그냥 진짜 너무
    방법 방식 수 요 네 예 안녕 안녕하세 감사 감사합 잘 모르 모르겠 모르겠어 처음이 같 같은데""".split()
)


_KOREAN_SUFFIX_SET = frozenset(_KOREAN_SUFFIXES)
_LONGEST_SUFFIX = max(map(len, _KOREAN_SUFFIXES))


def language_of(text: str) -> str:
    """``"ko"`` when the text holds any Hangul syllable, else ``"en"`` (mixed text is Korean: the shop's
    Korean questions name English brands, never the other way round)."""
    return "ko" if _HANGUL.search(text) else "en"


@lru_cache(maxsize=65536)
def stem_english(word: str) -> str:
    """A light English stemmer (plurals, -ing, -ed, -ly; in the spirit of Lucene's ``EnglishMinimalStemmer``
    and KStem): conservative, so that different words are not merged."""
    if len(word) <= 3 or not word.isalpha():
        return word
    for suffix, replacement, min_stem in (
        ("ies", "y", 3),
        ("sses", "ss", 2),
        ("ings", "", 4),
        ("ing", "", 4),
        ("edly", "", 4),
        ("ied", "y", 3),
        ("ed", "", 4),
        ("ly", "", 4),
        ("es", "", 3),
        ("s", "", 3),
    ):
        if word.endswith(suffix) and len(word) - len(suffix) >= min_stem:
            stem = word[: -len(suffix)] + replacement
            if suffix in ("es",) and not stem.endswith(("ch", "sh", "x", "ss", "z")):
                stem = word[:-1]  # "charges" -> "charge", but "boxes" -> "box"
            if suffix in ("ing", "ed", "ings") and len(stem) >= 2 and stem[-1] == stem[-2] and stem[-1] not in "sz":
                stem = stem[:-1]  # "shipped" -> "ship", "cancelled" -> "cancel"
            return _drop_final_e(stem)
    if word.endswith("s") and not word.endswith(("ss", "us", "is")):
        word = word[:-1]
    return _drop_final_e(word)


def _drop_final_e(stem: str) -> str:
    # Porter's last step: "change", "changed" and "changes" all end as "chang".
    return stem[:-1] if len(stem) > 4 and stem.endswith("e") and not stem.endswith("ee") else stem


_ENGLISH_STOP_STEMS = frozenset(stem_english(w) for w in ENGLISH_STOP_WORDS) | ENGLISH_STOP_WORDS


@lru_cache(maxsize=65536)
def strip_korean_ending(word: str) -> str:
    """The word without its longest trailing particle or ending, when at least one syllable is left."""
    for size in range(min(_LONGEST_SUFFIX, len(word) - 1), 0, -1):
        if word[-size:] in _KOREAN_SUFFIX_SET:
            return word[:-size]
    return word


@dataclass(frozen=True)
class TermWeights:
    """How much each kind of term counts, relative to the others (the vector is normalised afterwards)."""

    word: float = 1.0
    korean_ngram: float = 0.5
    english_ngram: float = 0.5
    korean_ngram_sizes: tuple[int, ...] = (2, 3)
    english_ngram_size: int = 3


class Analyzer:
    """Text → weighted terms, identical for indexed text and queries (see the module docstring)."""

    def __init__(self, synonyms: Synonyms | None = None, weights: TermWeights | None = None):
        self.synonyms = synonyms or Synonyms.empty()
        self.synonyms = self.synonyms.folded(stem_english)
        self.weights = weights or TermWeights()

    def words(self, text: str) -> list[str]:
        """The normalised words of ``text``, English ones stemmed, then synonym-rewritten (stop words kept)."""
        text = _APOSTROPHE.sub("", text)  # "can't" -> "cant", "mom's" -> "moms": one word, as typed without it
        words = [stem_english(w) if _LATIN.match(w) else w for w in question_key(text).split()]
        return self.synonyms.rewrite(words)

    def terms(self, text: str) -> dict[str, float]:
        """Weighted terms of ``text``: term → ``kind weight · (1 + ln count)`` (sublinear, as in TF-IDF)."""
        return self._weighted(self._counts(text))

    def pooled_terms(self, texts: Iterable[str]) -> dict[str, float]:
        """The weighted terms of several texts as one document (counts added; no n-gram spans two texts)."""
        counts: Counter[str] = Counter()
        for text in texts:
            counts.update(self._counts(text))
        return self._weighted(counts)

    def _weighted(self, counts: Counter[str]) -> dict[str, float]:
        weights = self.weights
        return {term: kind_weight(term, weights) * (1.0 + math.log(count)) for term, count in counts.items()}

    def _counts(self, text: str) -> Counter[str]:
        weights = self.weights
        terms: Counter[str] = Counter()
        korean_run: list[str] = []
        for word in self.words(text):
            if _HANGUL.search(word):
                stem = strip_korean_ending(word)
                if word in KOREAN_STOP_STEMS or stem in KOREAN_STOP_STEMS:
                    continue
                korean_run.append(stem)
                terms["w:" + stem] += 1
                continue
            if word in _ENGLISH_STOP_STEMS or (len(word) == 1 and not word.isdigit()):
                continue
            stem = word
            terms["w:" + stem] += 1
            if weights.english_ngram and len(stem) > 2 and stem.isalpha():
                padded = f"<{stem}>"
                n = weights.english_ngram_size
                for i in range(len(padded) - n + 1):
                    terms["e:" + padded[i : i + n]] += 1
        if korean_run and weights.korean_ngram:
            joined = "".join(korean_run)
            for n in weights.korean_ngram_sizes:
                for i in range(len(joined) - n + 1):
                    terms["k:" + joined[i : i + n]] += 1
        return terms


def kind_weight(term: str, weights: TermWeights) -> float:
    """The weight of a term's kind, read from its prefix."""
    kind = term[0]
    return weights.word if kind == "w" else weights.korean_ngram if kind == "k" else weights.english_ngram
