"""The recommendation client's pure parts: parsing the recs value, the context, the order of
trending scopes, filtering and topping up (the Redis round trips: tests/integration)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from attune.clients.recommendations import (
    REASON_TRENDING,
    CorruptRecommendationsError,
    Recommendation,
    Request,
    StoredRecs,
    in_category,
    parse_profile,
    parse_recs,
    select,
    trending_scopes,
)
from attune.operators.features import PROFILE_FIELDS
from attune.operators.recs_encoding import compact
from attune.operators.redis_keys import encode_profile, encode_profile_2

GOOD: dict[str, Any] = {
    "items": [
        {"item": "i1", "score": 0.83, "reason": "similar-to-viewed", "category": "shoes"},
        {"item": "i2", "score": 1, "reason": "bought-together"},
    ],
    "model_version": "emb-3",
    "generated_at": 1_767_571_200_000,
    "source": "personalized",
    "future_field": [1, 2],  # ignored: writers may add fields
}


#: The same list in format 2, what the flow writes (docs/redis.md, "Recommendations").
GOOD_V2: dict[str, Any] = {
    "v": 2,
    "items": [["i1", 0.83, "sv", 0], ["i2", 1, "bt", None]],
    "categories": ["shoes"],
    "model_version": "emb-3",
    "generated_at": 1_767_571_200_000,
    "source": "personalized",
    "future_field": [1, 2],
}


#: The same list in format 3, what the sink stores.
GOOD_V3 = b"3|emb-3|1767571200000|p|shoes|i1,830,sv,0|i2,1000,bt,"


@pytest.mark.parametrize(
    "raw",
    [orjson.dumps(GOOD), orjson.dumps(GOOD_V2), GOOD_V3, compact(orjson.dumps(GOOD_V2))],
    ids=["format-1", "format-2", "format-3", "format-3-compacted"],
)
def test_parse_recs_reads_the_contract(raw: bytes) -> None:
    assert parse_recs(raw) == StoredRecs(
        items=(
            Recommendation("i1", 0.83, "similar-to-viewed", "shoes"),
            Recommendation("i2", 1.0, "bought-together", None),
        ),
        model_version="emb-3",
        generated_at=1_767_571_200_000,
        source="personalized",
    )
    assert parse_recs(raw.decode()).model_version == "emb-3"  # str too


@pytest.mark.parametrize("good", [GOOD, GOOD_V2], ids=["format-1", "format-2"])
def test_parse_recs_reads_an_empty_list(good: dict[str, Any]) -> None:
    assert parse_recs(orjson.dumps({**good, "items": []})).items == ()
    assert parse_recs(compact(orjson.dumps({**GOOD_V2, "items": []}))).items == ()


@pytest.mark.parametrize("stored_by_the_sink", [False, True], ids=["format-2", "format-3"])
def test_what_the_ranking_step_writes_reads_back(stored_by_the_sink: bool) -> None:
    from attune.operators.ranking import Recommendation as Ranked
    from attune.operators.ranking import recs_value

    ranked = [
        Ranked("i1", 0.83, "similar-to-viewed", "shoes"),
        Ranked("i,2|%", 1.0, "x-new", None),
        Ranked("i3", -0.25, "x-new", None),
    ]
    value = recs_value(ranked, "emb|3", 1_767_571_200_000, "personalized")
    stored = parse_recs(compact(value) if stored_by_the_sink else value)
    assert stored.items == (
        Recommendation("i1", 0.83, "similar-to-viewed", "shoes"),
        Recommendation("i,2|%", 1.0, "x-new", None),  # a reason without a code, written whole
        Recommendation("i3", -0.25, "x-new", None),
    )
    assert (stored.model_version, stored.source) == ("emb|3", "personalized")


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"3|m|1|p", "at least 5 fields"),
        (b"3|m|soon|p|", "generated_at is 'soon'"),
        (b"3|m|1||", "source is empty"),
        (b"3|m|1|p||i1,5", r"items\[0\] is not <id>,<score>"),
        (b"3|m|1|p||i1,5,sv", r"items\[0\] is not"),
        (b"3|m|1|p||i1,x,sv,", r"items\[0\]\.score is 'x'"),
        (b"3|m|1|p||i1,5,sv,0", r"items\[0\]\.category is 0, not an index"),
        (b"3|m|1|p|a|i1,5,sv,z", r"items\[0\]\.category is 'z'"),
        (b"3|m|1|p|a|,5,sv,0", r"items\[0\]\.item is ''"),
        (b"3|m|1|p|a|\xff,5,sv,0", "format 3"),
        (b"4|m|1|p|", "nor a format-4 one of 6"),
        (b"4|m|-1|p||", "generated_at is '-1'"),
        (b"4|m|1|p||i|1,!,sv,", r"items\[0\]\.score is '!'"),
        (b"4|m|1|p|a|i|\xff,5,sv,0", "format 4"),
    ],
)
def test_parse_recs_format_3_names_what_is_wrong(raw: bytes, problem: str) -> None:
    with pytest.raises(CorruptRecommendationsError, match=problem):
        parse_recs(raw, "attune:{u:u1}:recs")


def test_parse_profile_reads_every_format() -> None:
    fields = {
        "events": "3",
        "top_category_7d": "a|b",
        "propensity_score": "0.5",
        "propensity_tier": "high",
        "first_seen_ms": "1767994000000",
        "last_seen_ms": "1767994092828",
    }
    written, older = encode_profile(fields), encode_profile_2(fields)
    assert written.startswith("3|") and older.startswith("2|") and len(written) < len(older)
    as_hash = {name.encode(): b"" for name in PROFILE_FIELDS} | {
        k.encode(): v.encode() for k, v in fields.items()
    }
    expected = {name: None for name in PROFILE_FIELDS} | fields
    assert parse_profile(written.encode()) == parse_profile(written) == expected
    assert parse_profile(older) == expected  # format 2, the three-key layout's
    assert parse_profile(as_hash) == expected  # format 1, what HGETALL gives
    with pytest.raises(CorruptRecommendationsError, match="profile format '9'"):
        parse_profile(b"9|1", "attune:{u:u1}:profile")


def _v2(**changes: Any) -> bytes:
    return orjson.dumps({**GOOD_V2, **changes})


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (_v2(v=3), "v is 3, not a format this client reads"),
        (_v2(categories=None), "categories is missing"),
        (_v2(categories=[1]), "categories is missing or not a list of strings"),
        (_v2(items=[{"item": "i1"}]), r"items\[0\] is not \[item, score, reason, category\]"),
        (_v2(items=[["i1", 0.5, "sv"]]), r"items\[0\] is not"),
        (_v2(items=[["i1", 0.5, "sv", 1]]), r"items\[0\]\.category is 1, not an index"),
        (_v2(items=[["i1", 0.5, "sv", True]]), r"items\[0\]\.category is True"),
        (_v2(items=[["", 0.5, "sv", 0]]), r"items\[0\]\.item is ''"),
        (_v2(items=[["i1", "x", "sv", 0]]), r"items\[0\]\.score is 'x'"),
        (_v2(items=[["i1", 0.5, 7, 0]]), r"items\[0\]\.reason is 7"),
        (_v2(model_version=None), "model_version is None"),
    ],
)
def test_parse_recs_format_2_names_what_is_wrong(raw: bytes, problem: str) -> None:
    with pytest.raises(CorruptRecommendationsError, match=problem):
        parse_recs(raw, "attune:{u:u1}:recs")


def _with(**changes: Any) -> bytes:
    return orjson.dumps({**GOOD, **changes})


def _item(**changes: Any) -> bytes:
    return _with(items=[{"item": "i1", "score": 0.5, "reason": "r", **changes}])


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"{not json", "not JSON"),
        (b"[1, 2]", "a JSON list, not an object"),
        (_with(items={"i1": 1}), "items is missing or not a list"),
        (orjson.dumps({k: v for k, v in GOOD.items() if k != "items"}), "items is missing"),
        (_with(items=["i1"]), r"items\[0\] is not an object"),
        (_item(item=""), r"items\[0\]\.item is '', not an item id"),
        (_item(item=7), r"items\[0\]\.item is 7"),
        (_item(score="high"), r"items\[0\]\.score is 'high', not a finite number"),
        (_item(score=True), r"items\[0\]\.score is True"),
        (_item(score=None), r"items\[0\]\.score is None"),
        (_item(reason=None), r"items\[0\]\.reason is None"),
        (_item(category=["a"]), r"items\[0\]\.category is \['a'\]"),
        (_with(model_version=3), "model_version is 3"),
        (_with(generated_at="2026-01-05"), "generated_at is '2026-01-05', not epoch ms"),
        (_with(generated_at=1.5), "generated_at is 1.5"),
        (_with(source=""), "source is ''"),
    ],
)
def test_parse_recs_names_what_is_wrong(raw: bytes, problem: str) -> None:
    with pytest.raises(CorruptRecommendationsError, match=problem) as info:
        parse_recs(raw, "attune:{u:u1}:recs")
    assert info.value.key == "attune:{u:u1}:recs"
    assert str(info.value).startswith("attune:{u:u1}:recs: ")


def test_non_finite_scores_are_corrupt() -> None:
    # orjson refuses NaN on the way out, but another writer may emit it as a bare token.
    raw = b'{"items":[{"item":"i1","score":NaN,"reason":"r"}],"model_version":"m",' + (
        b'"generated_at":1,"source":"s"}'
    )
    with pytest.raises(CorruptRecommendationsError):
        parse_recs(raw)


def test_request_checks_k_and_context() -> None:
    assert Request.of(3, None) == Request(3)
    assert Request.of(3, {"exclude": {"a", "b"}, "item": "c"}).exclude == {"a", "b", "c"}
    for bad_k in (0, -1, 2.5, True, "3"):
        with pytest.raises(ValueError, match="k must be a positive int"):
            Request.of(bad_k, None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"unknown context key\(s\) categroy"):
        Request.of(3, {"categroy": "shoes"})
    with pytest.raises(ValueError, match="exclude must be a collection"):
        Request.of(3, {"exclude": "i1"})  # a string is not a list of ids
    with pytest.raises(ValueError, match="category must be a non-empty string"):
        Request.of(3, {"category": ""})
    with pytest.raises(ValueError, match="item must be an item id string"):
        Request.of(3, {"item": 42})


def test_category_paths() -> None:
    assert in_category("shoes/running/trail", "shoes/running")
    assert in_category("shoes/running", "shoes/")
    assert not in_category("shoes", "shoes/running")
    assert not in_category("bags", "shoes")


def test_trending_scopes_order() -> None:
    assert trending_scopes(Request(5), []) == ["global"]
    assert trending_scopes(Request(5), {"new_visitor", "lapsed"}) == [
        "segment:lapsed",
        "segment:new_visitor",
        "global",
    ]
    # Priority first (only segments the user is in), then the rest by name.
    assert trending_scopes(Request(5), ["a", "b", "c"], priority=["c", "zzz", "b"]) == [
        "segment:c",
        "segment:b",
        "segment:a",
        "global",
    ]
    # A category restricts: no segment or global items.
    assert trending_scopes(Request(5, category="shoes"), ["a"]) == ["category:shoes"]


MINE = [
    Recommendation("i1", 0.9, "similar-to-viewed", "shoes/running"),
    Recommendation("i2", 0.8, "bought-together", "bags"),
    Recommendation("i3", 0.7, "similar-to-viewed", None),
    Recommendation("i4", 0.6, "co-visited", "shoes"),
]


def ids(items: list[Recommendation]) -> list[str]:
    return [r.item for r in items]


def test_select_keeps_the_stored_order_and_cuts_at_k() -> None:
    items, scopes = select(Request(3), MINE, [("global", [("t1", 9.0)])])
    assert items == MINE[:3] and scopes == []


def test_select_excludes_then_tops_up_with_trending_reasons() -> None:
    trending = [
        ("segment:vip", [("i1", 50.0), ("t1", 40.0)]),
        ("global", [("t1", 9.0), ("t2", 8.0)]),
    ]
    items, scopes = select(Request(6, exclude=frozenset({"i2", "t2"})), MINE, trending)
    assert ids(items) == ["i1", "i3", "i4", "t1"]  # i1 not twice, t1 once, excluded t2 left out
    assert items[3] == Recommendation("t1", 40.0, REASON_TRENDING, None)
    assert scopes == ["segment:vip"]  # global gave nothing new


def test_select_tops_up_across_scopes_in_order() -> None:
    trending = [("segment:vip", [("t1", 4.0)]), ("global", [("t2", 90.0), ("t3", 80.0)])]
    items, scopes = select(Request(3), [], trending)
    assert [(r.item, r.score, r.reason) for r in items] == [
        ("t1", 4.0, "trending"),
        ("t2", 90.0, "trending"),
        ("t3", 80.0, "trending"),
    ]
    assert scopes == ["segment:vip", "global"]


def test_select_with_a_category_restricts_and_may_be_short() -> None:
    trending = [("category:shoes", [("i1", 5.0), ("t5", 3.0)])]
    items, scopes = select(Request(5, category="shoes"), MINE, trending)
    # i2 (bags) and i3 (no category) are not known to be shoes; nothing from elsewhere pads it.
    assert ids(items) == ["i1", "i4", "t5"]
    assert items[2].category == "shoes" and items[2].reason == "trending"
    assert scopes == ["category:shoes"]
