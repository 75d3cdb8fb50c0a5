"""The encoding of a user's recommendations in Redis (``attune:{u:<user>}:recs``).

Written by the ranking step (:func:`attune.operators.ranking.recs_value`), read by the
client library (:func:`attune.clients.recommendations.parse_recs`); docs/redis.md
("Recommendations") is the contract. It imports nothing heavier than orjson, so the
client library can share it.

Format 2 (the current one) is orjson, one object, its items positional to keep a
user's value small (Redis keeps one per user; format 1 spelled out ``item``, ``score``,
``reason`` and ``category`` in every item, ~1.1 KB for ten):

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

#: One recommendation as :func:`encode` takes it: item id, score, reason, category path.
Entry = tuple[str, float, str, str | None]


def encode(items: Iterable[Entry], model_version: str, generated_at_ms: int, source: str) -> bytes:
    """The format-2 value of a user's recommendations, ``items`` in rank order."""
    categories: dict[str, int] = {}
    rows: list[list[object]] = []
    codes = REASON_CODES
    for item, score, reason, category in items:
        index = None
        if category is not None:
            index = categories.get(category)
            if index is None:
                index = categories[category] = len(categories)
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


def reason_of(code: str) -> str:
    """The reason a stored code stands for (an unknown code is a reason written whole).

    >>> reason_of("sv"), reason_of("co-visited")
    ('similar-to-viewed', 'co-visited')
    """
    return REASONS_BY_CODE.get(code, code)
