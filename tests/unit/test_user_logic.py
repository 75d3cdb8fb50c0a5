"""The Bytewax wrapper of the per-user step (operators/user_logic.py): an idle user's state
kept as its snapshot bytes gives the same outputs as a live one, and the timers poll as
often as what waits needs."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from bytewax.operators import StatefulBatchLogic

from attune.operators import snapshots
from attune.operators.clock import FixedClock
from attune.operators.events import AddToCart, ConsentUpdate, Event, EventType, Trigger
from attune.operators.stream_clock import StreamClock
from attune.operators.trigger_decisions import pending
from attune.operators.triggers import TriggerConfig
from attune.operators.user_config import ProfileConfig
from attune.operators.user_logic import (
    DEFERRED_GRID_MS,
    DEFERRED_POLL,
    IDLE_FREEZE,
    POLL_GRID_MS,
    REPLAY_IDLE_CHECK,
    TIMER_POLL,
    Keyed,
    UserLogic,
)
from attune.operators.user_state import UserState
from attune.workload.generator import GeneratorConfig, generate

T0 = 1_767_571_200_000


def _by_user() -> dict[str, list[Event]]:
    by_user: dict[str, list[Event]] = defaultdict(list)
    for event in generate(GeneratorConfig(users=15, days=3, seed=8)).events:
        by_user[event.user_key].append(event)
    return by_user


#: Never freezes: the reference a freezing logic is compared with.
NEVER = timedelta(days=365_000)


def test_a_frozen_state_gives_what_a_live_one_gives() -> None:
    wall = FixedClock(T0)
    cfg = ProfileConfig(clock=wall)
    frozen_count = 0
    for user, events in _by_user().items():
        live, thawing = UserLogic(None, cfg, NEVER), UserLogic(None, cfg)
        for start in range(0, len(events), 5):
            batch: list[Keyed] = [(user, e) for e in events[start : start + 5]]
            out_live, keep_live = live.on_batch(batch)
            out_thawing, keep_thawing = thawing.on_batch(batch)
            assert list(out_thawing) == list(out_live) and keep_thawing == keep_live
            if keep_live is StatefulBatchLogic.DISCARD:  # merged into its user
                break
            assert thawing._frozen is None  # in use: live objects
            assert snapshots.loads(thawing.snapshot()) == live.state
            # idle for a minute: the timer freezes it, unless something waits for time
            wall.advance(int(IDLE_FREEZE.total_seconds() * 1000))
            out_live, _ = live.on_notify()
            out_thawing, _ = thawing.on_notify()
            assert list(out_thawing) == list(out_live)
            frozen_count += thawing._frozen is not None
            assert live.state is not None
            if pending(live.state, cfg):  # what waits for time is never frozen
                assert thawing._frozen is None
            assert snapshots.loads(thawing.snapshot()) == live.state
            assert thawing.expired() == live.expired()  # answered without thawing
            if thawing._frozen is not None:  # the TTL is all that is left to wait for
                ttl_ms = int(cfg.state_ttl.total_seconds() * 1000)
                wake = datetime.fromtimestamp((live.state.active_ms + ttl_ms) / 1000, UTC)
                assert thawing.notify_at() == wake
        assert thawing.state == live.state
    assert frozen_count > 0  # the path under test was taken


def test_a_frozen_state_expires_and_leaves_its_audiences_like_a_live_one() -> None:
    wall = FixedClock(T0)
    cfg = ProfileConfig(clock=wall, state_ttl=timedelta(minutes=5))
    for user, events in sorted(_by_user().items(), key=lambda kv: -len(kv[1])):
        live, thawing = UserLogic(None, cfg, NEVER), UserLogic(None, cfg)
        batch: list[Keyed] = [(user, e) for e in events[:20]]
        live.on_batch(batch)
        thawing.on_batch(batch)
        if live.state is not None and not pending(live.state, cfg):
            break  # a user with nothing waiting for time: it freezes
    wall.advance(int(IDLE_FREEZE.total_seconds() * 1000))
    thawing.on_notify()
    assert thawing._frozen is not None
    wall.advance(5 * 60_000)
    assert thawing.expired() and live.expired()
    out_thawing, keep_thawing = thawing.on_notify()
    out_live, keep_live = live.on_notify()
    assert list(out_thawing) == list(out_live)
    assert keep_thawing is keep_live is StatefulBatchLogic.DISCARD


def _event(t: int, payload: Any, etype: EventType) -> Keyed:
    return "u1", Event(f"e{t}", etype, T0 + t, payload, user_id="u1")


def test_a_pending_cart_polls_every_second_and_deferred_triggers_every_10_ms() -> None:
    # its own stream clock: the process's one (ProfileConfig's default) may have been left
    # live by another test, and a live clock wakes a cart when it is due instead
    logic = UserLogic(None, ProfileConfig(stream_clock=StreamClock()))
    logic.on_batch([_event(0, ConsentUpdate(True, True, True), EventType.CONSENT)])
    logic.on_batch([_event(60_000, AddToCart("i1", 1, 1500, "EUR"), EventType.ADD_TO_CART)])
    grid = timedelta(milliseconds=POLL_GRID_MS)  # wake times are rounded up to it
    before = datetime.now(UTC)
    wake = logic.notify_at()
    assert wake is not None and before + TIMER_POLL <= wake <= datetime.now(UTC) + TIMER_POLL + grid
    assert wake.timestamp() * 1000 % POLL_GRID_MS == 0

    st = logic.state
    assert st is not None
    trigger = Trigger("t1", "long_dwell", "u1", T0, T0 + 5, "waits for the login's history")
    st.trig.deferred.append((trigger, None, None))
    before = datetime.now(UTC)
    wake = logic.notify_at()
    assert wake is not None
    fine = timedelta(milliseconds=DEFERRED_GRID_MS)
    assert before + DEFERRED_POLL <= wake <= datetime.now(UTC) + DEFERRED_POLL + fine
    assert DEFERRED_POLL + fine <= timedelta(milliseconds=20)  # well inside the 100 ms target


@dataclass
class _Wall:
    ms: int

    def wall_ms(self) -> int:
        return self.ms

    def monotonic(self) -> float:
        return self.ms / 1000


def test_while_live_a_cart_wakes_when_due_and_fires_without_waiting_out_the_lateness() -> None:
    wall = _Wall(T0 + 3_600_000)
    clock = StreamClock(wall_ms=wall.wall_ms, monotonic=wall.monotonic)
    clock.reset(lateness_ms=600_000, live_within_ms=30_000)
    clock.expect(["events:0"])
    cfg = ProfileConfig(stream_clock=clock, triggers=TriggerConfig(abandon_after_ms=5_000))
    logic = UserLogic(None, cfg)
    t = wall.ms - 100  # a live event: 0.1 s old
    logic.on_batch([_event(t - 1_000 - T0, ConsentUpdate(True, True, True), EventType.CONSENT)])
    logic.on_batch([_event(t - T0, AddToCart("i1", 1, 1500, "EUR"), EventType.ADD_TO_CART)])
    clock.advance("events:0", t)
    assert clock.live()
    before = datetime.now(UTC)
    wake = logic.notify_at()
    # due at t + 5 s; the clock has read to t: wake in 5 s (+1 ms), not at the 1 s poll
    assert wake is not None and abs((wake - before).total_seconds() - 5.001) < 0.5

    wall.ms += 5_000
    clock.advance("events:0", t + 4_999)  # the due time not yet strictly passed: nothing
    out, _ = logic.on_notify()
    assert [o for o in out if isinstance(o, Trigger)] == []
    clock.advance("events:0", t + 5_001)
    out, _ = logic.on_notify()
    fired = [o for o in out if isinstance(o, Trigger)]
    assert [o.kind for o in fired] == ["cart_abandoned"]  # not 10 minutes of lateness later


def test_a_frozen_state_ends_the_input_like_a_live_one_and_stays_frozen() -> None:
    wall = FixedClock(T0)
    cfg = ProfileConfig(clock=wall)
    ended = 0
    for user, events in _by_user().items():
        live, thawing = UserLogic(None, cfg, NEVER), UserLogic(None, cfg)
        batch: list[Keyed] = [(user, e) for e in events]
        _, keep = live.on_batch(batch)
        thawing.on_batch(batch)
        if keep is StatefulBatchLogic.DISCARD:
            continue
        wall.advance(int(IDLE_FREEZE.total_seconds() * 1000))
        live.on_notify()
        thawing.on_notify()
        if thawing._frozen is None:
            continue  # something waits for time: never frozen
        out_live, _ = live.on_eof()
        out_thawing, _ = thawing.on_eof()
        assert list(out_thawing) == list(out_live)
        assert thawing._frozen is not None  # not all users thawed at once at the end
        assert thawing.state == live.state
        ended += 1
    assert ended > 0


def test_in_a_replay_a_user_whose_session_is_over_freezes_seconds_after_its_batch() -> None:
    """A replay runs hours of event time in minutes: a user freezes once the stream clock
    is a session gap past its latest event, REPLAY_IDLE_CHECK after its batch, not after
    IDLE_FREEZE of wall time; a user still in its session, or read live, does not."""
    day = 86_400_000
    wall = _Wall(T0 + 30 * day)  # the events are a month old: never live
    clock = StreamClock(wall_ms=wall.wall_ms, monotonic=wall.monotonic)
    clock.reset(lateness_ms=600_000, live_within_ms=30_000)
    clock.expect(["events:0"])
    cfg = ProfileConfig(stream_clock=clock, clock=FixedClock(wall.ms))
    assert isinstance(cfg.clock, FixedClock)
    live_ref, logic = UserLogic(None, cfg, NEVER), UserLogic(None, cfg)
    batch = [_event(0, ConsentUpdate(True, True, True), EventType.CONSENT)]
    for lg in (live_ref, logic):
        lg.on_batch(batch)
    check_ms = int(REPLAY_IDLE_CHECK.total_seconds() * 1000)
    clock.advance("events:0", T0 + 5 * 60_000)  # read 5 minutes on: the session is open
    assert not clock.live()
    wake = logic.notify_at()
    assert wake is not None and wake.timestamp() * 1000 <= wall.ms + check_ms + 1_000
    cfg.clock.advance(check_ms)
    logic.on_notify()
    assert logic._frozen is None  # still in its session by the stream clock
    # it looks again after twice the wait, and so on until the idle freeze comes first
    looks = [check_ms]
    wake = logic.notify_at()
    idle_ms = IDLE_FREEZE.total_seconds() * 1000
    while wake is not None and wake.timestamp() * 1000 < wall.ms + idle_ms:
        looks.append(int(wake.timestamp() * 1000) - wall.ms)
        cfg.clock.ms = int(wake.timestamp() * 1000)
        logic.on_notify()
        assert logic._frozen is None
        wake = logic.notify_at()
    assert looks == [2_000, 4_000, 8_000, 16_000, 32_000]
    assert wake is not None and wake.timestamp() * 1000 == wall.ms + idle_ms

    for lg in (live_ref, logic):
        lg.on_batch([_event(60_000, ConsentUpdate(True, True, True), EventType.CONSENT)])
    # the stream clock settles past the session gap (+ the lateness) after its event
    clock.advance("events:0", T0 + 60_000 + cfg.session_gap_ms + 600_000)
    cfg.clock.advance(check_ms)
    out, keep = logic.on_notify()
    assert list(out) == [] and keep is StatefulBatchLogic.RETAIN
    assert logic._frozen is not None  # frozen: its session is over
    assert snapshots.loads(logic.snapshot()) == live_ref.state
    # and it thaws to give the same outputs as one never frozen
    nxt = [_event(cfg.session_gap_ms * 3, ConsentUpdate(True, True, True), EventType.CONSENT)]
    assert list(logic.on_batch(nxt)[0]) == list(live_ref.on_batch(nxt)[0])
    assert logic.state == live_ref.state


def test_a_live_stream_never_takes_the_replay_freeze() -> None:
    wall = _Wall(T0 + 3_600_000)
    clock = StreamClock(wall_ms=wall.wall_ms, monotonic=wall.monotonic)
    clock.reset(lateness_ms=600_000, live_within_ms=30_000)
    clock.expect(["events:0"])
    cfg = ProfileConfig(stream_clock=clock, clock=FixedClock(wall.ms))
    logic = UserLogic(None, cfg)
    logic.on_batch([_event(0, ConsentUpdate(True, True, True), EventType.CONSENT)])
    clock.advance("events:0", wall.ms - 100)
    assert clock.live()
    wake = logic.notify_at()  # the wall-clock idle freeze only
    assert wake is not None
    assert wake.timestamp() * 1000 >= wall.ms + IDLE_FREEZE.total_seconds() * 1000


class _NeverFreezesAWaitingCart(UserLogic):
    """The reference for the freeze while a cart waits: the same logic without it."""

    __slots__ = ()

    def _freeze_waiting(self, st: UserState) -> bool:
        return False


def test_a_user_whose_cart_waits_stays_frozen_until_the_clock_reaches_it() -> None:
    """In a replay a user holds its cart for the abandonment wait of event time: it
    freezes at its first poll (a poll then reads the stream clock only, and its snapshot is
    the frozen bytes, not new ones), thaws when the clock may have reached the cart, and
    gives what a user never frozen gives."""
    day = 86_400_000
    wall = _Wall(T0 + 30 * day)  # a replay: never live
    clock = StreamClock(wall_ms=wall.wall_ms, monotonic=wall.monotonic)
    clock.reset(lateness_ms=600_000, live_within_ms=30_000)
    clock.expect(["events:0"])
    cfg = ProfileConfig(stream_clock=clock, clock=FixedClock(wall.ms))
    assert isinstance(cfg.clock, FixedClock)
    ref, logic = _NeverFreezesAWaitingCart(None, cfg, NEVER), UserLogic(None, cfg, NEVER)
    batches = [
        [_event(0, ConsentUpdate(True, True, True), EventType.CONSENT)],
        [_event(60_000, AddToCart("i1", 1, 1500, "EUR"), EventType.ADD_TO_CART)],
    ]
    for batch in batches:
        assert list(logic.on_batch(batch)[0]) == list(ref.on_batch(batch)[0])
    frozen_polls = fired = 0
    for minute in range(1, 120):
        clock.advance("events:0", T0 + 60_000 * minute)
        cfg.clock.advance(int(TIMER_POLL.total_seconds() * 1000))
        out_ref, keep_ref = ref.on_notify()
        out, keep = logic.on_notify()
        assert list(out) == list(out_ref) and keep is keep_ref
        fired += sum(isinstance(o, Trigger) and o.kind == "cart_abandoned" for o in out)
        assert ref.state is not None
        if pending(ref.state, cfg):
            assert logic._frozen is not None  # waits frozen
            assert logic.snapshot() is logic.snapshot()  # no new bytes per poll
            before = datetime.now(UTC)
            wake = logic.notify_at()  # and polls the clock as a thawed one would
            grid = timedelta(milliseconds=POLL_GRID_MS)
            assert wake is not None
            assert before + TIMER_POLL <= wake <= datetime.now(UTC) + TIMER_POLL + grid
            frozen_polls += 1
        assert snapshots.loads(logic.snapshot()) == ref.state
    assert fired == 1 and frozen_polls > 10
    nxt = [_event(200 * 60_000, AddToCart("i2", 1, 900, "EUR"), EventType.ADD_TO_CART)]
    assert list(logic.on_batch(nxt)[0]) == list(ref.on_batch(nxt)[0])
    assert logic.state == ref.state


def test_a_state_nothing_changed_since_its_snapshot_is_frozen_with_those_bytes() -> None:
    """The freeze reuses the snapshot's bytes when nothing may have changed the state since
    (no batch, a judgement known to find nothing); a batch in between pickles it again."""
    wall = FixedClock(T0)
    cfg = ProfileConfig(clock=wall)
    reused = repickled = 0
    for user, events in _by_user().items():
        live, thawing = UserLogic(None, cfg, NEVER), UserLogic(None, cfg)
        batch: list[Keyed] = [(user, e) for e in events[:10]]
        _, keep = live.on_batch(batch)
        thawing.on_batch(batch)
        if keep is StatefulBatchLogic.DISCARD:
            continue
        taken = thawing.snapshot()
        assert thawing.snapshot() is taken  # nothing changed: not pickled twice
        wall.advance(int(IDLE_FREEZE.total_seconds() * 1000))
        live.on_notify()
        thawing.on_notify()
        if thawing._frozen is None:
            continue  # something waits for time: never frozen
        if thawing._frozen is taken:
            reused += 1
        else:
            repickled += 1
        assert snapshots.loads(thawing._frozen) == live.state
        # thawed by a batch, changed: the next snapshot is new bytes of the new state
        more: list[Keyed] = [(user, e) for e in events[10:12]]
        live.on_batch(more)
        thawing.on_batch(more)
        assert thawing._frozen is None
        assert snapshots.loads(thawing.snapshot()) == live.state
    assert reused > 0  # the path under test was taken


def test_a_judgement_that_may_change_the_state_drops_the_kept_snapshot() -> None:
    wall = FixedClock(T0)
    cfg = ProfileConfig(clock=wall, stream_clock=StreamClock())
    logic = UserLogic(None, cfg)
    logic.on_batch([_event(0, ConsentUpdate(True, True, True), EventType.CONSENT)])
    logic.on_batch([_event(60_000, AddToCart("i1", 1, 1500, "EUR"), EventType.ADD_TO_CART)])
    taken = logic.snapshot()
    st = logic.state
    assert st is not None and pending(st, cfg)  # a cart waits: due() may judge it
    logic.on_notify()
    assert logic._snap is None  # not known to be the state's bytes any more
    assert logic.snapshot() is not taken
