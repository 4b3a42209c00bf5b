"""The model registry: promote, canary, rollback, retire, reject — and a gateway that follows without a restart."""

from __future__ import annotations

import time

import pytest

from config.errors import Conflict, NotFound, ValidationFailed
from feedback.report import lifecycle
from feedback.versions import canary_versions, create_candidate, ensure_live_version, get_version, live_version
from trainer import registry

pytestmark = pytest.mark.engines  # the storage tests run on SQLite and on PostgreSQL


def _statuses(db) -> dict[str, str]:
    return dict(db.execute("SELECT name, status FROM model_versions").fetchall())


@pytest.fixture
def versions(db):
    """A live configured model and two trained candidates."""
    live = ensure_live_version(db, name="starter", provider="builtin")
    a = create_candidate(db, name="tuned-a", provider="local", base_model="starter", adapter_path="/x/a")
    b = create_candidate(db, name="tuned-b", provider="local", base_model="starter", adapter_path="/x/b")
    return live, a, b


def test_promote_retires_the_old_live_version_and_records_why(db, versions):
    starter, a, _ = versions
    promoted = registry.promote(db, a, "alice", "fixes refunds", evaluation_id=None)
    assert (promoted.status, promoted.traffic_weight) == ("live", 1.0)
    assert promoted.promoted_at is not None
    old = get_version(db, starter.id)
    assert old.status == "retired"
    assert db.execute("SELECT retired_at FROM model_versions WHERE id = ?", [starter.id]).fetchone()[0]
    (event,) = registry.events(db, a.id)
    assert (event.event, event.version_id, event.previous_live_id, event.actor, event.reason) == (
        "promoted",
        a.id,
        starter.id,
        "alice",
        "fixes refunds",
    )
    assert event.details["from_status"] == "candidate"


def test_exactly_one_version_is_live_through_every_move(db, versions):
    starter, a, b = versions
    for step in (
        lambda: registry.promote(db, a, "t"),
        lambda: registry.promote(db, b, "t"),
        lambda: registry.rollback(db, "t"),
        lambda: registry.promote(db, starter, "t"),
    ):
        step()
        (count,) = db.execute("SELECT COUNT(*) FROM model_versions WHERE status = 'live'").fetchone()
        assert count == 1
    with pytest.raises(Conflict, match="already live"):
        registry.promote(db, starter, "t")


def test_rollback_walks_back_through_promotions_and_does_not_toggle(db, versions):
    starter, a, b = versions
    registry.promote(db, a, "t")
    registry.promote(db, b, "t")
    restored, withdrawn = registry.rollback(db, "bob", "latency doubled")
    assert (restored.id, restored.status, withdrawn.id, withdrawn.status) == (a.id, "live", b.id, "retired")
    event = registry.events(db, a.id)[0]
    assert (event.event, event.version_id, event.previous_live_id, event.reason) == (
        "rolled_back",
        a.id,
        b.id,
        "latency doubled",
    )
    restored, withdrawn = registry.rollback(db, "bob")
    assert (restored.id, withdrawn.id) == (starter.id, a.id)
    assert _statuses(db) == {"starter": "live", "tuned-a": "retired", "tuned-b": "retired"}
    with pytest.raises(Conflict, match="nothing to roll back to"):
        registry.rollback(db, "bob")  # the configured model was never promoted from another version


def test_rollback_refuses_a_stale_expectation(db, versions):
    _, a, b = versions
    registry.promote(db, a, "t")
    registry.promote(db, b, "t")
    with pytest.raises(Conflict, match="changed meanwhile"):
        registry.rollback(db, "t", expected=b.id)
    assert live_version(db).id == b.id


def test_one_canary_with_a_weight_and_promoting_it(db, versions):
    starter, a, b = versions
    for weight in (0, 1, 1.5, -0.1):
        with pytest.raises(ValidationFailed):
            registry.set_canary(db, a, weight, "t")
    registry.set_canary(db, a, 0.2, "t")
    assert [(v.id, v.traffic_weight) for v in canary_versions(db)] == [(a.id, 0.2)]
    registry.set_canary(db, b, 0.1, "t", "try b instead")
    assert [(v.id, v.traffic_weight) for v in canary_versions(db)] == [(b.id, 0.1)]
    assert get_version(db, a.id).status == "candidate"  # the replaced canary goes back
    event = registry.events(db, b.id)[0]
    assert (event.event, event.details["weight"], event.details["replaced"]) == ("canary", 0.1, [a.id])
    live = registry.promote(db, b, "t")
    assert (live.status, live.traffic_weight, canary_versions(db)) == ("live", 1.0, [])
    assert get_version(db, starter.id).status == "retired"


def test_retire_and_reject_never_touch_the_live_version(db, versions):
    starter, a, b = versions
    with pytest.raises(Conflict, match="is live"):
        registry.retire(db, starter, "t")
    with pytest.raises(Conflict, match="only a candidate or canary"):
        registry.reject(db, starter, ["no"], "t")
    retired = registry.retire(db, a, "t", "superseded")
    assert retired.status == "retired"
    assert registry.retire(db, a, "t").status == "retired"  # idempotent: no second event
    assert [e.event for e in registry.events(db, a.id)] == ["retired"]
    rejected = registry.reject(db, b, ["golden: worse"], "gate")
    assert rejected.status == "rejected"
    assert registry.events(db, b.id)[0].details["reasons"] == ["golden: worse"]
    assert live_version(db).id == starter.id
    with pytest.raises(Conflict, match="rejected by the gate"):
        registry.promote(db, b, "t")
    assert registry.promote(db, b, "t", force=True).status == "live"


def test_resolve_by_id_name_or_live(db, versions):
    starter, a, _ = versions
    assert registry.resolve_version(db, "live").id == starter.id
    assert registry.resolve_version(db, "tuned-a").id == a.id
    assert registry.resolve_version(db, a.id).id == a.id
    with pytest.raises(NotFound):
        registry.resolve_version(db, "nope")


def test_the_gateway_follows_promotion_and_rollback_without_restart(make_gateway, gateway_db):
    client = make_gateway(**{"gateway.model_cache_s": 0}).test_client()
    assert client.post("/api/chat", json={"message": "hi"}).get_json()["model"] == "starter"
    tuned = create_candidate(gateway_db, name="tuned-v1", provider="local", base_model="starter")
    registry.promote(gateway_db, tuned, "t")
    body = client.post("/api/chat", json={"message": "hi"}).get_json()
    assert body["model"] == "tuned-v1"
    (version_id,) = gateway_db.execute(
        "SELECT model_version_id FROM messages WHERE id = ?", [body["message_id"]]
    ).fetchone()
    assert version_id == tuned.id
    registry.rollback(gateway_db, "t")
    assert client.post("/api/chat", json={"message": "hi"}).get_json()["model"] == "starter"


def test_a_promotion_reaches_every_gateway_within_a_second_by_default(make_gateway, gateway_db):
    """Two gateways on one store (two hosts), default settings: one second after a promotion written through a
    third connection, both answer with the promoted version (gateway.model_cache_s is at most 1 s by default)."""
    gateways = [make_gateway().test_client() for _ in range(2)]
    assert [g.post("/api/chat", json={"message": "hi"}).get_json()["model"] for g in gateways] == ["starter"] * 2
    tuned = create_candidate(gateway_db, name="tuned-v1", provider="local", base_model="starter")
    registry.promote(gateway_db, tuned, "t")
    time.sleep(1.0)  # the promise under test, not a measurement: each gateway's cached live version has expired
    served = [g.post("/api/chat", json={"message": "hi"}).get_json()["model"] for g in gateways]
    assert served == ["tuned-v1", "tuned-v1"]


def test_the_gateway_sends_a_canary_its_share_sticky_per_conversation(make_gateway, gateway_db):
    client = make_gateway(**{"gateway.model_cache_s": 0}).test_client()
    client.post("/api/chat", json={"message": "hi"})
    canary = create_candidate(gateway_db, name="tuned-c", provider="local", base_model="starter")
    registry.set_canary(gateway_db, canary, 0.5, "t")
    first = [client.post("/api/chat", json={"message": f"q{i}"}).get_json() for i in range(16)]
    assert {b["model"] for b in first} == {"starter", "tuned-c"}
    for body in first[:6]:
        again = client.post("/api/chat", json={"message": "and?", "conversation_id": body["conversation_id"]})
        assert again.get_json()["model"] == body["model"]


def test_the_weekly_report_reads_the_history(db, versions):
    starter, a, b = versions
    registry.promote(db, a, "alice", "fixes refunds")
    registry.set_canary(db, b, 0.1, "alice")
    registry.reject(db, b, ["golden: worse"], "gate")
    registry.rollback(db, "bob", "latency")
    events = lifecycle.promotion_events(db, "2000-01-01T00:00:00Z", "2999-01-01T00:00:00Z")["events"]
    lines = [f"{e['name']} {e['kind']} (now {e['status']})" for e in events]
    # One line per change; the dates on model_versions (promoted_at, retired_at) add nothing already said.
    assert lines == [
        "tuned-a promoted, replacing starter (now retired)",
        "tuned-b made a canary for 10% of conversations (now rejected)",
        "tuned-b rejected by the gate (now rejected)",
        "starter made live again by a rollback, replacing tuned-a (now live)",
    ]
    assert [(e.get("actor"), e.get("reason")) for e in events] == [
        ("alice", "fixes refunds"),
        ("alice", None),
        ("gate", "golden: worse"),
        ("bob", "latency"),
    ]
