"""Benchmark: how well and how fast the knowledge-base retriever finds entries (feedback/knowledge).

    .venv/bin/python bench/retrieval.py            # what docs/benchmarks.md records (about a minute)
    .venv/bin/python bench/retrieval.py --quick    # 2,000 synthetic entries, fewer queries (smoke test)
    .venv/bin/python bench/retrieval.py --dev-only # while tuning: the held-out test rewordings stay unseen
    .venv/bin/python bench/retrieval.py --heldout data/rewordings-holdout2.jsonl  # only recall on that file
    .venv/bin/python bench/retrieval.py --loo      # while tuning: leave-one-out over the alternates, dev (~20 s)

1. **Recall** — recall@1 and recall@3, by language, of each method compared (the rows of
   "Methods") on ``data/rewordings.jsonl`` (``dev``: what methods and parameters were chosen on;
   ``test``: held out, looked at only for the final figures), ``data/rewordings-holdout2.jsonl`` and the
   later ``-holdout3``, ``-holdout4`` (held-out sets, each written apart from every retrieval choice it
   judged) and ``data/paraphrases.jsonl``, with the
   184 FAQ rows as the knowledge base (one entry per row, its question and answer, and for the methods
   that say so the row's alternate questions from ``data/faq-alternates.jsonl``, as ``tuneloop`` seeds
   them). Golden rows (exact FAQ questions) are a sanity check: they must all be found. ``--heldout FILE``
   (rows as in ``data/rewordings.jsonl``) prints only recall@1 / @3 by language of the default method on
   that file, and nothing else: a held-out set stays unread.
2. **Threshold** — the right entry's score (wherever it is in the top 3) for the dev rewordings and the
   paraphrases, against the best (wrong) entry's score for questions the base cannot answer, and what
   each ``[knowledge] min_score`` keeps of the one and empties of the other.
3. **Latency** — ``search(query, k=3)`` per query, p50 / p99, at 200 and 20,000 entries; the queries repeat
   (the retriever keeps the analysed form of recent queries), so the same again with every query analysed
   anew. The entries past the FAQ's 184 are synthesised from it (questions and answers recombined with one
   another's words and with product names, in both languages), so the vocabulary and posting lengths grow
   like a real base's. Queries are the rewordings, cycled.
4. **Changes** — ``upsert`` of a new entry, ``upsert`` replacing an entry, ``remove``, at 20,000
   entries, against rebuilding the whole index (what an incremental index saves).

Timings are wall-clock on this process pinned to at most 2 cores; the machine may be shared, so the
ratios (200 vs 20,000 entries, change vs rebuild) are the figures to compare across runs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from feedback.knowledge.analysis import Analyzer, TermWeights, language_of  # noqa: E402
from feedback.knowledge.retrieval import Entry, RetrievalConfig, Retriever  # noqa: E402
from feedback.knowledge.synonyms import Synonyms  # noqa: E402
from feedback.text import question_key  # noqa: E402

DATA = ROOT / "data"

# Questions the FAQ cannot answer (other shops' topics, chit-chat): for the threshold, the best score
# any entry gets for them. Written for this benchmark; kept apart from every data file.
UNANSWERABLE = [
    "Do you sell concert tickets?",
    "What's the weather like in Busan tomorrow?",
    "Can you recommend a good laptop for gaming?",
    "Who won the football match last night?",
    "Do you have a physical office I can visit for a job interview?",
    "How do I become a seller on your marketplace?",
    "Is your company hiring software engineers?",
    "Tell me a joke",
    "What is the capital of France?",
    "Do you offer car insurance?",
    "Can I book a hotel through your site?",
    "Are your vegetables organic?",
    "콘서트 티켓도 판매하나요?",
    "내일 부산 날씨 어때요?",
    "게임용 노트북 추천해 주세요",
    "어제 축구 경기 누가 이겼어요?",
    "입점 판매자로 등록하고 싶어요",
    "개발자 채용 중인가요?",
    "재미있는 농담 하나 해 주세요",
    "프랑스의 수도는 어디인가요?",
    "자동차 보험도 가입할 수 있나요?",
    "호텔 예약도 되나요?",
    "채소는 유기농인가요?",
    "오늘 점심 메뉴 추천해 줘",
]

PRODUCTS_EN = (
    "sneakers jacket blender kettle headphones backpack mattress sofa lamp rice kimchi coffee tea vitamins shampoo "
    "lipstick stroller diapers tent bicycle monitor keyboard charger umbrella towel pillow blanket mug skillet vacuum"
).split()
PRODUCTS_KO = (
    "운동화 재킷 믹서기 전기포트 헤드폰 백팩 매트리스 소파 조명 쌀 김치 커피 녹차 비타민 샴푸 립스틱 유모차 기저귀 "
    "텐트 자전거 모니터 키보드 충전기 우산 수건 베개 이불 머그컵 프라이팬 청소기"
).split()


@dataclass(frozen=True)
class Method:
    name: str
    synonyms: bool
    weights: TermWeights
    config: RetrievalConfig
    alternates: bool = False  # the FAQ rows' alternate questions (data/faq-alternates.jsonl) as more questions

    def retriever(self, entries) -> Retriever:
        synonyms = Synonyms.load() if self.synonyms else Synonyms.empty()
        return Retriever(entries, analyzer=Analyzer(synonyms, self.weights), config=self.config)

    def faq_retriever(self, faq: list[dict]) -> Retriever:
        """This method over the FAQ rows (with their alternate questions when the method has them)."""
        return self.retriever(faq_entries(faq, load_alternates() if self.alternates else None))


# The rows before alternate questions: best question only, answer weight 0.7 (the defaults then).
ONE_QUESTION = RetrievalConfig(answer_weight=0.7, pooled_weight=0.0)
DEFAULT = Method(
    "default: + questions pooled (0.5), answer 0.5", True, TermWeights(), RetrievalConfig(), alternates=True
)
METHODS = [
    Method(
        "character n-grams, question (probe's baseline)",
        False,
        TermWeights(word=0.0, korean_ngram=1.0, english_ngram=1.0),
        RetrievalConfig(answer_weight=0.0, pooled_weight=0.0),
    ),
    Method(
        "+ words (stemmed, stop words, particles)",
        False,
        TermWeights(),
        RetrievalConfig(answer_weight=0.0, pooled_weight=0.0),
    ),
    Method("+ answer (noisy-OR, 0.7)", False, TermWeights(), ONE_QUESTION),
    Method("+ synonyms, question only", True, TermWeights(), RetrievalConfig(answer_weight=0.0, pooled_weight=0.0)),
    Method("words + n-grams + answer + synonyms (the default before alternates)", True, TermWeights(), ONE_QUESTION),
    Method("+ alternate questions, best question", True, TermWeights(), ONE_QUESTION, alternates=True),
    DEFAULT,
    Method("default scoring, no alternate questions (a base without them)", True, TermWeights(), RetrievalConfig()),
]


def load(name: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / name).read_text(encoding="utf-8").splitlines() if line.strip()]


def load_alternates() -> dict[int, list[str]]:
    """FAQ line -> its alternate questions (data/faq-alternates.jsonl)."""
    return {r["alternates_of"]: r["questions"] for r in load("faq-alternates.jsonl")}


def faq_entries(faq: list[dict], alternates: dict[int, list[str]] | None = None) -> list[Entry]:
    """One entry per FAQ row: its question (and its alternate questions, when given) and its answer."""
    alternates = alternates or {}
    return [
        Entry(f"faq-{i}", (r["messages"][0]["content"], *alternates.get(i, ())), r["messages"][1]["content"])
        for i, r in enumerate(faq)
    ]


def heldout_queries(path: Path) -> list[tuple[str, int, str]]:
    """[(query, FAQ line, lang)] of a rewordings file (the format of data/rewordings.jsonl)."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [(r["messages"][0]["content"], r["rewording_of"], r["lang"]) for r in rows]


def report_heldout(path: Path, faq: list[dict]) -> dict:
    """Recall@1 / @3 by language of the default method on ``path``: aggregates only, no question is printed."""
    result = recall(DEFAULT.faq_retriever(faq), heldout_queries(path))
    print(f"Held-out set {path.name} (default method; aggregates only)")
    print(f"  {'set':18s} {'lang':4s} {'recall@1':>16s} {'recall@3':>16s}")
    print_recall(path.stem[:18], result)
    return result


def report_tuning(faq: list[dict]) -> dict:
    """The figures to tune on, default method: leave-one-out over the alternates, dev, paraphrases, golden."""
    sets = query_sets()
    figures = {"leave-one-out": leave_one_out(DEFAULT, faq)}
    retriever = DEFAULT.faq_retriever(faq)
    for name in ("rewordings dev", "paraphrases", "golden"):
        figures[name] = recall(retriever, sets[name])
    print("Tuning figures (default method; the held-out sets stay unread)")
    print(f"  {'set':18s} {'lang':4s} {'recall@1':>16s} {'recall@3':>16s}")
    for name, result in figures.items():
        print_recall(name, result)
    return figures


# The later held-out sets (data/README.md: data/rewordings-holdout2.jsonl and on), each its own query set.
HOLDOUTS = {
    f"rewordings {p.stem.removeprefix('rewordings-')}": p for p in sorted(DATA.glob("rewordings-holdout*.jsonl"))
}
HELD_OUT = ("rewordings test", *HOLDOUTS)  # left out by --dev-only


def query_sets() -> dict[str, list[tuple[str, int, str]]]:
    """name -> [(query, FAQ line, lang)]."""
    rewordings = load("rewordings.jsonl")
    paraphrases = load("paraphrases.jsonl")
    faq = load("faq.jsonl")
    golden_keys = {r["messages"][0]["content"] for r in load("golden.jsonl")}
    golden = [(r["messages"][0]["content"], i, language_of(r["messages"][0]["content"])) for i, r in enumerate(faq)]
    return {
        "rewordings dev": [
            (r["messages"][0]["content"], r["rewording_of"], r["lang"]) for r in rewordings if r["split"] == "dev"
        ],
        "rewordings test": [
            (r["messages"][0]["content"], r["rewording_of"], r["lang"]) for r in rewordings if r["split"] == "test"
        ],
        "paraphrases": [
            (r["messages"][0]["content"], r["paraphrase_of"], language_of(r["messages"][0]["content"]))
            for r in paraphrases
        ],
        "golden": [g for g in golden if g[0] in golden_keys],
        **{name: heldout_queries(path) for name, path in HOLDOUTS.items()},
    }


def recall(retriever: Retriever, queries) -> dict[str, dict]:
    """By language and overall: n, recall@1, recall@3, and the right entry's score when it is first."""
    out: dict[str, dict] = {}
    for query, line, lang in queries:
        ids = [h.entry_id for h in retriever.search(query, k=3)]
        for key in (lang, "all"):
            row = out.setdefault(key, {"n": 0, "at1": 0, "at3": 0})
            row["n"] += 1
            row["at1"] += ids[:1] == [f"faq-{line}"]
            row["at3"] += f"faq-{line}" in ids
    return out


def loo_queries(alternates: dict[int, list[str]]) -> list[tuple[str, int]]:
    """[(alternate question, FAQ line)]: every bundled alternate question, each asked once with itself left out."""
    return [(q, line) for line, questions in sorted(alternates.items()) for q in questions]


def leave_one_out(method: Method, faq: list[dict], alternates: dict[int, list[str]] | None = None) -> dict[str, dict]:
    """Recall@1 / @3 by language of ``method`` when each alternate question (data/faq-alternates.jsonl) is asked
    of a base that lacks it: its entry keeps its FAQ question, answer and other alternates.

    925 customer phrasings written apart from every query set, so a fair tuning figure (the dev rewordings are
    123). One retriever over the whole FAQ; for each query its entry is replaced by the entry without that
    question (``upsert``, as a reviewer's edit would) and put back after the entry's last one; the norms are
    recomputed after each change so that document frequencies are exactly those of the base without it.
    """
    alternates = load_alternates() if alternates is None else alternates
    entries = faq_entries(faq, alternates)
    retriever = method.retriever(entries)
    out: dict[str, dict] = {}
    for query, line in loo_queries(alternates):
        entry = entries[line]
        retriever.upsert(without_question(entry, query))
        retriever.refresh_norms()
        ids = [h.entry_id for h in retriever.search(query, k=3)]
        for key in (entry.lang, "all"):
            row = out.setdefault(key, {"n": 0, "at1": 0, "at3": 0})
            row["n"] += 1
            row["at1"] += ids[:1] == [entry.entry_id]
            row["at3"] += entry.entry_id in ids
        retriever.upsert(entry)
    return out


def without_question(entry: Entry, question: str) -> Entry:
    """``entry`` less ``question`` (every phrasing of it with the same ``question_key``)."""
    key = question_key(question)
    kept = tuple(q for q in entry.questions if question_key(q) != key)
    return Entry(entry.entry_id, kept, entry.answer, entry.lang)


def pct(row: dict, key: str) -> str:
    return f"{row[key] / row['n']:.2f} ({row[key]}/{row['n']})"


def print_recall(name: str, figures: dict) -> None:
    for lang in ("ko", "en", "all"):
        if lang in figures:
            row = figures[lang]
            print(f"  {name:18s} {lang:4s} {pct(row, 'at1'):>16s} {pct(row, 'at3'):>16s}")


def threshold_figures(retriever: Retriever, queries) -> dict:
    """The right entry's score wherever it is in the top 3, and each unanswerable question's best score."""
    right = []
    for query, line, _ in queries:
        right += [h.score for h in retriever.search(query, k=3) if h.entry_id == f"faq-{line}"]
    best = [(retriever.search(q, k=1) or [None])[0] for q in UNANSWERABLE]
    return {"right_in_top3": right, "unanswerable_best": [h.score if h else 0.0 for h in best]}


def quantiles(values: list[float]) -> str:
    values = sorted(values)
    q = statistics.quantiles(values, n=20) if len(values) > 1 else values * 19
    median = statistics.median(values)
    low, high = values[0], values[-1]
    return f"min {low:.2f}  p5 {q[0]:.2f}  p25 {q[4]:.2f}  median {median:.2f}  p95 {q[18]:.2f}  max {high:.2f}"


def synthesize(faq: list[dict], n: int, seed: int = 7) -> list[Entry]:
    """``n`` entries: the FAQ's own (with their alternate questions), then recombinations (see the docstring)."""
    rng = random.Random(seed)
    entries = faq_entries(faq, load_alternates())
    by_lang: dict[str, list[tuple[str, str]]] = {"ko": [], "en": []}
    for r in faq:
        q, a = r["messages"][0]["content"], r["messages"][1]["content"]
        by_lang[language_of(q)].append((q, a))
    i = 0
    while len(entries) < n:
        lang = "ko" if i % 2 else "en"
        (q, a), (q2, a2) = rng.choice(by_lang[lang]), rng.choice(by_lang[lang])
        words, other = q.rstrip("?.!").split(), q2.rstrip("?.!").split()
        words[rng.randrange(len(words))] = rng.choice(other)
        product = rng.choice(PRODUCTS_KO if lang == "ko" else PRODUCTS_EN) + str(rng.randrange(1, 60))
        question = (f"{product} " if lang == "ko" else f"{product}: ") + " ".join(words) + "?"
        answer = f"{a} {a2.split('.')[0]}. ({product})"
        entries.append(Entry(f"syn-{i}", (question,), answer, lang))
        i += 1
    return entries


def resident_mb() -> float:
    """This process's resident memory now (Linux ``/proc/self/statm``), in MB."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 2**20


def percentiles_ms(samples: list[float]) -> tuple[float, float]:
    samples = sorted(samples)
    p50 = samples[len(samples) // 2]
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
    return p50 * 1000, p99 * 1000


def time_queries(retriever: Retriever, queries: list[str], count: int, *, fresh: bool = False) -> tuple[float, float]:
    """p50 / p99 ms of ``search(k=3)`` over ``queries`` cycled; ``fresh``: every query analysed anew (the
    retriever's cache of analysed queries emptied before each: a question nobody asked before)."""
    for q in queries[:50]:  # warm caches
        retriever.search(q, k=3)
    samples = []
    for i in range(count):
        query = queries[i % len(queries)]
        if fresh:
            retriever._analyzed.cache_clear()
        start = time.perf_counter()
        retriever.search(query, k=3)
        samples.append(time.perf_counter() - start)
    return percentiles_ms(samples)


def time_changes(retriever: Retriever, faq: list[dict], count: int) -> dict[str, tuple[float, float]]:
    fresh = synthesize(faq, len(retriever) + count, seed=99)[-count:]
    new, replace, remove = [], [], []
    for j, entry in enumerate(fresh):
        entry = Entry(f"new-{j}", entry.questions, entry.answer, entry.lang)
        start = time.perf_counter()
        retriever.upsert(entry)
        new.append(time.perf_counter() - start)
    for j, entry in enumerate(fresh):
        changed = Entry(
            f"new-{j}", entry.questions + ("another phrasing of it",), entry.answer + " Updated.", entry.lang
        )
        start = time.perf_counter()
        retriever.upsert(changed)
        replace.append(time.perf_counter() - start)
    for j in range(count):
        start = time.perf_counter()
        retriever.remove(f"new-{j}")
        remove.append(time.perf_counter() - start)
    return {
        "upsert new": percentiles_ms(new),
        "upsert replace": percentiles_ms(replace),
        "remove": percentiles_ms(remove),
    }


def import_ms() -> float:
    """Fresh-interpreter import of the retriever, less a bare interpreter's start (best of 3)."""

    def run(code: str) -> float:
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
            best = min(best, time.perf_counter() - start)
        return best

    return (run("import feedback.knowledge.retrieval") - run("pass")) * 1000


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2,000 entries and fewer timings (smoke test)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument(
        "--dev-only", action="store_true", help="leave the held-out test rewordings out (use while tuning)"
    )
    parser.add_argument(
        "--heldout", type=Path, metavar="FILE", help="only recall@1/@3 by language on this rewordings file"
    )
    parser.add_argument(
        "--loo",
        action="store_true",
        help="only the tuning figures: leave-one-out over the alternate questions, dev, paraphrases, golden",
    )
    args = parser.parse_args(argv)
    if args.loo:
        figures = report_tuning(load("faq.jsonl"))
        if args.json:
            args.json.write_text(json.dumps(figures, indent=1))
        return 0
    if args.heldout:
        figures = report_heldout(args.heldout, load("faq.jsonl"))
        if args.json:
            args.json.write_text(json.dumps(figures, indent=1))
        return 0
    if hasattr(os, "sched_setaffinity"):
        cores = sorted(os.sched_getaffinity(0))[:2]
        os.sched_setaffinity(0, cores)
    large = 2_000 if args.quick else 20_000
    query_count = 300 if args.quick else 3_000
    change_count = 50 if args.quick else 300
    faq = load("faq.jsonl")
    sets = query_sets()
    figures: dict = {"methods": {}, "sizes": {}}

    print("1. Recall (knowledge base: the 184 FAQ rows)")
    print(f"  {'set':18s} {'lang':4s} {'recall@1':>16s} {'recall@3':>16s}")
    for method in METHODS:
        retriever = method.faq_retriever(faq)
        print(f"  -- {method.name}")
        figures["methods"][method.name] = {}
        for name in ("rewordings dev", "rewordings test", *HOLDOUTS, "paraphrases", "golden"):
            if (args.dev_only and name in HELD_OUT) or not sets[name]:
                continue
            result = recall(retriever, sets[name])
            figures["methods"][method.name][name] = result
            if method is DEFAULT or name == "rewordings dev":
                print_recall(name, result)

    print("\n2. Threshold (default method; dev rewordings + paraphrases, and questions the FAQ cannot answer)")
    retriever = DEFAULT.faq_retriever(faq)
    scores = threshold_figures(retriever, sets["rewordings dev"] + sets["paraphrases"])
    figures["threshold"] = scores
    right, unanswerable = scores["right_in_top3"], scores["unanswerable_best"]
    print(f"  right entry in the top 3 ({len(right)}): {quantiles(right)}")
    print(f"  unanswerable, best entry ({len(unanswerable)}): {quantiles(unanswerable)}")
    print(f"  {'min_score':>9s} {'right entries kept':>20s} {'unanswerable given nothing':>28s}")
    for threshold in (0.1, 0.15, 0.2, 0.25, 0.3):
        kept = sum(s >= threshold for s in right)
        empty = sum(s < threshold for s in unanswerable)
        print(f"  {threshold:>9.2f} {f'{kept}/{len(right)}':>20s} {f'{empty}/{len(unanswerable)}':>28s}")

    print(f"\n3. Latency of search(k=3), {query_count} queries; 4. changes, {change_count} each")
    queries = [q for name in ("rewordings dev", "rewordings test", "paraphrases") for q, _, _ in sets[name]]
    queries += UNANSWERABLE
    print(
        f"  {'entries':>8s} {'build s':>8s} {'+RSS MB':>8s} {'search p50 ms':>14s} {'p99 ms':>8s}"
        f" {'new question p50 / p99':>23s}   changes p50 / p99 ms"
    )
    for size in (200, large):
        entries = synthesize(faq, size)
        rss_before = resident_mb()
        start = time.perf_counter()
        retriever = DEFAULT.retriever(entries)
        build = time.perf_counter() - start
        grown_mb = resident_mb() - rss_before
        p50, p99 = time_queries(retriever, queries, query_count)
        fresh50, fresh99 = time_queries(retriever, queries, query_count, fresh=True)
        changes = time_changes(retriever, faq, change_count)
        figures["sizes"][size] = {
            "build_s": build,
            "peak_rss_growth_mb": grown_mb,
            "search_p50_ms": p50,
            "search_p99_ms": p99,
            "new_question_p50_ms": fresh50,
            "new_question_p99_ms": fresh99,
            "changes": changes,
        }
        change_text = "  ".join(f"{k} {v[0]:.2f} / {v[1]:.2f}" for k, v in changes.items())
        fresh_text = f"{fresh50:.3f} / {fresh99:.3f}"
        print(f"  {size:>8d} {build:>8.2f} {grown_mb:>8.0f} {p50:>14.3f} {p99:>8.3f} {fresh_text:>23s}   {change_text}")
    small, big = figures["sizes"][200], figures["sizes"][large]
    print(f"  search p50 at {large} / at 200: {big['search_p50_ms'] / small['search_p50_ms']:.1f}x;", end=" ")
    print(f"rebuild at {large} / one upsert: {big['build_s'] * 1000 / big['changes']['upsert new'][0]:.0f}x")
    figures["import_ms"] = import_ms()
    print(f"  import feedback.knowledge.retrieval in a fresh interpreter: {figures['import_ms']:.0f} ms")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
