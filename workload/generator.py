"""Synthetic shop traffic with a known answer: events, catalogue updates and their ground truth.

The generator is the source of every end-to-end test and demo: it simulates a
shop's catalogue and users with planted (latent) preferences, and writes down
what any correct dataflow must conclude from the events it emits (the
:class:`~attune.workload.truth.GroundTruth`, whose rules :mod:`attune.workload.truth`
defines). It is pure and deterministic: the same
:class:`GeneratorConfig` gives the same events, byte for byte once encoded,
whatever ``PYTHONHASHSEED`` is. It does no I/O; :mod:`attune.flows.generate` writes the
events to a file or to Kafka.

>>> from attune.operators.events import validate_event
>>> g = generate(GeneratorConfig(users=30, days=3, seed=5))
>>> events = list(g.events)                 # a one-shot iterator, in emission order
>>> len(events) == g.truth.emitted_events   # the truth is complete once it is exhausted
True
>>> all(validate_event(e) is None for e in events)
True
>>> len({e.event_type for e in events})    # every type but UNKNOWN
10
>>> truth = g.truth
>>> truth.counted_events == sum(u.events for u in truth.users.values())
True
>>> user = truth.users[truth.exact_users()[0]]
>>> user.sessions >= 1 and user.first_seen_ms <= user.last_seen_ms
True

What is simulated
-----------------
- A catalogue of ``items`` items in 8 top categories x 4 subcategories
  (``"electronics/phones"``), 5 brands per top category, log-normal prices in
  cents with a distinct median per subcategory, tags and created times. A few
  items are created during the simulated days, and items go out of stock and
  come back; every change is an :class:`~attune.operators.events.ItemUpdate`
  (``Generated.items``: the snapshot at ``start_ms`` first, then changes, by
  ``updated_time``). Out-of-stock items can be viewed, never added to a cart.
- Users with latent preferences: 1-3 favourite categories with Dirichlet(1)
  weights, a favourite brand per favourite top category, a price band
  (low/mid/high tertile of their category's prices) and an activity level
  (sessions per week, log-normal, so heavy-tailed). Some arrive later than day
  0, some lapse (stop in the first half), some never identify, some browse
  anonymously and identify later (``IDENTIFY`` with both ids; every later event
  carries both), the rest are known from their first event. Identified users
  may later use a second device: a new anonymous id that browses anonymously
  and then logs in within that session.
- Sessions with a diurnal rhythm in the user's time zone. Within a session the
  gap between two events of a user is 1 s to 14 min; between sessions it is
  more than 45 min. A 30-minute inactivity rule therefore finds the
  generator's sessions, and still does when any single event is removed (two
  consecutive events are never both too late, see below).
- Funnels: home and category pages, searches, product views (mostly in
  favourite categories and price band), dwell heartbeats every 10 s on product
  pages (``dwell_ms`` = 10 000, 20 000, ...; some long dwells end without an
  add to cart), add to cart, remove from cart, purchase of the whole cart
  (total = sum of quantity x unit price, EUR) or abandonment; carts persist
  across sessions. Checkout is likelier when the cart was filled in this
  session (a cart left from an earlier visit converts less), for returning
  buyers and on desktop (``CHECKOUT_*``), so purchase propensity is learnable
  from behaviour. After an abandoning session a share of users never comes
  back, some right after their last add to cart: their abandonment must fire
  without a further event.
- Consent: every user's first event is a ``CONSENT`` (all purposes set; shares
  deny marketing or personalization), a share withdraws one purpose later, a
  new device repeats the current consent, and a share ends with an
  ``ERASURE`` request (their last event).
- Noise, per event and mutually exclusive: exact duplicates (the same object
  emitted again 1-60 s later), late events (emitted 5-120 s after their event
  time) and too-late events (emitted 3-6 h after their event time).
  ``CONSENT`` and ``ERASURE`` events are never late or too late, ``IDENTIFY``
  is never too late; any event may be duplicated.

The stream is ordered by emission time (event time + delay), ties broken by
generation order. Simulating a day at a time and sorting, it holds about one
day of events in memory.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from attune.operators.clock import DAY_MS, HOUR_MS, MINUTE_MS, SECOND_MS
from attune.operators.events import (
    MAX_EVENT_TIME_MS,
    MIN_EVENT_TIME_MS,
    AddToCart,
    ConsentUpdate,
    Context,
    Dwell,
    ErasureRequest,
    Event,
    EventType,
    Identify,
    ItemUpdate,
    LineItem,
    PageView,
    Payload,
    ProductView,
    Purchase,
    RemoveFromCart,
    Search,
)
from attune.workload.truth import (
    ABANDON_AFTER_MS,
    SESSION_GAP_MS,
    CartLine,
    CartOutcome,
    GroundTruth,
    Tally,
    UserTruth,
)

__all__ = [
    "DEFAULT_START_MS",
    "LATE_ALLOWED_MS",
    "TOO_LATE_MIN_MS",
    "Generated",
    "GeneratorConfig",
    "generate",
    "ground_truth",
]

#: 2026-01-05T00:00:00Z, a Monday.
DEFAULT_START_MS = 1_767_571_200_000

#: Largest gap between two consecutive events of a session (2 x 14 min < 30 min).
MAX_IN_SESSION_GAP_MS = 14 * MINUTE_MS
#: Smallest gap between the last event of a session and the first of the next.
MIN_SESSION_BREAK_MS = 46 * MINUTE_MS
#: Delay of ordinary late events: 5 s .. LATE_ALLOWED_MS after their event time.
LATE_MIN_MS = 5 * SECOND_MS
LATE_ALLOWED_MS = 120 * SECOND_MS
#: Delay of too-late events: TOO_LATE_MIN_MS .. TOO_LATE_MAX_MS after their event time.
TOO_LATE_MIN_MS = 3 * HOUR_MS
TOO_LATE_MAX_MS = 6 * HOUR_MS
#: A too-late event trails a newer event of its own message key by at least this.
TOO_LATE_KEY_LEAD_MS = 30 * MINUTE_MS
#: A duplicate is re-sent 1 s .. DUPLICATE_MAX_DELAY_MS after its original was emitted.
DUPLICATE_MAX_DELAY_MS = 60 * SECOND_MS
HEARTBEAT_MS = 10 * SECOND_MS
CURRENCY = "EUR"
PURPOSES = ("analytics", "personalization", "marketing")
PRICE_BANDS = ("low", "mid", "high")

_NOT_TOO_LATE = frozenset({EventType.CONSENT, EventType.IDENTIFY, EventType.ERASURE})
_NOT_LATE = frozenset({EventType.CONSENT, EventType.ERASURE})


# --- configuration ---------------------------------------------------------------------------


def _opt(default: Any, lo: float, hi: float, doc: str) -> Any:
    return field(default=default, metadata={"doc": doc, "range": (lo, hi)})


@dataclass(frozen=True, slots=True)
class GeneratorConfig:
    """What to simulate. Every value is validated; a share is a fraction in [0, 1].

    User-level shares (``anonymous_share`` ... ``second_device_share``) give
    exactly ``round(share * users)`` users, at least one when the share is
    positive. Noise shares are per distinct event.

    >>> GeneratorConfig(users=0)
    Traceback (most recent call last):
    ...
    ValueError: GeneratorConfig.users must be an integer in [1, 1000000], got 0
    """

    users: int = _opt(1000, 1, 1_000_000, "Number of simulated users.")
    days: int = _opt(7, 1, 366, "Number of simulated days from start_ms.")
    seed: int = _opt(0, 0, 2**63 - 1, "Seed: the same config gives the same events.")
    start_ms: int = _opt(
        DEFAULT_START_MS,
        MIN_EVENT_TIME_MS,
        MAX_EVENT_TIME_MS - 400 * DAY_MS,
        "Start of the simulated period, epoch ms UTC (default 2026-01-05T00:00Z).",
    )
    items: int | None = _opt(
        None, 32, 1_000_000, "Catalogue size (default: 20 per user, 64..2000)."
    )
    duplicate_share: float = _opt(
        0.01, 0.0, 0.2, "Share of events re-sent once, 1-60 s later, with the same id."
    )
    late_share: float = _opt(
        0.02, 0.0, 0.5, "Share of events emitted 5-120 s after their event time."
    )
    too_late_share: float = _opt(
        0.003, 0.0, 0.1, "Share of events emitted 3-6 h after their event time."
    )
    anonymous_share: float = _opt(0.25, 0.0, 1.0, "Share of users who never identify.")
    identify_share: float = _opt(
        0.35, 0.0, 1.0, "Share of users who browse anonymously, then identify."
    )
    no_marketing_share: float = _opt(
        0.10, 0.0, 1.0, "Share of users who deny marketing at their first visit."
    )
    no_personalization_share: float = _opt(
        0.03, 0.0, 1.0, "Share of users who deny personalization at their first visit."
    )
    withdrawal_share: float = _opt(
        0.03, 0.0, 1.0, "Share of users who withdraw a purpose (marketing first) later."
    )
    erasure_share: float = _opt(
        0.005, 0.0, 1.0, "Share of users whose last event is an erasure request."
    )
    lapsed_share: float = _opt(
        0.10, 0.0, 1.0, "Share of users who stop for good during the first half."
    )
    second_device_share: float = _opt(
        0.10, 0.0, 1.0, "Share of users who later browse on a second device, then log in."
    )
    never_return_share: float = _opt(
        0.05, 0.0, 1.0, "Share of cart-abandoning sessions after which the user never returns."
    )

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            lo, hi = f.metadata["range"]
            if f.name == "items" and value is None:
                continue
            if isinstance(f.default, float):
                ok = isinstance(value, int | float) and not isinstance(value, bool)
                ok = ok and lo <= value <= hi
                kind = "a number"
            else:
                ok = isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi
                kind = "an integer"
            if not ok:
                raise ValueError(
                    f"GeneratorConfig.{f.name} must be {kind} in [{lo}, {hi}], got {value!r}"
                )
        if self.anonymous_share + self.identify_share > 1.0:
            raise ValueError(
                "GeneratorConfig.anonymous_share + identify_share must be <= 1, got "
                f"{self.anonymous_share} + {self.identify_share}"
            )

    @property
    def item_count(self) -> int:
        """``items``, or its default: 20 per user, at least 64, at most 2000."""
        return self.items if self.items is not None else max(64, min(2000, 20 * self.users))

    @property
    def end_ms(self) -> int:
        """End of the simulated period (sessions that start before it may run past it)."""
        return self.start_ms + self.days * DAY_MS


# --- the catalogue ---------------------------------------------------------------------------

#: Top category, median price in cents, (subcategory, price factor, product noun), brands.
_CATEGORIES: tuple[tuple[str, int, tuple[tuple[str, float, str], ...], tuple[str, ...]], ...] = (
    (
        "electronics",
        19_900,
        (
            ("phones", 2.5, "Smartphone"),
            ("laptops", 4.5, "Laptop"),
            ("audio", 0.6, "Headphones"),
            ("cameras", 2.0, "Camera"),
        ),
        ("Voltra", "Nordvik", "Pixelon", "Sonique", "Kairo"),
    ),
    (
        "fashion",
        4_900,
        (
            ("shoes", 1.6, "Sneakers"),
            ("jackets", 2.2, "Jacket"),
            ("dresses", 1.2, "Dress"),
            ("accessories", 0.5, "Scarf"),
        ),
        ("Maren", "Urbanite", "Lumo", "Fjell", "Cortina"),
    ),
    (
        "home",
        5_900,
        (
            ("furniture", 4.0, "Armchair"),
            ("kitchen", 0.8, "Pan"),
            ("bedding", 1.0, "Duvet"),
            ("decor", 0.5, "Vase"),
        ),
        ("Hygga", "Casara", "Oakwell", "Domo", "Lindqvist"),
    ),
    (
        "sports",
        3_900,
        (
            ("running", 1.5, "Running Shoes"),
            ("cycling", 3.0, "Bike Helmet"),
            ("fitness", 0.8, "Yoga Mat"),
            ("outdoor", 1.4, "Backpack"),
        ),
        ("Stride", "Velox", "Peakline", "Forza", "Tundra"),
    ),
    (
        "beauty",
        1_900,
        (
            ("skincare", 1.2, "Face Cream"),
            ("makeup", 0.8, "Lipstick"),
            ("fragrance", 2.5, "Eau de Parfum"),
            ("haircare", 0.6, "Shampoo"),
        ),
        ("Aurea", "Belle Rive", "Lumina", "Veda", "Solenne"),
    ),
    (
        "books",
        1_400,
        (
            ("fiction", 1.0, "Novel"),
            ("nonfiction", 1.3, "Biography"),
            ("children", 0.7, "Picture Book"),
            ("comics", 0.8, "Graphic Novel"),
        ),
        ("Penfold", "Inkwell", "Northstar", "Quill & Co", "Harbor"),
    ),
    (
        "toys",
        2_400,
        (
            ("puzzles", 0.8, "Puzzle"),
            ("building", 2.0, "Building Set"),
            ("dolls", 1.0, "Doll"),
            ("games", 1.3, "Board Game"),
        ),
        ("Brickly", "Playwise", "Tinker", "Moppet", "Kubo"),
    ),
    (
        "grocery",
        900,
        (
            ("coffee", 1.5, "Coffee Beans"),
            ("tea", 0.8, "Green Tea"),
            ("snacks", 0.5, "Granola"),
            ("wine", 2.0, "Red Wine"),
        ),
        ("Bellacrema", "Verdant", "Crunchy Co", "Vinara", "Alpine Farm"),
    ),
)
_ADJECTIVES = ("Classic", "Pro", "Lite", "Max", "Eco", "Plus", "Air", "Ultra", "Mini", "Prime")
_EXTRA_TAGS = ("bestseller", "new", "eco", "gift", "sale", "limited")
#: Share of catalogue items created during the simulated period, not before it.
_NEW_ITEM_SHARE = 0.05
#: Checkout: a user with a cart who does not leave goes to checkout with probability
#: CHECKOUT_BASE x the factors below (capped at CHECKOUT_MAX), the conversion drivers
#: retail analytics report: intent fresh in this session (an add to cart now) versus a
#: cart left from an earlier visit, returning buyers, and desktop over mobile.
CHECKOUT_BASE = 0.4
CHECKOUT_MAX = 0.9
CHECKOUT_FRESH = 1.35
CHECKOUT_STALE = 0.45
CHECKOUT_BUYER = 1.25
CHECKOUT_FIRST_ORDER = 0.9
CHECKOUT_DEVICE = {"DESKTOP": 1.2, "MOBILE": 0.85, "TABLET": 1.0}
#: Chance per day that an in-stock item sells out.
_SELL_OUT_PER_DAY = 0.01


@dataclass(slots=True)
class _Item:
    item_id: str
    category: str
    top: str
    noun: str
    brand: str
    price: int
    created: int
    title: str
    tags: tuple[str, ...]
    band: str = "mid"
    stock_times: list[int] = field(default_factory=list)
    stock_states: list[bool] = field(default_factory=list)

    def in_stock(self, t: int) -> bool:
        if not self.stock_times:
            return True
        i = bisect.bisect_right(self.stock_times, t) - 1
        return True if i < 0 else self.stock_states[i]

    def update(self, in_stock: bool, updated: int) -> ItemUpdate:
        return ItemUpdate(
            item_id=self.item_id,
            title=self.title,
            category_path=tuple(self.category.split("/")),
            price_minor=self.price,
            currency=CURRENCY,
            in_stock=in_stock,
            created_time=self.created,
            updated_time=updated,
            brand=self.brand,
            tags=self.tags,
        )


class _Pool:
    """Items to draw from with Zipf-like popularity (first is most popular)."""

    __slots__ = ("cum", "items", "total")

    def __init__(self, items: list[_Item]) -> None:
        self.items = items
        self.cum = list(itertools.accumulate(1.0 / (r + 1) ** 0.9 for r in range(len(items))))
        self.total = self.cum[-1]

    def draw(self, rng: random.Random) -> _Item:
        return self.items[bisect.bisect_right(self.cum, rng.random() * self.total)]


class _Catalogue:
    def __init__(self, config: GeneratorConfig) -> None:
        rng = random.Random(_seed(config.seed, 0, 0, 1))
        start, end = config.start_ms, config.end_ms
        leaves = [
            (top, f"{top}/{sub}", median * factor, noun, brands)
            for top, median, subs, brands in _CATEGORIES
            for sub, factor, noun in subs
        ]
        self.categories: list[str] = [leaf[1] for leaf in leaves]
        self.top_of: dict[str, str] = {leaf[1]: leaf[0] for leaf in leaves}
        self.noun_of: dict[str, str] = {leaf[1]: leaf[3] for leaf in leaves}
        self.brands_of_top: dict[str, tuple[str, ...]] = {t: b for t, _, _, b in _CATEGORIES}
        self.items: list[_Item] = []
        n = config.item_count
        for i in range(n):
            # One item per category first, so that no category is empty.
            top, cat, median, noun, brands = leaves[i] if i < len(leaves) else rng.choice(leaves)
            brand = rng.choice(brands)
            price = max(99, round(rng.lognormvariate(math.log(median), 0.45) / 100) * 100 - 1)
            if i >= len(leaves) and rng.random() < _NEW_ITEM_SHARE:
                created = rng.randint(start, end - 1)
            else:
                created = start - rng.randint(DAY_MS, 730 * DAY_MS)
            adjective = rng.choice(_ADJECTIVES)
            tags = (
                cat.split("/")[1],
                adjective.lower(),
                *rng.sample(_EXTRA_TAGS, rng.randint(0, 2)),
            )
            title = (
                f"{brand} {adjective} {noun} {rng.choice('ABCDEFGHKMRSTXZ')}{rng.randint(1, 99)}"
            )
            self.items.append(
                _Item(f"i{i:05d}", cat, top, noun, brand, price, created, title, tags)
            )
        # Price bands: tertiles of each category's prices.
        self.price_bands: dict[str, tuple[int, int]] = {}
        for cat in self.categories:
            prices = sorted(it.price for it in self.items if it.category == cat)
            k = len(prices)
            self.price_bands[cat] = (prices[max(0, math.ceil(k / 3) - 1)], prices[(2 * k) // 3])
        for it in self.items:
            low_max, high_min = self.price_bands[it.category]
            it.band = "low" if it.price <= low_max else "high" if it.price >= high_min else "mid"
        # Popularity: a random order per category; pools by category, band and brand.
        by_cat: dict[str, list[_Item]] = {c: [] for c in self.categories}
        for it in self.items:
            by_cat[it.category].append(it)
        self.pool: dict[str, _Pool] = {}
        self.band_pool: dict[tuple[str, str], _Pool] = {}
        self.brand_pool: dict[tuple[str, str], _Pool] = {}
        for cat in self.categories:
            members = by_cat[cat]
            rng.shuffle(members)
            self.pool[cat] = _Pool(members)
            for band in PRICE_BANDS:
                sub = [it for it in members if it.band == band]
                if sub:
                    self.band_pool[(cat, band)] = _Pool(sub)
            for brand in self.brands_of_top[self.top_of[cat]]:
                sub = [it for it in members if it.brand == brand]
                if sub:
                    self.brand_pool[(cat, brand)] = _Pool(sub)
        self.updates = self._stock_changes(rng, start, config.days)

    def _stock_changes(self, rng: random.Random, start: int, days: int) -> list[ItemUpdate]:
        snapshot = [it.update(True, start) for it in self.items if it.created < start]
        changes: list[tuple[int, str, ItemUpdate]] = [
            (it.created, it.item_id, it.update(True, it.created))
            for it in self.items
            if it.created >= start
        ]
        for d in range(days):
            day_start = start + d * DAY_MS
            for it in self.items:
                t = day_start + rng.randint(0, DAY_MS - 1)
                if rng.random() >= _SELL_OUT_PER_DAY or t <= it.created or not it.in_stock(t):
                    continue
                if it.stock_times and it.stock_times[-1] > t:
                    continue  # still out of stock from an earlier sell-out
                back = t + rng.randint(6 * HOUR_MS, 4 * DAY_MS)
                it.stock_times += [t, back]
                it.stock_states += [False, True]
                changes.append((t, it.item_id, it.update(False, t)))
                if back < start + days * DAY_MS:
                    changes.append((back, it.item_id, it.update(True, back)))
        changes.sort(key=lambda c: (c[0], c[1]))
        return snapshot + [c[2] for c in changes]

    def pick(
        self, rng: random.Random, cat: str, band: str | None, brand: str | None, t: int
    ) -> _Item:
        pool = None
        if brand is not None:
            pool = self.brand_pool.get((cat, brand))
        if pool is None and band is not None:
            pool = self.band_pool.get((cat, band))
        if pool is None:
            pool = self.pool[cat]
        for _ in range(4):
            it = pool.draw(rng)
            if it.created <= t:
                return it
        for it in self.pool[cat].items:
            if it.created <= t:
                return it
        return it  # pragma: no cover - the first items of each category predate the start


# --- the population --------------------------------------------------------------------------

_COUNTRIES: tuple[tuple[str, str, str, int, float], ...] = (
    # country, region, time zone, standard UTC offset in minutes, weight
    ("DE", "DE-BE", "Europe/Berlin", 60, 0.22),
    ("DE", "DE-BY", "Europe/Berlin", 60, 0.18),
    ("FR", "FR-IDF", "Europe/Paris", 60, 0.16),
    ("NL", "NL-NH", "Europe/Amsterdam", 60, 0.12),
    ("ES", "ES-MD", "Europe/Madrid", 60, 0.10),
    ("GB", "GB-LND", "Europe/London", 0, 0.12),
    ("US", "US-NY", "America/New_York", -300, 0.10),
)
_COUNTRY_CUM = list(itertools.accumulate(c[4] for c in _COUNTRIES))
#: Relative chance that a session starts in each local hour.
_HOUR_CUM = list(
    itertools.accumulate(
        (0.3, 0.15, 0.08, 0.05, 0.05, 0.1, 0.3, 0.6, 0.9, 1.0, 1.0, 1.1,
         1.2, 1.1, 1.0, 1.0, 1.1, 1.3, 1.6, 1.9, 2.1, 1.9, 1.3, 0.7)
    )
)  # fmt: skip
_USER_AGENTS = {
    ("DESKTOP", "WEB"): "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/131.0 Safari/537.36",
    ("MOBILE", "WEB"): "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) "
    "AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
    ("TABLET", "WEB"): "Mozilla/5.0 (iPad; CPU OS 17_5 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.5 Safari/604.1",
    ("MOBILE", "APP"): "AttuneShop/4.2.0 (Android 14; Pixel 8)",
    ("TABLET", "APP"): "AttuneShop/4.2.0 (iPadOS 17.5; iPad13,4)",
}
_LANDINGS: tuple[tuple[str | None, str | None, str | None, str | None], ...] = (
    # referrer, utm_source, utm_medium, utm_campaign
    (None, None, None, None),
    ("https://www.google.com/", None, None, None),
    ("https://www.google.com/", "google", "cpc", "winter_sale"),
    (None, "newsletter", "email", "weekly_picks"),
    ("https://www.instagram.com/", "instagram", "social", "new_arrivals"),
    ("https://blog.example.org/best-of-2026", "partner", "affiliate", "blog_review"),
)
_LANDING_CUM = list(itertools.accumulate((0.35, 0.2, 0.15, 0.12, 0.1, 0.08)))
_FIRST_NAMES = (
    "anna", "ben", "clara", "david", "emma", "felix", "greta", "hugo", "ida", "jonas",
    "lena", "max", "nina", "oskar", "paula", "rosa", "samuel", "tara", "vera", "yusuf",
)  # fmt: skip
_LAST_NAMES = (
    "schmidt", "dubois", "jansen", "garcia", "smith", "rossi", "novak", "berg", "weber",
    "martin", "visser", "lopez", "brown", "keller", "moreau", "fischer",
)  # fmt: skip
_SHOP = "https://shop.example.com"
_APP = "app://shop"


def _seed(seed: int, user: int, day: int, purpose: int) -> int:
    """An RNG seed unique to (seed, user, day, purpose): an injective packing of the four."""
    return ((seed * (1 << 32) + user) * (1 << 16) + day) * 16 + purpose


def _uuid(rng: random.Random) -> str:
    """A random version-4 UUID string from ``rng`` (what ``uuid.uuid4()`` would look like)."""
    g = rng.getrandbits
    # %-formatting: twice as fast as str.format here, and this runs for every event.
    return "%08x-%04x-4%03x-%04x-%012x" % (g(32), g(16), g(12), 0x8000 | g(14), g(48))  # noqa: UP031


def _count(share: float, n: int) -> int:
    return 0 if share <= 0 else min(n, max(1, round(share * n)))


def _poisson(rng: random.Random, lam: float) -> int:
    limit, k, p = math.exp(-lam), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


@dataclass(slots=True)
class _Device:
    anonymous_id: str
    device: str
    channel: str


class _User:
    """One simulated user: latent preferences, identity, cart and the day-by-day simulation."""

    def __init__(
        self,
        gen: _Generator,
        index: int,
        *,
        user_id: str,
        anonymous_id: str,
        identity: str,
        flags: frozenset[str],
    ) -> None:
        cfg = gen.config
        rng = random.Random(_seed(cfg.seed, index, 0, 2))
        self.gen = gen
        self.index = index
        self.user_id = user_id
        self.identity = identity  # known | identify | anonymous (planned)
        self.flags = flags
        # The draws from rng come in this order (the workload of a seed depends on it):
        # tastes, country, device, name and phone, then the plan.
        self._draw_tastes(rng)
        country = _COUNTRIES[bisect.bisect_left(_COUNTRY_CUM, rng.random() * _COUNTRY_CUM[-1])]
        self.country, self.region, self.tz, offset_min, _ = country
        self.offset_ms = offset_min * MINUTE_MS
        self.devices = [_Device(anonymous_id, *self._draw_device(rng))]
        first, last = rng.choice(_FIRST_NAMES), rng.choice(_LAST_NAMES)
        self.email = f"{first}.{last}{index}@example.com"
        self.phone = f"+44 7700 900{rng.randint(0, 999):03d}" if rng.random() < 0.4 else None
        self._draw_plan(rng)
        self.consent = {
            "analytics": True,
            "personalization": "no_personalization" not in flags,
            "marketing": "no_marketing" not in flags,
        }
        # Simulation state.
        self.identified = identity == "known"
        self.sessions_done = 0
        self.last_time: int | None = None
        self.stopped = False
        self.never_returned = False
        self.cart: dict[str, CartLine] = {}
        self.session_adds = 0  # add-to-carts in the current session
        self.orders = 0  # purchases so far
        self.prev_too_late = False
        self.day_events: list[tuple[Event, int, bool]] = []
        self.tally = Tally()
        # Per-session state, set by _session.
        self.rng = rng
        self.t = 0
        self.device = self.devices[0]
        self.session_id: str | None = None
        self.logged_in = False
        self.ctx_base: tuple[str, str, str, str] = ("", "", "", "")
        self.landing: tuple[str | None, str | None, str | None, str | None] = _LANDINGS[0]
        self.ctx_url = ""
        self.ctx = Context()

    def _draw_tastes(self, rng: random.Random) -> None:
        """Draw the user's favourite categories, price band, brands and activity (by __init__)."""
        cat = self.gen.catalogue
        n_fav = rng.choices((1, 2, 3), cum_weights=(0.35, 0.75, 1.0))[0]
        favs = rng.sample(cat.categories, n_fav)
        raw = [rng.gammavariate(1.0, 1.0) + 1e-9 for _ in favs]
        self.favourites: dict[str, float] = {
            c: w / sum(raw) for c, w in zip(favs, raw, strict=True)
        }
        self.fav_cum = list(itertools.accumulate(self.favourites.values()))
        self.fav_list = list(self.favourites)
        self.band = rng.choices(PRICE_BANDS, cum_weights=(0.35, 0.8, 1.0))[0]
        self.brand_of_top: dict[str, str] = {}
        for c in favs:
            top = cat.top_of[c]
            if top not in self.brand_of_top:
                self.brand_of_top[top] = rng.choice(cat.brands_of_top[top])
        self.activity = min(40.0, max(0.5, rng.lognormvariate(math.log(6.5), 0.9)))

    def _draw_plan(self, rng: random.Random) -> None:
        """Draw when the user arrives, lapses, asks for erasure, withdraws consent, identifies
        and brings a second device, by its flags and planned identity (by __init__)."""
        cfg = self.gen.config
        flags, identity, days = self.flags, self.identity, cfg.days
        self.arrival_day = 0 if "early" in flags or rng.random() < 0.5 else rng.randrange(days)
        day0 = cfg.start_ms + self.arrival_day * DAY_MS
        self.lapse_at: int | None = None
        if "lapsed" in flags and days >= 2:
            self.lapse_at = rng.randint(
                day0 + DAY_MS, max(day0 + DAY_MS, cfg.start_ms + days * DAY_MS // 2)
            )
        self.erase_at: int | None = None
        if "erasure" in flags:
            lo = max(day0 + DAY_MS // 2, cfg.start_ms + days * DAY_MS // 2)
            self.erase_at = rng.randint(lo, max(lo, cfg.end_ms - 2 * HOUR_MS))
        self.withdraw_at: int | None = None
        if "withdrawal" in flags:
            self.withdraw_at = rng.randint(day0 + DAY_MS // 2, max(day0 + DAY_MS // 2, cfg.end_ms))
        self.identify_session = rng.choices((0, 1, 2, 3), cum_weights=(0.4, 0.7, 0.9, 1.0))[0]
        self.second_device_session: int | None = None
        if "second_device" in flags and identity != "anonymous":
            after = self.identify_session if identity == "identify" else 0
            self.second_device_session = after + 1 + rng.randint(0, 3)

    @staticmethod
    def _draw_device(rng: random.Random) -> tuple[str, str]:
        device = rng.choices(("DESKTOP", "MOBILE", "TABLET"), cum_weights=(0.45, 0.9, 1.0))[0]
        channel = "APP" if device != "DESKTOP" and rng.random() < 0.3 else "WEB"
        return device, channel

    # -- emission

    def _emit(self, etype: EventType, payload: Payload, url: str, landing: bool = False) -> Event:
        """Make an event at the current time, add noise, queue it, count it in the truth."""
        rng = self.rng
        gen = self.gen
        if landing or url != self.ctx_url:
            # Events on one page (a product view, its heartbeats, an add) share one Context.
            device, channel, ip, ua = self.ctx_base
            ref, src, med, camp = self.landing if landing else _LANDINGS[0]
            self.ctx = Context(
                device, channel, self.country, self.region, self.tz, url, ref, src, med, camp,
                ip, ua,
            )  # fmt: skip
            self.ctx_url = "" if landing else url
        ctx = self.ctx
        t = self.t
        event = Event(
            event_id=_uuid(rng),
            event_type=etype,
            event_time=t,
            payload=payload,
            user_id=self.user_id if self.logged_in else None,
            anonymous_id=self.device.anonymous_id,
            session_id=self.session_id,
            context=ctx,
        )
        gen.emitted += 1
        r = rng.random()
        delay = 0
        candidate = False
        if r < gen.p_too_late:
            if etype not in _NOT_TOO_LATE and not self.prev_too_late:
                delay = rng.randint(TOO_LATE_MIN_MS, TOO_LATE_MAX_MS)
                candidate = True
        elif r < gen.p_late:
            if etype not in _NOT_LATE:
                delay = rng.randint(LATE_MIN_MS, LATE_ALLOWED_MS)
                gen.late_ids.append(event.event_id)
        elif r < gen.p_duplicate:
            gen.batch.append(
                (t + rng.randint(SECOND_MS, DUPLICATE_MAX_DELAY_MS), next(gen.seq), event, False)
            )
            gen.duplicate_ids.append(event.event_id)
            gen.emitted += 1
        # Emission and the tally wait for the end of the day: a too-late candidate
        # needs the events that follow it (see _flush_day).
        self.day_events.append((event, delay, candidate))
        self.prev_too_late = candidate
        self.last_time = t
        return event

    def _flush_day(self) -> None:
        """Emit the day's events and count them, deciding each too-late candidate.

        A candidate is too late only if a later event of the same message key
        (user id, else anonymous id) that day is at least ``TOO_LATE_KEY_LEAD_MS``
        newer; its delay then also covers that event's emission (plus the largest
        ordinary lateness), so it trails its own key, and so any partition the key
        maps to, by more than any allowed lateness below ``TOO_LATE_KEY_LEAD_MS``.
        A candidate without such an event is emitted on time: the realised
        too-late share is below ``too_late_share``.
        """
        gen = self.gen
        day = self.day_events
        for i, (event, drawn, candidate) in enumerate(day):
            too_late = False
            delay = drawn
            if candidate:
                t = event.event_time
                key = event.user_id or event.anonymous_id
                newer = next(
                    (
                        later.event_time
                        for later, _, later_candidate in day[i + 1 :]
                        if later.event_time >= t + TOO_LATE_KEY_LEAD_MS
                        and not later_candidate
                        and (later.user_id or later.anonymous_id) == key
                    ),
                    None,
                )
                if newer is not None:
                    too_late = True
                    delay = max(drawn, newer - t + LATE_ALLOWED_MS + SECOND_MS)
            if too_late:
                gen.too_late_ids.append(event.event_id)
                gen.batch.append((event.event_time + delay, next(gen.seq), event, True))
            else:
                on_time = 0 if candidate else delay
                gen.batch.append((event.event_time + on_time, next(gen.seq), event, False))
                self.tally.add(event)
        self.day_events = []

    def _wait(self, lo_ms: int = SECOND_MS, median_ms: int = 15 * SECOND_MS) -> None:
        """Advance the clock by a think time: log-normal, 1 s .. 14 min."""
        gap = int(median_ms * math.exp(0.9 * self.rng.gauss()))
        self.t += min(MAX_IN_SESSION_GAP_MS, max(lo_ms, gap))

    def _url(self, path: str) -> str:
        return (_APP if self.ctx_base[1] == "APP" else _SHOP) + path

    # -- days and sessions

    def simulate_day(self, day: int, day_start: int) -> None:
        """Simulate the user's sessions of one day, then emit and count them."""
        try:
            self._simulate_day(day, day_start)
        finally:
            self._flush_day()

    def _simulate_day(self, day: int, day_start: int) -> None:
        if self.stopped or day < self.arrival_day:
            return
        cfg = self.gen.config
        rng = random.Random(_seed(cfg.seed, self.index, day + 1, 3))
        self.rng = rng
        n = _poisson(rng, self.activity / 7.0)
        if day == self.arrival_day and self.sessions_done == 0:
            n = max(n, 1)
        starts = sorted(self._session_start(rng, day_start) for _ in range(n))
        erase_today = self.erase_at is not None and day_start <= self.erase_at < day_start + DAY_MS
        for start in starts:
            if self.erase_at is not None and start >= self.erase_at:
                break
            if self.lapse_at is not None and start >= self.lapse_at:
                self.stopped = True
                return
            self._session(start)
            if self.stopped:
                return
        if erase_today:
            assert self.erase_at is not None
            self._session(self.erase_at, erase=True)
            self.stopped = True

    def _session_start(self, rng: random.Random, day_start: int) -> int:
        hour = bisect.bisect_left(_HOUR_CUM, rng.random() * _HOUR_CUM[-1])
        local = hour * HOUR_MS + rng.randrange(HOUR_MS)
        return day_start + (local - self.offset_ms) % DAY_MS

    def _session(self, start: int, erase: bool = False) -> None:
        index, new_device = self._open_session(start)
        landing = True  # the next event is the session's first page
        if index == 0 or new_device:
            # The banner on a new browser: the first visit chooses, a new device repeats it.
            self._consent_banner()
            landing = False
        if self.withdraw_at is not None and self.t >= self.withdraw_at:
            landing = self._withdraw_consent(landing)
        if erase:
            self._request_erasure(landing)
            return
        if self.identity == "known" and index == 0:
            self._identify("LOGIN", landing)
            landing = False
            self._wait()
        leave = self._browse(index, new_device, landing)
        if new_device and not self.logged_in:
            self._wait()
            self._identify("LOGIN")
        self._end_session(self.rng, leave)

    def _open_session(self, start: int) -> tuple[int, bool]:
        """Start a session at ``start`` (or after a break from the last one) on a device:
        the clock, device, network, session id and landing. Returns the session's index
        and whether it is on a new device."""
        rng = self.rng
        if self.last_time is not None:
            start = max(
                start, self.last_time + MIN_SESSION_BREAK_MS + rng.randrange(30 * MINUTE_MS)
            )
        self.t = start
        index = self.sessions_done
        self.sessions_done += 1
        new_device = index == self.second_device_session
        if new_device and not self.identified:
            # A second device only once the first is linked to the user id; try next time.
            assert self.second_device_session is not None
            self.second_device_session += 1
            new_device = False
        if new_device:
            self.devices.append(_Device(_uuid(rng), *self._draw_device(rng)))
            self.device = self.devices[-1]
            self.logged_in = False
        else:
            self.device = self.devices[0] if len(self.devices) == 1 else rng.choice(self.devices)
            self.logged_in = self.identified
        dev = self.device
        ip = (
            f"203.0.113.{rng.randint(1, 254)}"
            if rng.random() < 0.5
            else f"10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
        )
        ua = _USER_AGENTS.get((dev.device, dev.channel), _USER_AGENTS[("DESKTOP", "WEB")])
        self.ctx_base = (dev.device, dev.channel, ip, ua)
        self.session_adds = 0
        self.ctx_url = ""
        self.session_id = f"s-{rng.getrandbits(64):016x}" if rng.random() < 0.95 else None
        self.landing = _LANDINGS[bisect.bisect_left(_LANDING_CUM, rng.random() * _LANDING_CUM[-1])]
        return index, new_device

    def _consent_banner(self) -> None:
        """The consent banner on the landing page: the user's choices, as a consent update."""
        c = self.consent
        self._emit(
            EventType.CONSENT,
            ConsentUpdate(c["analytics"], c["personalization"], c["marketing"], "banner"),
            self._url("/"),
            landing=True,
        )
        self._wait(median_ms=4 * SECOND_MS)

    def _withdraw_consent(self, landing: bool) -> bool:
        """Withdraw marketing (else personalization) consent in the privacy settings, once
        the planned time has come; returns whether the next event still lands."""
        self.withdraw_at = None
        purpose = next((p for p in ("marketing", "personalization") if self.consent[p]), None)
        if purpose is None:
            return landing
        self.consent[purpose] = False
        payload = (
            ConsentUpdate(marketing=False, source="settings")
            if purpose == "marketing"
            else ConsentUpdate(personalization=False, source="settings")
        )
        self._emit(EventType.CONSENT, payload, self._url("/account/privacy"), landing)
        self._wait()
        return False

    def _request_erasure(self, landing: bool) -> None:
        """Open the privacy settings and ask for erasure."""
        self._emit(
            EventType.PAGE_VIEW,
            PageView("CONTENT", None, "Privacy settings"),
            self._url("/account/privacy"),
            landing,
        )
        self._wait()
        self._emit(
            EventType.ERASURE,
            ErasureRequest(
                f"er-{self.rng.getrandbits(48):012x}", "user request in privacy settings"
            ),
            self._url("/account/privacy"),
        )

    def _browse(self, index: int, new_device: bool, landing: bool) -> bool:
        """From the home page, a number of steps: categories, searches, removals from the
        cart and product views (identifying on the way if planned). True if the user
        leaves right after a product."""
        rng = self.rng
        steps = 1 + min(40, int(rng.expovariate(1 / 7.0)))
        identify_at = -1
        if self.identity == "identify" and not self.identified and index >= self.identify_session:
            identify_at = rng.randrange(steps)
        elif new_device:
            identify_at = rng.randint(0, 2)
        self._emit(EventType.PAGE_VIEW, PageView("HOME", None, "Home"), self._url("/"), landing)
        focus: str | None = None
        for step in range(steps):
            self._wait()
            if step == identify_at:
                self._identify("LOGIN" if self.identified else rng.choice(("SIGNUP", "LOGIN")))
                self._wait()
            r = rng.random()
            if r < 0.14:
                focus = self._pick_category(rng)
                top, sub = focus.split("/")
                self._emit(
                    EventType.PAGE_VIEW,
                    PageView("CATEGORY", focus, f"{sub.title()} | {top.title()}"),
                    self._url(f"/c/{focus}"),
                )
            elif r < 0.26:
                focus = self._search(rng)
            elif r < 0.31 and self.cart:
                self._remove(rng)
            # Leaving early; but a new device always logs in, to link its anonymous id.
            elif self._product(rng, focus) and (self.logged_in or not new_device):
                return True
        return False

    def _identify(self, method: str, landing: bool = False) -> None:
        rng = self.rng
        self.logged_in = True
        self.identified = True
        email = self.email if rng.random() < 0.9 else None
        phone = self.phone if rng.random() < 0.5 else None
        path = "/signup" if method == "SIGNUP" else "/login"
        self._emit(EventType.IDENTIFY, Identify(method, email, phone), self._url(path), landing)

    def _pick_category(self, rng: random.Random) -> str:
        if rng.random() < 0.8:
            return self.fav_list[bisect.bisect_left(self.fav_cum, rng.random() * self.fav_cum[-1])]
        return rng.choice(self.gen.catalogue.categories)

    def _search(self, rng: random.Random) -> str:
        cat = self._pick_category(rng)
        catalogue = self.gen.catalogue
        noun = catalogue.noun_of[cat].lower()
        brand = self.brand_of_top.get(catalogue.top_of[cat])
        query = f"{brand.lower()} {noun}" if brand and rng.random() < 0.4 else noun
        results = 0 if rng.random() < 0.05 else rng.randint(1, 240)
        self._emit(
            EventType.SEARCH,
            Search(query, cat if rng.random() < 0.4 else None, results),
            self._url(f"/search?q={query.replace(' ', '+')}"),
        )
        return cat

    def _product(self, rng: random.Random, focus: str | None) -> bool:
        """View a product, dwell, maybe add it to the cart; True if the user leaves right after."""
        cat = focus if focus is not None and rng.random() < 0.7 else self._pick_category(rng)
        catalogue = self.gen.catalogue
        band = self.band if rng.random() < 0.75 else None
        fav_brand = self.brand_of_top.get(catalogue.top_of[cat])
        brand = fav_brand if fav_brand is not None and rng.random() < 0.3 else None
        item = catalogue.pick(rng, cat, band, brand, self.t)
        view = self._emit(
            EventType.PRODUCT_VIEW,
            ProductView(item.item_id, item.category, item.price, CURRENCY),
            self._url(f"/p/{item.item_id}"),
        )
        beats = 0 if rng.random() < 0.35 else 1 + min(17, int(rng.expovariate(1 / 2.5)))
        for j in range(1, beats + 1):
            self.t += HEARTBEAT_MS + int(rng.random() * 200)
            self._emit(
                EventType.DWELL,
                Dwell(j * HEARTBEAT_MS, item.item_id, view.event_id),
                self._url(f"/p/{item.item_id}"),
            )
        p_add = 0.05 + 0.015 * beats
        if item.category in self.favourites:
            p_add *= 2.0
        if item.band == self.band:
            p_add *= 1.5
        if item.brand == fav_brand:
            p_add *= 1.3
        if rng.random() >= min(0.6, p_add) or not item.in_stock(self.t):
            return False
        self._wait(median_ms=5 * SECOND_MS)
        qty = 1 if rng.random() < 0.85 else rng.randint(2, 3)
        self._emit(
            EventType.ADD_TO_CART,
            AddToCart(item.item_id, qty, item.price, CURRENCY, item.category),
            self._url(f"/p/{item.item_id}"),
        )
        self.session_adds += 1
        line = self.cart.get(item.item_id)
        if line is None:
            self.cart[item.item_id] = CartLine(item.item_id, qty, item.price, item.category)
        else:
            line.quantity += qty
        return rng.random() < 0.2

    def _checkout_probability(self) -> float:
        """P(checkout) for a user with a cart who stays: see CHECKOUT_BASE and its factors."""
        p = CHECKOUT_BASE * (CHECKOUT_FRESH if self.session_adds else CHECKOUT_STALE)
        p *= CHECKOUT_BUYER if self.orders else CHECKOUT_FIRST_ORDER
        p *= CHECKOUT_DEVICE.get(self.device.device, 1.0)
        return min(CHECKOUT_MAX, p)

    def _remove(self, rng: random.Random) -> None:
        line = rng.choice(list(self.cart.values()))
        qty = line.quantity if rng.random() < 0.7 else 1
        self._emit(
            EventType.REMOVE_FROM_CART, RemoveFromCart(line.item_id, qty), self._url("/cart")
        )
        line.quantity -= qty
        if line.quantity <= 0:
            del self.cart[line.item_id]

    def _end_session(self, rng: random.Random, left: bool) -> None:
        if not self.cart:
            return
        if not left and rng.random() < self._checkout_probability():
            self._wait()
            self._emit(EventType.PAGE_VIEW, PageView("CART", None, "Cart"), self._url("/cart"))
            self._wait()
            self._emit(
                EventType.PAGE_VIEW,
                PageView("CHECKOUT", None, "Checkout"),
                self._url("/checkout"),
            )
            self._wait(median_ms=40 * SECOND_MS)
            lines = tuple(
                LineItem(x.item_id, x.quantity, x.price, x.category) for x in self.cart.values()
            )
            total = sum(x.quantity * x.unit_price_minor for x in lines)
            self._emit(
                EventType.PURCHASE,
                Purchase(f"o-{rng.getrandbits(64):016x}", lines, total, CURRENCY),
                self._url("/checkout/confirmation"),
            )
            self.cart.clear()
            self.orders += 1
            return
        # Abandoned: some never come back (never the ones who will ask for erasure).
        if self.erase_at is None and rng.random() < self.gen.config.never_return_share:
            self.stopped = True
            self.never_returned = True

    # -- truth

    def truth(self) -> UserTruth:
        tally = self.tally
        tally.finish()
        c = tally.counts
        canonical = self.user_id if self.identified else self.devices[0].anonymous_id
        final: dict[str, bool] = {}
        for change in tally.consent:
            for purpose in PURPOSES:
                value = getattr(change, purpose)
                if value is not None:
                    final[purpose] = value
        restricted = any(getattr(change, p) is False for change in tally.consent for p in PURPOSES)
        assert tally.first is not None and tally.last is not None
        return UserTruth(
            user=canonical,
            user_id=self.user_id if self.identified else None,
            anonymous_ids=tuple(d.anonymous_id for d in self.devices),
            identity=(
                "known"
                if self.identity == "known"
                else "identified"
                if self.identified
                else "anonymous"
            ),
            identified_ms=tally.identified_ms if self.identity == "identify" else None,
            events=tally.events,
            page_views=c[PageView],
            product_views=c[ProductView],
            searches=c[Search],
            add_to_carts=c[AddToCart],
            remove_from_carts=c[RemoveFromCart],
            purchases=c[Purchase],
            revenue_minor=tally.revenue,
            dwells=c[Dwell],
            consents=c[ConsentUpdate],
            identifies=c[Identify],
            sessions=tally.sessions,
            first_seen_ms=tally.first,
            last_seen_ms=tally.last,
            consent=tuple(tally.consent),
            final_consent=final,
            consent_restricted=restricted,
            erasure_ms=tally.erasure_ms,
            favourite_categories=dict(self.favourites),
            price_band=self.band,
            favourite_brands=tuple(self.brand_of_top.values()),
            sessions_per_week=self.activity,
            lapsed=self.lapse_at is not None and not self.never_returned,
            never_returned=self.never_returned,
        )


# --- the generator ---------------------------------------------------------------------------


class _Generator:
    """The whole simulation: catalogue, users, and the day-by-day merge into emission order."""

    def __init__(self, config: GeneratorConfig) -> None:
        self.config = config
        self.catalogue = _Catalogue(config)
        self.p_too_late = config.too_late_share
        self.p_late = self.p_too_late + config.late_share
        self.p_duplicate = self.p_late + config.duplicate_share
        self.seq = itertools.count()
        # (emission time, generation order, event, too late): sorted, the emission order.
        self.batch: list[tuple[int, int, Event, bool]] = []
        self.max_time = 0
        self.too_late_min_lag: int | None = None
        self.emitted = 0
        self.last_emission = 0
        self.too_late_ids: list[str] = []
        self.late_ids: list[str] = []
        self.duplicate_ids: list[str] = []
        self.users = self._population()

    def _population(self) -> list[_User]:
        cfg = self.config
        n = cfg.users
        rng = random.Random(_seed(cfg.seed, 0, 0, 4))
        order = list(range(n))
        rng.shuffle(order)
        n_anon = _count(cfg.anonymous_share, n)
        n_ident = min(n - n_anon, _count(cfg.identify_share, n))
        identity = ["known"] * n
        for i in order[:n_anon]:
            identity[i] = "anonymous"
        for i in order[n_anon : n_anon + n_ident]:
            identity[i] = "identify"
        flags: list[set[str]] = [set() for _ in range(n)]
        for name, share in (
            ("no_marketing", cfg.no_marketing_share),
            ("no_personalization", cfg.no_personalization_share),
            ("withdrawal", cfg.withdrawal_share),
            ("erasure", cfg.erasure_share),
        ):
            for i in rng.sample(range(n), _count(share, n)):
                flags[i].add(name)
        # Lapsing and erasing users are there from day 0; a lapsed user never asks for erasure.
        candidates = [i for i in range(n) if "erasure" not in flags[i]]
        for i in rng.sample(candidates, min(len(candidates), _count(cfg.lapsed_share, n))):
            flags[i].add("lapsed")
        candidates = [i for i in range(n) if identity[i] != "anonymous"]
        for i in rng.sample(candidates, min(len(candidates), _count(cfg.second_device_share, n))):
            flags[i].add("second_device")
        seen: set[str] = set()
        users = []
        for i in range(n):
            user_id = f"u{rng.getrandbits(40):010x}"
            while user_id in seen:
                user_id = f"u{rng.getrandbits(40):010x}"
            seen.add(user_id)
            f = flags[i]
            if f & {"lapsed", "erasure"}:
                f.add("early")
            users.append(
                _User(
                    self,
                    i,
                    user_id=user_id,
                    anonymous_id=_uuid(rng),
                    identity=identity[i],
                    flags=frozenset(f),
                )
            )
        return users

    def stream(self, done: Callable[[GroundTruth], None]) -> Iterator[Event]:
        cfg = self.config
        carry: list[tuple[int, int, Event, bool]] = []
        for day in range(cfg.days):
            day_start = cfg.start_ms + day * DAY_MS
            self.batch = carry
            for user in self.users:
                user.simulate_day(day, day_start)
            batch = self.batch
            batch.sort()
            # Everything simulated later has event time (so emission time) >= the next day.
            cut = bisect.bisect_left(batch, (day_start + DAY_MS,))
            yield from self._drain(batch, cut)
            carry = batch[cut:]
            self.batch = []
        yield from self._drain(carry, len(carry))
        done(self._truth())

    def _drain(self, batch: list[tuple[int, int, Event, bool]], stop: int) -> Iterator[Event]:
        """Yield ``batch[:stop]``, noting how far behind the stream each too-late event is."""
        max_time = self.max_time
        for i in range(stop):
            event = batch[i][2]
            if batch[i][3]:
                lag = max_time - event.event_time
                if self.too_late_min_lag is None or lag < self.too_late_min_lag:
                    self.too_late_min_lag = lag
            elif event.event_time > max_time:
                max_time = event.event_time
            yield event
        self.max_time = max_time
        if stop:
            self.last_emission = batch[stop - 1][0]

    def _truth(self) -> GroundTruth:
        cfg = self.config
        users: dict[str, UserTruth] = {}
        anon: dict[str, str] = {}
        abandoned: list[CartOutcome] = []
        converted: list[CartOutcome] = []
        for u in self.users:
            t = u.truth()
            users[t.user] = t
            for a in t.anonymous_ids:
                anon[a] = t.user
            for last, lines, value, nxt in u.tally.abandoned:
                abandoned.append(
                    CartOutcome(t.user, last, last + ABANDON_AFTER_MS, lines, value, CURRENCY,
                                nxt, nxt is not None)
                )  # fmt: skip
            for last, lines, value, bought, order in u.tally.converted:
                converted.append(
                    CartOutcome(t.user, last, last + ABANDON_AFTER_MS, lines, value, CURRENCY,
                                bought, True, bought, order)
                )  # fmt: skip
        abandoned.sort(key=lambda c: (c.due_ms, c.user))
        converted.sort(key=lambda c: (c.purchase_ms or 0, c.user))
        counted = sum(t.events for t in users.values())
        return GroundTruth(
            config=asdict(cfg),
            late_allowed_ms=LATE_ALLOWED_MS,
            too_late_min_ms=TOO_LATE_MIN_MS,
            session_gap_ms=SESSION_GAP_MS,
            abandon_after_ms=ABANDON_AFTER_MS,
            currency=CURRENCY,
            start_ms=cfg.start_ms,
            end_ms=max(t.last_seen_ms for t in users.values()),
            last_emission_ms=self.last_emission,
            too_late_min_lag_ms=self.too_late_min_lag,
            emitted_events=self.emitted,
            distinct_events=self.emitted - len(self.duplicate_ids),
            counted_events=counted,
            too_late_event_ids=tuple(sorted(self.too_late_ids)),
            duplicate_event_ids=tuple(sorted(self.duplicate_ids)),
            late_event_ids=tuple(sorted(self.late_ids)),
            users=users,
            anonymous_to_user=anon,
            abandoned_carts=tuple(abandoned),
            converted_carts=tuple(converted),
            price_bands=dict(self.catalogue.price_bands),
        )


class Generated:
    """The output of :func:`generate`.

    - ``events``: a one-shot iterator of :class:`~attune.operators.events.Event` in
      emission order (duplicates included), produced lazily a simulated day at
      a time;
    - ``items``: every :class:`~attune.operators.events.ItemUpdate`, the catalogue
      snapshot (``updated_time == start_ms``) first, then new items and stock
      changes by ``updated_time`` (then item id);
    - ``truth``: the :class:`GroundTruth`, available once ``events`` is
      exhausted (:func:`ground_truth` computes it without keeping events).
    """

    __slots__ = ("_truth", "config", "events", "items")

    def __init__(self, config: GeneratorConfig) -> None:
        gen = _Generator(config)
        self.config = config
        self.items: list[ItemUpdate] = gen.catalogue.updates
        self._truth: GroundTruth | None = None
        self.events: Iterator[Event] = gen.stream(self._set_truth)

    def _set_truth(self, truth: GroundTruth) -> None:
        self._truth = truth

    @property
    def truth(self) -> GroundTruth:
        if self._truth is None:
            raise RuntimeError(
                "the ground truth is complete only once Generated.events is exhausted: "
                "iterate every event first, or call ground_truth(config)"
            )
        return self._truth


def generate(config: GeneratorConfig) -> Generated:
    """Simulate ``config``: events (lazily, in emission order), item updates and ground truth."""
    return Generated(config)


def ground_truth(config: GeneratorConfig) -> GroundTruth:
    """The ground truth of ``config``, running the simulation without keeping its events."""
    g = generate(config)
    for _ in g.events:
        pass
    return g.truth
