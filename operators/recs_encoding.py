"""The encoding of a user's recommendations in Redis (the ``R`` fields of the user's hash
``attune:{u:<user>}``, :mod:`attune.operators.redis_keys`; ``attune:{u:<user>}:recs``
before it).

Made by the ranking step in format 3 (:func:`attune.operators.ranking.recs_value`,
:func:`encode_compact`), stored by the Redis sink as format 5, or format 4 when the list's
ids or scores do not allow 5 (:func:`stored`, in pieces; a format-2 value is made format 3
first, :func:`compact`, and a format-4 value format 5; :func:`encode_stored` makes what
Redis keeps directly), read by the client library
(:func:`attune.clients.recommendations.parse_recs`, formats 1 to 5); docs/redis.md
("Recommendations") is the contract. It imports nothing heavier than orjson, so the
client library can share it.

Format 5 (what Redis keeps when it can) is format 4 with fixed-width items and no
separators between them: after format 4's six fields, the number of decimal digits ``D``
of the ids (without the common prefix; every one must have ``D`` digits), then all the
items in one field, each its id as a zero-padded base-36 number of
``len(base36(10**D - 1))`` digits, its score as 2 zero-padded base-36 digits (scores of
0 to 1.295) and, when its reason or category differs from the item before,
``,<reason>,<category index>;`` (:func:`_format_5`)::

    5|<model_version>|<generated_at, base 36>|<source>|<categories>|<id prefix>|<D>|<items>

>>> stored(b"3|m3-5|1767571200000|p|shoes/running|i1,831,sv,0|i3,610|i7,500,bt,")
b'5|m3-5|mk0e96o0|p|shoes/running|i|1|1n3,sv,0;3gy7dw,bt,;'

Format 4 (what Redis keeps of a list format 5 cannot hold) is format 3 below with
``generated_at`` and every score in base 36 (:func:`attune.operators.redis_keys.base36`:
the same thousandths in 2 characters instead of 3) and the item ids' common prefix written
once, as a 6th field, each item then giving its id without it::

    4|<model_version>|<generated_at, base 36>|<source>|<categories>|<id prefix>|<item>...

>>> _format_4("3|m3-5|1767571200000|p|shoes/running|i1,831,sv,0|i3,610|i7,500,bt,")
'4|m3-5|mk0e96o0|p|shoes/running|i|1,n3,sv,0|3,gy|7,dw,bt,'

Format 3 (what Redis held before format 4) is text, not JSON: Redis keeps one value per
user, and
format 2's brackets, quotes and ``0.`` of every score were a third of it. Fields are
separated by ``|``::

    3|<model_version>|<generated_at>|<source>|<categories>|<item>|<item>...

``source`` is a code (:data:`SOURCE_CODES`, else written whole), ``categories`` the
category paths the items use joined by ``,`` (empty: none), and each item
``<id>,<score>,<reason code>,<category index>``: the score in thousandths (an integer),
the reason as in format 2, the index empty when the category is not known. An item
with the reason and category of the item before it is written ``<id>,<score>`` (most
lists give one reason and one category to most items). In every string ``%``, ``|``
and ``,`` are written ``%25``, ``%7C``, ``%2C``.

>>> compact(encode([("i1", 0.8312345, "similar-to-viewed", "shoes/running"),
...                 ("i3", 0.61, "similar-to-viewed", "shoes/running"),
...                 ("i7", 0.5, "bought-together", None)], "m3-5", 7, "personalized"))
b'3|m3-5|7|p|shoes/running|i1,831,sv,0|i3,610|i7,500,bt,'
>>> decode_compact('3|m3-5|7|p|shoes/running|i1,831,sv,0|i3,610|i7,500,bt,')[0]
[('i1', 0.831, 'sv', 'shoes/running'), ('i3', 0.61, 'sv', 'shoes/running'), ('i7', 0.5, 'bt', None)]

Format 2 (what the ranking step makes, and Redis held before format 3) is orjson, one
object, its items positional (format 1 spelled out ``item``, ``score``, ``reason`` and
``category`` in every item, ~1.1 KB for ten):

- ``v``: 2, the format;
- ``items``: rank order, each ``[item id, score, reason code, category index]``: the
  score rounded to :data:`SCORE_DECIMALS` decimals, the reason as its code
  (:data:`REASON_CODES`; a reason without one is written whole), the category as an
  index into ``categories`` or ``null`` when unknown;
- ``categories``: the category paths the items use, each once, in first-use order;
- ``model_version``, ``generated_at`` (epoch ms), ``source``: as in format 1.

>>> encode([("i1", 0.8312345, "similar-to-viewed", "shoes/running"),
...         ("i7", 0.5, "bought-together", None),
...         ("i9", 0.25, "trending-in-category", "shoes/running")], "m3-5", 7, "personalized")
b'{"v":2,"items":[["i1",0.831,"sv",0],["i7",0.5,"bt",null],["i9",0.25,"tc",0]],"categories":["shoes/running"],"model_version":"m3-5","generated_at":7,"source":"personalized"}'
"""

from __future__ import annotations

from collections.abc import Iterable

import orjson

from attune.operators.redis_keys import base36

#: The format :func:`encode` writes (``v``).
FORMAT = 2
#: Decimals a score keeps: scores only order one list, which the list order does already.
SCORE_DECIMALS = 3
#: Reason -> the code a format-2 value stores (readers map it back).
REASON_CODES: dict[str, str] = {
    "similar-to-viewed": "sv",
    "viewed-together": "vt",
    "bought-together": "bt",
    "trending-in-category": "tc",
    "trending": "tr",
    "trending-in-segment": "ts",
    "similar-content": "sc",
}
#: Code -> reason.
REASONS_BY_CODE: dict[str, str] = {code: reason for reason, code in REASON_CODES.items()}
#: The format :func:`compact` writes (the first field).
COMPACT_FORMAT = "3"
#: Source -> the code a format-3 value stores (another source is written whole).
SOURCE_CODES: dict[str, str] = {"personalized": "p", "trending": "t"}
#: Code -> source.
SOURCES_BY_CODE: dict[str, str] = {code: source for source, code in SOURCE_CODES.items()}
#: The format :func:`stored` writes: what Redis keeps.
STORED_FORMAT = "4"
#: The format :func:`stored` writes when a list's ids and scores allow it (format 4
#: otherwise): fixed-width items, no separators between them.
FIXED_FORMAT = "5"
#: Format 5: the width of every score (base-36 thousandths, zero-padded).
SCORE_WIDTH = 2
#: Format 5: the most decimal digits an id (without the prefix) may have.
MAX_ID_DIGITS = 19
#: How a format-2 value starts (what :func:`compact` converts).
_FORMAT_2_START = b'{"v":2,'

#: One recommendation as :func:`encode` takes it: item id, score, reason, category path.
Entry = tuple[str, float, str, str | None]


def encode(items: Iterable[Entry], model_version: str, generated_at_ms: int, source: str) -> bytes:
    """The format-2 value of a user's recommendations, ``items`` in rank order."""
    categories: dict[str, int] = {}
    rows: list[list[object]] = []
    codes = REASON_CODES
    for item, score, reason, category in items:
        index = _index(categories, category)
        rows.append([item, round(score, SCORE_DECIMALS), codes.get(reason, reason), index])
    return orjson.dumps(
        {
            "v": FORMAT,
            "items": rows,
            "categories": list(categories),
            "model_version": model_version,
            "generated_at": generated_at_ms,
            "source": source,
        }
    )


def _index(categories: dict[str, int], category: str | None) -> int | None:
    """``category``'s index among the list's categories, in first-use order (added when
    new); ``None`` when unknown."""
    if category is None:
        return None
    index = categories.get(category)
    if index is None:
        index = categories[category] = len(categories)
    return index


def encode_compact(
    items: Iterable[Entry], model_version: str, generated_at_ms: int, source: str
) -> bytes:
    """The format-3 value of a user's recommendations, ``items`` in rank order: the same
    bytes as ``compact(encode(...))`` without the JSON in between (the ranking step makes
    one per relevant batch of a user)."""
    categories: dict[str, int] = {}
    entries: list[str] = []
    codes = REASON_CODES
    last: tuple[str, int | None] | None = None
    for item, score, reason, category in items:
        index = _index(categories, category)
        code = codes.get(reason, reason)
        # as compact() reads a format-2 score: rounded to SCORE_DECIMALS first
        entry = f"{_escape(item)},{round(round(score, SCORE_DECIMALS) * 1000)}"
        if (code, index) != last:
            entry += f",{_escape(code)},{'' if index is None else index}"
            last = (code, index)
        entries.append(entry)
    head = [
        COMPACT_FORMAT,
        _escape(model_version),
        str(generated_at_ms),
        SOURCE_CODES.get(source) or _escape(source),
        ",".join(_escape(c) for c in categories),
    ]
    return "|".join(head + entries).encode()


def encode_stored(
    items: Iterable[Entry], model_version: str, generated_at_ms: int, source: str
) -> bytes:
    """What Redis keeps of a user's recommendations (format 5, else 4), ``items`` in rank
    order: the same bytes as ``stored(encode_compact(...))`` without format 3 in between,
    for a ranking step that makes what Redis keeps (the sink then stores it as it is).

    >>> rows = [("i1", 0.8312345, "similar-to-viewed", "shoes/running"),
    ...         ("i3", 0.61, "similar-to-viewed", "shoes/running")]
    >>> encode_stored(rows, "m3-5", 7, "personalized")
    b'5|m3-5|7|p|shoes/running|i|1|1n3,sv,0;3gy'
    """
    categories: dict[str, int] = {}
    rows: list[tuple[str, str, str]] = []  # escaped id, score, reason and category or ""
    codes = REASON_CODES
    last: tuple[str, int | None] | None = None
    for item, score, reason, category in items:
        index = _index(categories, category)
        code = codes.get(reason, reason)
        tail = ""
        if (code, index) != last:
            tail = f",{_escape(code)},{'' if index is None else index}"
            last = (code, index)
        rows.append((_escape(item), base36(round(round(score, SCORE_DECIMALS) * 1000)), tail))
    prefix = _common_prefix([r[0] for r in rows]) if len(rows) > 1 else ""
    cut = len(prefix)
    head = [
        STORED_FORMAT,
        _escape(model_version),
        base36(generated_at_ms),
        SOURCE_CODES.get(source) or _escape(source),
        ",".join(_escape(c) for c in categories),
        prefix,
    ]
    fixed = _fixed_items(rows, cut)
    if fixed is not None:  # format 5 in the same pass (what _format_5 makes of format 4)
        return "|".join([FIXED_FORMAT, *head[1:], *fixed]).encode()
    return "|".join(head + [f"{i[cut:]},{score}{tail}" for i, score, tail in rows]).encode()


def _fixed_items(rows: list[tuple[str, str, str]], cut: int) -> tuple[str, str] | None:
    """Format 5's last two fields (the ids' digits, the items) of :func:`encode_stored`'s
    rows, ``None`` when format 5 cannot hold them (the rules of :func:`_format_5`)."""
    if not rows:
        return None
    digits = len(rows[0][0]) - cut
    if not 0 < digits <= MAX_ID_DIGITS:
        return None
    width = len(base36(10**digits - 1))
    out: list[str] = []
    for ident, score, tail in rows:
        suffix = ident[cut:]
        if len(suffix) != digits or not (suffix.isascii() and suffix.isdigit()):
            return None
        if len(score) > SCORE_WIDTH or score[:1] == "-" or ";" in tail:
            return None
        if tail and tail.count(",") != 2:  # not <reason>,<category>: format 4 keeps it
            return None
        out.append(
            base36(int(suffix)).rjust(width, "0")
            + score.rjust(SCORE_WIDTH, "0")
            + (tail + ";" if tail else "")
        )
    return str(digits), "".join(out)


def reason_of(code: str) -> str:
    """The reason a stored code stands for (an unknown code is a reason written whole).

    >>> reason_of("sv"), reason_of("co-visited")
    ('similar-to-viewed', 'co-visited')
    """
    return REASONS_BY_CODE.get(code, code)


def _escape(value: str) -> str:
    if "%" in value or "|" in value or "," in value:
        return value.replace("%", "%25").replace("|", "%7C").replace(",", "%2C")
    return value


def _unescape(value: str) -> str:
    if "%" in value:
        return value.replace("%2C", ",").replace("%7C", "|").replace("%25", "%")
    return value


def compact(value: bytes) -> bytes:
    """The format-3 value of a format-2 value; any other value is returned as it is.

    The Redis sink stores what the ranking step makes in format 3, so ranking keeps its
    one format; a value that does not start as :func:`encode` starts it (a foreign or
    test writer's) is not the sink's to rewrite.

    >>> compact(b'{"v":2,"items":[],"categories":[],"model_version":"m|1",'
    ...         b'"generated_at":5,"source":"trending"}')
    b'3|m%7C1|5|t|'
    >>> compact(b"anything else")
    b'anything else'
    """
    if not value.startswith(_FORMAT_2_START):
        return value
    parsed = orjson.loads(value)
    categories: list[str] = parsed["categories"]
    source: str = parsed["source"]
    parts = [
        COMPACT_FORMAT,
        _escape(parsed["model_version"]),
        str(parsed["generated_at"]),
        SOURCE_CODES.get(source) or _escape(source),
        ",".join(_escape(c) for c in categories),
    ]
    last: tuple[str, int | None] | None = None
    for item, score, reason, index in parsed["items"]:
        entry = f"{_escape(item)},{round(score * 1000)}"
        if (reason, index) != last:
            entry += f",{_escape(reason)},{'' if index is None else index}"
            last = (reason, index)
        parts.append(entry)
    return "|".join(parts).encode()


def decode_compact(text: str) -> tuple[list[tuple[str, float, str, str | None]], str, int, str]:
    """A format-3, 4 or 5 value's items ``(id, score, reason code, category path)``,
    model version, generation time and source; ``ValueError`` says what is wrong (the
    client turns it into its corrupt-value error).

    >>> decode_compact("4|m3-5|7|p|shoes/running|i|1,n3,sv,0|3,gy|7,dw,bt,")[0][1]
    ('i3', 0.61, 'sv', 'shoes/running')
    """
    parts = text.split("|")
    if parts[0] == FIXED_FORMAT:
        if len(parts) != 8:
            raise ValueError(f"a format-5 value of {len(parts)} fields, not 8")
        parts = [STORED_FORMAT, *parts[1:6]] + [",".join(i) for i in _items_5(*parts[6:])]
    stored = parts[0] == STORED_FORMAT
    if not (parts[0] == COMPACT_FORMAT or stored) or len(parts) < 5 + stored:
        raise ValueError("not a format-3 value of at least 5 fields, nor a format-4 one of 6")
    _, model_version, generated_at, source, joined = parts[:5]
    base = 36 if stored else 10
    digits = generated_at.lower() if stored else generated_at
    if not (digits.isascii() and digits.isalnum() and (stored or digits.isdigit())):
        raise ValueError(f"generated_at is {generated_at!r}, not epoch ms")
    prefix = parts[5] if stored else ""
    categories = [_unescape(c) for c in joined.split(",")] if joined else []
    items: list[tuple[str, float, str, str | None]] = []
    code, path = "", None
    for i, entry in enumerate(parts[5 + stored :]):
        fields = entry.split(",")
        if len(fields) == 4:
            code, index = _unescape(fields[2]), fields[3]
            try:
                category = int(index) if index else None
            except ValueError:
                raise ValueError(f"items[{i}].category is {index!r}, not an integer") from None
            if category is not None and not 0 <= category < len(categories):
                raise ValueError(f"items[{i}].category is {category}, not an index into categories")
            path = None if category is None else categories[category]
        elif len(fields) != 2 or i == 0:
            raise ValueError(f"items[{i}] is not <id>,<score>[,<reason>,<category>]")
        try:
            thousandths = int(fields[1], base)
        except ValueError:
            raise ValueError(f"items[{i}].score is {fields[1]!r}, not an integer") from None
        items.append((_unescape(prefix + fields[0]), thousandths / 1000, code, path))
    source = SOURCES_BY_CODE.get(source) or _unescape(source)
    return items, _unescape(model_version), int(generated_at, base), source


def stored(value: bytes) -> bytes:
    """What Redis keeps of a list: format 5 (:func:`_format_5`), or format 4 when the list
    does not allow 5, of a format-3 value (:func:`compact` of a format-2 one first), and
    format 5 of a format-4 value that allows it; another value as it is (a foreign or test
    writer's, which readers judge).

    Format 4 is format 3 with ``generated_at`` and every score written in base 36 and the
    item ids' common prefix written once, as a 6th field, before the items (each item
    then its id without the prefix): the same values in ~25% fewer bytes for ids that
    share a prefix. A text transform, cheaper than decoding.

    >>> stored(b"3|m3-5|7|p|shoes/running|i1,831,sv,0|i3,610|i7,500,bt,")
    b'5|m3-5|7|p|shoes/running|i|1|1n3,sv,0;3gy7dw,bt,;'
    >>> stored(b"4|m3-5|7|p||x|a1,n3,sv,|bb2,gy")  # ids of 1 and 2 digits: kept
    b'4|m3-5|7|p||x|a1,n3,sv,|bb2,gy'
    >>> stored(b"not a list")
    b'not a list'
    """
    value = compact(value)
    if value.startswith(b"4|"):  # a ranking step that makes format 4 itself
        try:
            fixed = _format_5(value.decode())
        except (ValueError, IndexError):
            fixed = None
        return value if fixed is None else fixed.encode()
    if not value.startswith(b"3|"):
        return value
    try:
        return _stored_of_3(value.decode()).encode()
    except (ValueError, IndexError):  # not what encode_compact writes: kept for readers
        return value


def _stored_of_3(text: str) -> str:
    """Format 5, else 4, of a format-3 text in one pass (what ``_format_5(_format_4(text))
    or _format_4(text)`` gives)."""
    parts = text.split("|")
    if len(parts) < 5:
        raise ValueError("not format 3")
    fields = [item.split(",") for item in parts[5:]]
    prefix = _common_prefix([f[0] for f in fields]) if len(fields) > 1 else ""
    cut = len(prefix)
    head = [parts[1], base36(int(parts[2])), parts[3], parts[4], prefix]
    rows = [(f[0], base36(int(f[1])), "," + ",".join(f[2:]) if len(f) > 2 else "") for f in fields]
    fixed = _fixed_items(rows, cut)
    if fixed is not None:
        return "|".join([FIXED_FORMAT, *head, *fixed])
    return "|".join([STORED_FORMAT, *head, *(f"{i[cut:]},{sc}{tail}" for i, sc, tail in rows)])


def _format_5(text: str) -> str | None:
    """The format-5 value of a format-4 one, ``None`` when its items do not allow it: item
    ids (without the common prefix) all of the same number of decimal digits, every score
    at most :data:`SCORE_WIDTH` base-36 digits, no ``;`` in a reason or category index.

    Format 5 keeps format 4's first six fields, then the number of digits ``D`` of the ids,
    then all the items in one field, without separators: each item its id as a base-36
    number of ``len(base36(10**D - 1))`` digits, zero-padded (read back as ``D`` decimal
    digits, leading zeros kept), its score as :data:`SCORE_WIDTH` base-36 digits,
    zero-padded, and, when its reason or category differs from the item before,
    ``,<reason>,<category index>;``. Ten items of five-digit ids take ~30 bytes less.

    >>> _format_5("4|m3-5|7|p|shoes/running|i|1,n3,sv,0|3,gy|7,dw,bt,")
    '5|m3-5|7|p|shoes/running|i|1|1n3,sv,0;3gy7dw,bt,;'
    >>> _format_5("4|m|7|p||i|12,n3,sv,|3,gy") is None  # ids of 2 and 1 digits
    True
    """
    parts = text.split("|")
    if parts[0] != STORED_FORMAT or len(parts) < 7:
        return None
    fields = [item.split(",") for item in parts[6:]]
    digits = len(fields[0][0])
    if not 0 < digits <= MAX_ID_DIGITS:
        return None
    width = len(base36(10**digits - 1))
    out: list[str] = []
    for item in fields:
        ident, score = item[0], item[1]
        if len(ident) != digits or not (ident.isascii() and ident.isdigit()):
            return None
        if len(score) > SCORE_WIDTH or not (score.isascii() and score.isalnum()):
            return None
        if len(item) == 4:
            if ";" in item[2] or ";" in item[3]:
                return None
            tail = f",{item[2]},{item[3]};"
        elif len(item) == 2:
            tail = ""
        else:
            return None
        out.append(base36(int(ident)).rjust(width, "0") + score.rjust(SCORE_WIDTH, "0") + tail)
    return "|".join([FIXED_FORMAT, *parts[1:6], str(digits), "".join(out)])


def _items_5(digits_field: str, items: str) -> list[list[str]]:
    """Format 5's items as format 4 writes them (``[id, score]`` or ``[id, score, reason,
    category index]``, ids without the prefix); ``ValueError`` says what is wrong."""
    if not (
        digits_field.isascii() and digits_field.isdigit() and 0 < int(digits_field) <= MAX_ID_DIGITS
    ):
        raise ValueError(f"the ids' digits are {digits_field[:16]!r}, not 1 to {MAX_ID_DIGITS}")
    digits = int(digits_field)
    width = len(base36(10**digits - 1))
    out: list[list[str]] = []
    at = 0
    while at < len(items):
        head = items[at : at + width + SCORE_WIDTH]
        if len(head) != width + SCORE_WIDTH or not (head.isascii() and head.isalnum()):
            raise ValueError(f"items[{len(out)}] is {head!r}, not {width} + 2 base-36 digits")
        ident = str(int(head[:width], 36)).rjust(digits, "0")
        if len(ident) != digits:
            raise ValueError(f"items[{len(out)}].id {head[:width]!r} has over {digits} digits")
        item = [ident, head[width:].lstrip("0") or "0"]
        at += width + SCORE_WIDTH
        if items[at : at + 1] == ",":
            end = items.find(";", at)
            if end < 0:
                raise ValueError(f"items[{len(out)}]'s reason has no ';' after it")
            rest = items[at + 1 : end].split(",")
            if len(rest) != 2:
                raise ValueError(f"items[{len(out)}]'s reason is not <reason>,<category>")
            item += rest
            at = end + 1
        out.append(item)
    return out


def _format_4(text: str) -> str:
    parts = text.split("|")
    if len(parts) < 5:
        raise ValueError("not format 3")
    items = parts[5:]
    ids = [item.split(",", 1)[0] for item in items]
    prefix = _common_prefix(ids) if len(ids) > 1 else ""
    cut = len(prefix)
    out = ["4", parts[1], base36(int(parts[2])), parts[3], parts[4], prefix]
    for item in items:
        fields = item.split(",")
        fields[0] = fields[0][cut:]
        fields[1] = base36(int(fields[1]))
        out.append(",".join(fields))
    return "|".join(out)


def _common_prefix(texts: list[str]) -> str:
    """The longest text every one of ``texts`` starts with (that of the least and the
    greatest of them).

    >>> _common_prefix(["i00973", "i00871", "i01412"]), _common_prefix(["a", "b"])
    ('i0', '')
    """
    low, high = min(texts), max(texts)
    for i, (a, b) in enumerate(zip(low, high, strict=False)):
        if a != b:
            return low[:i]
    return low
