"""Typed events and outputs: one frozen, slotted dataclass per Avro record in avro/.

Bare dicts stop at the codec boundary (:mod:`attune.operators.codec`); everything past
decoding sees these types. Times are ints, epoch milliseconds UTC, everywhere in
process (the Avro fields are ``timestamp-millis``). Money is an int in minor
currency units (cents), so sums are exact and replays are byte-identical.

Field names equal the Avro field names, so a decoded record maps onto a class
with ``cls(**record)`` and back with :func:`to_record`.

>>> e = Event(event_id="e1", event_type=EventType.PRODUCT_VIEW, event_time=1_700_000_000_000,
...           user_id="u1", payload=ProductView(item_id="i9", category="shoes/running"))
>>> e.user_key
'u1'
>>> validate_event(e) is None
True
>>> validate_event(Event(event_id="", event_type=EventType.SEARCH, event_time=1_700_000_000_000,
...                      user_id="u1", payload=Search(query="boots")))
'event_id is empty'
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields, is_dataclass
from enum import StrEnum
from operator import attrgetter
from typing import Any, TypeVar

_T = TypeVar("_T")


def _fast_pickle(cls: type[_T]) -> type[_T]:
    """Pickle as ``(cls, field values)``: a fraction of the default for frozen slotted
    dataclasses (snapshots and worker exchange pickle events a lot)."""
    names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    get = attrgetter(*names)
    single = len(names) == 1

    def reduce(self: _T) -> tuple[type[_T], tuple[Any, ...]]:
        values = get(self)
        return cls, ((values,) if single else values)

    reduce.state_is_fields = True  # type: ignore[attr-defined]
    cls.__reduce__ = reduce  # type: ignore[method-assign,assignment]
    return cls


class EventType(StrEnum):
    """Type of a user event; the symbols of ``attune.event.EventType``."""

    PAGE_VIEW = "PAGE_VIEW"
    PRODUCT_VIEW = "PRODUCT_VIEW"
    SEARCH = "SEARCH"
    ADD_TO_CART = "ADD_TO_CART"
    REMOVE_FROM_CART = "REMOVE_FROM_CART"
    PURCHASE = "PURCHASE"
    DWELL = "DWELL"
    CONSENT = "CONSENT"
    IDENTIFY = "IDENTIFY"
    ERASURE = "ERASURE"
    UNKNOWN = "UNKNOWN"


@_fast_pickle
@dataclass(frozen=True, slots=True)
class Context:
    """``attune.event.Context``: where and how an event happened."""

    device: str | None = None
    channel: str | None = None
    country: str | None = None
    region: str | None = None
    timezone: str | None = None
    page_url: str | None = None
    referrer: str | None = None
    utm_source: str | None = None
    utm_medium: str | None = None
    utm_campaign: str | None = None
    ip: str | None = None
    user_agent: str | None = None


@_fast_pickle
@dataclass(frozen=True, slots=True)
class LineItem:
    """``attune.event.LineItem``: one line of a cart or an order."""

    item_id: str
    quantity: int
    unit_price_minor: int
    category: str | None = None


@_fast_pickle
@dataclass(frozen=True, slots=True)
class PageView:
    """``attune.event.PageView``."""

    page_type: str = "OTHER"
    category: str | None = None
    title: str | None = None


@_fast_pickle
@dataclass(frozen=True, slots=True)
class ProductView:
    """``attune.event.ProductView``."""

    item_id: str
    category: str | None = None
    price_minor: int | None = None
    currency: str | None = None


@_fast_pickle
@dataclass(frozen=True, slots=True)
class Search:
    """``attune.event.Search``."""

    query: str
    category: str | None = None
    results_count: int | None = None


@_fast_pickle
@dataclass(frozen=True, slots=True)
class AddToCart:
    """``attune.event.AddToCart``."""

    item_id: str
    quantity: int
    unit_price_minor: int
    currency: str
    category: str | None = None


@_fast_pickle
@dataclass(frozen=True, slots=True)
class RemoveFromCart:
    """``attune.event.RemoveFromCart``."""

    item_id: str
    quantity: int


@_fast_pickle
@dataclass(frozen=True, slots=True)
class Purchase:
    """``attune.event.Purchase``: a completed checkout."""

    order_id: str
    lines: tuple[LineItem, ...]
    total_minor: int
    currency: str


@_fast_pickle
@dataclass(frozen=True, slots=True)
class Dwell:
    """``attune.event.Dwell``: heartbeat with the page's visible time so far."""

    dwell_ms: int
    item_id: str | None = None
    page_view_id: str | None = None


@_fast_pickle
@dataclass(frozen=True, slots=True)
class ConsentUpdate:
    """``attune.event.ConsentUpdate``: ``None`` leaves a purpose as it was."""

    analytics: bool | None = None
    personalization: bool | None = None
    marketing: bool | None = None
    source: str | None = None


@_fast_pickle
@dataclass(frozen=True, slots=True)
class Identify:
    """``attune.event.Identify``: the envelope's anonymous id belongs to its user id."""

    method: str = "OTHER"
    email: str | None = None
    phone: str | None = None


@_fast_pickle
@dataclass(frozen=True, slots=True)
class ErasureRequest:
    """``attune.event.ErasureRequest``."""

    request_id: str
    reason: str | None = None


Payload = (
    PageView
    | ProductView
    | Search
    | AddToCart
    | RemoveFromCart
    | Purchase
    | Dwell
    | ConsentUpdate
    | Identify
    | ErasureRequest
)

#: Payload class of each event type, and the Avro full name of each payload class.
PAYLOAD_OF_TYPE: dict[EventType, type[Any]] = {
    EventType.PAGE_VIEW: PageView,
    EventType.PRODUCT_VIEW: ProductView,
    EventType.SEARCH: Search,
    EventType.ADD_TO_CART: AddToCart,
    EventType.REMOVE_FROM_CART: RemoveFromCart,
    EventType.PURCHASE: Purchase,
    EventType.DWELL: Dwell,
    EventType.CONSENT: ConsentUpdate,
    EventType.IDENTIFY: Identify,
    EventType.ERASURE: ErasureRequest,
}
TYPE_OF_PAYLOAD: dict[type[Any], EventType] = {v: k for k, v in PAYLOAD_OF_TYPE.items()}
AVRO_NAME_OF_PAYLOAD: dict[type[Any], str] = {
    cls: f"attune.event.{cls.__name__}" for cls in PAYLOAD_OF_TYPE.values()
}
PAYLOAD_OF_AVRO_NAME: dict[str, type[Any]] = {v: k for k, v in AVRO_NAME_OF_PAYLOAD.items()}


@dataclass(frozen=True, slots=True)
class Event:
    """``attune.event.Event``: a user event, header and payload."""

    event_id: str
    event_type: EventType
    event_time: int
    payload: Payload
    user_id: str | None = None
    anonymous_id: str | None = None
    session_id: str | None = None
    context: Context | None = None

    @property
    def user_key(self) -> str:
        """The id this event is keyed by before identity stitching: user id, else anonymous id."""
        return self.user_id or self.anonymous_id or ""

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        """Its flat form (:func:`flatten`), rebuilt by :func:`unflatten`; one without a flat
        form (a purchase) as ``(Event, field values)``.

        Bytewax pickles every item it moves to another process on its own (``pickle.dumps``
        per item, so nothing is memoised between items): ``(Event, field values)`` names
        four to five classes (the event, its type, payload and context), each looked up by
        module and name when it is loaded, and its type goes through the enum's
        constructor; the flat form names one function. A round trip of a keyed event takes
        ~40% less (bench/README.md, session 12). Pickles of earlier code still load.
        """
        flat = flatten(self)
        if flat is None:
            return Event, _EVENT_VALUES(self)
        return unflatten, (flat,)


# Snapshots (attune.operators.snapshots) may pickle an event as its field values: the
# flat form is those values, in another shape.
Event.__reduce__.state_is_fields = True  # type: ignore[attr-defined]
_EVENT_VALUES: Callable[[Event], tuple[Any, ...]] = attrgetter(*[f.name for f in fields(Event)])


@_fast_pickle
@dataclass(frozen=True, slots=True)
class ItemUpdate:
    """``attune.item.ItemUpdate``: the whole current version of a catalogue item."""

    item_id: str
    title: str
    category_path: tuple[str, ...]
    price_minor: int
    currency: str
    in_stock: bool
    created_time: int
    updated_time: int
    brand: str | None = None
    tags: tuple[str, ...] = ()


@_fast_pickle
@dataclass(frozen=True, slots=True)
class Trigger:
    """``attune.output.Trigger``: published to ``attune.triggers.<kind>``."""

    trigger_id: str
    kind: str
    user_id: str
    cause_event_time: int
    emit_time: int
    reason: str
    cart_lines: tuple[LineItem, ...] = ()
    cart_value_minor: int | None = None
    currency: str | None = None
    item_id: str | None = None
    segment: str | None = None
    scores: dict[str, float] = field(default_factory=dict)
    attributes: dict[str, str] = field(default_factory=dict)


@_fast_pickle
@dataclass(frozen=True, slots=True)
class SegmentChange:
    """``attune.output.SegmentChange``: published to ``attune.segments``."""

    user_id: str
    segment: str
    change: str  # ENTERED | EXITED
    source: str  # RULE | CLUSTER
    event_time: int
    emit_time: int
    reason: str | None = None


@_fast_pickle
@dataclass(frozen=True, slots=True)
class ErasureConfirmation:
    """``attune.output.ErasureConfirmation``: published to ``attune.privacy.erasures``."""

    user_id: str
    request_id: str
    request_event_id: str
    request_time: int
    processed_time: int
    redis_keys: tuple[str, ...] = ()
    audiences: tuple[str, ...] = ()
    state_items: tuple[str, ...] = ()
    model_data: tuple[str, ...] = ()
    anonymous_ids: tuple[str, ...] = ()
    retained: tuple[str, ...] = ()
    not_removed: tuple[str, ...] = ()


class ErrorClass(StrEnum):
    """Why input was dead-lettered; the symbols of ``attune.output.ErrorClass``."""

    TRUNCATED = "TRUNCATED"
    BAD_MAGIC = "BAD_MAGIC"
    UNKNOWN_FINGERPRINT = "UNKNOWN_FINGERPRINT"
    UNKNOWN_SCHEMA_ID = "UNKNOWN_SCHEMA_ID"
    INVALID_ENUM = "INVALID_ENUM"
    INVALID_UNION = "INVALID_UNION"
    MISSING_FIELD = "MISSING_FIELD"
    TRAILING_BYTES = "TRAILING_BYTES"
    MALFORMED = "MALFORMED"
    INVALID_VALUE = "INVALID_VALUE"
    LATE = "LATE"
    SOURCE_ERROR = "SOURCE_ERROR"
    OTHER = "OTHER"


@_fast_pickle
@dataclass(frozen=True, slots=True)
class DeadLetter:
    """``attune.output.DeadLetter``: input that could not be used, kept whole."""

    original: bytes
    error_class: ErrorClass
    reason: str
    dead_time: int
    source_topic: str | None = None
    source_partition: int | None = None
    source_offset: int | None = None
    event_id: str | None = None


@_fast_pickle
@dataclass(frozen=True, slots=True)
class Source:
    """Where a message came from: Kafka topic/partition/offset, or file path and record index."""

    topic: str | None = None
    partition: int | None = None
    offset: int | None = None


# --- conversion at the codec boundary -------------------------------------------------------


_FIELD_NAMES: dict[type[Any], tuple[str, ...]] = {}


def to_record(obj: Any) -> Any:
    """A dataclass (nested) as the plain dict/list structure fastavro writes."""
    cls = type(obj)
    names = _FIELD_NAMES.get(cls)
    if names is None:
        if not (is_dataclass(obj) and not isinstance(obj, type)):
            if isinstance(obj, tuple | list):
                return [to_record(x) for x in obj]
            if isinstance(obj, StrEnum):
                return obj.value
            return obj
        names = _FIELD_NAMES[cls] = tuple(f.name for f in fields(obj))
    out = {}
    for name in names:
        value = getattr(obj, name)
        if value is None or type(value) in _PLAIN:
            out[name] = value
        else:
            out[name] = to_record(value)
    return out


_PLAIN = frozenset({str, int, float, bool, bytes})


def _slot_constructor(cls: type[_T]) -> Callable[..., _T]:
    """``cls(*values)`` for a frozen, slotted dataclass, every field given, without ``__init__``.

    The ``__init__`` of a frozen dataclass sets each field through
    ``object.__setattr__``, which makes building an event from a decoded record
    cost about as much as a third of decoding it. This sets the slots through
    their descriptors instead, about 3x cheaper, and gives the same object: none
    of these classes has a ``__post_init__`` and every field is passed (defaults
    are not applied). The function is generated, as dataclasses generate
    ``__init__``, so that it holds one plain call per field and no loop.
    """
    names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    if hasattr(cls, "__post_init__") or not all(n.isidentifier() and n[0] != "_" for n in names):
        raise TypeError(f"{cls.__name__}: not a plain dataclass, build it with its __init__")
    namespace: dict[str, Any] = {"_new": object.__new__, "_cls": cls}
    body = ""
    for i, name in enumerate(names):
        namespace[f"_set{i}"] = getattr(cls, name).__set__
        body += f"    _set{i}(_obj, {name})\n"
    exec(  # the source is built above from the dataclass's own field names
        f"def {cls.__name__.lower()}({', '.join(names)}):\n    _obj = _new(_cls)\n{body}"
        "    return _obj\n",
        namespace,
    )
    built: Callable[..., _T] = namespace[cls.__name__.lower()]
    return built


def _record_builder(cls: type[_T]) -> Callable[[dict[str, Any]], _T]:
    """``cls(**record)`` for a decoded record dict, generated once per class: fast for a dict
    holding exactly the fields of ``cls``, ``cls(**record)`` for anything else.

    A decoded record always holds exactly its schema's fields: the generated function
    reads each by name and sets the slots as :func:`_slot_constructor` does, one plain
    statement per field (no loop, no tuple of values, no ``*args`` call). Any other
    record (a key missing or extra, not a dict) takes ``cls(**record)``, so that a
    malformed record fails as it always did.
    """
    names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    if hasattr(cls, "__post_init__") or not all(n.isidentifier() and n[0] != "_" for n in names):
        raise TypeError(f"{cls.__name__}: not a plain dataclass, build it with its __init__")
    namespace: dict[str, Any] = {"_new": object.__new__, "_cls": cls, "_dict": dict}
    reads = "".join(f"            _v{i} = record[{name!r}]\n" for i, name in enumerate(names))
    sets = ""
    for i, name in enumerate(names):
        namespace[f"_set{i}"] = getattr(cls, name).__set__
        sets += f"            _set{i}(_obj, _v{i})\n"
    source = (
        f"def {cls.__name__.lower()}_from_record(record):\n"
        f"    if type(record) is _dict and len(record) == {len(names)}:\n"
        f"        try:\n{reads}"
        "        except KeyError:\n"
        "            pass\n"
        "        else:\n"
        f"            _obj = _new(_cls)\n{sets}"
        "            return _obj\n"
        "    return _cls(**record)\n"
    )
    exec(source, namespace)  # the source is built above from the dataclass's own field names
    built: Callable[[dict[str, Any]], _T] = namespace[f"{cls.__name__.lower()}_from_record"]
    return built


_FROM_RECORD: dict[type[Any], Callable[[dict[str, Any]], Any]] = {
    cls: _record_builder(cls) for cls in (Context, LineItem, *PAYLOAD_OF_TYPE.values())
}
_context_from_record = _FROM_RECORD[Context]
_line_from_record = _FROM_RECORD[LineItem]
_new_purchase = _slot_constructor(Purchase)
_new_event = _slot_constructor(Event)


# --- flat form: an event as a tuple of plain values (identity's hand-over buffer) ------------

#: ``(event_id, event_type value, event_time, payload kind, payload values, user_id,
#: anonymous_id, session_id, context values or None)``, every value a str, int, bool or
#: None: the C pickler writes it without calling back into Python.
FlatEvent = tuple[str, str, int, int, tuple[Any, ...], Any, Any, Any, Any]
#: The payload classes :func:`flatten` knows, by position (Purchase is not among them: its
#: lines are records; :func:`flatten` gives ``None`` for it).
_FLAT_PAYLOADS: tuple[type[Any], ...] = tuple(
    cls for cls in PAYLOAD_OF_TYPE.values() if cls is not Purchase
)
_FLAT_KIND: dict[type[Any], int] = {cls: i for i, cls in enumerate(_FLAT_PAYLOADS)}


def _values_getter(cls: type[Any]) -> Callable[[Any], tuple[Any, ...]]:
    """The field values of a ``cls`` instance, as a tuple (even of one field)."""
    names = [f.name for f in fields(cls)]
    if len(names) > 1:
        return attrgetter(*names)
    name = names[0]
    return lambda obj: (getattr(obj, name),)


_FLAT_VALUES = tuple(_values_getter(cls) for cls in _FLAT_PAYLOADS)
_FLAT_NEW: tuple[Callable[..., Any], ...] = tuple(_slot_constructor(c) for c in _FLAT_PAYLOADS)
_FLAT_CONTEXT = attrgetter(*[f.name for f in fields(Context)])
_new_context = _slot_constructor(Context)
_TYPE_OF_VALUE: dict[str, EventType] = {member.value: member for member in EventType}


def flatten(event: Event) -> FlatEvent | None:
    """``event`` as a tuple of plain values (:func:`unflatten` gives it back), or ``None``
    for one that has no flat form (a purchase, or an object that is not one of ours).

    An event pickled through its dataclasses costs a Python call per object (the event,
    its payload, its context, its type's enum member); its flat form pickles in C at a
    third of the time and two thirds of the bytes.

    >>> e = Event("e1", EventType.SEARCH, 1_700_000_000_000, Search("boots"), anonymous_id="a1",
    ...           context=Context(device="mobile"))
    >>> unflatten(flatten(e)) == e
    True
    >>> flatten(Event("e2", EventType.PURCHASE, 1, Purchase("o1", (), 0, "EUR"))) is None
    True
    """
    if type(event) is not Event:
        return None
    payload, context = event.payload, event.context
    kind = _FLAT_KIND.get(type(payload))
    if kind is None or type(event.event_type) is not EventType:
        return None
    if context is not None and type(context) is not Context:
        return None
    return (
        event.event_id,
        event.event_type.value,
        event.event_time,
        kind,
        _FLAT_VALUES[kind](payload),
        event.user_id,
        event.anonymous_id,
        event.session_id,
        None if context is None else _FLAT_CONTEXT(context),
    )


def unflatten(flat: FlatEvent) -> Event:
    """The event of a :func:`flatten` tuple, equal to the one flattened."""
    event_id, event_type, event_time, kind, values, user_id, anonymous_id, session_id, ctx = flat
    return _new_event(
        event_id,
        _TYPE_OF_VALUE[event_type],
        event_time,
        _FLAT_NEW[kind](*values),
        user_id,
        anonymous_id,
        session_id,
        None if ctx is None else _new_context(*ctx),
    )


def _lines(raw: list[dict[str, Any]]) -> tuple[LineItem, ...]:
    return tuple([_line_from_record(line) for line in raw])


def _purchase_from_record(record: dict[str, Any]) -> Purchase:
    purchase: Purchase = _new_purchase(
        record["order_id"], _lines(record["lines"]), record["total_minor"], record["currency"]
    )
    return purchase


#: The builder of each payload record, by Avro full name (one look-up per event; an
#: unknown name raises ``KeyError``, as the constructors' look-up did).
_PAYLOAD_FROM_RECORD: dict[str, Callable[[dict[str, Any]], Any]] = {
    name: _purchase_from_record if cls is Purchase else _FROM_RECORD[cls]
    for name, cls in PAYLOAD_OF_AVRO_NAME.items()
}


_EVENT_TYPES: dict[str, EventType] = {t.value: t for t in EventType}


def event_from_record(record: dict[str, Any]) -> Event:
    """Build an :class:`Event` from a decoded envelope whose payload is ``(name, record)``.

    The same Event, and for a malformed record the same exception, as the dataclasses'
    constructors would give (``Event(**...)``, ``Context(**ctx)``...), at a third of their
    cost: this runs once per decoded event.
    """
    name, raw_payload = record["payload"]
    ctx = record["context"]
    event: Event = _new_event(
        record["event_id"],
        _EVENT_TYPES[record["event_type"]],
        record["event_time"],
        _PAYLOAD_FROM_RECORD[name](raw_payload),
        record["user_id"],
        record["anonymous_id"],
        record["session_id"],
        _context_from_record(ctx) if ctx is not None else None,
    )
    return event


def event_to_record(event: Event) -> dict[str, Any]:
    """An :class:`Event` as the dict fastavro writes, the payload as ``(name, record)``."""
    record: dict[str, Any] = to_record(event)
    record["payload"] = (AVRO_NAME_OF_PAYLOAD[type(event.payload)], record["payload"])
    return record


def item_from_record(record: dict[str, Any]) -> ItemUpdate:
    return ItemUpdate(
        item_id=record["item_id"],
        title=record["title"],
        category_path=tuple(record["category_path"]),
        price_minor=record["price_minor"],
        currency=record["currency"],
        in_stock=record["in_stock"],
        created_time=record["created_time"],
        updated_time=record["updated_time"],
        brand=record["brand"],
        tags=tuple(record["tags"]),
    )


def trigger_from_record(record: dict[str, Any]) -> Trigger:
    return Trigger(**{**record, "cart_lines": _lines(record["cart_lines"])})


def segment_change_from_record(record: dict[str, Any]) -> SegmentChange:
    return SegmentChange(**record)


def erasure_confirmation_from_record(record: dict[str, Any]) -> ErasureConfirmation:
    lists = ("redis_keys", "audiences", "state_items", "model_data", "anonymous_ids")
    rest = ("retained", "not_removed")
    return ErasureConfirmation(
        user_id=record["user_id"],
        request_id=record["request_id"],
        request_event_id=record["request_event_id"],
        request_time=record["request_time"],
        processed_time=record["processed_time"],
        **{name: tuple(record[name]) for name in (*lists, *rest)},
    )


def dead_letter_from_record(record: dict[str, Any]) -> DeadLetter:
    return DeadLetter(**{**record, "error_class": ErrorClass(record["error_class"])})


# --- validation: values the schema cannot express --------------------------------------------

#: Event times outside [2000-01-01, 2100-01-01) are a client clock or encoding bug.
MIN_EVENT_TIME_MS = 946_684_800_000
MAX_EVENT_TIME_MS = 4_102_444_800_000
_CURRENCY = re.compile(r"^[A-Z]{3}$")


def validate_event(event: Event) -> str | None:
    """``None`` if the event is usable, else the reason it is not (for a dead letter)."""
    if not event.event_id:
        return "event_id is empty"
    event_type = event.event_type
    if event_type is _UNKNOWN_TYPE:
        return "event_type is UNKNOWN (written with a newer schema than this reader knows)"
    expected = PAYLOAD_OF_TYPE[event_type]
    p = event.payload
    if type(p) is not expected:
        return (
            f"event_type {event_type.value} does not match payload "
            f"{type(p).__name__} (expected {expected.__name__})"
        )
    if not event.user_id and not event.anonymous_id:
        return "neither user_id nor anonymous_id is set"
    if not MIN_EVENT_TIME_MS <= event.event_time < MAX_EVENT_TIME_MS:
        return f"event_time {event.event_time} is outside 2000-01-01..2100-01-01"
    # The payload's class is exactly its type's: one look-up by that class finds its
    # check (no chain of isinstance calls per event).
    check = _PAYLOAD_CHECKS.get(expected)
    return None if check is None else check(p, event)


#: ``EventType.UNKNOWN`` read once: a member looked up on its enum class costs ~900
#: instructions each time (callgrind, Python 3.11), a fifth of validate_event.
_UNKNOWN_TYPE = EventType.UNKNOWN


def _validate_remove_from_cart(p: RemoveFromCart, event: Event) -> str | None:
    if p.quantity < 1:
        return f"remove-from-cart quantity {p.quantity} < 1"
    return None


def _validate_product_view(p: ProductView, event: Event) -> str | None:
    if not p.item_id:
        return "product-view item_id is empty"
    if p.price_minor is not None and p.price_minor < 0:
        return f"product-view price_minor {p.price_minor} < 0"
    return None


def _validate_dwell(p: Dwell, event: Event) -> str | None:
    if p.dwell_ms < 0:
        return f"dwell_ms {p.dwell_ms} < 0"
    return None


def _validate_identify(p: Identify, event: Event) -> str | None:
    return None if event.user_id else "identify without user_id"


def _validate_add_to_cart(p: AddToCart, event: Event) -> str | None:
    if not p.item_id:
        return "add-to-cart item_id is empty"
    if p.quantity < 1:
        return f"add-to-cart quantity {p.quantity} < 1"
    if p.unit_price_minor < 0:
        return f"add-to-cart unit_price_minor {p.unit_price_minor} < 0"
    if not _CURRENCY.match(p.currency):
        return f"add-to-cart currency {p.currency!r} is not an ISO 4217 code"
    return None


def _validate_purchase(p: Purchase, event: Event) -> str | None:
    if not p.order_id:
        return "purchase order_id is empty"
    if not p.lines:
        return "purchase has no lines"
    if p.total_minor < 0:
        return f"purchase total_minor {p.total_minor} < 0"
    if not _CURRENCY.match(p.currency):
        return f"purchase currency {p.currency!r} is not an ISO 4217 code"
    for line in p.lines:
        if line.quantity < 1 or line.unit_price_minor < 0:
            return f"purchase line {line.item_id}: quantity < 1 or negative price"
    return None


#: The checks of a payload beyond its schema, by payload class (none: nothing to check).
_PAYLOAD_CHECKS: dict[type[Any], Callable[[Any, Event], str | None]] = {
    AddToCart: _validate_add_to_cart,
    RemoveFromCart: _validate_remove_from_cart,
    Purchase: _validate_purchase,
    ProductView: _validate_product_view,
    Dwell: _validate_dwell,
    Identify: _validate_identify,
}
