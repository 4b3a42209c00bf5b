"""Domain synonyms: words customers use for the same thing, rewritten to one form before matching.

The file format is Solr's / Elasticsearch's ``synonyms`` format, so a user's own list can be written the
way search engineers already know:

    # a comment
    배송비, 택배비, 배송료          equivalent: every one is rewritten to the first
    postage, delivery fee => shipping fee      explicit: the left side is rewritten to the right

Phrases (several words) are allowed on both sides. Matching:

- English (and other non-Hangul) words match whole words, longest phrase first;
- Korean matches *inside* a word as well (``택배비가`` → ``배송비가``, ``반품택배비`` → ``반품배송비``),
  because Korean words carry their particles and endings and are spaced freely; a Korean phrase's
  spaces are optional in the text (``회원 가입`` also matches ``회원가입``).

Both sides are normalised with :func:`feedback.text.question_key` first, so case, width and punctuation
never stop a rule from matching. Rules apply once, left to right (no chains): a canonical form is never
rewritten again.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from feedback.text import has_hangul, question_key

BUNDLED = "synonyms.txt"


class SynonymsError(ValueError):
    """A synonyms file line that cannot be read; the message names the file and line."""


@dataclass(frozen=True)
class Synonyms:
    """Rewrite rules: English phrases by whole words, Korean strings anywhere inside a word."""

    english: dict[tuple[str, ...], tuple[str, ...]] = field(default_factory=dict)
    korean: dict[str, str] = field(default_factory=dict)

    @classmethod
    def empty(cls) -> "Synonyms":
        return cls()

    @classmethod
    def parse(cls, text: str, source: str = "<synonyms>") -> "Synonyms":
        """Rules from the text of a synonyms file; :class:`SynonymsError` on a malformed line."""
        english: dict[tuple[str, ...], tuple[str, ...]] = {}
        korean: dict[str, str] = {}
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            if "=>" in line:
                left, _, right = line.partition("=>")
                variants = [question_key(v) for v in left.split(",")]
                canonical = question_key(right)
                if "," in right or not canonical:
                    raise SynonymsError(f"{source}:{number}: '=>' needs exactly one replacement on its right")
            else:
                variants = [question_key(v) for v in line.split(",")]
                canonical = variants[0]
                if len(variants) < 2:
                    raise SynonymsError(f"{source}:{number}: an equivalence needs two or more terms, comma-separated")
            if not all(variants):
                raise SynonymsError(f"{source}:{number}: empty term")
            for variant in variants:
                if variant == canonical:
                    continue
                if has_hangul(variant):
                    korean[variant.replace(" ", "")] = canonical.replace(" ", "")
                else:
                    english[tuple(variant.split())] = tuple(canonical.split())
        return cls(english, korean)

    @classmethod
    def load(cls, path: str | Path | None = None) -> "Synonyms":
        """Rules from ``path``; the bundled list (``feedback/knowledge/synonyms.txt``) when ``path`` is None."""
        if path is None:
            text = resources.files("feedback.knowledge").joinpath(BUNDLED).read_text(encoding="utf-8")
            return cls.parse(text, BUNDLED)
        return cls.parse(Path(path).read_text(encoding="utf-8"), str(path))

    def folded(self, fold: Callable[[str], str]) -> "Synonyms":
        """The same rules with every English word passed through ``fold`` (the analyzer's stemmer), so a
        rule written ``deliver => ship`` also matches "delivered" once both sides are stemmed."""
        english = {
            tuple(fold(w) for w in variant): tuple(fold(w) for w in canonical)
            for variant, canonical in self.english.items()
        }
        return Synonyms(english, dict(self.korean))

    def __post_init__(self):
        longest = max((len(k) for k in self.english), default=0)
        object.__setattr__(self, "_longest", longest)
        # Canonical forms match too (to themselves), longest first, so "메일" => "이메일" leaves "이메일" alone.
        targets = {**{c: c for c in self.korean.values()}, **self.korean}
        object.__setattr__(self, "_korean_targets", targets)
        pattern = "|".join(re.escape(k) for k in sorted(targets, key=len, reverse=True))
        object.__setattr__(self, "_korean_re", re.compile(pattern) if pattern else None)

    def rewrite(self, words: list[str]) -> list[str]:
        """``words`` (normalised) with every rule applied once."""
        if self._korean_re is not None:
            words = self._rewrite_korean(words)
        if not self.english:
            return words
        out: list[str] = []
        i = 0
        while i < len(words):
            for size in range(min(self._longest, len(words) - i), 0, -1):
                canonical = self.english.get(tuple(words[i : i + size]))
                if canonical is not None:
                    out.extend(canonical)
                    i += size
                    break
            else:
                out.append(words[i])
                i += 1
        return out

    def _rewrite_korean(self, words: list[str]) -> list[str]:
        # Korean phrases match across the free spacing: join the Hangul words, rewrite, split back at
        # the spaces that were there (a rewritten span keeps the spacing of its first word).
        text = " ".join(words)
        if not has_hangul(text):
            return words
        spaced = re.sub(r"(?<=[\uac00-\ud7a3]) (?=[\uac00-\ud7a3])", "\x00", text)
        joined = spaced.replace("\x00", "")
        if not self._korean_re.search(joined):
            return words
        # Keep the original spacing outside matches: map positions in `joined` back to `spaced`.
        pieces: list[str] = []
        positions = [i for i, ch in enumerate(spaced) if ch != "\x00"]
        last = 0
        for match in self._korean_re.finditer(joined):
            start, end = positions[match.start()], positions[match.end() - 1] + 1
            pieces.append(spaced[last:start])
            pieces.append(self._korean_targets[match.group(0)])
            last = end
        pieces.append(spaced[last:])
        return "".join(pieces).replace("\x00", " ").split()
