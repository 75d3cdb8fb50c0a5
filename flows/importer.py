"""``attune import``: public interaction logs (CSV) to Attune events in an Avro container.

Turns a CSV of user-item interactions into :class:`~attune.operators.events.Event` s,
checked with :func:`~attune.operators.events.validate_event`, written by
:func:`attune.flows.generate.write_events` as the same Avro object container
``attune generate`` writes (so ``attune run --input``, ``attune inspect`` and
``attune evaluate`` read it). docs/import.md is the user's guide.

What a row becomes is fixed by a :class:`Layout`: which column holds each Attune
field, how times are written, which event type each value of the type column
means. Two presets cover the public data sets people evaluate on:

- ``retailrocket`` (RetailRocket ``events.csv``: ``timestamp`` in epoch ms,
  ``visitorid``, ``event`` in {view, addtocart, transaction}, ``itemid``,
  ``transactionid``): views become product views, addtocart add-to-carts, and the
  transaction rows of one visitor with one ``transactionid`` one purchase with a
  line per row;
- ``movielens`` (``ratings.csv``: ``userId``, ``movieId``, ``rating``,
  ``timestamp`` in epoch s): a product view per rating, plus an add-to-cart for
  a rating at or above a threshold (default 4.0);

and ``--map``/``--type-map`` describe any other CSV.

Prices the log does not have (RetailRocket, MovieLens) are not invented: an
add-to-cart or purchase line with an unknown price carries ``unit_price_minor``
0 in currency ``XXX``, ISO 4217's code for "no currency involved", and the
summary counts them.

Every data row is accounted for: it becomes events, is skipped on purpose (a
type mapped to ``skip``) or is rejected with its line number and a reason (and
written to the rejects CSV when asked); the summary line adds them up.

Memory stays bounded on large files (RetailRocket: 2.76M rows): rows are
sorted twice by :class:`SpillSort`, in sorted runs of at most ``chunk_rows``
spilled to temporary files and merged, first by user and time (to cut sessions
and gather an order's lines, holding one user's open orders), then by time (the
order the file is written in).
"""

from __future__ import annotations

import argparse
import csv
import heapq
import io
import math
import os
import pickle
import re
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import IO, Any, Generic, NamedTuple, TextIO, TypeVar

from attune.flows.generate import Progress, iso_ms, sync_marker, write_events
from attune.flows.settings import Settings
from attune.operators.events import (
    AddToCart,
    Event,
    EventType,
    LineItem,
    ProductView,
    Purchase,
    RemoveFromCart,
    validate_event,
)

T = TypeVar("T")

#: ISO 4217 "no currency involved": the currency of prices the log does not give.
NO_CURRENCY = "XXX"
#: The unit price written with :data:`NO_CURRENCY` when the price is unknown.
UNKNOWN_PRICE_MINOR = 0
#: Rows per sorted run held in memory before it spills to a temporary file.
DEFAULT_CHUNK_ROWS = 200_000
#: Items per pickle record in a spilled run (fewer, larger pickles are faster).
SPILL_BATCH = 1024
#: How many rejects the summary shows with their line numbers.
SHOWN_REJECTS = 10
#: Absolute epoch values below this are seconds, above it milliseconds (``auto``):
#: 1e11 s is the year 5138, 1e11 ms is March 1973.
EPOCH_MS_THRESHOLD = 100_000_000_000

#: The Attune field names a column can be mapped to (``--map FIELD=COLUMN``).
FIELDS: dict[str, str] = {
    "user": "user id (known user); this or anonymous is required",
    "anonymous": "anonymous/visitor id; this or user is required",
    "item": "item id (required)",
    "time": "event time (required; see --time-format)",
    "type": "event type, through --type-map (absent: every row is a product view)",
    "rating": "explicit rating: a product view per row, plus an add-to-cart at or above "
    "--positive-rating (excludes type)",
    "order": "order/transaction id: purchase rows of one user with one id are one purchase",
    "quantity": "quantity (integer >= 1; absent: 1)",
    "price": "unit price in major units, e.g. 19.99 (2 decimals; absent: unknown)",
    "currency": "ISO 4217 currency of the price (else --currency)",
    "category": "item category",
    "session": "session id (absent: derived from a 30-minute inactivity gap)",
}

#: Event types a row can become (``--type-map VALUE=TARGET``), and ``skip``.
TARGETS: dict[str, EventType] = {
    "product_view": EventType.PRODUCT_VIEW,
    "add_to_cart": EventType.ADD_TO_CART,
    "remove_from_cart": EventType.REMOVE_FROM_CART,
    "purchase": EventType.PURCHASE,
}
SKIP = "skip"
TIME_FORMATS = ("auto", "ms", "s", "iso")


class ImportLayoutError(ValueError):
    """The CSV or the flags do not fit together (missing column, bad mapping): nothing written."""


@dataclass(frozen=True, slots=True)
class Layout:
    """How to read one CSV: the column of each field, the time format and the type map.

    ``type_map`` keys are source values, lower-cased; values are keys of
    :data:`TARGETS` or ``skip``.
    """

    columns: Mapping[str, str]
    time_format: str = "auto"
    type_map: Mapping[str, str] = field(default_factory=dict)
    currency: str | None = None
    positive_rating: float = 4.0
    name: str = "csv"

    def __post_init__(self) -> None:
        unknown = sorted(set(self.columns) - set(FIELDS))
        if unknown:
            raise ImportLayoutError(
                f"unknown field(s) {', '.join(unknown)} in the column map; "
                f"known: {', '.join(FIELDS)}"
            )
        missing = [f for f in ("item", "time") if f not in self.columns]
        if "user" not in self.columns and "anonymous" not in self.columns:
            missing.insert(0, "user (or anonymous)")
        if missing:
            raise ImportLayoutError(
                f"the column map lacks {', '.join(missing)}: map them with --map "
                "FIELD=COLUMN, e.g. --map user=visitor,item=product,time=ts"
            )
        if "type" in self.columns and "rating" in self.columns:
            raise ImportLayoutError(
                "map either type or rating, not both: a rating row is a product view "
                "(plus an add-to-cart at or above --positive-rating)"
            )
        if self.time_format not in TIME_FORMATS:
            raise ImportLayoutError(
                f"time format {self.time_format!r} is not one of {', '.join(TIME_FORMATS)}"
            )
        for value, target in self.type_map.items():
            if target != SKIP and target not in TARGETS:
                raise ImportLayoutError(
                    f"--type-map {value}={target}: {target!r} is not one of "
                    f"{', '.join([*TARGETS, SKIP])}"
                )
        if "price" in self.columns and "currency" not in self.columns and not self.currency:
            raise ImportLayoutError(
                "a price column needs its currency: map currency=COLUMN or pass --currency EUR"
            )
        if self.currency is not None and not (
            len(self.currency) == 3 and self.currency.isalpha() and self.currency.isupper()
        ):
            raise ImportLayoutError(f"--currency {self.currency!r} is not an ISO 4217 code")
        if not math.isfinite(self.positive_rating):
            raise ImportLayoutError("--positive-rating must be a finite number")

    def target(self, value: str) -> str | None:
        """The target (a :data:`TARGETS` key or ``skip``) of a type value; ``None``: unknown.

        Without a type map a value naming a target (any case) maps to itself.

        >>> rr = PRESETS["retailrocket"]
        >>> rr.target("addtocart"), rr.target("View"), rr.target("refund")
        ('add_to_cart', 'product_view', None)
        """
        key = value.strip().lower()
        return self.type_map.get(key)


def _identity_types() -> dict[str, str]:
    return {name: name for name in TARGETS}


#: The presets: RetailRocket's events.csv and MovieLens' ratings.csv.
PRESETS: dict[str, Layout] = {
    "retailrocket": Layout(
        columns={
            "anonymous": "visitorid",
            "time": "timestamp",
            "type": "event",
            "item": "itemid",
            "order": "transactionid",
        },
        time_format="ms",
        type_map={"view": "product_view", "addtocart": "add_to_cart", "transaction": "purchase"},
        name="retailrocket",
    ),
    "movielens": Layout(
        columns={"user": "userId", "item": "movieId", "rating": "rating", "time": "timestamp"},
        time_format="s",
        name="movielens",
    ),
}


def generic_layout(
    mapping: Mapping[str, str],
    type_map: Mapping[str, str] | None = None,
    *,
    time_format: str = "auto",
    currency: str | None = None,
    positive_rating: float = 4.0,
) -> Layout:
    """A :class:`Layout` for any CSV: target names map to themselves, ``type_map`` adds to that."""
    types = _identity_types()
    types.update({k.strip().lower(): v.strip().lower() for k, v in (type_map or {}).items()})
    return Layout(
        columns=dict(mapping),
        time_format=time_format,
        type_map=types,
        currency=currency,
        positive_rating=positive_rating,
    )


def parse_pairs(text: str, flag: str) -> dict[str, str]:
    """``"a=b,c=d"`` as a dict, with a clear error for anything else.

    >>> parse_pairs("user=visitor, item=product", "--map")
    {'user': 'visitor', 'item': 'product'}
    """
    out: dict[str, str] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ImportLayoutError(f"{flag} {text!r}: {part.strip()!r} is not KEY=VALUE")
        if key.strip() in out:
            raise ImportLayoutError(f"{flag} {text!r}: {key.strip()!r} is given twice")
        out[key.strip()] = value.strip()
    return out


# --- values ----------------------------------------------------------------------------------


class RowError(Exception):
    """A row that cannot be converted: ``reason`` is a short code, the message says why."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def parse_time_ms(text: str, time_format: str) -> int:
    """Epoch milliseconds UTC of a time value; raises :class:`RowError` (``bad_time``).

    ``ms`` and ``s`` are epoch numbers (``s`` may have decimals); ``iso`` is ISO 8601
    (a time without offset is UTC); ``auto`` reads a number as epoch seconds when its
    magnitude is below 1e11 and as milliseconds above, anything else as ISO 8601.

    >>> parse_time_ms("1433221332117", "ms"), parse_time_ms("964982703", "s")
    (1433221332117, 964982703000)
    >>> parse_time_ms("2015-06-02T05:02:12.5Z", "iso"), parse_time_ms("2015-06-02 05:02:12", "iso")
    (1433221332500, 1433221332000)
    >>> parse_time_ms("964982703", "auto"), parse_time_ms("1433221332117", "auto")
    (964982703000, 1433221332117)
    >>> parse_time_ms("2015-06-02T05:02:12Z", "auto")
    1433221332000
    >>> parse_time_ms("yesterday", "auto")
    Traceback (most recent call last):
    ...
    attune.flows.importer.RowError: time 'yesterday' is neither an epoch number nor ISO 8601
    """
    text = text.strip()
    if time_format in ("ms", "s") or (time_format == "auto" and _looks_numeric(text)):
        try:
            number = Decimal(text)
        except InvalidOperation:
            number = Decimal("NaN")
        if not number.is_finite():
            raise RowError("bad_time", f"time {text!r} is not an epoch number ({time_format})")
        unit = time_format
        if unit == "auto":
            unit = "s" if abs(number) < EPOCH_MS_THRESHOLD else "ms"
        if unit == "ms":
            if number != number.to_integral_value():
                raise RowError("bad_time", f"time {text!r} is not a whole number of milliseconds")
            return int(number)
        return int((number * 1000).to_integral_value())
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        if time_format == "iso":
            raise RowError("bad_time", f"time {text!r} is not ISO 8601") from None
        raise RowError(
            "bad_time", f"time {text!r} is neither an epoch number nor ISO 8601"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return round(moment.timestamp() * 1000)


#: An epoch number as ``auto`` reads it: digits, an optional sign, fraction and exponent.
#: An ISO 8601 date starts with digits too, so a leading digit alone does not make one.
_EPOCH_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


def _looks_numeric(text: str) -> bool:
    return _EPOCH_NUMBER.fullmatch(text) is not None


def parse_quantity(text: str) -> int:
    """A quantity, an integer >= 1 (:class:`RowError` ``bad_number`` else).

    >>> parse_quantity("2"), parse_quantity("")
    (2, 1)
    """
    text = text.strip()
    if not text:
        return 1
    try:
        value = int(text)
    except ValueError:
        raise RowError("bad_number", f"quantity {text!r} is not an integer") from None
    if value < 1:
        raise RowError("bad_number", f"quantity {value} < 1")
    return value


def parse_price_minor(text: str) -> int | None:
    """A price in major units as minor units (2 decimals); ``None`` when empty.

    >>> parse_price_minor("19.99"), parse_price_minor("5"), parse_price_minor(" ")
    (1999, 500, None)
    """
    text = text.strip()
    if not text:
        return None
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise RowError("bad_number", f"price {text!r} is not a number") from None
    if not value.is_finite() or value < 0:
        raise RowError("bad_number", f"price {text!r} is not a finite number >= 0")
    minor = value * 100
    if minor != minor.to_integral_value():
        raise RowError("bad_number", f"price {text!r} has more than 2 decimals")
    return int(minor)


def parse_rating(text: str) -> float:
    """A rating as a finite float (:class:`RowError` ``bad_number`` else)."""
    try:
        value = float(text)
    except ValueError:
        raise RowError("bad_number", f"rating {text.strip()!r} is not a number") from None
    if not math.isfinite(value):
        raise RowError("bad_number", f"rating {text.strip()!r} is not finite")
    return value


# --- rows ------------------------------------------------------------------------------------


class Row(NamedTuple):
    """One interaction from one CSV row; its first four fields order the per-user sort."""

    key: str  # user id, else anonymous id: what the flow keys by before stitching
    time: int  # epoch ms, before any --start shift
    line: int  # line number of the row in the CSV (the header is line 1)
    sub: int  # 0, or 1 for the add-to-cart of a positive rating (after its view)
    kind: EventType
    item: str
    quantity: int
    price_minor: int | None
    currency: str | None
    category: str | None
    order: str | None
    session: str | None
    user_id: str | None
    anonymous_id: str | None
    raw: tuple[str, ...]


@dataclass(slots=True)
class RowReader:
    """Turns the data rows of a CSV with ``layout`` into :class:`Row` s or :class:`RowError` s."""

    layout: Layout
    header: Sequence[str]
    index: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        names = [h.strip() for h in self.header]
        if not any(names):
            raise ImportLayoutError(
                "the first line is empty: a header row of column names is needed"
            )
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ImportLayoutError(f"the header names column(s) {', '.join(dupes)} twice")
        where = {n: i for i, n in enumerate(names)}
        missing = [f"{col} (for {f})" for f, col in self.layout.columns.items() if col not in where]
        if missing:
            raise ImportLayoutError(
                f"the header lacks column(s) {', '.join(missing)}; it has: {', '.join(names)}"
                + (f" (layout {self.layout.name})" if self.layout.name != "csv" else "")
            )
        self.index = {f: where[col] for f, col in self.layout.columns.items()}

    def _get(self, fields: Sequence[str], name: str) -> str | None:
        i = self.index.get(name)
        if i is None:
            return None
        return fields[i].strip()

    def _required(self, fields: Sequence[str], name: str) -> str:
        value = self._get(fields, name)
        if not value:
            column = self.layout.columns[name]
            raise RowError("missing_value", f"column {column} ({name}) is empty")
        return value

    def rows(self, fields: Sequence[str], line: int) -> list[Row] | None:
        """The rows a CSV row gives (``None``: its type maps to ``skip``); raises RowError."""
        if len(fields) != len(self.header):
            if not fields or fields == [""]:
                raise RowError("blank_line", "the line is empty")
            raise RowError(
                "wrong_field_count",
                f"{len(fields)} fields where the header has {len(self.header)}",
            )
        user = self._get(fields, "user") or None
        anonymous = self._get(fields, "anonymous") or None
        if user is None and anonymous is None:
            names = " / ".join(
                self.layout.columns[f] for f in ("user", "anonymous") if f in self.index
            )
            raise RowError("missing_value", f"column {names} (user) is empty")
        t = parse_time_ms(self._required(fields, "time"), self.layout.time_format)
        kind, positive = EventType.PRODUCT_VIEW, False
        if "type" in self.index:
            value = self._required(fields, "type")
            target = self.layout.target(value)
            if target is None:
                known = ", ".join(sorted(self.layout.type_map))
                raise RowError("unknown_type", f"event type {value!r} is not one of {known}")
            if target == SKIP:
                return None
            kind = TARGETS[target]
        elif "rating" in self.index:
            positive = parse_rating(self._required(fields, "rating")) >= self.layout.positive_rating
        item = self._required(fields, "item")
        quantity = parse_quantity(self._get(fields, "quantity") or "")
        price = parse_price_minor(self._get(fields, "price") or "")
        currency = None
        if price is not None:
            currency = self._get(fields, "currency") or self.layout.currency
            if not currency:
                raise RowError(
                    "missing_value", f"column {self.layout.columns['currency']} (currency) is empty"
                )
        order = None
        if kind is EventType.PURCHASE and "order" in self.index:
            order = self._required(fields, "order")
        row = Row(
            key=user or anonymous or "",
            time=t,
            line=line,
            sub=0,
            kind=kind,
            item=item,
            quantity=quantity,
            price_minor=price,
            currency=currency,
            category=self._get(fields, "category") or None,
            order=order,
            session=self._get(fields, "session") or None,
            user_id=user,
            anonymous_id=anonymous,
            raw=tuple(fields),
        )
        out = [row]
        if positive:
            out.append(row._replace(sub=1, kind=EventType.ADD_TO_CART))
        return out


# --- sorting more rows than fit in memory ----------------------------------------------------


class SpillSort(Generic[T]):
    """Sorts any number of items in bounded memory: runs of ``chunk`` items are sorted,
    spilled to temporary files when there is more than one, and merged.

    Items must be totally ordered by their natural order and never tie on
    anything that does not compare (keep a unique field early in the tuple).

    >>> with tempfile.TemporaryDirectory() as d:
    ...     s = SpillSort[int](chunk=3, directory=Path(d))
    ...     for x in [5, 3, 9, 1, 7, 2, 8]:
    ...         s.add(x)
    ...     (list(s), s.runs)
    ([1, 2, 3, 5, 7, 8, 9], 3)
    """

    def __init__(self, chunk: int, directory: Path) -> None:
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        self.chunk = chunk
        self.directory = directory
        self.buffer: list[T] = []
        self.files: list[Path] = []
        self.count = 0
        #: Sorted runs made so far (each spilled file, and the last one in memory).
        self.runs = 0

    def add(self, item: T) -> None:
        self.buffer.append(item)
        self.count += 1
        if len(self.buffer) >= self.chunk:
            self._spill()

    def _spill(self) -> None:
        self.buffer.sort()
        fd, name = tempfile.mkstemp(prefix="attune-import-", suffix=".run", dir=self.directory)
        path = Path(name)
        self.files.append(path)
        self.runs += 1
        with open(fd, "wb") as fh:
            for i in range(0, len(self.buffer), SPILL_BATCH):
                pickle.dump(self.buffer[i : i + SPILL_BATCH], fh, pickle.HIGHEST_PROTOCOL)
        self.buffer = []

    @staticmethod
    def _read(path: Path) -> Iterator[T]:
        with path.open("rb") as fh:
            while True:
                try:
                    batch = pickle.load(fh)
                except EOFError:
                    break
                yield from batch
        path.unlink(missing_ok=True)

    def __iter__(self) -> Iterator[T]:
        """The items in order (once: spilled runs are deleted as they are read)."""
        if not self.files:
            self.buffer.sort()
            items, self.buffer = self.buffer, []
            self.runs += 1 if items else 0
            return iter(items)
        if self.buffer:
            self._spill()
        files, self.files = self.files, []
        return heapq.merge(*(self._read(p) for p in files))  # type: ignore[type-var]

    def close(self) -> None:
        """Delete any spilled run not read yet."""
        for path in self.files:
            path.unlink(missing_ok=True)
        self.files = []
        self.buffer = []


# --- rows to events --------------------------------------------------------------------------


@dataclass(slots=True)
class Rejects:
    """Counts rejected rows by reason, keeps the first few, writes all to a CSV if given."""

    out: IO[str] | None = None
    by_reason: Counter[str] = field(default_factory=Counter)
    shown: list[str] = field(default_factory=list)
    _writer: Any = None

    def __post_init__(self) -> None:
        if self.out is not None:
            self._writer = csv.writer(self.out)
            self._writer.writerow(["line", "reason", "detail", "row"])

    @property
    def total(self) -> int:
        return sum(self.by_reason.values())

    def add(self, line: int, reason: str, detail: str, raw: Sequence[str]) -> None:
        self.by_reason[reason] += 1
        if len(self.shown) < SHOWN_REJECTS:
            self.shown.append(f"line {line}: {reason}: {detail}")
        if self._writer is not None:
            buf = io.StringIO()
            csv.writer(buf, lineterminator="").writerow(raw)
            self._writer.writerow([line, reason, detail, buf.getvalue()])


@dataclass(frozen=True, slots=True)
class EventOptions:
    """How rows become events: id prefix, session gap, time shift."""

    id_prefix: str
    session_gap_ms: int = 30 * 60_000
    shift_ms: int = 0


def _unit_price(row: Row) -> tuple[int, str]:
    if row.price_minor is None:
        return UNKNOWN_PRICE_MINOR, NO_CURRENCY
    return row.price_minor, row.currency or NO_CURRENCY


def _event_id(prefix: str, row: Row) -> str:
    return f"{prefix}-{row.line}" if row.sub == 0 else f"{prefix}-{row.line}.{row.sub}"


def _single_event(row: Row, t: int, session: str, opts: EventOptions) -> Event:
    payload: Any
    if row.kind is EventType.PRODUCT_VIEW:
        payload = ProductView(row.item, row.category, row.price_minor, row.currency)
    elif row.kind is EventType.ADD_TO_CART:
        price, currency = _unit_price(row)
        payload = AddToCart(row.item, row.quantity, price, currency, row.category)
    elif row.kind is EventType.REMOVE_FROM_CART:
        payload = RemoveFromCart(row.item, row.quantity)
    else:
        raise AssertionError(f"no single event for {row.kind}")
    return Event(
        event_id=_event_id(opts.id_prefix, row),
        event_type=row.kind,
        event_time=t,
        payload=payload,
        user_id=row.user_id,
        anonymous_id=row.anonymous_id,
        session_id=session,
    )


def _purchase(lines: list[tuple[Row, str]], opts: EventOptions) -> Event | RowError:
    """One purchase of an order's rows (time and session of the latest row)."""
    rows = [r for r, _ in lines]
    first = min(rows, key=lambda r: r.line)
    last_row, session = max(lines, key=lambda rs: (rs[0].time, rs[0].line))
    priced = [(r, *_unit_price(r)) for r in rows]
    currencies = {c for _, _, c in priced}
    if len(currencies) > 1:
        return RowError(
            "mixed_currency", f"order {first.order} has lines in {', '.join(sorted(currencies))}"
        )
    return Event(
        event_id=_event_id(opts.id_prefix, first),
        event_type=EventType.PURCHASE,
        event_time=last_row.time + opts.shift_ms,
        payload=Purchase(
            order_id=first.order or f"{opts.id_prefix}-{first.line}",
            lines=tuple(LineItem(r.item, r.quantity, p, r.category) for r, p, _ in priced),
            total_minor=sum(r.quantity * p for r, p, _ in priced),
            currency=currencies.pop(),
        ),
        user_id=last_row.user_id,
        anonymous_id=last_row.anonymous_id,
        session_id=session,
    )


class Sorted(NamedTuple):
    """An event with its place in the output order: time, then the line it came from."""

    time: int
    line: int
    sub: int
    event: Event


def events_of_user_rows(
    rows: Iterable[Row], opts: EventOptions, rejects: Rejects
) -> Iterator[Sorted]:
    """Events of rows sorted by (user, time, line): sessions cut, orders gathered, validated.

    A session ends after ``session_gap_ms`` without a row of the user (the
    session id is ``<prefix>:<user>:<start ms>``) unless the row names its own
    session. Purchase rows of one user with one order id become one purchase,
    emitted at the time of its latest row. An event that fails
    :func:`validate_event` rejects the row(s) it came from (``invalid_event``).
    """
    user: str | None = None
    last_t = start_t = 0
    orders: dict[str, list[tuple[Row, str]]] = {}

    def checked(ev: Event | RowError, sources: list[Row]) -> Iterator[Sorted]:
        if isinstance(ev, RowError):
            for r in sources:
                rejects.add(r.line, ev.reason, ev.detail, r.raw)
            return
        problem = validate_event(ev)
        if problem is not None:
            for r in sources:
                if r.sub == 0:  # a rating's add-to-cart fails with its view: one reject per row
                    rejects.add(r.line, "invalid_event", problem, r.raw)
            return
        first = min(sources, key=lambda r: (r.line, r.sub))
        yield Sorted(ev.event_time, first.line, first.sub, ev)

    def flush() -> Iterator[Sorted]:
        for lines in orders.values():
            yield from checked(_purchase(lines, opts), [r for r, _ in lines])
        orders.clear()

    for row in rows:
        t = row.time + opts.shift_ms
        if row.key != user:
            yield from flush()
            user, start_t = row.key, t
        elif t - last_t > opts.session_gap_ms:
            start_t = t
        last_t = t
        session = row.session or f"{opts.id_prefix}:{row.key}:{start_t}"
        if row.kind is EventType.PURCHASE:
            if row.order is None:
                yield from checked(_purchase([(row, session)], opts), [row])
            else:
                orders.setdefault(row.order, []).append((row, session))
            continue
        yield from checked(_single_event(row, t, session, opts), [row])
    yield from flush()


# --- the import ------------------------------------------------------------------------------


@dataclass(slots=True)
class ImportSummary:
    """What an import read, wrote and rejected."""

    input: str
    out: str
    rows: int = 0
    skipped: int = 0
    events: int = 0
    by_type: Counter[str] = field(default_factory=Counter)
    purchase_rows: int = 0
    unknown_price: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    shown_rejects: list[str] = field(default_factory=list)
    rejects_out: str | None = None
    first_ms: int | None = None
    last_ms: int | None = None
    runs: int = 0
    seconds: float = 0.0

    def line(self) -> str:
        """The one-line summary ``attune import`` ends with."""
        types = ", ".join(f"{n:,} {t}" for t, n in sorted(self.by_type.items()))
        rejected = sum(self.rejected.values())
        reasons = ", ".join(f"{r} {n:,}" for r, n in sorted(self.rejected.items()))
        text = (
            f"read {self.rows:,} rows, wrote {self.events:,} events ({types or 'none'}) to "
            f"{self.out}; rejected {rejected:,} rows" + (f" ({reasons})" if reasons else "")
        )
        if self.skipped:
            text += f"; skipped {self.skipped:,} rows by --type-map"
        if self.purchase_rows:
            text += f"; {self.purchase_rows:,} purchase rows -> {self.by_type['PURCHASE']:,} orders"
        if self.unknown_price:
            text += f"; {self.unknown_price:,} events with unknown price ({NO_CURRENCY} 0)"
        return text


def _csv_rows(
    fh: TextIO, src: str, delimiter: str = ","
) -> Iterator[tuple[int, list[str] | csv.Error]]:
    """(line, fields) per data row; a row the csv module cannot parse comes as its error."""
    reader = csv.reader(fh, delimiter=delimiter)
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield reader.line_num, exc
            continue
        except UnicodeDecodeError as exc:
            raise ImportLayoutError(
                f"{src} is not UTF-8 text after line {reader.line_num} ({exc.reason}); "
                "convert it, e.g. with iconv -f latin1 -t utf-8"
            ) from None
        yield reader.line_num, fields


def _read_rows(
    fh: TextIO,
    path: Path,
    *,
    layout: Layout,
    delimiter: str,
    into: SpillSort[Row],
    rejects: Rejects,
    summary: ImportSummary,
    progress: bool,
) -> int | None:
    """Read the header and the rows of the CSV ``fh`` into ``into``, rejecting bad rows and
    counting rows and skips in ``summary``; returns the earliest row time (``None``: none).

    Raises :class:`ImportLayoutError` when there is no header or the layout does not fit it.
    """
    rows_in = _csv_rows(fh, str(path), delimiter)
    first = next(rows_in, None)
    if first is None:
        raise ImportLayoutError(f"{path} is empty: a header row of column names is needed")
    if isinstance(first[1], csv.Error):
        raise ImportLayoutError(f"{path}: the header line is not valid CSV ({first[1]})")
    reader = RowReader(layout, first[1])
    data: Iterable[tuple[int, list[str] | csv.Error]] = rows_in
    if progress:
        data = Progress(f"import read {path}").wrap(data)
    earliest: int | None = None
    for line, fields in data:
        summary.rows += 1
        if isinstance(fields, csv.Error):
            rejects.add(line, "bad_csv", str(fields), [])
            continue
        try:
            got = reader.rows(fields, line)
        except RowError as exc:
            rejects.add(line, exc.reason, exc.detail, fields)
            continue
        if got is None:
            summary.skipped += 1
            continue
        for row in got:
            into.add(row)
            earliest = row.time if earliest is None else min(earliest, row.time)
    return earliest


def _counted(by_time: Iterable[Sorted], summary: ImportSummary) -> Iterator[Event]:
    """The sorted events, counted in ``summary`` as they are written (types, purchase rows,
    unknown prices, first and last time)."""
    for s in by_time:
        ev = s.event
        summary.by_type[ev.event_type.value] += 1
        if isinstance(ev.payload, Purchase):
            summary.purchase_rows += len(ev.payload.lines)
        if isinstance(ev.payload, AddToCart | Purchase) and ev.payload.currency == NO_CURRENCY:
            summary.unknown_price += 1
        if summary.first_ms is None:
            summary.first_ms = ev.event_time
        summary.last_ms = ev.event_time
        yield ev


def import_csv(
    path: Path,
    layout: Layout,
    out: Path,
    *,
    rejects_path: Path | None = None,
    id_prefix: str | None = None,
    session_gap_ms: int = 30 * 60_000,
    start_ms: int | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    tmp_dir: Path | None = None,
    delimiter: str = ",",
    progress: bool = True,
) -> ImportSummary:
    """Import the CSV at ``path`` into the Avro container ``out``; returns the summary.

    Raises :class:`ImportLayoutError` (nothing written) when the header or the
    layout is wrong. ``start_ms`` shifts every time by one constant so the
    earliest event is at that moment (logs from before 2000, which
    :func:`validate_event` rejects). The output is sorted by event time, then by
    the line of the row it came from; the same input and flags give the same bytes.
    """
    started = time.monotonic()
    prefix = id_prefix or path.stem
    summary = ImportSummary(input=str(path), out=str(out))
    # The rejects go to <path>.part, renamed at the end like the events file: no half files.
    rejects_part = rejects_path.with_name(rejects_path.name + ".part") if rejects_path else None
    reject_fh = rejects_part.open("w", newline="", encoding="utf-8") if rejects_part else None
    rejects = Rejects(reject_fh)
    try:
        with (
            path.open(newline="", encoding="utf-8-sig") as fh,
            tempfile.TemporaryDirectory(prefix="attune-import-", dir=tmp_dir) as tmp,
        ):
            by_user = SpillSort[Row](chunk_rows, Path(tmp))
            earliest = _read_rows(
                fh,
                path,
                layout=layout,
                delimiter=delimiter,
                into=by_user,
                rejects=rejects,
                summary=summary,
                progress=progress,
            )
            shift = 0 if start_ms is None or earliest is None else start_ms - earliest
            opts = EventOptions(prefix, session_gap_ms, shift)
            by_time = SpillSort[Sorted](chunk_rows, Path(tmp))
            sorted_rows: Iterable[Row] = by_user
            if progress:
                sorted_rows = Progress(f"import sessions and orders {path}").wrap(sorted_rows)
            for item in events_of_user_rows(sorted_rows, opts, rejects):
                by_time.add(item)
            summary.events = write_events(
                out,
                _counted(by_time, summary),
                sync_marker(0, f"import:{prefix}"),
                progress=f"import write {out}" if progress else None,
            )
            summary.runs = by_user.runs + by_time.runs
    except BaseException:
        if reject_fh is not None and rejects_part is not None:
            reject_fh.close()
            rejects_part.unlink(missing_ok=True)
        raise
    if reject_fh is not None and rejects_part is not None and rejects_path is not None:
        reject_fh.close()
        os.replace(rejects_part, rejects_path)
    summary.rejected = rejects.by_reason
    summary.shown_rejects = rejects.shown
    summary.rejects_out = str(rejects_path) if rejects_path else None
    summary.seconds = round(time.monotonic() - started, 3)
    return summary


# --- the command -----------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``attune import``."""
    parser.add_argument("input", type=Path, help="the CSV file (UTF-8, a header row first)")
    parser.add_argument(
        "--delimiter", default=",", help="field separator (default ','; '\\t' for tabs)"
    )
    what = parser.add_argument_group("layout (a preset, or --map for any CSV)")
    what.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="retailrocket: events.csv (timestamp ms, visitorid, event, itemid, transactionid); "
        "movielens: ratings.csv (userId, movieId, rating, timestamp s)",
    )
    what.add_argument(
        "--map",
        dest="mapping",
        metavar="FIELD=COLUMN,...",
        help="columns of a generic CSV; fields: " + ", ".join(FIELDS),
    )
    what.add_argument(
        "--type-map",
        metavar="VALUE=TYPE,...",
        help="values of the type column to event types ("
        + ", ".join([*TARGETS, SKIP])
        + "); values that name a type map to it",
    )
    what.add_argument(
        "--time-format",
        choices=TIME_FORMATS,
        help="generic CSV: ms, s (epoch), iso (ISO 8601, UTC without offset), or auto "
        "(epoch s below 1e11, ms above, else ISO 8601; default)",
    )
    what.add_argument("--currency", help="ISO 4217 currency of a mapped price column")
    what.add_argument(
        "--positive-rating",
        type=float,
        default=4.0,
        metavar="R",
        help="a rating >= R also gives an add-to-cart (movielens, or a mapped rating; 4.0)",
    )
    files = parser.add_argument_group("output")
    files.add_argument("--out", type=Path, help="events file, Avro container (default INPUT.avro)")
    files.add_argument("--rejects", type=Path, help="write rejected rows to this CSV")
    files.add_argument(
        "--id-prefix", help="prefix of event and session ids (default: INPUT's stem)"
    )
    files.add_argument(
        "--session-gap",
        type=int,
        metavar="S",
        help="inactivity that ends a derived session, seconds (default ATTUNE_SESSION_GAP_S)",
    )
    files.add_argument(
        "--start",
        type=iso_ms,
        dest="start_ms",
        metavar="ISO",
        help="shift all times so the first event is at ISO (for logs from before 2000)",
    )
    files.add_argument(
        "--chunk-rows",
        type=int,
        default=DEFAULT_CHUNK_ROWS,
        help=f"rows sorted in memory before spilling to disk ({DEFAULT_CHUNK_ROWS:,})",
    )
    files.add_argument("--tmp-dir", type=Path, help="where sorted runs spill (default: system tmp)")


def layout_from_args(args: argparse.Namespace) -> Layout:
    """The :class:`Layout` of the flags: a preset, or a generic mapping."""
    if args.preset:
        given = [f for f in ("mapping", "type_map", "time_format", "currency") if getattr(args, f)]
        if given:
            flags = ", ".join("--" + f.replace("_", "-").replace("mapping", "map") for f in given)
            raise ImportLayoutError(f"--preset {args.preset} fixes the layout; drop {flags}")
        preset = PRESETS[args.preset]
        if args.positive_rating != preset.positive_rating:
            return Layout(
                columns=preset.columns,
                time_format=preset.time_format,
                type_map=preset.type_map,
                positive_rating=args.positive_rating,
                name=preset.name,
            )
        return preset
    if not args.mapping:
        raise ImportLayoutError(
            "give --preset retailrocket|movielens or a column map, e.g. "
            "--map user=visitor,item=product,time=ts,type=action"
        )
    return generic_layout(
        parse_pairs(args.mapping, "--map"),
        parse_pairs(args.type_map, "--type-map") if args.type_map else None,
        time_format=args.time_format or "auto",
        currency=args.currency,
        positive_rating=args.positive_rating,
    )


def _delimiter(text: str) -> str:
    r"""The ``--delimiter`` value as one character (``\t`` or ``tab`` spelled out is a tab).

    >>> _delimiter("\\t"), _delimiter("tab"), _delimiter(";")
    ('\t', '\t', ';')
    """
    value = {"\\t": "\t", "tab": "\t"}.get(text, text)
    if len(value) != 1:
        raise ImportLayoutError(f"--delimiter {text!r} is not one character")
    return value


def run(args: argparse.Namespace, stream: IO[str] | None = None) -> int:
    """``attune import``: prints the rejects shown and the summary line; 2 if nothing imported."""
    stream = stream or sys.stdout
    layout = layout_from_args(args)
    gap_s = args.session_gap if args.session_gap is not None else Settings.from_env().session_gap_s
    out: Path = args.out or args.input.with_suffix(".avro")
    if out.resolve() == args.input.resolve():
        raise ImportLayoutError(f"--out {out} is the input file")
    summary = import_csv(
        args.input,
        layout,
        out,
        rejects_path=args.rejects,
        id_prefix=args.id_prefix,
        session_gap_ms=gap_s * 1000,
        start_ms=args.start_ms,
        chunk_rows=args.chunk_rows,
        tmp_dir=args.tmp_dir,
        delimiter=_delimiter(args.delimiter),
    )
    for text in summary.shown_rejects:
        print(f"rejected {text}", file=stream)
    if sum(summary.rejected.values()) > len(summary.shown_rejects):
        where = f"all in {summary.rejects_out}" if summary.rejects_out else "--rejects FILE: all"
        print(f"... ({where})", file=stream)
    print(summary.line() + f" in {summary.seconds:.1f}s", file=stream)
    return 0 if summary.events or not summary.rows else 2
