"""A user's cart as a timeline, and the abandonments it contains, in any arrival order.

The cart stage of the per-user step (:mod:`attune.operators.user_step`), after sessions and
windows, before segments: :func:`observe` adds an event to the user's
:class:`CartTimeline`; the trigger stage (:mod:`attune.operators.trigger_decisions`) takes
the abandonments that are due.

The cart is the fold, in event-time order, of its *entries*: adds and removes
(cart activity) and orders (a purchase empties the cart). Entries are kept
sorted by ``(event time, event id)`` however they arrive, so the cart and its
abandonments are a function of the set of entries, not of arrival order or
batching (anonymous history handed over at login arrives after newer events).

The abandonment rule (the generator's ground truth, ``CartOutcome``): after a
cart activity at ``t`` that leaves the cart non-empty, if no cart activity or
order follows within ``abandon_after_ms`` (an order at exactly
``t + abandon_after_ms`` still converts), the cart is abandoned with cause
``t``, due at ``t + abandon_after_ms``, with the lines it had after ``t``.
Abandonment does not empty the cart; a later add starts a new wait.

:meth:`CartTimeline.take_due` returns the abandonments whose due time a
*settled* time has passed (no entry older than it can still arrive) and that
did not fire before; each fires once. Entries older than the latest order that
a judgement has passed are folded away (every episode before it is decided),
and so are the oldest when there are more than ``MAX_CART_OPS``.

>>> cart = CartTimeline()
>>> cart.add(1_000, "e1", "i1", 2, 500)
>>> cart.add(2_000, "e2", "i2", 1, 900)
>>> cart.current()
{'i1': (2, 500), 'i2': (1, 900)}
>>> [(a.activity_ms, a.value_minor) for a in cart.take_due(now_ms=10_000, after_ms=5_000)]
[(2000, 1900)]
>>> cart.take_due(now_ms=20_000, after_ms=5_000)  # fired once
[]
"""

from __future__ import annotations

from bisect import insort
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from attune.operators.events import AddToCart, Event, LineItem, Purchase, RemoveFromCart

MAX_CART_LINES = 100
MAX_CART_OPS = 256

#: ``(event time, event id, item id, signed quantity, unit price)``; quantity 0 is an order.
Entry = tuple[int, str, str, int, int]
ORDER = 0
MAX_WAKE = 2**62


@dataclass(frozen=True, slots=True)
class Abandonment:
    """An abandoned cart: the activity at ``activity_ms`` left these lines for too long."""

    activity_ms: int
    due_ms: int
    lines: tuple[LineItem, ...]

    @property
    def value_minor(self) -> int:
        return sum(line.quantity * line.unit_price_minor for line in self.lines)


def fold(
    base: Mapping[str, tuple[int, int]], entries: Iterable[Entry]
) -> dict[str, tuple[int, int]]:
    """Apply entries in order: an add opens a line at its price or adds units; a remove
    takes units away, dropping the line at zero (removing what is absent does nothing);
    an order empties the cart."""
    cart = dict(base)
    for entry in entries:
        _step(cart, entry)
    return cart


def _step(cart: dict[str, tuple[int, int]], entry: Entry) -> None:
    _, _, item, qty, price = entry
    if qty == ORDER:
        cart.clear()
        return
    line = cart.get(item)
    if qty > 0:
        if line is not None:
            cart[item] = (line[0] + qty, line[1])
        elif len(cart) < MAX_CART_LINES:
            cart[item] = (qty, price)
    elif line is not None:
        left = line[0] + qty
        if left > 0:
            cart[item] = (left, line[1])
        else:
            del cart[item]


@dataclass(slots=True)
class CartTimeline:
    """Cart entries since ``horizon_ms`` (sorted), the cart at the horizon, and which
    abandonments (by cause time) already fired. Pickles; bounded by ``MAX_CART_OPS``."""

    base: dict[str, tuple[int, int]] = field(default_factory=dict)
    horizon_ms: int | None = None
    entries: list[Entry] = field(default_factory=list)
    fired: list[int] = field(default_factory=list)
    #: No abandonment is due before this (``None``: unknown); a judgement skips the scan.
    wake_ms: int | None = None

    def add(self, t: int, event_id: str, item: str, quantity: int, price_minor: int) -> None:
        """An add (``quantity > 0``) or a remove (``quantity < 0``) at event time ``t``."""
        if quantity == ORDER:
            raise ValueError("a cart operation needs a non-zero quantity")
        self._insert((t, event_id, item, quantity, price_minor))

    def order(self, t: int, event_id: str) -> None:
        """A purchase at ``t``: the cart is empty after it."""
        self._insert((t, event_id, "", ORDER, 0))

    def _insert(self, entry: Entry) -> None:
        if self.horizon_ms is not None and entry[0] <= self.horizon_ms:
            return  # older than what is folded away: decided already
        self.wake_ms = None
        entries = self.entries
        if not entries or entry >= entries[-1]:
            entries.append(entry)
        else:
            insort(entries, entry)
        if len(entries) > MAX_CART_OPS:  # fold the older half
            half = MAX_CART_OPS // 2
            self._fold_through(half)

    def _fold_through(self, n: int) -> None:
        self.base = fold(self.base, self.entries[:n])
        self.horizon_ms = self.entries[n - 1][0]
        del self.entries[:n]
        horizon = self.horizon_ms
        self.fired = [f for f in self.fired if f > horizon]

    def current(self) -> dict[str, tuple[int, int]]:
        """The cart now: item id -> (units, unit price in minor units)."""
        return fold(self.base, self.entries)

    def _abandoned(self, after_ms: int) -> Iterator[tuple[int, dict[str, tuple[int, int]]]]:
        """Every abandonment in the timeline, fired or not, including the pending last one
        (due when nothing follows it in time), as (cause time, the cart after it); the cart
        is the fold's own, read it before the next one."""
        cart = dict(self.base)
        entries = self.entries
        last = len(entries) - 1
        for i, entry in enumerate(entries):
            _step(cart, entry)
            if entry[3] == ORDER or not cart:
                continue
            t = entry[0]
            if i == last or entries[i + 1][0] > t + after_ms:
                yield t, cart

    def next_due_ms(self, after_ms: int) -> int | None:
        """When the earliest abandonment that has not fired will be due, ``None`` if none."""
        fired = self.fired
        return next((t + after_ms for t, _ in self._abandoned(after_ms) if t not in fired), None)

    def nothing_due(self, now_ms: int) -> bool:
        """Whether :meth:`take_due` at ``now_ms`` is known to find nothing, without a scan
        (nothing changed since it last looked, and the next abandonment is not yet due)."""
        return self.wake_ms is not None and now_ms <= self.wake_ms

    def take_due(self, now_ms: int, after_ms: int) -> list[Abandonment]:
        """Abandonments due strictly before the settled time ``now_ms`` that have not fired;
        marks them fired, then folds away what ``now_ms`` decided (up to the latest order)."""
        if self.nothing_due(now_ms):
            return []  # nothing changed and nothing due yet: no scan
        fired = self.fired
        due = [
            Abandonment(t, t + after_ms, _lines(cart))
            for t, cart in self._abandoned(after_ms)
            if t + after_ms < now_ms and t not in fired
        ]
        for a in due:
            insort(self.fired, a.activity_ms)
        last_order = max(
            (i for i, e in enumerate(self.entries) if e[3] == ORDER and e[0] < now_ms),
            default=None,
        )
        if last_order is not None:
            self._fold_through(last_order + 1)
        later = self.next_due_ms(after_ms)
        self.wake_ms = MAX_WAKE if later is None else later
        return due


def _lines(cart: Mapping[str, tuple[int, int]]) -> tuple[LineItem, ...]:
    return tuple(LineItem(item, q, p) for item, (q, p) in cart.items())


def observe(cart: CartTimeline, event: Event) -> None:
    """The cart stage: an add, a remove or an order joins the timeline (other events do
    not touch it)."""
    p, t = event.payload, event.event_time
    if isinstance(p, AddToCart):
        cart.add(t, event.event_id, p.item_id, p.quantity, p.unit_price_minor)
    elif isinstance(p, RemoveFromCart):
        cart.add(t, event.event_id, p.item_id, -p.quantity, 0)
    elif isinstance(p, Purchase):
        cart.order(t, event.event_id)  # the order empties the cart
