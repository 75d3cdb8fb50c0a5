"""The ground truth of a generated workload: what a correct dataflow must conclude, and its rules.

:mod:`attune.workload.generator` simulates the events; as it emits them it
counts each user's *counted* events with a :class:`Tally`, and at the end of the
stream it hands back a :class:`GroundTruth` built from the tallies. Tests
compare what the flow wrote (Redis, triggers, dead letters) against it exactly;
``attune generate`` writes it next to the events as ``<out>.truth.json``
(:meth:`GroundTruth.to_json`, read back with :meth:`GroundTruth.from_json`).

>>> from attune.workload.generator import GeneratorConfig, ground_truth
>>> truth = ground_truth(GeneratorConfig(users=20, days=2, seed=4))
>>> GroundTruth.from_json(truth.to_json()) == truth
True
>>> truth.session_gap_ms == SESSION_GAP_MS, truth.abandon_after_ms == ABANDON_AFTER_MS
(True, True)

Ground truth definitions
------------------------
All figures of :class:`GroundTruth` are computed over the *counted* events:
distinct event ids (a duplicate counts once), too-late events excluded (the
flow dead-letters them), in event-time order per user. They are keyed by the
canonical user: the ``user_id`` for users who identified or were known (their
anonymous activity before identifying counts for them) and the anonymous id
for users who never identified. See :class:`UserTruth` and
:class:`CartOutcome` for each figure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from attune.operators.clock import MINUTE_MS
from attune.operators.events import (
    PAYLOAD_OF_TYPE,
    AddToCart,
    ConsentUpdate,
    Dwell,
    ErasureRequest,
    Event,
    Identify,
    LineItem,
    PageView,
    ProductView,
    Purchase,
    RemoveFromCart,
    Search,
)

__all__ = [
    "ABANDON_AFTER_MS",
    "SESSION_GAP_MS",
    "CartOutcome",
    "ConsentChange",
    "GroundTruth",
    "UserTruth",
]

#: The truth's session rule: a gap longer than this between two counted events starts a session.
SESSION_GAP_MS = 30 * MINUTE_MS
#: The truth's cart rule: a cart with items and no cart activity or purchase for this long.
ABANDON_AFTER_MS = 30 * MINUTE_MS

#: Profile fields that must equal the truth's per-user figures exactly (the checks of
#: tests/truth.py and ``attune chaos`` compare these).
COUNTERS = (
    "events",
    "page_views",
    "product_views",
    "searches",
    "add_to_carts",
    "purchases",
    "revenue_minor",
    "sessions",
    "first_seen_ms",
    "last_seen_ms",
)

#: Payloads that only count: nothing else in the truth depends on them.
_PASSIVE = frozenset({PageView, ProductView, Search, Dwell})


@dataclass(frozen=True, slots=True)
class ConsentChange:
    """One counted ``CONSENT`` event of a user; ``None`` leaves a purpose as it was."""

    time_ms: int
    event_id: str
    analytics: bool | None
    personalization: bool | None
    marketing: bool | None
    source: str | None


@dataclass(frozen=True, slots=True)
class CartOutcome:
    """A cart that was abandoned or converted, under the truth's cart rule.

    The rule, over the user's counted events in event-time order: the cart
    starts empty; ``ADD_TO_CART`` adds ``quantity`` of an item (a line keeps the
    unit price and category of the add that opened it; lines are in the order
    they were opened); ``REMOVE_FROM_CART`` subtracts ``quantity``, dropping the
    line at zero (removing what is not in the cart changes nothing). Both are
    *cart activity*. A ``PURCHASE`` empties the cart. After a cart activity at
    ``t`` that leaves the cart non-empty:

    - a purchase at ``t' <= t + ABANDON_AFTER_MS`` (inclusive), with no cart
      activity in between, *converts* the cart: ``lines`` are the cart's lines
      just before the purchase, ``purchase_ms``/``order_id`` set;
    - otherwise, when no cart activity or purchase follows within
      ``ABANDON_AFTER_MS``, the cart is *abandoned*, ``due_ms = t +
      ABANDON_AFTER_MS``, ``lines`` as they were after the activity at ``t``.
      Abandonment does not empty the cart: a later add starts a new wait with
      the old lines still in it, and a later purchase empties it.

    ``next_event_ms`` is the event time of the user's first counted event (of
    any type) after ``last_activity_ms``, ``None`` if there is none:
    ``later_event`` is ``next_event_ms is not None``. Carts still waiting at
    the end of the stream are abandoned (check ``due_ms`` against the end).
    """

    user: str
    last_activity_ms: int
    due_ms: int
    lines: tuple[LineItem, ...]
    value_minor: int
    currency: str
    next_event_ms: int | None
    later_event: bool
    purchase_ms: int | None = None
    order_id: str | None = None


@dataclass(frozen=True, slots=True)
class UserTruth:
    """What a correct flow knows about one canonical user after the whole stream.

    Counts are over the user's counted events (distinct ids, too-late events
    excluded), anonymous events before identifying included:

    - ``events``: all counted events of every type;
    - ``page_views``, ``product_views``, ``searches``, ``add_to_carts``,
      ``remove_from_carts``, ``purchases``, ``dwells``, ``consents``,
      ``identifies``: counted events of that type (events, not units);
    - ``revenue_minor``: sum of ``total_minor`` of counted purchases;
    - ``sessions``: 1 + the number of gaps longer than ``SESSION_GAP_MS``
      between consecutive counted events sorted by event time (no counted gap
      lies between 28 and 46 minutes, so ``>`` or ``>=`` agree);
    - ``first_seen_ms``/``last_seen_ms``: smallest/largest counted event time.

    Identity: ``user`` is the canonical id (``user_id`` if the user ever sent
    an event with it, else their only anonymous id); ``anonymous_ids`` in
    order of first use; ``identity`` is ``known`` (user_id from the first
    event), ``identified`` (anonymous first, ``identified_ms`` = time of the
    first ``IDENTIFY``) or ``anonymous``.

    Consent: ``consent`` lists the counted ``CONSENT`` events in time order;
    ``final_consent`` applies them in order. ``consent_restricted`` is true if
    any purpose was ever false; ``erasure_ms`` is the time of the user's
    ``ERASURE`` event (their last). ``exact`` (neither) marks the users whose
    figures a flow must reproduce without privacy rules in the way.

    Planted preferences (what the behaviour was drawn from, not measured):
    ``favourite_categories`` (category path -> weight, summing to 1),
    ``price_band``, ``favourite_brands``, ``sessions_per_week``; ``lapsed`` and
    ``never_returned`` say why a user stopped.
    """

    user: str
    user_id: str | None
    anonymous_ids: tuple[str, ...]
    identity: str
    identified_ms: int | None
    events: int
    page_views: int
    product_views: int
    searches: int
    add_to_carts: int
    remove_from_carts: int
    purchases: int
    revenue_minor: int
    dwells: int
    consents: int
    identifies: int
    sessions: int
    first_seen_ms: int
    last_seen_ms: int
    consent: tuple[ConsentChange, ...]
    final_consent: dict[str, bool]
    consent_restricted: bool
    erasure_ms: int | None
    favourite_categories: dict[str, float]
    price_band: str
    favourite_brands: tuple[str, ...]
    sessions_per_week: float
    lapsed: bool
    never_returned: bool

    @property
    def exact(self) -> bool:
        """No consent restriction ever and no erasure: every figure must show as is."""
        return not self.consent_restricted and self.erasure_ms is None


@dataclass(frozen=True, slots=True)
class GroundTruth:
    """The expected outcome of a generated stream. See the module docstring for the rules.

    - ``config``: the :class:`~attune.workload.generator.GeneratorConfig` as a dict;
    - ``late_allowed_ms``: the largest delay of an ordinary late event; a flow
      allowing this lateness loses none of them. ``too_late_min_ms``: the
      smallest delay of a too-late event, which a flow must dead-letter;
    - ``emitted_events`` (duplicates included), ``distinct_events``,
      ``counted_events`` (distinct, not too late); ``end_ms``: the largest
      counted event time; ``last_emission_ms``: emission time of the last event;
    - ``too_late_min_lag_ms``: over the too-late events, the smallest gap between
      the largest event time emitted before one and its own event time (``None``
      without too-late events): a flow whose watermark trails the largest event
      time seen by less than this dead-letters every one of them, and no
      ordinary late event trails it by more than ``late_allowed_ms``;
    - ``too_late_event_ids``, ``duplicate_event_ids``, ``late_event_ids``
      (sorted);
    - ``users``: canonical id -> :class:`UserTruth`, in user order;
      ``anonymous_to_user``: every anonymous id -> its canonical user;
    - ``abandoned_carts`` (by ``due_ms``) and ``converted_carts`` (by
      ``purchase_ms``): :class:`CartOutcome`;
    - ``price_bands``: category -> ``[low_max, high_min]``: an item's band is
      ``low`` if its price <= low_max, else ``high`` if >= high_min, else ``mid``.
    """

    config: dict[str, Any]
    late_allowed_ms: int
    too_late_min_ms: int
    session_gap_ms: int
    abandon_after_ms: int
    currency: str
    start_ms: int
    end_ms: int
    last_emission_ms: int
    too_late_min_lag_ms: int | None
    emitted_events: int
    distinct_events: int
    counted_events: int
    too_late_event_ids: tuple[str, ...]
    duplicate_event_ids: tuple[str, ...]
    late_event_ids: tuple[str, ...]
    users: dict[str, UserTruth]
    anonymous_to_user: dict[str, str]
    abandoned_carts: tuple[CartOutcome, ...]
    converted_carts: tuple[CartOutcome, ...]
    price_bands: dict[str, tuple[int, int]]

    def exact_users(self) -> list[str]:
        """Canonical ids of the users without consent restrictions or erasure, in user order."""
        return [u for u, t in self.users.items() if t.exact]

    def to_json(self) -> bytes:
        """The truth as indented JSON (orjson); :meth:`from_json` reads it back equal."""
        return orjson.dumps(self, option=orjson.OPT_INDENT_2)

    @classmethod
    def from_json(cls, data: bytes | str) -> GroundTruth:
        raw: dict[str, Any] = orjson.loads(data)
        users = {k: _user_truth_from_json(v) for k, v in raw["users"].items()}
        return cls(
            **{
                **raw,
                "too_late_event_ids": tuple(raw["too_late_event_ids"]),
                "duplicate_event_ids": tuple(raw["duplicate_event_ids"]),
                "late_event_ids": tuple(raw["late_event_ids"]),
                "users": users,
                "abandoned_carts": tuple(_cart_from_json(c) for c in raw["abandoned_carts"]),
                "converted_carts": tuple(_cart_from_json(c) for c in raw["converted_carts"]),
                "price_bands": {k: (v[0], v[1]) for k, v in raw["price_bands"].items()},
            }
        )


def _cart_from_json(raw: dict[str, Any]) -> CartOutcome:
    return CartOutcome(**{**raw, "lines": tuple(LineItem(**x) for x in raw["lines"])})


def _user_truth_from_json(raw: dict[str, Any]) -> UserTruth:
    return UserTruth(
        **{
            **raw,
            "anonymous_ids": tuple(raw["anonymous_ids"]),
            "consent": tuple(ConsentChange(**c) for c in raw["consent"]),
            "favourite_brands": tuple(raw["favourite_brands"]),
        }
    )


# --- the tally -------------------------------------------------------------------------------


@dataclass(slots=True)
class CartLine:
    """One line of a cart being filled: the simulated user's cart and the tally's alike."""

    item_id: str
    quantity: int
    price: int
    category: str | None


class Tally:
    """Counts one user's counted events as they are generated (event-time order).

    This is the generator's own bookkeeping of the ground truth (one per
    simulated user, fed by :mod:`attune.workload.generator`); tests derive the
    same figures independently from the emitted events.
    """

    __slots__ = (
        "abandoned", "cart", "consent", "converted", "counts", "erasure_ms", "events",
        "first", "identified_ms", "last", "next_event", "pending", "revenue", "sessions",
    )  # fmt: skip

    def __init__(self) -> None:
        # Keyed by payload class: hashing a class is cheap, hashing a StrEnum member is not.
        self.counts: dict[type[Any], int] = dict.fromkeys(PAYLOAD_OF_TYPE.values(), 0)
        self.events = 0
        self.revenue = 0
        self.sessions = 0
        self.first: int | None = None
        self.last: int | None = None
        self.cart: dict[str, CartLine] = {}
        self.pending: int | None = None
        self.next_event: int | None = None
        self.abandoned: list[tuple[int, tuple[LineItem, ...], int, int | None]] = []
        self.converted: list[tuple[int, tuple[LineItem, ...], int, int, str]] = []
        self.consent: list[ConsentChange] = []
        self.identified_ms: int | None = None
        self.erasure_ms: int | None = None

    def _lines(self) -> tuple[tuple[LineItem, ...], int]:
        lines = tuple(
            LineItem(x.item_id, x.quantity, x.price, x.category) for x in self.cart.values()
        )
        return lines, sum(x.quantity * x.unit_price_minor for x in lines)

    def _abandon(self) -> None:
        assert self.pending is not None
        lines, value = self._lines()
        self.abandoned.append((self.pending, lines, value, self.next_event))
        self.pending = None

    def add(self, e: Event) -> None:
        t = e.event_time
        if self.last is None or t - self.last > SESSION_GAP_MS:
            self.sessions += 1
        if self.first is None:
            self.first = t
        self.last = t
        self.events += 1
        p = e.payload
        cls = p.__class__
        self.counts[cls] += 1
        if self.pending is not None and self.next_event is None:
            self.next_event = t
        if cls in _PASSIVE:
            return
        if isinstance(p, AddToCart | RemoveFromCart):
            self._cart_change(p, t)
        elif isinstance(p, Purchase):
            self._purchase(p, t)
        elif isinstance(p, ConsentUpdate):
            self.consent.append(
                ConsentChange(t, e.event_id, p.analytics, p.personalization, p.marketing, p.source)
            )
        elif isinstance(p, Identify):
            if self.identified_ms is None:
                self.identified_ms = t
        elif isinstance(p, ErasureRequest):
            self.erasure_ms = t

    def _cart_change(self, p: AddToCart | RemoveFromCart, t: int) -> None:
        """An add or removal: a cart pending for too long is abandoned first, then the cart
        changes and is pending from ``t`` if anything is left in it."""
        if self.pending is not None and t - self.pending > ABANDON_AFTER_MS:
            self._abandon()
        line = self.cart.get(p.item_id)
        if isinstance(p, AddToCart):
            if line is None:
                self.cart[p.item_id] = CartLine(
                    p.item_id, p.quantity, p.unit_price_minor, p.category
                )
            else:
                line.quantity += p.quantity
        elif line is not None:
            line.quantity -= p.quantity
            if line.quantity <= 0:
                del self.cart[p.item_id]
        self.pending = t if self.cart else None
        self.next_event = None

    def _purchase(self, p: Purchase, t: int) -> None:
        """A purchase: its revenue; the pending cart converted (or abandoned if pending for
        too long), and emptied."""
        self.revenue += p.total_minor
        if self.pending is not None:
            if t - self.pending <= ABANDON_AFTER_MS:
                lines, value = self._lines()
                self.converted.append((self.pending, lines, value, t, p.order_id))
                self.pending = None
            else:
                self._abandon()
        self.cart.clear()

    def finish(self) -> None:
        if self.pending is not None:
            self._abandon()
