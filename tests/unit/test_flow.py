"""The personalization dataflow, run with Bytewax in process against the generator's truth."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from functools import cache
from pathlib import Path

import orjson
from bytewax.testing import cluster_main, run_main

from attune.flows.embedded import LocalStore
from attune.flows.personalize import build_flow
from attune.flows.settings import Settings
from attune.operators.clustering import CLUSTER_FEATURES
from attune.operators.container import write_container
from attune.operators.events import Event, event_to_record
from attune.operators.schemas import EVENT
from attune.operators.sources import EventListSource, FileEventSource
from attune.workload.generator import Generated, GeneratorConfig, generate
from attune.workload.truth import GroundTruth
from tests.truth import cart_expectations, check_cart_triggers, profile_mismatches

NO_POLICIES = Path(__file__).resolve().parents[1] / "data" / "rules_without_policies.yaml"
#: The truth knows nothing of quiet hours, caps and cooldowns: turn them off here.
SETTINGS = Settings.from_env().replace(
    kafka_bootstrap="", redis_url="", trigger_rules_file=str(NO_POLICIES)
)


@cache
def generated() -> tuple[tuple[Event, ...], Generated]:
    g = generate(GeneratorConfig(users=300, days=5, seed=3))
    return tuple(g.events), g


def run_flow(workers: int = 1) -> LocalStore:
    events, g = generated()

    def make() -> Iterator[Event]:
        return iter(events)

    store = LocalStore()
    source = EventListSource(make, allowed_lateness_ms=SETTINGS.allowed_lateness_s * 1000)
    flow = build_flow(SETTINGS, source=source, sinks=store.sinks("m"), items=g.items)
    if workers == 1:
        run_main(flow)
    else:
        cluster_main(flow, [], 0, worker_count_per_proc=workers)
    return store


def assert_profiles_match_truth(store: LocalStore, truth: GroundTruth) -> None:
    assert len(truth.exact_users()) > 200
    assert profile_mismatches(store.profiles.get, truth) == {}


def test_profiles_equal_the_ground_truth_exactly() -> None:
    _, g = generated()
    store = run_flow()
    assert_profiles_match_truth(store, g.truth)
    # too-late events are dead-lettered (class LATE), every one and nothing else
    assert dict(store.dead_letters) == {"LATE": len(g.truth.too_late_event_ids)}
    # anonymous ids that identified are merged, and no profile is left under them; the
    # alias serves personalization: none is left for users who denied or withdrew it, or
    # asked for erasure (docs/privacy.md)
    identified = [u for u in g.truth.users.values() if u.identity == "identified"]
    personal = [u for u in identified if u.final_consent["personalization"] and not u.erasure_ms]
    assert personal and len(personal) < len(identified)
    for u in identified:
        for anon in u.anonymous_ids:
            expected = u.user if u in personal else None
            assert store.aliases.get(anon) == expected, (u.user, u.final_consent)
            assert anon not in store.profiles


def rule_segments(store: LocalStore) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """Segments without personas: persona assignments come from an online model whose
    state depends on the order vectors reach the one learner (docs/architecture.md)."""
    users = {
        u: {s for s in segs if not s.startswith("persona_")} for u, segs in store.segments.items()
    }
    audiences = {a: m for a, m in store.audiences.items() if not a.startswith("persona_")}
    return users, audiences


#: Profile fields scored by the shared propensity model: they depend on which snapshot the
#: user's step had read when its batch ran, which differs between runs (docs/models.md).
MODEL_FIELDS = ("propensity_score", "propensity_tier")


def profiles_without_models(store: LocalStore) -> dict[str, dict[str, str]]:
    return {
        u: {k: v for k, v in p.items() if k not in MODEL_FIELDS} for u, p in store.profiles.items()
    }


def test_two_workers_give_the_same_results_as_one() -> None:
    one = run_flow(1)
    two = run_flow(2)
    assert profiles_without_models(two) == profiles_without_models(one)
    # recommendations (ranked with whichever snapshot was current) exist for the same users
    assert set(two.recs) == set(one.recs) and one.recs
    assert rule_segments(two) == rule_segments(one)
    assert two.aliases == one.aliases
    assert two.dead_letters == one.dead_letters


def test_every_active_user_gets_a_persona_with_a_summary() -> None:
    """Once cluster parameters are published, each user's next batch assigns a persona."""
    events, g = generated()
    store = LocalStore()
    sinks = store.sinks("attune:model:clusters")
    src = EventListSource(lambda: iter(events), allowed_lateness_ms=600_000)
    run_main(build_flow(SETTINGS, source=src, sinks=sinks, items=g.items))
    params = store.board.get()
    assert params is not None and params.ready
    assert len(params.personas) == SETTINGS.cluster_k
    for persona in params.personas:
        assert len(persona.distinguishing) == 3
        assert all(name in CLUSTER_FEATURES for name, _ in persona.distinguishing)
        assert persona.label and set(persona.centroid) == set(CLUSTER_FEATURES)
    # Replay with the published model in place: every active user is assigned.
    again = LocalStore()
    again.board.put(params)
    sinks = again.sinks("attune:model:clusters")
    src = EventListSource(lambda: iter(events), allowed_lateness_ms=600_000)
    run_main(build_flow(SETTINGS, source=src, sinks=sinks, items=g.items))
    for user in again.profiles:
        personas = [s for s in again.segments.get(user, ()) if s.startswith("persona_")]
        assert len(personas) == 1, (user, personas)


def test_a_corrupt_file_gives_dead_letters_and_the_flow_goes_on(tmp_path: Path) -> None:
    events, g = generated()
    path = tmp_path / "events.avro"
    with path.open("wb") as fh:
        write_container(fh, EVENT, (event_to_record(e) for e in events[:3000]), b"k" * 16, "null")
    raw = bytearray(path.read_bytes())
    target = events[1000].event_id.encode()
    at = raw.index(target) + len(target)
    raw[at] = 0x7E  # the EventType enum index of record 1000: out of range
    path.write_bytes(bytes(raw))

    store = LocalStore()
    source = FileEventSource(path, allowed_lateness_ms=SETTINGS.allowed_lateness_s * 1000)
    run_main(build_flow(SETTINGS, source=source, sinks=store.sinks("m"), items=g.items))
    assert store.dead_letters["INVALID_ENUM"] == 1
    assert any("record 1000" in r for r in store.dead_examples)
    assert store.events_applied() > 2000  # records before and after the broken block


def test_cart_abandoned_triggers_against_the_ground_truth() -> None:
    """Users who are not anonymous: exactly the truth's abandonments fire, each once with
    its exact lines and value (anonymous-era carts handed over at login included), none
    for a converted cart, and carts of users who never send another event fire too (at
    end of input); with one worker and with two."""
    _, g = generated()
    exp = cart_expectations(g.truth)
    for workers in (1, 2):
        store = run_flow(workers)
        mine = [t for t in store.triggers if t.kind == "cart_abandoned" and t.user_id in exp.users]
        fired = {(t.user_id, t.cause_event_time): t for t in mine}
        assert len(fired) == len(mine)  # no duplicates
        check_cart_triggers(fired, exp)


def test_shipped_trigger_rules_shape_what_goes_out() -> None:
    """The shipped rules: high-value carts get the 10%-off offer, other carts a reminder;
    their quiet hours, caps and cooldowns only ever hold triggers back."""
    events, g = generated()
    store = LocalStore()
    shipped = SETTINGS.replace(trigger_rules_file="")
    src = EventListSource(lambda: iter(events), allowed_lateness_ms=600_000)
    run_main(build_flow(shipped, source=src, sinks=store.sinks("m"), items=g.items))
    carts = [t for t in store.triggers if t.kind == "cart_abandoned"]
    assert carts
    for t in carts:
        rule = t.attributes["rule"]
        assert rule in {"high_value_cart_offer", "cart_reminder"}
        if rule == "high_value_cart_offer":
            assert t.attributes["offer_code"] == "TENOFF"
        else:
            assert t.attributes["template_id"] == "cart_reminder"
    assert any(t.attributes["rule"] == "high_value_cart_offer" for t in carts)
    unrestricted = run_flow()
    free = {
        (t.user_id, t.cause_event_time) for t in unrestricted.triggers if t.kind == "cart_abandoned"
    }
    held = {(t.user_id, t.cause_event_time) for t in carts}
    assert held < free  # quiet hours, caps and cooldowns held some back, added none


def test_the_flow_writes_recommendations_models_and_trending() -> None:
    """Users who viewed products get a list (parsed by the client's contract), ranked with
    the published models; the learner publishes its snapshot, trending and metrics."""
    from attune.clients.recommendations import parse_recs
    from attune.operators.models import ModelSnapshot
    from attune.operators.ranking import REASONS

    _, g = generated()
    store = run_flow()
    viewers = {u for u, p in store.profiles.items() if int(p["product_views"] or 0) > 0}
    assert viewers and set(store.recs) == viewers
    snap = ModelSnapshot.from_bytes(store.models["attune:model:recs"])
    assert snap.sessions > 500 and snap.embeddings is not None and snap.propensity is not None
    metrics = orjson.loads(store.models["attune:model:propensity"])
    assert metrics["sessions"] == snap.sessions and metrics["auc"] > 0.6
    stored = [parse_recs(v) for v in store.recs.values()]
    assert all(len(s.items) == SETTINGS.recs_k for s in stored)
    assert {s.source for s in stored} == {"personalized"}
    reasons = {r.reason for s in stored for r in s.items}
    assert reasons <= {*REASONS.values(), "trending-in-segment"}
    assert "viewed-together" in reasons  # the shared co-visitation lists took part
    # lists were ranked with the snapshots current at the time (the last one comes at the
    # end of input, after every user's last batch)
    versions = {int(s.model_version.split("-")[0][1:]) for s in stored}
    assert len(versions) > 1 and max(versions) < snap.version
    catalogue = {i.item_id for i in g.items}
    assert all(r.item in catalogue for s in stored for r in s.items)
    assert len(store.trending["global"]) > 100
    scored = [p for p in store.profiles.values() if p["propensity_tier"]]
    assert scored and {p["propensity_tier"] for p in scored} <= {"high", "medium", "low"}


def test_one_client_clock_days_ahead_does_not_dead_letter_the_stream() -> None:
    """A phone whose clock runs three days ahead sends one event early in the stream:
    it is applied to its own user, and everyone else's events still equal the truth."""
    events, g = generated()
    early = events[100]
    ahead = replace(
        early,
        event_id="clock-ahead-1",
        event_time=early.event_time + 3 * 24 * 3_600_000,
        user_id="wrong-clock-user",
        anonymous_id=None,
    )
    skewed = (*events[:101], ahead, *events[101:])

    store = LocalStore()
    source = EventListSource(
        lambda: iter(skewed), allowed_lateness_ms=SETTINGS.allowed_lateness_s * 1000
    )
    run_main(build_flow(SETTINGS, source=source, sinks=store.sinks("m"), items=g.items))

    assert dict(store.dead_letters) == {"LATE": len(g.truth.too_late_event_ids)}
    assert_profiles_match_truth(store, g.truth)
    assert "wrong-clock-user" in store.profiles
