"""The Bytewax wrapper of the per-user step: lifecycle, timers, retention, snapshots.

The ``user_state`` step of the flow (:func:`attune.flows.personalize.build_flow`), keyed
by canonical user. :class:`UserLogic` holds one user's
:class:`~attune.operators.user_state.UserState` and hands each batch to
:func:`~attune.operators.user_step.fold_batch`; its timer judges what waits for time
(:func:`~attune.operators.trigger_decisions.due`) and evicts an idle state.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from bytewax.operators import StatefulBatchLogic

from attune.operators import snapshots
from attune.operators.consent import EVENTS_WITHHELD
from attune.operators.identity import Forget, UserInput
from attune.operators.membership import evict
from attune.operators.trigger_decisions import due, pending, quiet
from attune.operators.user_config import ProfileConfig
from attune.operators.user_state import Output, UserState
from attune.operators.user_step import end_of_input, fold_batch, handover_overdue, went_idle

#: How often a user with a pending cart looks at the stream clock (wall time).
TIMER_POLL = timedelta(seconds=1)
#: ... and a user whose event-caused triggers wait for a login's history: in a live
#: stream that wait is tens of milliseconds (until the stream clock has read past the
#: login), and these triggers count against the 100 ms event -> trigger target: at 50 ms
#: on the 100 ms grid they waited 50-150 ms (the p95-p99 of the latency bench).
DEFERRED_POLL = timedelta(milliseconds=10)
#: While the stream is live (its clock keeps pace with the wall clock), a pending cart
#: wakes when it is due instead of polling: at least this long, at most ...
LIVE_WAKE_MIN_MS = 20
#: ... this long between looks (the stream clock may stall).
LIVE_WAKE_MAX_MS = 10_000
#: A user idle this long (wall clock) keeps its state as snapshot bytes until it comes
#: back: ~3x less memory for the many users between sessions, and no thawing for a
#: user in the middle of one (a thaw costs about as much as a snapshot).
IDLE_FREEZE = timedelta(seconds=60)
#: A replay or catch-up (the stream clock is not live) runs hours of event time in
#: minutes, so nearly no user is idle for IDLE_FREEZE of wall time before the input
#: ends and every state stays thawed (25 KB a user at 50,000 users). So, this long
#: (wall) after its batch, a user looks at the stream clock, and freezes if its session
#: is over in event time (the settled time is a session gap past its latest event) and
#: nothing waits: the same bytes as the idle freeze, only sooner. If not, it looks again
#: after twice the wait (2, 4, 8, ... s: the replay's speed is not known), until the idle
#: freeze comes first.
REPLAY_IDLE_CHECK = timedelta(seconds=2)
_REPLAY_CHECK_MS = int(REPLAY_IDLE_CHECK.total_seconds() * 1000)
#: Wake times of cart polls are rounded up to this grid (ms), those of deferred triggers
#: (a few users just logged in) to the finer one ...
POLL_GRID_MS = 100
DEFERRED_GRID_MS = 10
#: ... and those of the idle freeze and the TTL to this one.
IDLE_GRID_MS = 1_000


def _on_grid(ms: float, grid_ms: int) -> datetime:
    """The wall time ``ms`` (epoch ms) rounded up to a multiple of ``grid_ms``."""
    return datetime.fromtimestamp(math.ceil(ms / grid_ms) * grid_ms / 1000, UTC)


Keyed = tuple[str, UserInput]


class UserLogic(StatefulBatchLogic[Keyed, Output, bytes]):
    """Per-user step: :func:`~attune.operators.user_step.fold_batch` per batch.

    Values are ``(user key, input)``: Bytewax 0.21 builds a logic from its
    resume state only, so a new state learns its user from the first value.

    Retention: the state is discarded once ``cfg.state_ttl`` of wall-clock time
    (``cfg.clock``) has passed since its latest batch; the time is kept in the state
    (``active_ms``), so a restart from a snapshot does not restart the wait. The user
    leaves every audience when it goes (their Redis keys expire by their own TTL).
    """

    __slots__ = (
        "_active_ms",
        "_check_ms",
        "_due_ms",
        "_freeze_ms",
        "_frozen",
        "_snap",
        "_state",
        "_ttl_ms",
        "_wake_ms",
        "cfg",
    )

    def __init__(
        self, resume: bytes | None, cfg: ProfileConfig, idle_freeze: timedelta = IDLE_FREEZE
    ) -> None:
        # A user idle for IDLE_FREEZE (wall clock) keeps its state as snapshot bytes
        # (``_frozen``, a third of the objects' memory), thawed by the next access;
        # ``_active_ms`` answers the TTL check without thawing.
        self._state: UserState | None = None
        self._frozen = resume
        # Snapshot bytes of the thawed ``_state`` as it is (None: not known): taken by
        # :meth:`snapshot` or kept from a thaw, dropped by whatever may change the state
        # (a batch, a judgement that is not :func:`quiet`, the end of input), so that a
        # freeze or a snapshot of a state nothing changed since does not pickle it again.
        self._snap: bytes | None = None
        self._active_ms: int | None = None
        self.cfg = cfg
        self._ttl_ms = int(cfg.state_ttl.total_seconds() * 1000)
        self._freeze_ms = int(idle_freeze.total_seconds() * 1000)
        self._check_ms = _REPLAY_CHECK_MS  # doubles at each look that finds it busy
        # Frozen while only a cart waits (_freeze_waiting): the stream clock reading past
        # which the cart may be due (thaw then), and when it is due (the live poll's wait).
        self._wake_ms: int | None = None
        self._due_ms: int | None = None

    @property
    def state(self) -> UserState | None:
        """The user's state, thawed from its snapshot bytes if it was frozen."""
        if self._frozen is not None:
            self._state = snapshots.loads(self._frozen)
            self._snap, self._frozen, self._wake_ms = self._frozen, None, None
        return self._state

    @state.setter
    def state(self, value: UserState | None) -> None:
        self._state, self._frozen, self._wake_ms, self._snap = value, None, None, None

    def on_batch(self, values: list[Keyed]) -> tuple[Iterable[Output], bool]:
        st = self.state
        self._snap = None  # the batch changes the state
        if st is None:
            # A Forget sent again (a link that arrived again) for a key with no state: the
            # first one forgot it, or it never had one. Nothing to do, nothing to write.
            while values and isinstance(values[0][1], Forget) and values[0][1].again:
                values = values[1:]
            if not values:
                return [], StatefulBatchLogic.DISCARD
            st = UserState(user_id=values[0][0])
        kept, out = fold_batch(st, [item for _, item in values], self.cfg)
        self.state = kept
        if kept is None:  # merged into its user
            return out, StatefulBatchLogic.DISCARD
        if kept.withheld:
            EVENTS_WITHHELD.inc(kept.withheld)
            kept.withheld = 0
        out.extend(due(kept, self.cfg))
        kept.active_ms = self.cfg.clock.now_ms()
        self._check_ms = _REPLAY_CHECK_MS
        return out, StatefulBatchLogic.RETAIN

    def _latest_active_ms(self) -> int | None:
        if self._frozen is not None and self._active_ms is not None:
            return self._active_ms
        st = self.state
        return None if st is None else st.active_ms

    def expired(self) -> bool:
        """Whether the state has been idle (wall clock) for the state TTL."""
        active = self._latest_active_ms()
        return active is None or self.cfg.clock.now_ms() >= active + self._ttl_ms

    def on_notify(self) -> tuple[Iterable[Output], bool]:
        if self.expired():
            st = self.state
            if st is None:
                return [], StatefulBatchLogic.DISCARD
            gone = evict(st.membership, st.user_id, st.activity.max_time, self.cfg)
            return gone, StatefulBatchLogic.DISCARD
        if self._frozen is not None and not self._cart_may_be_due():
            return [], StatefulBatchLogic.RETAIN  # frozen: nothing due yet
        st = self.state  # thawed if a frozen cart may be due
        if st is None:
            return [], StatefulBatchLogic.DISCARD
        if st.handover is not None or not quiet(st):
            self._snap = None  # a held hand-over or a judgement may change the state
        out = [*handover_overdue(st, self.cfg), *due(st, self.cfg)]
        if self.cfg.clock.now_ms() >= st.active_ms + self._freeze_ms:  # idle
            if st.models.recs_due:
                self._snap = None  # went_idle ranks the list held back
            out.extend(went_idle(st, self.cfg))  # e.g. a list held back by the gap, now
            if not pending(st, self.cfg):
                self._freeze(st)
            else:
                self._freeze_waiting(st)
        elif self._idle_in_event_time(st):
            self._freeze(st)
        elif self._freeze_waiting(st):
            return out, StatefulBatchLogic.RETAIN  # frozen while only its cart waits
        elif self.cfg.clock.now_ms() >= st.active_ms + self._check_ms:
            self._check_ms *= 2  # still busy by the stream clock: look again later
        return out, StatefulBatchLogic.RETAIN

    def _replaying(self) -> bool:
        """Whether the stream clock has a settled time and is not live (a replay)."""
        clock = self.cfg.stream_clock
        return clock.now_ms() is not None and not clock.live()

    def _idle_in_event_time(self, st: UserState) -> bool:
        """Whether the user's session is over by the stream clock (a replay: see
        :data:`REPLAY_IDLE_CHECK`) and nothing of it waits (no pending judgement, no list
        due), so freezing it now changes nothing but memory."""
        clock = self.cfg.stream_clock
        settled = clock.now_ms()
        return (
            settled is not None
            and not clock.live()
            and settled >= st.activity.max_time + self.cfg.session_gap_ms
            and not st.models.recs_due
            and not pending(st, self.cfg)
            and (st.handover is None or st.handover.idle())  # inputs held for a login
        )

    def on_eof(self) -> tuple[Iterable[Output], bool]:
        was_frozen = self._frozen is not None
        st = self.state
        if st is None:
            return [], StatefulBatchLogic.RETAIN
        self._snap = None  # the end of input judges and summarises
        out = end_of_input(st, self.cfg)
        if was_frozen and not pending(st, self.cfg):
            # Frozen again: every user gets this call at once, and thawing all of them
            # together would hold every state's objects at the same time.
            self._freeze(st)
        return out, StatefulBatchLogic.RETAIN

    def _freeze(self, st: UserState) -> None:
        """Keep ``st`` as its snapshot bytes (nothing of it waits for time); those of the
        latest snapshot or thaw if nothing changed the state since."""
        frozen = self._snap if self._snap is not None else snapshots.dumps(st)
        self._frozen, self._state, self._active_ms = frozen, None, st.active_ms
        self._wake_ms = self._snap = None

    def _freeze_waiting(self, st: UserState) -> bool:
        """Keep ``st`` as its snapshot bytes if all that waits for time is its cart, and
        the stream clock alone tells when the cart may be due; whether it did.

        A replay of many users holds each user's cart for ``abandon_after`` of event time,
        thawed and polled every :data:`TIMER_POLL`: every poll woke the key and Bytewax
        snapshotted it again (new bytes per user per epoch, beside the state's objects:
        ~7 KB of RSS a user at 50,000 users, docs/reliability.md "Memory under abuse").
        Frozen, a poll reads the stream clock only, and the snapshot is the frozen bytes.

        Conditions, so that :func:`~attune.operators.trigger_decisions.due` would find
        nothing until the clock passes ``cart.wake_ms``: no deferred trigger, no
        hand-over awaited, the cart's next look known (``wake_ms``, set by the last
        ``due``), the user's own settled time (at most its latest event less the
        settling time) not past it, and no list held back (``recs_due``, for
        :func:`~attune.operators.user_step.went_idle`)."""
        cart, trig, cfg = st.cart, st.trig, self.cfg
        wake = cart.wake_ms
        if (
            wake is None
            or not trig.known
            or trig.deferred
            or trig.awaiting
            or st.models.recs_due
            or st.activity.max_time - cfg.triggers.settle_ms > wake
        ):
            return False
        due_ms = cart.next_due_ms(cfg.triggers.abandon_after_ms)
        if due_ms is None:
            return False  # nothing waits: the other freezes' business
        self._freeze(st)
        self._wake_ms, self._due_ms = wake, due_ms
        return True

    def _cart_may_be_due(self) -> bool:
        """Whether a user frozen while its cart waits must thaw to be judged: the stream
        clock passed the cart's next look (``due`` then may find it due)."""
        if self._wake_ms is None:
            return False
        now = self.cfg.stream_clock.now_ms()
        return now is not None and now > self._wake_ms

    def notify_at(self) -> datetime | None:
        # Wake times are rounded up to a grid so that many users wake in one activation:
        # Bytewax scans every key's timer on each activation of the step, so each distinct
        # wake time costs a pass over all users.
        if self._frozen is not None and self._active_ms is not None:
            if self._wake_ms is not None:  # frozen while its cart waits: poll the clock
                poll, grid = self._poll_cart(self._due_ms)
                return _on_grid(time.time() * 1000 + poll / timedelta(milliseconds=1), grid)
            # frozen when nothing waited for time (see on_notify): the TTL is next
            return _on_grid(self._active_ms + self._ttl_ms, IDLE_GRID_MS)
        st = self.state
        if st is not None and pending(st, self.cfg):  # poll the stream clock while these wait
            poll, grid = self._poll(st)
            return _on_grid(time.time() * 1000 + poll / timedelta(milliseconds=1), grid)
        if st is None:
            return _on_grid(self.cfg.clock.now_ms() + self._ttl_ms, IDLE_GRID_MS)
        # idle: freeze after IDLE_FREEZE, then wait for the TTL; in a replay, look at the
        # stream clock once REPLAY_IDLE_CHECK after the batch (_idle_in_event_time)
        wake = st.active_ms + min(self._freeze_ms, self._ttl_ms)
        check = st.active_ms + self._check_ms
        if check < wake and self.cfg.clock.now_ms() < check and self._replaying():
            wake = check
        return _on_grid(wake, IDLE_GRID_MS)

    def _poll(self, st: UserState) -> tuple[timedelta, int]:
        """How long a pending user waits before it looks at the stream clock again, and
        the grid (ms) its wake time is rounded up to."""
        if st.trig.deferred:
            return DEFERRED_POLL, DEFERRED_GRID_MS
        return self._poll_cart(st.cart.next_due_ms(self.cfg.triggers.abandon_after_ms))

    def _poll_cart(self, due_ms: int | None) -> tuple[timedelta, int]:
        """:meth:`_poll` for a user whose cart is next due at ``due_ms`` (event time)."""
        clock = self.cfg.stream_clock
        if clock.live():  # event time keeps pace with the wall: sleep until it is due
            now_ms = clock.now_ms()
            if due_ms is not None and now_ms is not None and due_ms >= now_ms:
                # judged once the settled time is strictly past the due time
                wait = min(max(due_ms + 1 - now_ms, LIVE_WAKE_MIN_MS), LIVE_WAKE_MAX_MS)
                return timedelta(milliseconds=wait), POLL_GRID_MS
        return TIMER_POLL, POLL_GRID_MS

    def snapshot(self) -> bytes:
        # A pickle is the immutable copy Bytewax asks for, ~10x cheaper than deepcopy;
        # snapshots.dumps pickles the state's dataclasses by their field values.
        if self._frozen is not None:
            return self._frozen
        if self._snap is None:
            self._snap = snapshots.dumps(self._state)
        return self._snap
