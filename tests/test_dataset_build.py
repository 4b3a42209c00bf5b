"""Building training sets: splits without leakage, reproducible bytes, corrections, lineage, validation, atomicity."""

from __future__ import annotations

import hashlib
import json
from itertools import combinations
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import cli
from config.settings import PROJECT_ROOT, load_settings
from feedback import review, sql
from feedback.db import write_transaction
from feedback.knowledge.grounding import ground
from feedback.knowledge.live import LiveIndex
from feedback.knowledge.seed import ensure_seeded
from feedback.knowledge.store import entry_for_question, update_entry
from feedback.review_io import ImportRejected
from feedback.text import similarity
from tests.test_ranking import ask, make_version
from trainer.dataset import DatasetInvalid, build_dataset, import_base, list_datasets
from trainer.dataset.as_served import ANSWERS_DIFFER, NOT_IN_KNOWLEDGE
from trainer.dataset.cost import estimate_costs
from trainer.dataset.dedupe import connected_groups, prompt_key
from trainer.dataset.validate import check_example, validate_splits

pytestmark = pytest.mark.engines  # the storage tests run on SQLite and on PostgreSQL

FAQ = PROJECT_ROOT / "data" / "faq.jsonl"
FAQ_ROWS = [json.loads(line) for line in FAQ.read_text(encoding="utf-8").splitlines()]
FEE_KO = "배송비는 얼마인가요?"  # data/faq.jsonl line 43
FEE_KO_OLD = "배송비는 주문당 3,000원이며, 30,000원 이상 주문하면 무료입니다."
FEE_KO_NEW = "배송비는 주문당 3,500원이며, 40,000원 이상 주문하면 무료입니다."
DELIVERY_EN_NEW = "Standard delivery takes 1–2 business days."


def with_settings(settings, **overrides):
    values = {"paths.data_dir": str(settings.data_dir)}
    values.update({k.replace("__", "."): v for k, v in overrides.items()})
    return load_settings(env={}, overrides=values)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def split_rows(files: dict[str, bytes]) -> dict[str, list[dict]]:
    return {
        name: [json.loads(line) for line in files[f"{name}.jsonl"].decode().splitlines()]
        for name in ("train", "val", "test")
    }


def with_near_duplicates(tmp_path) -> Path:
    """The FAQ plus a surface variant of 30 of its questions, each with a different answer (so none is deduped)."""
    extra = []
    for i, row in enumerate(FAQ_ROWS[::6][:30]):
        question = row["messages"][0]["content"]
        variant = question.rstrip("?.!").lower() + "??" if question.isascii() else question.replace(" ", "", 1) + "??"
        extra.append(
            {
                "messages": [
                    {"role": "user", "content": variant},
                    {"role": "assistant", "content": f"Variant answer number {i}: ask support."},
                ]
            }
        )
    return write_jsonl(tmp_path / "base.jsonl", FAQ_ROWS + extra)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_no_near_duplicate_pair_crosses_splits(db, settings, tmp_path, seed):
    built = with_settings(settings, dataset__base_file=str(with_near_duplicates(tmp_path)))
    result = build_dataset(db, built, seed=seed, dry_run=True)
    splits = split_rows(result.files)
    assert all(splits.values()) and result.counts["conflicts"] == 30
    keyed = [(name, prompt_key(row["messages"])) for name, rows in splits.items() for row in rows]
    threshold = built.dataset.near_duplicate_threshold
    near = crossing = 0
    for (split_a, a), (split_b, b) in combinations(keyed, 2):  # brute force, independent of the builder's index
        if similarity(a, b) >= threshold:
            near += 1
            crossing += split_a != split_b
    assert near >= 30 and crossing == 0


def test_groups_are_transitive():
    # A≈B and B≈C but A≉C: all three must still land together.
    rows = [
        [{"role": "user", "content": q}, {"role": "assistant", "content": f"answer {i}"}]
        for i, q in enumerate(
            [
                "how do i change my delivery address",
                "change delivery address please now",
                "delivery address please now",
                "refund status",
            ]
        )
    ]
    assert similarity(prompt_key(rows[0]), prompt_key(rows[2])) < 0.45
    groups = connected_groups(rows, 0.45)
    assert groups[0] == groups[1] == groups[2] != groups[3]


def test_same_inputs_and_seed_give_byte_identical_files(db, settings, tmp_path):
    live = make_version(db, "live", "live")
    ask(db, live, FEE_KO, answer="3,000원", down=1)
    item = review.create_item(db, question=FEE_KO, evidence={"answers": [{"answer": "3,000원", "up": 0, "down": 1}]})
    review.approve(db, item.id, answer=FEE_KO_NEW, reviewer="ana")
    first = build_dataset(db, settings)
    second = build_dataset(db, settings)
    assert (first.version, second.version) == (1, 2)
    names = sorted(p.name for p in first.path.iterdir())
    assert names == ["manifest.json", "preferences.jsonl", "test.jsonl", "train.jsonl", "val.jsonl"]
    for name in names:
        assert (first.path / name).read_bytes() == (second.path / name).read_bytes(), name
    other_seed = build_dataset(db, settings, seed=7, dry_run=True)
    assert other_seed.files["test.jsonl"] != (first.path / "test.jsonl").read_bytes()
    rows = [list_datasets(db)[i] for i in (1, 0)]
    assert [r["version"] for r in rows] == [1, 2] and rows[0]["sha256"] == rows[1]["sha256"] == first.sha256
    assert rows[0]["counts"] == {
        "train": first.counts["train"],
        "val": first.counts["val"],
        "test": first.counts["test"],
        "preferences": 1,
    }


def test_an_approved_correction_replaces_the_base_answer(db, settings):
    fee = review.create_item(db, question=FEE_KO)
    review.approve(db, fee.id, answer=FEE_KO_NEW, reviewer="ana")
    delivery = review.create_item(db, question="how long does standard delivery take")  # a surface variant
    review.approve(db, delivery.id, answer=DELIVERY_EN_NEW, reviewer="ana")
    review.create_item(db, question="Do you ship to other countries?")  # pending: changes nothing
    result = build_dataset(db, settings)
    rows = [row for rows in split_rows(result.files).values() for row in rows]
    answers = {row["messages"][-1]["content"] for row in rows}
    assert FEE_KO_NEW in answers and DELIVERY_EN_NEW in answers and FEE_KO_OLD not in answers
    assert not any(a.startswith("Standard delivery takes 2-3") for a in answers)
    assert "No, Haneul Mart only delivers to addresses within South Korea." in answers
    closed = [lin for lins in result.manifest["rows"].values() for lin in lins if lin.get("view") != "as_served"]
    assert len(closed) == len(FAQ_ROWS)  # two replaced, none added: always the whole corrected set
    replaced = {r["review_item_id"]: r["base"]["line"] for r in result.manifest["replaced"]}
    assert replaced == {fee.id: 43, delivery.id: 28}
    train_lineage = result.manifest["rows"]["train"]
    assert {r["review_item_id"] for r in train_lineage if r["source"] == "review"} == {fee.id, delivery.id}


def test_manifest_lineage_points_at_each_row_source(db, settings):
    live = make_version(db, "live", "live")
    ask(db, live, "Can I leave the parcel with a neighbour?", answer="Yes, write it in the delivery note.", up=4)
    item = review.create_item(db, question="Can I change my delivery date?")
    review.approve(db, item.id, answer="No, but you can change the address before it ships.", reviewer="ana")
    result = build_dataset(db, settings, include_upvoted=3)
    manifest = json.loads((result.path / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["sha256"] == result.sha256 and manifest["inputs"]["base_file"]["path"] == "data/faq.jsonl"
    seen = set()
    for name in ("train", "val", "test"):
        data = (result.path / f"{name}.jsonl").read_bytes()
        assert manifest["files"][f"{name}.jsonl"]["sha256"] == hashlib.sha256(data).hexdigest()
        rows = [json.loads(line) for line in data.decode().splitlines()]
        assert len(rows) == len(manifest["rows"][name]) == manifest["counts"][name]
        for row, lineage in zip(rows, manifest["rows"][name], strict=False):
            seen.add(lineage["source"])
            if lineage.get("view") == "as_served":  # the same row with the knowledge block in front
                assert row["messages"][0]["role"] == "system" and "Knowledge:" in row["messages"][0]["content"]
                row = {"messages": row["messages"][1:]}
            if lineage["source"] == "base":
                assert FAQ_ROWS[lineage["line"] - 1]["messages"] == row["messages"]
            elif lineage["source"] == "review":
                assert lineage["review_item_id"] == item.id and row["messages"][0]["content"] == item.question
            else:
                assert lineage["votes"] == 4 and lineage["message_id"].startswith("msg_")
                assert row["messages"][1]["content"] == "Yes, write it in the delivery note."
    assert seen == {"base", "review", "feedback"}


def test_upvoted_answers_need_enough_ups_and_few_downs(db, settings):
    live = make_version(db, "live", "live")
    ask(db, live, "Is gift wrapping available?", answer="Yes, for 2,000 won.", up=3)
    ask(db, live, "Can I pick up in a store?", answer="Yes, in Seoul.", up=3, down=2)  # contested
    ask(db, live, "Do you sell gift cards?", answer="Not yet.", up=2)
    pending = review.create_item(db, question="Is gift wrapping available?")
    result = build_dataset(db, settings, include_upvoted=3, dry_run=True)
    reasons = {d["lineage"].get("message_id", ""): d["reason"] for d in result.manifest["dropped"]}
    assert result.counts["upvoted_answers"] == 1 and "feedback" not in result.counts["sources"]
    assert any(r == f"question is pending in review as {pending.id}" for r in reasons.values())
    review.reject(db, pending.id, reviewer="ana")
    assert build_dataset(db, settings, include_upvoted=3, dry_run=True).counts["sources"]["feedback"] == 1
    assert build_dataset(db, settings, include_upvoted=4, dry_run=True).counts["upvoted_answers"] == 0


@pytest.mark.parametrize(
    "example, code",
    [
        ([], "data_type"),
        ({"messages": []}, "missing_messages_list"),
        ({"prompt": "x"}, "missing_messages_list"),
        (
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "extra": 1},
            "unrecognized_key",
        ),
        ({"messages": [{"role": "user"}, {"role": "assistant", "content": "a"}]}, "message_missing_key"),
        (
            {"messages": [{"role": "user", "content": "q", "tool_calls": []}, {"role": "assistant", "content": "a"}]},
            "message_unrecognized_key",
        ),
        (
            {"messages": [{"role": "customer", "content": "q"}, {"role": "assistant", "content": "a"}]},
            "unrecognized_role",
        ),
        ({"messages": [{"role": "user", "content": ["q"]}, {"role": "assistant", "content": "a"}]}, "missing_content"),
        ({"messages": [{"role": "user", "content": "  "}, {"role": "assistant", "content": "a"}]}, "missing_content"),
        (
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 2}]},
            "bad_weight",
        ),
        (
            {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]},
            "example_missing_assistant_message",
        ),
        (
            {"messages": [{"role": "user", "content": "q" * 300}, {"role": "assistant", "content": "a"}]},
            "too_many_tokens",
        ),
    ],
)
def test_openai_format_rules(example, code):
    assert [p.code for p in check_example(example, max_tokens=100)] == [code]


def test_a_valid_example_passes():
    good = {
        "messages": [
            {"role": "system", "content": "s"},
            {"role": "user", "content": "배송비는?"},
            {"role": "assistant", "content": "3,000원", "weight": 1},
        ]
    }
    assert check_example(good, max_tokens=100) == []


def test_validation_reports_problems_by_split_and_row():
    good = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    bad = {"messages": [{"role": "user", "content": "q"}]}
    report = validate_splits(
        {"train": [good, bad, good], "val": [bad]},
        {"train": [{"n": 1}, {"n": 2}, {"n": 3}], "val": [{"n": 4}]},
        max_tokens=100,
        min_examples=10,
    )
    assert [(p["split"], p["row"], p["code"], p["lineage"]) for p in report.problems] == [
        ("train", 2, "example_missing_assistant_message", {"n": 2}),
        ("val", 1, "example_missing_assistant_message", {"n": 4}),
        ("train", None, "too_few_examples", None),
    ]


def test_an_invalid_build_writes_nothing_and_names_the_rows(db, settings):
    tiny = with_settings(settings, dataset__max_tokens_per_example=40)
    with pytest.raises(DatasetInvalid) as info:
        build_dataset(db, tiny)
    problems = info.value.result.problems
    assert problems and all(p["code"] == "too_many_tokens" for p in problems)
    assert all(p["split"] in ("train", "val", "test") and p["row"] >= 1 for p in problems)
    assert "data/faq.jsonl line" in info.value.message
    assert not settings.datasets_dir.exists() or not any(settings.datasets_dir.iterdir())
    too_few = with_settings(settings, dataset__min_examples=1000)
    with pytest.raises(DatasetInvalid, match="too_few_examples"):
        build_dataset(db, too_few)
    dry = build_dataset(db, too_few, dry_run=True)  # a dry run reports instead of raising
    assert dry.problems[0]["code"] == "too_few_examples" and dry.version == 1
    assert list_datasets(db) == []


def test_a_failed_write_leaves_no_partial_version(db, settings):
    with write_transaction(db):  # the database refuses the row, as a full disk would
        if sql.dialect(db) == "postgresql":
            db.execute(
                "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql"
                " AS $$ BEGIN RAISE EXCEPTION 'disk full'; END $$"
            )
            db.execute("CREATE TRIGGER refuse BEFORE INSERT ON datasets FOR EACH ROW EXECUTE FUNCTION refuse()")
        else:
            db.execute("CREATE TRIGGER refuse BEFORE INSERT ON datasets BEGIN SELECT RAISE(ABORT, 'disk full'); END")
    with pytest.raises(Exception, match="disk full"):
        build_dataset(db, settings)
    assert [p.name for p in settings.datasets_dir.iterdir()] == [".build.lock"]
    assert list_datasets(db) == []
    with write_transaction(db):
        db.execute("DROP TRIGGER refuse" + (" ON datasets" if sql.dialect(db) == "postgresql" else ""))
    result = build_dataset(db, settings)
    assert result.version == 1 and result.path.name == "v1" and len(list_datasets(db)) == 1


def test_corrections_always_train(db, settings):
    ids = []
    for i, row in enumerate(FAQ_ROWS[:40]):
        item = review.create_item(db, question=row["messages"][0]["content"])
        review.approve(db, item.id, answer=f"Corrected answer {i}.", reviewer="ana")
        ids.append(item.id)
    result = build_dataset(db, settings, dry_run=True)
    in_train = {r["review_item_id"] for r in result.manifest["rows"]["train"] if r["source"] == "review"}
    assert in_train == set(ids) and result.counts["val"] > 0 and result.counts["test"] > 0


def test_the_system_prompt_is_trained_with(db, settings):
    prompted = with_settings(settings, chat__system_prompt="You are Haneul Mart's helper.")
    rows = split_rows(build_dataset(db, prompted, dry_run=True).files)["train"]
    assert all(r["messages"][0] == {"role": "system", "content": "You are Haneul Mart's helper."} for r in rows)


def test_importing_a_company_faq(db, settings, tmp_path):
    bad = tmp_path / "faq.csv"
    bad.write_text(
        'question,answer\nWhat are your hours?,"9 to 6,\nweekdays."\n,No question\nRefunds?,\n', encoding="utf-8"
    )
    with pytest.raises(ImportRejected) as info:
        import_base(db, settings, bad)
    assert [e.line for e in info.value.errors] == [4, 5]
    assert not (settings.data_dir / "base").exists() or not any((settings.data_dir / "base").iterdir())
    good = tmp_path / "company.csv"
    rows = ["question,answer"] + [f'"Question {i}?","Answer {i}, in full."' for i in range(12)]
    rows.insert(3, '"Multi-line?","First line.\nSecond line."')
    good.write_text("\n".join(rows) + "\n", encoding="utf-8")
    record = import_base(db, settings, good)
    assert record["rows"] == 13 and Path(record["path"]).parent == (settings.data_dir / "base").resolve()
    result = build_dataset(db, settings, dry_run=True)
    lineage = [r for split in result.manifest["rows"].values() for r in split]
    assert {r["file"] for r in lineage} == {result.manifest["inputs"]["base_file"]["path"]}
    lines = sorted(r["line"] for r in lineage)
    assert lines == [2, 3, 4, *range(6, 16)]  # the two-line record starts on line 4; the next one on line 6
    jsonl = write_jsonl(tmp_path / "chat.jsonl", FAQ_ROWS[:3] + [{"messages": [{"role": "user", "content": "q"}]}])
    with pytest.raises(ImportRejected, match="line 4: needs at least one assistant message"):
        import_base(db, settings, jsonl)


def test_cost_estimate():
    rows = estimate_costs(1_000_000, {"big": 25.0, "small": 5.0}, 3)
    assert rows == [
        {"model": "small", "usd_per_1m": 5.0, "epochs": 3, "billed_tokens": 3_000_000, "usd": 15.0},
        {"model": "big", "usd_per_1m": 25.0, "epochs": 3, "billed_tokens": 3_000_000, "usd": 75.0},
    ]


def test_cli_dry_run_build_list_and_preferences(db, settings, tmp_path):
    item = review.create_item(db, question=FEE_KO, evidence={"answers": [{"answer": FEE_KO_OLD, "up": 1, "down": 5}]})
    review.approve(db, item.id, answer=FEE_KO_NEW, reviewer="ana")
    env = {"TUNELOOP_PATHS__DATA_DIR": str(settings.data_dir), "TUNELOOP_DATABASE__URL": settings.database.url}
    runner = CliRunner()
    dry = runner.invoke(cli, ["dataset", "build", "--dry-run"], env=env)
    assert dry.exit_code == 0 and "would write v1" in dry.output and "replaced 1 base rows" in dry.output
    assert "gpt-4o-mini-2024-07-18" in dry.output and not settings.datasets_dir.exists()
    built = runner.invoke(cli, ["dataset", "build", "--json"], env=env)
    assert built.exit_code == 0 and json.loads(built.output)["version"] == 1
    listed = runner.invoke(cli, ["dataset", "list"], env=env)
    assert "next build starts from: data/faq.jsonl" in listed.output and "v1 " in listed.output
    out = tmp_path / "dpo.jsonl"
    assert runner.invoke(cli, ["dataset", "preferences", "--format", "trl", "-o", str(out)], env=env).exit_code == 0
    assert json.loads(out.read_text(encoding="utf-8")) == {
        "prompt": [{"role": "user", "content": FEE_KO}],
        "chosen": [{"role": "assistant", "content": FEE_KO_NEW}],
        "rejected": [{"role": "assistant", "content": FEE_KO_OLD}],
    }
    openai_rows = (settings.datasets_dir / "v1" / "preferences.jsonl").read_text(encoding="utf-8").splitlines()
    assert json.loads(openai_rows[0])["non_preferred_output"] == [{"role": "assistant", "content": FEE_KO_OLD}]


# --- rows as served: the knowledge block the gateway would send, in front of the same question --------


def _seeded(db, settings):
    ensure_seeded(db, settings.knowledge)
    return LiveIndex.over(db, settings.knowledge)


def test_each_row_also_comes_as_served_with_the_block_the_gateway_would_send(db, settings):
    _seeded(db, settings)
    fee = review.create_item(db, question=FEE_KO)
    review.approve(db, fee.id, answer=FEE_KO_NEW, reviewer="ana")  # its entry now says the new answer
    index = LiveIndex.over(db, settings.knowledge)
    result = build_dataset(db, with_settings(settings, dataset__val_fraction=0.1, dataset__test_fraction=0.1))
    by_split = split_rows(result.files)
    lineage = result.manifest["rows"]
    for name in ("train", "val"):
        twins = [(row, lin) for row, lin in zip(by_split[name], lineage[name], strict=True) if lin.get("view")]
        closed = [row for row, lin in zip(by_split[name], lineage[name], strict=True) if not lin.get("view")]
        assert len(twins) == len(closed) == result.manifest["as_served"]["rows"][name]  # every FAQ row is an entry
        for row, lin in twins:
            question = row["messages"][-2]["content"]
            grounded = ground(index, settings, question)
            assert row["messages"] == [*grounded.messages, row["messages"][-1]]  # exactly what users' prompts are
            assert lin["entries"] == [s.entry_id for s in grounded.sources]
            assert {"messages": row["messages"][1:]} in closed  # the twin of a closed-book row of this split
    assert all("view" not in lin for lin in lineage["test"])  # the evaluation asks the test split both ways
    fee_twin = next(
        row
        for row, lin in zip(by_split["train"], lineage["train"], strict=True)
        if lin.get("view") and lin["source"] == "review"
    )
    assert FEE_KO_NEW in fee_twin["messages"][0]["content"] and fee_twin["messages"][-1]["content"] == FEE_KO_NEW
    assert result.manifest["params"]["views"] == ["closed_book", "as_served"]
    assert result.manifest["params"]["knowledge_seq"] == index.seq
    assert result.counts["as_served"] == sum(result.manifest["as_served"]["rows"].values())


def test_no_twin_where_the_block_would_contradict_the_answer(db, settings):
    _seeded(db, settings)
    entry = entry_for_question(db, FEE_KO)
    update_entry(db, entry.id, answer="배송비는 무료입니다.", actor="ana", reason="policy change, not in the base file")
    result = build_dataset(db, settings)
    twins = [lin for lin in result.manifest["rows"]["train"] if lin.get("view")]
    assert result.manifest["as_served"]["skipped"] == {ANSWERS_DIFFER: 1}
    assert len(twins) == result.counts["train"] - len(twins) - 1
    assert not any(lin["line"] == 43 for lin in twins)  # the fee row trains closed book only


@pytest.mark.parametrize(
    "overrides, views",
    [
        ({"dataset__views": ["closed_book"]}, ["closed_book"]),
        ({"knowledge__enabled": False}, ["closed_book"]),
        ({"dataset__views": ["as_served"]}, ["as_served"]),
    ],
)
def test_the_views_written_follow_the_settings(db, settings, overrides, views):
    _seeded(db, settings)
    result = build_dataset(db, with_settings(settings, **overrides))
    train = result.manifest["rows"]["train"]
    assert result.manifest["params"]["views"] == views
    assert result.counts["train"] == len([r for r in FAQ_ROWS]) - result.counts["val"] - result.counts["test"]
    assert all(bool(lin.get("view")) == (views == ["as_served"]) for lin in train)


def test_an_empty_knowledge_base_gives_no_twins_and_says_why(db, settings):
    result = build_dataset(db, settings)
    assert result.counts["as_served"] == 0
    assert result.manifest["as_served"]["skipped"] == {NOT_IN_KNOWLEDGE: result.counts["train"] + result.counts["val"]}
