"""The online models wired into the per-user step and the one learner (operators/models.py)."""

from __future__ import annotations

import itertools
import math
import pickle
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attune.clients.recommendations import parse_recs
from attune.flows.personalize import recs_config
from attune.flows.settings import Settings
from attune.operators import scoring
from attune.operators.clock import MINUTE_MS, FixedClock
from attune.operators.content import Catalogue
from attune.operators.covisit import NeighbourList
from attune.operators.events import (
    AddToCart,
    ConsentUpdate,
    ErasureConfirmation,
    ErasureRequest,
    Event,
    EventType,
    ItemUpdate,
    LineItem,
    PageView,
    ProductView,
    Purchase,
    RemoveFromCart,
    Trigger,
)
from attune.operators.models import (
    MAX_PURCHASED,
    MAX_SESSION_TOUCHES,
    LocalModelBoard,
    ModelLearner,
    ModelLearnerLogic,
    ModelReader,
    ModelSnapshot,
    PublishModels,
    RedisModelBoard,
    SessionSummary,
    SessionTouch,
    UserModels,
    catalogue_of,
    resolve_recs,
)
from attune.operators.propensity import FEATURES as PROPENSITY_FEATURES
from attune.operators.ranking import MAX_RECENT, REASONS
from attune.operators.redis_sink import ForgetUser, RecsWrite, TrendingWrite, plan
from attune.operators.trending import logaddexp2
from attune.operators.triggers import trigger_id
from attune.operators.user_config import ProfileConfig
from attune.operators.user_logic import IDLE_FREEZE, UserLogic
from attune.operators.user_state import UserState
from attune.operators.user_step import apply

T0 = 1_767_571_200_000
GAP = 30 * MINUTE_MS
_ids = itertools.count()
CATEGORIES = ("home/kitchen", "sports/running", "books/fiction")


def items() -> list[ItemUpdate]:
    return [
        ItemUpdate(
            f"i{n:03}",
            f"item {n}",
            tuple(CATEGORIES[n % 3].split("/")),
            1000 + 10 * n,
            "EUR",
            True,
            0,
            0,
        )
        for n in range(60)
    ]


def ev(t: int, payload: Any = None, user: str = "u1") -> Event:
    payload = payload or PageView()
    etype = {
        PageView: EventType.PAGE_VIEW,
        ProductView: EventType.PRODUCT_VIEW,
        AddToCart: EventType.ADD_TO_CART,
        RemoveFromCart: EventType.REMOVE_FROM_CART,
        Purchase: EventType.PURCHASE,
        ConsentUpdate: EventType.CONSENT,
    }[type(payload)]
    return Event(f"e{next(_ids)}", etype, t, payload, user_id=user)


def view(t: int, n: int) -> Event:
    return ev(t, ProductView(f"i{n:03}", CATEGORIES[n % 3], 1000 + 10 * n, "EUR"))


def FixedPipeline(p: float) -> dict[str, Any]:  # noqa: N802 - reads as the model it stands for
    """Propensity parameters (PropensityModel.publish's shape) that score ``p`` for anyone."""
    return {"version": 1, "mean": {}, "std": {}, "weights": {}, "intercept": math.log(p / (1 - p))}


def snapshot(version: int = 1, propensity: Any = None) -> ModelSnapshot:
    return ModelSnapshot(version, T0, 10, None, {}, {"i000": 3.0, "i001": 2.0}, {}, propensity, {})


def config(board: LocalModelBoard | None = None, **kw: Any) -> ProfileConfig:
    board = board or LocalModelBoard()
    return ProfileConfig(models=ModelReader(board, catalogue_of(items())), **kw)


def run(logic: UserLogic, events: list[Event]) -> list[Any]:
    """One batch of the step, its recommendation requests ranked as the flow ranks them
    after the step (:func:`resolve_recs`)."""
    out, _ = logic.on_batch([("u1", e) for e in events])
    return resolve_recs(list(out))


# --- per-user state ---------------------------------------------------------------------------


def test_user_models_stay_bounded_and_recent_is_in_event_time_order() -> None:
    m = UserModels()
    for n in range(MAX_RECENT + 40):
        m.observe(view(T0 + 1000 * ((n * 7) % 97), n % 60), current=True)  # shuffled times
    times = [i.time_ms for i in m.recent]
    assert len(m.recent) == MAX_RECENT and times == sorted(times)
    for n in range(MAX_SESSION_TOUCHES + 5):
        m.observe(view(T0 + n, 1), current=True)
    assert len(m.touches) == MAX_SESSION_TOUCHES
    lines = tuple(LineItem(f"p{n}", 1, 100) for n in range(MAX_PURCHASED + 10))
    m.observe(ev(T0, Purchase("o1", lines, 100, "EUR")), current=True)
    assert len(m.purchased) == MAX_PURCHASED and "p0" not in m.purchased
    old = UserModels()
    old.observe(view(T0, 1), current=False)  # an older session's event: not in this session
    assert old.touches == [] and len(old.recent) == 1


def test_one_summary_per_closed_session_with_decision_point_features() -> None:
    cfg = config()
    st = UserState(user_id="u1")
    session = [
        view(T0, 1),
        view(T0 + MINUTE_MS, 2),
        ev(T0 + 2 * MINUTE_MS, AddToCart("i002", 2, 1020, "EUR", "sports/running")),
        ev(T0 + 3 * MINUTE_MS, PageView("CHECKOUT")),  # the decision point: before this
        ev(T0 + 4 * MINUTE_MS, Purchase("o1", (LineItem("i002", 2, 1020),), 2040, "EUR")),
    ]
    outs = [o for e in session for o in apply(st, e, cfg)]
    assert not [o for o in outs if isinstance(o, SessionSummary)]  # the session is open
    nxt = apply(st, view(T0 + 4 * MINUTE_MS + GAP + 1, 3), cfg)
    (summary,) = [o for o in nxt if isinstance(o, SessionSummary)]
    assert summary.user == "u1" and summary.purchased
    assert (summary.start_ms, summary.end_ms) == (T0, T0 + 4 * MINUTE_MS)
    assert summary.items() == ["i001", "i002"]
    assert [t.kind for t in summary.touches] == ["view", "view", "cart", "purchase"]
    assert summary.orders == ((T0 + 4 * MINUTE_MS, ("i002",)),)
    assert set(summary.features) == set(PROPENSITY_FEATURES)
    # features as they were before the checkout page: 3 events, a cart, no order yet
    assert summary.features["session_events"] == 3
    assert summary.features["cart_lines"] == 1 and summary.features["purchases"] == 0
    # the new session starts empty; the next boundary summarises it alone
    out = apply(st, view(T0 + 4 * MINUTE_MS + 3 * GAP, 4), cfg)
    (second,) = [o for o in out if isinstance(o, SessionSummary)]
    assert second.items() == ["i003"] and not second.purchased and second.orders == ()
    assert st.models.summaries == 2


def test_no_summary_without_analytics_consent_or_without_models() -> None:
    cfg = config()
    st = UserState(user_id="u1")
    apply(st, ev(T0, ConsentUpdate(analytics=False)), cfg)
    apply(st, view(T0 + 1, 1), cfg)
    out = apply(st, view(T0 + 2 * GAP, 2), cfg)
    assert not [o for o in out if isinstance(o, SessionSummary)]
    assert st.models.touches == [SessionTouch("i002", T0 + 2 * GAP, "view", 1, CATEGORIES[2])]
    plain = UserState(user_id="u1")
    apply(plain, view(T0, 1), ProfileConfig())
    out = apply(plain, view(T0 + 2 * GAP, 2), ProfileConfig())
    assert not [o for o in out if isinstance(o, SessionSummary)] and plain.models.recent == []


def test_end_of_input_summarises_the_open_session_once() -> None:
    logic = UserLogic(None, config())
    run(logic, [view(T0, 1), view(T0 + MINUTE_MS, 2)])
    out, _ = logic.on_eof()
    (summary,) = [o for o in out if isinstance(o, SessionSummary)]
    assert summary.items() == ["i001", "i002"]
    out, _ = logic.on_eof()
    assert not [o for o in out if isinstance(o, SessionSummary)]


# --- recommendations, once per batch ----------------------------------------------------------


def test_one_recommendation_write_per_batch_with_a_relevant_event() -> None:
    board = LocalModelBoard()
    board.put(snapshot(version=4).to_bytes())
    logic = UserLogic(None, config(board))
    out = run(logic, [view(T0 + n * 1000, n) for n in range(5)])
    (write,) = [o for o in out if isinstance(o, RecsWrite)]
    stored = parse_recs(write.value)
    assert write.user == "u1" and stored.source == "personalized"
    assert stored.model_version.startswith("m4-") and len(stored.items) == 10
    assert not {f"i{n:03}" for n in range(5)} & {r.item for r in stored.items}  # seen
    assert {r.reason for r in stored.items} <= {*REASONS.values(), "trending-in-segment"}
    # a batch with no product view, cart change or purchase writes no recommendations
    assert not [o for o in run(logic, [ev(T0 + 10_000)]) if isinstance(o, RecsWrite)]
    # a cart removal does (the cart is a filter)
    removal = ev(T0 + 11_000, RemoveFromCart("i001", 1))
    assert [o for o in run(logic, [removal]) if isinstance(o, RecsWrite)]


def test_a_list_at_most_once_per_gap_and_what_changed_meanwhile_later() -> None:
    board = LocalModelBoard()
    board.put(snapshot(version=4).to_bytes())
    wall = FixedClock(T0)
    gap = recs_config(Settings(recs_min_gap_s=30))
    logic = UserLogic(None, config(board, recs=gap, clock=wall))

    def lists(out: list[Any]) -> list[RecsWrite]:
        return [o for o in out if isinstance(o, RecsWrite)]

    assert len(lists(run(logic, [view(T0, 0)]))) == 1  # the first list: at once
    assert lists(run(logic, [view(T0 + 10_000, 1)])) == []  # within 30 s: held back
    assert lists(run(logic, [view(T0 + 20_000, 2)])) == []
    # past the gap, the next batch ranks what changed meanwhile (i001, i002 now seen)
    (later,) = lists(run(logic, [ev(T0 + 31_000)]))  # even without a product view
    assert not {"i000", "i001", "i002"} & {r.item for r in parse_recs(later.value).items}
    # a cart change goes out at once, gap or not
    assert len(lists(run(logic, [ev(T0 + 32_000, AddToCart("i005", 1, 100, "EUR"))]))) == 1
    # held back, then the user goes idle: the wrapper's idle timer sends it
    assert lists(run(logic, [view(T0 + 40_000, 3)])) == []
    wall.advance(int(IDLE_FREEZE.total_seconds() * 1000))
    out, _ = logic.on_notify()
    assert len(lists(resolve_recs(list(out)))) == 1
    # held back at the end of a bounded input: sent then
    assert lists(run(logic, [view(T0 + 50_000, 4)])) == []  # 10 s after the idle one
    assert lists(run(logic, [view(T0 + 60_000, 5)])) == []
    out, _ = logic.on_eof()
    assert len(lists(resolve_recs(list(out)))) == 1


def test_a_held_list_is_the_same_whether_the_idle_timer_sent_it_or_the_next_batch() -> None:
    """What is written is decided by event time: a list the gap held back goes out before
    the user's next batch a minute or more of event time later (ranked on the state as it
    was), exactly as the wall-clock idle timer would have sent it before that batch."""

    def written(idle_timer_fires: bool) -> list[tuple[str, ...]]:
        board = LocalModelBoard()
        board.put(snapshot(version=4).to_bytes())
        wall = FixedClock(T0)
        logic = UserLogic(
            None, config(board, recs=recs_config(Settings(recs_min_gap_s=30)), clock=wall)
        )
        out = run(logic, [view(T0, 0)])
        out += run(logic, [view(T0 + 10_000, 1)])  # held back by the gap
        if idle_timer_fires:
            wall.advance(int(IDLE_FREEZE.total_seconds() * 1000))
            out += resolve_recs(list(logic.on_notify()[0]))
        out += run(logic, [view(T0 + 10_000 + scoring.RECS_IDLE_MS, 2)])
        out += resolve_recs(list(logic.on_eof()[0]))
        return [
            tuple(r.item for r in parse_recs(o.value).items)
            for o in out
            if isinstance(o, RecsWrite)
        ]

    by_timer, by_batch = written(True), written(False)
    assert by_timer == by_batch and len(by_batch) == 3
    held, latest = by_batch[1], by_batch[2]  # i001 seen in the held one, i002 in the latest
    assert not {"i000", "i001"} & set(held) and not {"i000", "i001", "i002"} & set(latest)


def test_recommendations_favour_the_viewed_category_and_respect_filters() -> None:
    logic = UserLogic(None, config(recs=recs_config(Settings(recs_k=6))))
    out = run(logic, [view(T0 + n * 1000, n) for n in (0, 3, 6, 9)])  # all home/kitchen
    (write,) = [o for o in out if isinstance(o, RecsWrite)]
    recs = parse_recs(write.value).items  # the stored list, read as the client reads it
    assert len(recs) == 6 and all(r.category == "home/kitchen" for r in recs)
    denied = recs_config(Settings(recs_deny_categories="home"))
    logic = UserLogic(None, config(recs=denied))
    (write,) = [o for o in run(logic, [view(T0, 0)]) if isinstance(o, RecsWrite)]
    assert all(not (r.category or "").startswith("home") for r in parse_recs(write.value).items)


def test_recs_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="ATTUNE_RECS_K"):
        recs_config(Settings(recs_k=0))
    with pytest.raises(ValueError, match="both ATTUNE_RECS_ALLOW_CATEGORIES"):
        recs_config(Settings(recs_allow_categories="home, books", recs_deny_categories="books/"))
    cfg = recs_config(Settings(recs_allow_categories=" home/ ,books"))
    assert cfg.filters.allow_categories == ("home", "books")


def test_recs_writes_coalesce_per_user_and_forget_drops_them() -> None:
    commands = plan([RecsWrite("u1", b"a"), RecsWrite("u2", b"x"), RecsWrite("u1", b"b")], ttl_s=9)
    assert [c for c in commands if c[0] == "HSET"] == [
        ("HSET", "attune:{u:u1}", "R", b"1b"),  # the R field of the user's hash (redis_keys)
        ("HSET", "attune:{u:u2}", "R", b"1x"),
    ]
    commands = plan([RecsWrite("u1", b"a"), ForgetUser("u1")], ttl_s=9)
    # the DEL of the user's keys, then the HDEL of the id from the alias buckets
    assert [c[0] for c in commands] == ["DEL", "HDEL", "HDEL"] and "attune:{u:u1}" in commands[0]


def test_trending_writes_fold_per_scope_and_trim() -> None:
    ops = [
        TrendingWrite("global", (("a", 1.5), ("b", 2.0)), keep=3),
        TrendingWrite("category:x", (("a", 1.5),), keep=3),
        TrendingWrite("global", (("a", 4.25),), keep=3),
    ]
    assert plan(ops, ttl_s=60, audience_ttl_s=7) == [
        ("ZADD", "attune:trending:global", "4.25", "a", "2.0", "b"),
        ("ZREMRANGEBYRANK", "attune:trending:global", 0, -4),
        ("EXPIRE", "attune:trending:global", 7),
        ("ZADD", "attune:trending:category:x", "1.5", "a"),
        ("ZREMRANGEBYRANK", "attune:trending:category:x", 0, -4),
        ("EXPIRE", "attune:trending:category:x", 7),
    ]


# --- propensity in the profile, high_propensity ------------------------------------------------


def test_propensity_score_and_tier_in_the_profile_and_one_trigger_per_session() -> None:
    board = LocalModelBoard()
    board.put(snapshot(propensity=FixedPipeline(0.25)).to_bytes())
    logic = UserLogic(None, config(board))
    out = run(logic, [ev(T0, ConsentUpdate(marketing=True)), view(T0 + 1, 1)])
    profile = [o for o in out if type(o).__name__ == "ProfileWrite"][-1]
    assert profile.fields["propensity_score"] == "0.25"
    assert profile.fields["propensity_tier"] == "medium"
    assert not [o for o in out if isinstance(o, Trigger)]

    board.put(snapshot(version=2, propensity=FixedPipeline(0.8)).to_bytes())
    out = run(logic, [view(T0 + 2, 2)])
    (trigger,) = [o for o in out if isinstance(o, Trigger)]
    assert trigger.kind == "high_propensity" and trigger.scores == {"propensity": 0.8}
    assert trigger.trigger_id == trigger_id("high_propensity", "u1", T0)
    assert "high" in trigger.reason
    profile = [o for o in out if type(o).__name__ == "ProfileWrite"][-1]
    assert profile.fields["propensity_tier"] == "high"
    # the same session: no second trigger; a new session: one more
    assert not [o for o in run(logic, [view(T0 + 3, 3)]) if isinstance(o, Trigger)]
    out = run(logic, [view(T0 + 3 + 2 * GAP, 4)])
    (again,) = [o for o in out if isinstance(o, Trigger)]
    assert again.trigger_id == trigger_id("high_propensity", "u1", T0 + 3 + 2 * GAP)


def test_no_high_propensity_trigger_without_marketing_consent() -> None:
    board = LocalModelBoard()
    board.put(snapshot(propensity=FixedPipeline(0.9)).to_bytes())
    logic = UserLogic(None, config(board))
    out = run(logic, [view(T0, 1)])  # marketing is opt-in by default
    assert not [o for o in out if isinstance(o, Trigger)]
    profile = [o for o in out if type(o).__name__ == "ProfileWrite"][-1]
    assert profile.fields["propensity_tier"] == "high"  # scored all the same


def test_without_a_published_model_there_is_no_score() -> None:
    logic = UserLogic(None, config())
    out = run(logic, [view(T0, 1)])
    profile = [o for o in out if type(o).__name__ == "ProfileWrite"][-1]
    assert profile.fields["propensity_score"] == "" and profile.fields["propensity_tier"] == ""
    (write,) = [o for o in out if isinstance(o, RecsWrite)]
    assert parse_recs(write.value).model_version.startswith("m0-")


# --- the one learner -------------------------------------------------------------------------


def summary(n: int, bought: bool = False) -> SessionSummary:
    t = T0 + n * 3_600_000
    touches = (
        SessionTouch(f"i{n % 5:03}", t, "view"),
        SessionTouch(f"i{(n + 1) % 5:03}", t + 1000, "view"),
        SessionTouch(f"i{(n + 1) % 5:03}", t + 2000, "cart"),
    )
    return SessionSummary(
        f"u{n}",
        t,
        t + 2000,
        touches,
        ((t + 3000, (f"i{(n + 1) % 5:03}",)),) if bought else (),
        {"cart_lines": 1, "session_add_to_carts": 1 if bought else 0},
        bought,
        ("vip",) if n % 2 else (),
    )


def test_learner_publishes_every_n_summaries_and_at_end_of_input() -> None:
    cats = {f"i{n:03}": CATEGORIES[n % 3] for n in range(5)}
    logic = ModelLearnerLogic(None, cats, publish_every=3)
    out, _ = logic.on_batch([summary(0), summary(1, True)])
    assert list(out) == []
    out, _ = logic.on_batch([summary(2)])
    (pub,) = list(out)
    assert isinstance(pub, PublishModels) and pub.version == 1
    snap = ModelSnapshot.from_bytes(pub.snapshot)
    assert snap.version == 1 and snap.sessions == 3 and snap.embeddings is not None
    assert set(snap.trending) == {"i000", "i001", "i002", "i003"}
    assert {w.scope for w in pub.trending} >= {"global", "category:home", "segment:vip"}
    assert orjson.loads(pub.metrics)["sessions"] == 3
    viewed_with_1 = [n for n, _ in snap.covisit["i001"].viewed]
    assert set(viewed_with_1) == {"i000", "i002"}
    # resumed from its snapshot, the learner goes on where it was
    resumed = ModelLearnerLogic(logic.snapshot(), cats, publish_every=3)
    resumed.on_batch([summary(3)])
    out, _ = resumed.on_eof()
    (last,) = list(out)
    assert last.version == 2 and ModelSnapshot.from_bytes(last.snapshot).sessions == 4
    # lists of items the new session did not touch are published again unchanged
    lists = ModelSnapshot.from_bytes(last.snapshot).covisit
    assert set(lists) >= set(snap.covisit) and lists["i001"] == snap.covisit["i001"]
    # only what changed since the last publication: the two items of the new session
    (glob,) = [w for w in last.trending if w.scope == "global"]
    assert {m for m, _ in glob.members} == {"i003", "i004"}
    out, _ = resumed.on_eof()
    assert list(out) == []  # nothing new: nothing published


def test_learner_snapshots_encoded_incrementally_equal_a_fresh_encoding() -> None:
    learner = ModelLearner({f"i{n:03}": CATEGORIES[n % 3] for n in range(5)})
    published: dict[str, NeighbourList] = {}
    for step in range(4):
        for n in range(step * 3, step * 3 + 2 + step):
            learner.learn(summary(n, bought=n % 3 == 0))
        at = T0 + step * 3_600_000
        changed = list(learner.covisit_changed)
        snap = ModelSnapshot.from_bytes(learner.publish(now_ms=at).snapshot)
        for item in changed:  # republished as the item's state says now; the others kept
            published[item] = learner.covisit.states[item].publish(at, 30)
        assert snap.covisit == published
        again = ModelSnapshot.from_bytes(snap.to_bytes())
        assert replace(again, embeddings=None) == replace(snap, embeddings=None)
        assert snap.trending == {i: t.score for i, t in learner.trends.items()}
        assert snap.segment_trending == {
            "vip": {i: t.segments["vip"] for i, t in learner.trends.items() if "vip" in t.segments}
        }


def test_encoder_put_state_writes_the_bytes_of_put_of_the_published_lists() -> None:
    from attune.operators.covisit import BOUGHT, VIEWED, ItemNeighbours
    from attune.operators.models import SnapshotEncoder

    state = ItemNeighbours("a")
    for n in range(80):  # more neighbours than listed; ties; both kinds
        state.update(f"v{n % 37}", VIEWED, T0 + n * 60_000, 1.0 + (n % 3))
        if n % 4 == 0:
            state.update(f"b{n % 5}", BOUGHT, T0 + n * 60_000)
    empty = ItemNeighbours("e")
    only_viewed = ItemNeighbours("o")
    only_viewed.update("x", VIEWED, T0)
    for nb in (state, empty, only_viewed):
        for at in (T0, T0 + 3 * 86_400_000):
            fast, slow = SnapshotEncoder(), SnapshotEncoder()
            fast.code(["zz"])  # codes already in the table are reused, new ones appended
            slow.code(["zz"])
            fast.put_state(nb.item, nb, at, 30)
            slow.put(nb.item, nb.publish(at, 30))
            assert fast.lists == slow.lists and fast.table == slow.table


def test_encoder_put_states_writes_the_bytes_of_put_state_of_each() -> None:
    from attune.operators.covisit import BOUGHT, VIEWED, ItemNeighbours
    from attune.operators.models import SnapshotEncoder

    states = []
    for k in range(6):  # more neighbours than listed, ties, one kind only, none at all
        st = ItemNeighbours(f"s{k}")
        for n in range(k * 17):
            st.update(f"v{(n * 7 + k) % 41}", VIEWED, T0 + n * 60_000, 1.0 + (n % 3))
            if k % 2 and n % 3 == 0:
                st.update(f"b{n % 9}", BOUGHT, T0 + n * 90_000)
        states.append(st)
    states.append(ItemNeighbours("never"))
    for at in (T0, T0 + 3 * 86_400_000):
        for n in (30, 5):
            bulk, one = SnapshotEncoder(), SnapshotEncoder()
            for enc in (bulk, one):
                enc.code(["zz", "v3"])  # codes already in the table are reused
                enc.put_state("s1", states[1], T0, n)  # an item listed before: replaced
            bulk.put_states(states, at, n)
            for st in states:
                one.put_state(st.item, st, at, n)
            assert bulk.lists == one.lists
            assert list(bulk.lists) == list(one.lists) and bulk.table == one.table
    empty = SnapshotEncoder()
    empty.put_states([], T0, 30)
    assert empty.lists == {} and empty.table == []
    bulk, one = SnapshotEncoder(), SnapshotEncoder()
    bulk.put_states([states[0], states[-1]], T0, 30)  # no weights at all
    for st in (states[0], states[-1]):
        one.put_state(st.item, st, T0, 30)
    assert bulk.lists == one.lists and bulk.table == one.table


def test_a_pickled_learner_keeps_every_state_in_order_and_publishes_the_same() -> None:
    learner = ModelLearner({"i000": "home/kitchen"}, seed=5)
    for n in range(12):
        learner.learn(summary(n, bought=n % 3 == 0))
        if n % 5 == 4:
            learner.publish()
    data = pickle.dumps(learner)
    again = pickle.loads(data)
    for item, nb in learner.covisit.states.items():  # dict order breaks ties: kept
        other = again.covisit.states[item]
        assert (other.item, other.t0, other.updates) == (nb.item, nb.t0, nb.updates)
        assert [list(w.items()) for w in other.weights.values()] == [
            list(w.items()) for w in nb.weights.values()
        ]
    assert list(again.trends) == list(learner.trends)
    for item, t in learner.trends.items():
        o = again.trends[item]
        assert (o.item, o.category, o.score, o.half_life_ms) == (
            t.item,
            t.category,
            t.score,
            t.half_life_ms,
        )
        assert list(o.segments.items()) == list(t.segments.items())
    assert again.sessions == learner.sessions and again.version == learner.version
    assert again.publish(T0).snapshot == learner.publish(T0).snapshot
    # a state with other kinds than viewed and bought is pickled as it is
    from attune.operators import models
    from attune.operators.covisit import ItemNeighbours

    learner.covisit.states["odd"] = ItemNeighbours("odd", 0, {"x": {"a": 1.0}})
    assert pickle.loads(pickle.dumps(learner)).covisit.states["odd"].weights == {"x": {"a": 1.0}}
    with pytest.raises(ValueError, match="not a model learner state"):
        learner.__setstate__(("other", {}))
    # object's own (None, slots) state: the snapshots of recovery stores before this format
    old = ModelLearner.__new__(ModelLearner)
    old.__setstate__((None, {name: getattr(again, name) for name in models._LEARNER_FIELDS}))
    assert old.sessions == again.sessions and old.covisit is again.covisit


def test_learner_publishes_by_count_at_most_every_publish_min_s() -> None:
    logic = ModelLearnerLogic(None, {}, publish_every=1, publish_s=600, publish_min_s=3600)
    out, _ = logic.on_batch([summary(0)])
    assert [p.version for p in out] == [1]  # the first publication is not held back
    out, _ = logic.on_batch([summary(1)])
    assert list(out) == []  # due by count, but within publish_min_s of the last one
    due = logic.notify_at()
    assert due is not None and due > datetime.now(UTC) + timedelta(seconds=590)
    logic.published_at -= 3600  # an hour later
    assert logic.notify_at() <= datetime.now(UTC)  # type: ignore[operator]
    out, _ = logic.on_notify()
    assert [p.version for p in out] == [2]
    with pytest.raises(ValueError, match="ATTUNE_MODELS_PUBLISH_MIN_S"):
        ModelLearnerLogic(None, {}, publish_min_s=-1)


def test_learner_trends_weigh_views_carts_and_bought_units() -> None:
    learner = ModelLearner()
    learner.learn(
        SessionSummary(
            "u",
            T0,
            T0,
            (
                SessionTouch("v", T0, "view"),
                SessionTouch("c", T0, "cart"),
                SessionTouch("b", T0, "purchase", 2),
            ),
            (),
            {},
            True,
        )
    )
    s = {i: t.score for i, t in learner.trends.items()}
    assert s["b"] - s["v"] == pytest.approx(3.321928, abs=1e-6)  # log2(10): 2 units x 5
    assert s["c"] - s["v"] == pytest.approx(1.584963, abs=1e-6)  # log2(3)


def test_snapshot_bytes_round_trip_and_bad_bytes_are_refused() -> None:
    snap = snapshot(version=7, propensity=FixedPipeline(0.5))
    back = ModelSnapshot.from_bytes(snap.to_bytes())
    assert back.version == 7 and back.trending == snap.trending
    assert ModelSnapshot.peek_version(snap.to_bytes()[:14]) == 7
    with pytest.raises(ValueError, match="not an Attune model snapshot"):
        ModelSnapshot.from_bytes(b"garbage")
    with pytest.raises(ValueError, match="corrupt"):
        ModelSnapshot.from_bytes(snap.to_bytes()[:20])


_ids_st = st.text(min_size=1, max_size=6)
_scores_st = st.floats(allow_nan=False, allow_infinity=False, width=64)
_lists_st = st.lists(st.tuples(_ids_st, _scores_st), max_size=4).map(tuple)


@given(
    covisit=st.dictionaries(_ids_st, st.tuples(st.integers(0, 2**62), _lists_st, _lists_st)),
    trending=st.dictionaries(_ids_st, _scores_st),
    segments=st.dictionaries(_ids_st, st.dictionaries(_ids_st, _scores_st)),
)
@settings(max_examples=60, deadline=None)
def test_snapshot_arrays_round_trip_every_list_score_and_order(
    covisit: dict[str, tuple[int, Any, Any]],
    trending: dict[str, float],
    segments: dict[str, dict[str, float]],
) -> None:
    lists = {k: NeighbourList(k, at, v, b) for k, (at, v, b) in covisit.items()}
    snap = ModelSnapshot(3, T0, 5, None, lists, trending, segments, None, {"auc": None})
    back = ModelSnapshot.from_bytes(snap.to_bytes())
    assert back == snap
    assert list(back.covisit) == list(lists) and list(back.trending) == list(trending)
    assert [list(v) for v in back.segment_trending.values()] == [list(v) for v in segments.values()]


def test_a_snapshot_whose_arrays_disagree_with_their_counts_is_corrupt() -> None:
    lst = NeighbourList("a", T0, (("b", 1.5),), ())
    data = ModelSnapshot(2, T0, 1, None, {"a": lst}, {"a": 1.0}, {}, None, {}).to_bytes()
    with pytest.raises(ValueError, match="corrupt"):
        ModelSnapshot.from_bytes(data[:-8])  # the last score cut off
    with pytest.raises(ValueError, match="corrupt"):
        ModelSnapshot.from_bytes(data + b"x")


class FakeRedis:
    """GETRANGE/GET on a dict: what the board calls (unit test of its refresh logic)."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.gets = 0

    def getrange(self, key: str, start: int, end: int) -> bytes:
        return self.data.get(key, b"")[start : end + 1]

    def get(self, key: str) -> bytes | None:
        self.gets += 1
        return self.data.get(key)


def test_redis_board_fetches_only_new_versions_and_keeps_the_last_good_one() -> None:
    fake = FakeRedis()
    board = RedisModelBoard(lambda: fake, "k", refresh_s=0.0)
    assert board.get() is None
    fake.data["k"] = snapshot(version=1).to_bytes()
    first = board.get()
    assert first is not None and first.version == 1
    assert board.get() is first and fake.gets == 1  # same version: header only
    fake.data["k"] = snapshot(version=2).to_bytes()[:30]  # a corrupt new version
    assert board.get() is first
    slow = RedisModelBoard(lambda: fake, "k", refresh_s=3600.0)
    fake.data["k"] = snapshot(version=3).to_bytes()
    assert slow.get() is not None and slow.get() is not None
    fake.data["k"] = snapshot(version=4).to_bytes()
    got = slow.get()
    assert got is not None and got.version == 3  # not refreshed within refresh_s


def test_reader_builds_ranking_models_once_per_version() -> None:
    board = LocalModelBoard()
    reader = ModelReader(board, catalogue_of(items()))
    empty = reader.current()
    assert empty.propensity is None and empty.version.startswith("m0-")
    board.put(snapshot(version=5).to_bytes())
    live = reader.current()
    assert reader.current() is live and live.version.startswith("m5-")
    shares = live.models.trending.shares(len(reader.catalogue))
    assert shares[reader.catalogue.index["i000"]] > shares[reader.catalogue.index["i001"]] > 0
    assert pickle.loads(pickle.dumps(UserModels())) == UserModels()
    assert isinstance(reader.catalogue, Catalogue)


def test_erasure_forgets_the_model_inputs_and_says_what_the_shared_models_keep() -> None:
    cfg = config()
    st = UserState(user_id="u1")
    apply(st, view(T0, 1), cfg)
    apply(st, view(T0 + 2 * GAP, 2), cfg)  # the first session is summarised
    request = Event("er", EventType.ERASURE, T0 + 3 * GAP, ErasureRequest("r1"), user_id="u1")
    (conf,) = [o for o in apply(st, request, cfg) if isinstance(o, ErasureConfirmation)]
    assert "recommendation inputs: 2 recent items, 0 purchased" in conf.state_items
    assert any("models: 1 session summaries" in line for line in conf.not_removed)
    assert "attune:{u:u1}" in conf.redis_keys  # the user's hash, recommendations and all
    assert st.models == UserModels()  # the tombstone keeps nothing of it


def test_bad_publish_settings_are_refused_with_the_setting_named() -> None:
    with pytest.raises(ValueError, match="ATTUNE_MODELS_PUBLISH_EVERY"):
        ModelLearnerLogic(None, {}, publish_every=0)


@given(
    st.one_of(st.just(float("-inf")), st.floats(-1e4, 1e6)),
    st.one_of(st.just(float("-inf")), st.floats(-1e4, 1e6)),
)
def test_trend_logaddexp2_is_numpys(x: float, y: float) -> None:
    assert logaddexp2(x, y) == float(np.logaddexp2(x, y))
    assert logaddexp2(x, x + 1e-12) == float(np.logaddexp2(x, x + 1e-12))


def test_decoding_after_a_previous_snapshot_reuses_its_unchanged_lists_only() -> None:
    learner = ModelLearner(seed=3)

    def session(user: str, t: int, names: list[str]) -> SessionSummary:
        touches = tuple(SessionTouch(n, t + i, "view") for i, n in enumerate(names))
        return SessionSummary(user, t, t + 10, touches, (), {}, False)

    learner.learn(session("u1", 0, ["a", "b", "c"]))
    learner.learn(session("u2", 5, ["x", "y"]))
    first = learner.publish(now_ms=100).snapshot
    learner.learn(session("u3", 200, ["a", "d"]))
    second = learner.publish(now_ms=300).snapshot
    prev = ModelSnapshot.from_bytes(first)
    fresh = ModelSnapshot.from_bytes(second)
    again = ModelSnapshot.from_bytes(second, prev)

    def same(a: ModelSnapshot, b: ModelSnapshot) -> bool:
        return list(a.covisit.items()) == list(b.covisit.items()) and replace(
            a, embeddings=None
        ) == replace(b, embeddings=None)

    assert same(again, fresh)
    assert again.covisit["x"] is prev.covisit["x"]  # unchanged: the same object
    assert again.covisit["a"] is not prev.covisit["a"] and again.covisit["a"].at_ms == 300
    # a snapshot of another learner (another item table) shares nothing, decodes the same
    other = ModelLearner(seed=3)
    other.learn(session("u9", 0, ["q", "x", "y"]))
    alien = ModelSnapshot.from_bytes(other.publish(now_ms=50).snapshot)
    assert same(ModelSnapshot.from_bytes(second, alien), fresh)
    assert same(ModelSnapshot.from_bytes(first, fresh), prev)  # an older one decodes too


def test_covisit_learn_folds_pairs_as_item_neighbours_update_does() -> None:
    import random

    from attune.operators.covisit import BOUGHT, HALF_LIFE_MS, VIEWED, CovisitIndex, ItemNeighbours

    rng = random.Random(4)
    index = CovisitIndex()
    by_hand: dict[str, ItemNeighbours] = {}
    t = T0
    for step in range(3000):  # > 2 * TOP_N neighbours (pruning) and > 40 half-lives (rebase)
        t += rng.randint(0, HALF_LIFE_MS // 30)
        kind = BOUGHT if step % 7 == 0 else VIEWED
        pairs = [(f"a{rng.randint(0, 3)}", f"b{rng.randint(0, 150)}") for _ in range(3)]
        index.learn(pairs, kind, t)
        for a, b in pairs:
            by_hand.setdefault(a, ItemNeighbours(a)).update(b, kind, t)
    assert t - T0 > 41 * HALF_LIFE_MS
    assert list(index.states) == list(by_hand)
    for item, want in by_hand.items():
        got = index.states[item]
        assert (got.t0, got.updates) == (want.t0, want.updates) and got.t0 != T0
        assert [list(w.items()) for w in got.weights.values()] == [
            list(w.items()) for w in want.weights.values()
        ]
