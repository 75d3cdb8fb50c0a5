"""Privacy against the real Kafka broker and Redis: erasure mid-stream, consent gating.

One generated stream (its own consent changes and erasures) with planted users
interleaved in event-time order is produced once; the flow runs over it once, with
Bytewax recovery on so that its per-user and identity state can be read back from
the recovery store afterwards. Then:

- ``zed`` (US: the default, personalization opt-out) browses anonymously, logs in,
  shops and asks for erasure; a late event from before the request arrives after it,
  and two later views follow: zed's keys, alias, audiences and state are gone and the
  later views make a new user;
- ``eve`` (DE, ``EU=opt-in``) does the same without the late event: after erasure her
  consent is back to the opt-in default, so her later view leaves nothing at all;
- the confirmations on the erasure topic list what was removed;
- ``max`` withdraws marketing before his cart is due and gets no trigger; ``ctl``
  does the same shopping without withdrawing and gets the reminder;
- ``nop`` and the generator's users who denied personalization have no profile,
  segments or recommendations in Redis, and their anonymous ids leave no alias.
"""

from __future__ import annotations

import itertools
import pickle
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import run_main

from attune.clients.recommendations import parse_profile
from attune.flows import topics
from attune.flows.generate import produce
from attune.flows.personalize import build_flow
from attune.flows.settings import Settings
from attune.operators.clock import DAY_MS, HOUR_MS, MINUTE_MS
from attune.operators.codec import Codec
from attune.operators.events import (
    AddToCart,
    ConsentUpdate,
    Context,
    ErasureConfirmation,
    ErasureRequest,
    Event,
    EventType,
    Identify,
    PageView,
    ProductView,
    SegmentChange,
    Trigger,
)
from attune.operators.identity import IdentityState
from attune.operators.redis_keys import PROFILE_FIELD, RedisKeys, escape_tag, joined
from attune.operators.triggers import KINDS
from attune.operators.user_state import UserState
from attune.workload.generator import GeneratorConfig, generate
from attune.workload.truth import GroundTruth
from tests.integration.reading import consume_all, fresh_topics

pytestmark = pytest.mark.integration

NO_POLICIES = Path(__file__).resolve().parents[1] / "data" / "rules_without_policies.yaml"
US = Context(device="DESKTOP", channel="WEB", country="US", region="US-NY", timezone="UTC")
DE = Context(device="DESKTOP", channel="WEB", country="DE", region="DE-BE", timezone="UTC")
TYPES = {
    PageView: EventType.PAGE_VIEW,
    ProductView: EventType.PRODUCT_VIEW,
    AddToCart: EventType.ADD_TO_CART,
    ConsentUpdate: EventType.CONSENT,
    ErasureRequest: EventType.ERASURE,
    Identify: EventType.IDENTIFY,
}
GRANT = ConsentUpdate(True, True, True, "banner")


@dataclass(frozen=True)
class Planted:
    """The planted users' ids (unique per run) and the events that matter."""

    zed: str
    anon_zed: str
    eve: str
    max: str
    ctl: str
    nop: str
    zed_erasure: Event
    eve_erasure: Event
    zed_after: tuple[Event, ...]
    zed_late: Event
    max_withdrawal: Event


@dataclass(frozen=True)
class Ran:
    settings: Settings
    truth: GroundTruth
    planted: Planted
    recovery: Path


def planted_events(start: int, tag: str) -> tuple[Planted, list[Event]]:
    ids = itertools.count()
    zed, anon_zed, eve = f"zed-{tag}", f"anon-zed-{tag}", f"eve-{tag}"
    mx, ctl, nop = f"max-{tag}", f"ctl-{tag}", f"nop-{tag}"

    def ev(
        t: int, payload: Any, user: str | None, anon: str | None = None, ctx: Context = US
    ) -> Event:
        return Event(
            f"{tag}-{next(ids)}", TYPES[type(payload)], t, payload, user, anon, None, ctx
        )  # fmt: skip

    t1 = start + DAY_MS + 10 * HOUR_MS
    zed_erasure = ev(t1 + 20 * MINUTE_MS, ErasureRequest(f"req-zed-{tag}", "asked"), zed, anon_zed)
    zed_late = ev(t1 + 15 * MINUTE_MS, ProductView("late-item"), zed, anon_zed)  # sent after
    zed_after = (
        ev(t1 + 3 * HOUR_MS, ProductView("new-1"), zed),
        ev(t1 + 3 * HOUR_MS + MINUTE_MS, ProductView("new-2"), zed),
    )
    zed_events = [
        ev(t1, GRANT, None, anon_zed),
        ev(t1 + MINUTE_MS, ProductView("i-1", "shoes/running", 8900, "EUR"), None, anon_zed),
        ev(t1 + 2 * MINUTE_MS, ProductView("i-2", "shoes/running", 9900, "EUR"), None, anon_zed),
        ev(t1 + 3 * MINUTE_MS, Identify("LOGIN"), zed, anon_zed),
        ev(t1 + 5 * MINUTE_MS, AddToCart("i-1", 1, 8900, "EUR"), zed, anon_zed),
        ev(t1 + 6 * MINUTE_MS, ProductView("i-3", "shoes/running", 7900, "EUR"), zed, anon_zed),
        zed_erasure,
        zed_late,
        *zed_after,
    ]
    t2 = start + DAY_MS + 11 * HOUR_MS
    eve_erasure = ev(t2 + 20 * MINUTE_MS, ErasureRequest(f"req-eve-{tag}"), eve, ctx=DE)
    eve_events = [
        ev(t2, GRANT, eve, ctx=DE),
        ev(t2 + MINUTE_MS, ProductView("i-1", "shoes/running", 8900, "EUR"), eve, ctx=DE),
        ev(t2 + 2 * MINUTE_MS, AddToCart("i-1", 1, 8900, "EUR"), eve, ctx=DE),
        eve_erasure,
        ev(t2 + 3 * HOUR_MS, ProductView("again"), eve, ctx=DE),  # opt-in: withheld
    ]
    t3 = start + DAY_MS + 12 * HOUR_MS
    max_withdrawal = ev(t3 + 10 * MINUTE_MS, ConsentUpdate(marketing=False), mx)
    shopper = []
    for user in (mx, ctl):
        shopper += [
            ev(t3, GRANT, user),
            ev(t3 + MINUTE_MS, AddToCart("i-7", 2, 1500, "EUR"), user),
            ev(t3 + 3 * HOUR_MS, PageView(), user),  # the cart was left: due long ago
        ]
    shopper.append(max_withdrawal)
    t4 = start + DAY_MS + 13 * HOUR_MS
    nop_events = [
        ev(t4, ConsentUpdate(True, False, True), nop),
        ev(t4 + MINUTE_MS, ProductView("i-1"), nop),
        ev(t4 + 2 * MINUTE_MS, AddToCart("i-1", 1, 100, "EUR"), nop),
    ]
    planted = Planted(
        zed, anon_zed, eve, mx, ctl, nop, zed_erasure, eve_erasure, zed_after, zed_late,
        max_withdrawal,
    )  # fmt: skip
    return planted, [*zed_events, *eve_events, *shopper, *nop_events]


def interleave(generated: Iterator[Event], p: Planted, planted: list[Event]) -> Iterator[Event]:
    """The generated stream with the planted events inserted in event-time order, so none
    is late for its partition; zed's late event is held back until right after his
    erasure request (5 minutes behind it: within the allowed lateness)."""
    queue = sorted((e for e in planted if e is not p.zed_late), key=lambda e: e.event_time)
    for event in generated:
        while queue and queue[0].event_time <= event.event_time:
            first = queue.pop(0)
            yield first
            if first is p.zed_erasure:
                yield p.zed_late
        yield event
    yield from queue


@pytest.fixture(scope="module")
def client(redis_url: str) -> Iterator[redis.Redis]:
    """The session's Redis for this module: flushed once, before the flow runs (the
    per-test ``redis_client`` fixture would flush what the flow wrote)."""
    c = redis.Redis.from_url(redis_url)
    c.flushdb()
    yield c
    c.close()


@pytest.fixture(scope="module")
def ran(
    integration_settings: Settings,
    client: redis.Redis,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Ran]:
    tag = uuid.uuid4().hex[:8]
    settings = integration_settings.replace(
        **fresh_topics("pe"),
        kafka_tail=False,
        consent_regions="EU=opt-in",  # elsewhere the default: opt-out but for marketing
        trigger_rules_file=str(NO_POLICIES),  # no quiet hours, caps or cooldowns
    )
    names = topics.design_topics(settings)
    topics.ensure_topics(settings.kafka_bootstrap, names, 3)
    config = GeneratorConfig(users=200, days=4, seed=11, erasure_share=0.02)
    g = generate(config)
    planted, extra = planted_events(config.start_ms, tag)
    g.events = interleave(g.events, planted, extra)
    produce(
        g, settings.kafka_bootstrap, settings.topic_events, settings.topic_items, None, Codec(),
        progress=False,
    )  # fmt: skip
    db = tmp_path_factory.mktemp("recovery")
    init_db_dir(db, 1)
    run_main(build_flow(settings), recovery_config=RecoveryConfig(str(db)))
    yield Ran(settings, g.truth, planted, db)
    topics.delete_topics(settings.kafka_bootstrap, names)


# --- reading back what the flow left ---------------------------------------------------------


def user_keys_in_redis(client: redis.Redis, settings: Settings, user: str) -> list[str]:
    """Every key under the user's hash tag (SCAN, not the key builder's list)."""
    pattern = f"{settings.redis_prefix}{{u:{escape_tag(user)}}}*"
    return sorted(k.decode() for k in client.scan_iter(match=pattern, count=1000))


def audiences_of(client: redis.Redis, settings: Settings, user: str) -> list[str]:
    out = []
    for key in client.scan_iter(match=f"{settings.redis_prefix}segment:*", count=1000):
        if client.sismember(key, user):
            out.append(key.decode())
    return sorted(out)


def flow_state(db: Path, step: str, key: str) -> Any:
    """The latest snapshot of one key of a stateful step in the recovery store, unpickled;
    ``None`` when the state was discarded (or never existed)."""
    rows: list[tuple[int, bytes | None]] = []
    for part in sorted(db.glob("*.sqlite3")):
        with closing(sqlite3.connect(part)) as conn:
            rows += conn.execute(
                "SELECT snap_epoch, ser_change FROM snaps WHERE step_id = ? AND state_key = ?",
                (f"attune_personalize.{step}", key),
            ).fetchall()
    if not rows:
        return None
    _, blob = max(rows, key=lambda r: r[0])
    if blob is None:
        return None
    snapshot = pickle.loads(blob)
    return None if snapshot is None else pickle.loads(snapshot)


def all_flow_state_keys(db: Path, step: str) -> set[str]:
    keys: set[str] = set()
    for part in sorted(db.glob("*.sqlite3")):
        with closing(sqlite3.connect(part)) as conn:
            keys |= {
                r[0]
                for r in conn.execute(
                    "SELECT DISTINCT state_key FROM snaps WHERE step_id = ?",
                    (f"attune_personalize.{step}",),
                )
            }
    return keys


def confirmations(settings: Settings) -> list[ErasureConfirmation]:
    codec = Codec()
    out = []
    for raw in consume_all(settings, settings.topic_erasures):
        record = codec.decode_erasure_confirmation(raw)
        assert isinstance(record, ErasureConfirmation), record
        out.append(record)
    return out


def triggers(settings: Settings) -> list[Trigger]:
    codec = Codec()
    out = []
    for kind in KINDS:
        for raw in consume_all(settings, settings.topic_trigger(kind)):
            t = codec.decode_trigger(raw)
            assert isinstance(t, Trigger), t
            out.append(t)
    return out


# --- erasure ---------------------------------------------------------------------------------


def test_erasure_mid_stream_removes_the_user_everywhere_and_confirms_it(  # noqa: PLR0915 - one erasure followed through every place it reaches, a check each
    ran: Ran, client: redis.Redis
) -> None:
    settings, p = ran.settings, ran.planted
    keys = RedisKeys(settings.redis_prefix)
    # zed: the two views after the request made a new user; nothing of before is left
    assert user_keys_in_redis(client, settings, p.anon_zed) == []
    assert audiences_of(client, settings, p.anon_zed) == []
    profile = parse_profile(joined(client.hgetall(keys.user(p.zed)), PROFILE_FIELD) or "")
    assert profile["events"] == "2" and profile["product_views"] == "2"
    assert profile["first_seen_ms"] == str(p.zed_after[0].event_time)
    assert profile["cart_value_minor"] == "0" and profile["add_to_carts"] == "0"  # gone
    zed_state = flow_state(ran.recovery, "user_state", p.zed)
    assert isinstance(zed_state, UserState)
    assert zed_state.events == 2 and zed_state.aliases == [] and not zed_state.cart.entries
    assert zed_state.first_seen_ms == p.zed_after[0].event_time
    assert zed_state.erased_at == p.zed_erasure.event_time  # the tombstone's time, kept
    assert zed_state.consent.stated == {}  # consent was reset with everything else
    # the anonymous id's identity state is a tombstone: the link and the request's time
    assert flow_state(ran.recovery, "identity", p.anon_zed) == IdentityState(
        user_id=p.zed,
        erased_at=p.zed_erasure.event_time,
        active_ms=flow_state(ran.recovery, "identity", p.anon_zed).active_ms,
    )
    assert flow_state(ran.recovery, "user_state", p.anon_zed) is None  # merged at login

    # eve (opt-in region): after erasure her later view is withheld: nothing at all
    assert user_keys_in_redis(client, settings, p.eve) == []
    assert audiences_of(client, settings, p.eve) == []
    eve_state = flow_state(ran.recovery, "user_state", p.eve)
    assert isinstance(eve_state, UserState)
    # a tombstone: the erasure time, dedupe ids and where she is (to apply the default)
    assert eve_state == UserState(
        p.eve, erased_at=p.eve_erasure.event_time, seen=eve_state.seen,
        active_ms=eve_state.active_ms, consent=eve_state.consent,
    )  # fmt: skip
    assert eve_state.consent.stated == {} and eve_state.consent.country == "DE"

    # the generator's erased users (their erasure is their last event): nothing left
    erased = [u for u in ran.truth.users.values() if u.erasure_ms is not None]
    assert erased
    for u in erased:
        for user in (u.user, *u.anonymous_ids):
            assert user_keys_in_redis(client, settings, user) == [], user
            assert audiences_of(client, settings, user) == [], user
        state = flow_state(ran.recovery, "user_state", u.user)
        assert isinstance(state, UserState) and state.events == 0 and not state.segments

    # the confirmations: one per request, listing what went
    confs = {c.request_event_id: c for c in confirmations(settings)}
    assert {u.user for u in erased} | {p.zed, p.eve} == {c.user_id for c in confs.values()}
    zed = confs[p.zed_erasure.event_id]
    assert (zed.user_id, zed.request_id) == (p.zed, f"req-zed-{p.zed.split('-')[1]}")
    assert zed.request_time == p.zed_erasure.event_time
    assert zed.processed_time > 0
    assert zed.redis_keys == (*keys.user_keys(p.zed), *keys.user_keys(p.anon_zed))
    assert zed.anonymous_ids == (p.anon_zed,)
    # What the state held at the request: zed's 3 events under his id, plus the 3
    # anonymous ones when their hand-over arrived before the request (batches are
    # applied in arrival order; history arriving after it is dropped by the
    # tombstone), plus the late one when it arrived before the request too.
    assert "cart: 1 lines" in zed.state_items
    counted = {f"counters: {n} events" for n in (3, 4, 6, 7)}
    assert counted & set(zed.state_items), zed.state_items
    assert zed.retained and "tombstone" in zed.retained[0]
    # the audiences it lists are those zed had entered by then (from the segments topic)
    codec = Codec()
    changes = [
        c
        for raw in consume_all(settings, settings.topic_segments)
        if isinstance(c := codec.decode_segment_change(raw), SegmentChange)
        and c.user_id == p.zed
        and c.event_time <= p.zed_erasure.event_time
    ]
    member: dict[str, bool] = {}
    for c in sorted(changes, key=lambda c: (c.event_time, c.change == "ENTERED")):
        if c.event_time < p.zed_erasure.event_time:
            member[c.segment] = c.change == "ENTERED"
    held = sorted(keys.audience(s) for s, m in member.items() if m)
    assert held and list(zed.audiences) == held
    exits = {c.segment for c in changes if c.event_time == p.zed_erasure.event_time}
    assert {keys.audience(s) for s in exits} == set(held)  # their exits were published
    eve = confs[p.eve_erasure.event_id]
    assert eve.user_id == p.eve and "cart: 1 lines" in eve.state_items and not eve.anonymous_ids


def test_every_key_left_has_a_ttl(ran: Ran, client: redis.Redis) -> None:
    keys = list(client.scan_iter(count=1000))
    assert len(keys) > 100
    assert [k for k in keys if client.ttl(k) <= 0] == []


# --- consent ---------------------------------------------------------------------------------


def test_no_trigger_after_a_marketing_withdrawal(ran: Ran) -> None:
    p, truth = ran.planted, ran.truth
    fired = triggers(ran.settings)
    by_user: dict[str, list[Trigger]] = {}
    for t in fired:
        by_user.setdefault(t.user_id, []).append(t)
    assert "cart_abandoned" in {t.kind for t in by_user.get(p.ctl, [])}  # the control
    # max withdrew before his cart was due: no reminder, nothing caused after it
    after = [
        t
        for t in by_user.get(p.max, [])
        if t.kind == "cart_abandoned" or t.cause_event_time >= p.max_withdrawal.event_time
    ]
    assert after == []
    # the generator's users who withdrew marketing: nothing caused after the withdrawal
    # (a cart reminder due before it may have fired as the stream clock passed it)
    lateness = ran.settings.allowed_lateness_s * 1000
    withdrew = {
        u.user: min(c.time_ms for c in u.consent if c.marketing is False)
        for u in truth.users.values()
        if any(c.marketing is False for c in u.consent)
    }
    assert withdrew
    for user, since in withdrew.items():
        for t in by_user.get(user, []):
            due = t.cause_event_time + (30 * MINUTE_MS if t.kind == "cart_abandoned" else 0)
            assert due < since + lateness, (user, t)


def test_no_profile_segments_or_recs_without_personalization_consent(
    ran: Ran, client: redis.Redis
) -> None:
    settings, p, truth = ran.settings, ran.planted, ran.truth
    denied = [
        u
        for u in truth.users.values()
        if u.consent and all(c.personalization is not True for c in u.consent)
    ]
    assert denied, "the generator planted users who deny personalization"
    for user in [p.nop, *(u.user for u in denied), *(a for u in denied for a in u.anonymous_ids)]:
        assert user_keys_in_redis(client, settings, user) == [], user
        assert audiences_of(client, settings, user) == [], user
    nop = flow_state(ran.recovery, "user_state", p.nop)
    assert isinstance(nop, UserState) and nop.events == 0 and not nop.cart.entries
    assert nop.consent.stated["personalization"][1] is False
    # and their anonymous visits left no copies in the identity step
    for u in denied:
        for anon in u.anonymous_ids:
            state = flow_state(ran.recovery, "identity", anon)
            assert state is None or (isinstance(state, IdentityState) and not state.buffer)
    # the users who allowed it do have profiles (the check can fail)
    allowed = [u for u in truth.exact_users()][:20]
    for user in allowed:
        fields = client.hgetall(RedisKeys(settings.redis_prefix).user(user))
        assert joined(fields, PROFILE_FIELD), user
    assert all_flow_state_keys(ran.recovery, "user_state") >= set(allowed)
