"""Redis key names: shapes, prefix, and one hash slot for all keys of a user.

The slot function is written here from the Redis Cluster specification
(CRC16-XMODEM of the hash tag, modulo 16384) rather than taken from the code
under test, and checked against the spec's test vector and redis-py's own.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from attune.operators.redis_keys import (
    CHUNK,
    MAX_CHUNKS,
    PROFILE_ORDER,
    USER_KEY_KINDS,
    RedisKeys,
    chunk_field,
    chunks,
    decode_profile,
    encode_profile,
    encode_profile_2,
    escape_tag,
    joined,
    segment_names,
    stale_chunks,
)

SLOTS = 16384


def crc16_xmodem(data: bytes) -> int:
    """CRC16-CCITT (XMODEM): polynomial 0x1021, initial value 0, no reflection."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def hash_tag(key: bytes) -> bytes:
    """What Redis Cluster hashes: the text between the first '{' and the next '}', if non-empty."""
    start = key.find(b"{")
    if start != -1:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            return key[start + 1 : end]
    return key


def key_slot(key: str) -> int:
    return crc16_xmodem(hash_tag(key.encode())) % SLOTS


AWKWARD_IDS = [
    "u1",
    "",
    "{",
    "}",
    "{}",
    "}{",
    "a}b",
    "a{b}c",
    "x:y:z",
    "50%",
    "%7D",
    "%25}",
    "user:{u:other}",
    "Zoë-🛒-用户",
    " spaced id ",
    "a" * 300,
]


def test_crc16_test_vector_of_the_cluster_spec() -> None:
    assert crc16_xmodem(b"123456789") == 0x31C3


def test_slot_function_agrees_with_redis_py() -> None:
    crc = pytest.importorskip("redis.crc")
    for key in ["attune:{u:u1}:profile", "plain", "a{}b", "{a}{b}", "{{x}}", "x{y"]:
        assert key_slot(key) == crc.key_slot(key.encode()), key


def test_key_shapes_with_default_prefix() -> None:
    keys = RedisKeys()
    assert keys.user("u1") == "attune:{u:u1}"
    assert keys.profile("u1") == "attune:{u:u1}:profile"
    assert keys.segments("u1") == "attune:{u:u1}:segments"
    assert keys.recs("u1") == "attune:{u:u1}:recs"
    assert keys.alias("anon-7") == "attune:{u:anon-7}:alias"
    assert keys.audience("big_spenders") == "attune:segment:big_spenders"
    assert keys.trending("category:shoes") == "attune:trending:category:shoes"
    assert keys.model("kmeans") == "attune:model:kmeans"
    assert keys.user_keys("u1") == [
        "attune:{u:u1}",
        "attune:{u:u1}:alias",
        "attune:{u:u1}:profile",
        "attune:{u:u1}:segments",
        "attune:{u:u1}:recs",
    ]


def test_prefix_is_applied_to_every_key() -> None:
    keys = RedisKeys("shop7:")
    built = [
        *keys.user_keys("u1"),
        keys.audience("s"),
        keys.trending("global"),
        keys.model("m"),
    ]
    assert all(key.startswith("shop7:") for key in built)
    assert keys.profile("u1") == "shop7:{u:u1}:profile"


@pytest.mark.parametrize("prefix", ["a{b:", "x}:", "{"])
def test_prefix_with_braces_is_refused(prefix: str) -> None:
    with pytest.raises(ValueError, match="hash tag"):
        RedisKeys(prefix)


def test_user_keys_lists_every_per_user_key() -> None:
    keys = RedisKeys()
    assert keys.user_keys("u1") == [
        keys.user("u1"),
        keys.alias("u1"),
        # the layout before the user's hash: read while left, deleted by erasure
        keys.profile("u1"),
        keys.segments("u1"),
        keys.recs("u1"),
    ]
    assert len(USER_KEY_KINDS) == len(keys.user_keys("u1"))


@given(st.text(max_size=CHUNK * MAX_CHUNKS + 40), st.sampled_from([str, bytes]))
def test_pieces_round_trip_and_fit_a_listpack(text: str, kind: type) -> None:
    value = text if kind is str else text.encode()
    pieces = chunks("R", value)
    assert [f for f, _ in pieces] == [chunk_field("R", i) for i in range(len(pieces))]
    assert len(pieces) == 1 or all(len(p) <= CHUNK for _, p in pieces)
    assert len(pieces) <= MAX_CHUNKS
    fields = dict(pieces)
    assert joined(fields, "R") == text
    assert joined({f.encode(): p for f, p in pieces}, "R") == text  # HGETALL of a bytes client
    # pieces a longer value left behind are not read
    assert joined({**fields, **{f: b"stale" for f in stale_chunks("R", len(pieces))}}, "R") == text


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"R": b"3|x", "R1": b"y"}, "field R2 is missing"),
        ({"R": b"x"}, "count of pieces"),
        ({"R": b"9x"}, "count of pieces"),
        ({"R": b"1\xff"}, "utf-8"),
    ],
)
def test_joined_says_what_is_wrong(fields: dict[str, bytes], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        joined(fields, "R")


def test_fields_of_a_user_hash() -> None:
    fields = {b"P": b"12|1", b"R": b"13|m|1|p|", b"vip": b"1", b"new_visitor": b"1"}
    assert segment_names(fields) == ["new_visitor", "vip"]
    assert joined(fields, "P") == "2|1" and joined({}, "P") is None
    assert joined({b"vip": b"1"}, "R") is None


@pytest.mark.parametrize("user", AWKWARD_IDS)
def test_all_keys_of_a_user_share_one_slot_and_the_tag_is_the_whole_id(user: str) -> None:
    keys = RedisKeys()
    user_keys = keys.user_keys(user)
    assert {key_slot(key) for key in user_keys} == {key_slot(keys.profile(user))}
    # The tag covers the whole (escaped) id, not a prefix of it cut at a '}'.
    for key in user_keys:
        assert hash_tag(key.encode()) == f"u:{escape_tag(user)}".encode()


def test_ids_that_differ_after_a_brace_do_not_share_a_tag() -> None:
    keys = RedisKeys()
    # Unescaped, "a}x" and "a}y" would both hash the tag "u:a" (one hot slot for
    # every id starting "a}"); escaped, each id hashes on its own.
    assert hash_tag(keys.profile("a}x").encode()) == b"u:a%7Dx"
    assert hash_tag(keys.profile("a}y").encode()) == b"u:a%7Dy"


def test_escaping_is_injective_on_awkward_ids() -> None:
    keys = RedisKeys()
    built = [key for user in AWKWARD_IDS for key in keys.user_keys(user)]
    assert len(set(built)) == len(built)


@given(st.text(), st.text())
def test_distinct_ids_give_distinct_keys(a: str, b: str) -> None:
    keys = RedisKeys()
    if a != b:
        assert set(keys.user_keys(a)).isdisjoint(keys.user_keys(b))
    else:
        assert keys.user_keys(a) == keys.user_keys(b)


@given(st.text())
def test_any_id_keeps_its_keys_in_one_slot(user: str) -> None:
    keys = RedisKeys()
    slots = {key_slot(key) for key in keys.user_keys(user)}
    assert len(slots) == 1
    assert hash_tag(keys.alias(user).encode()) == f"u:{escape_tag(user)}".encode()


@given(st.text())
def test_escape_round_trips(user: str) -> None:
    escaped = escape_tag(user)
    assert "}" not in escaped
    assert escaped.replace("%7D", "}").replace("%25", "%") == user


def test_user_keys_never_look_like_shared_keys() -> None:
    keys = RedisKeys()
    shared = {keys.audience("x"), keys.trending("x"), keys.model("x")}
    for user in AWKWARD_IDS:
        assert shared.isdisjoint(keys.user_keys(user))


@given(st.lists(st.text(), min_size=len(PROFILE_ORDER), max_size=len(PROFILE_ORDER)))
def test_profile_value_round_trips_any_text(values: list[str]) -> None:
    fields = dict(zip(PROFILE_ORDER, values, strict=True))
    decoded = decode_profile(encode_profile(fields))
    assert decoded == {name: value or None for name, value in fields.items()}


@pytest.mark.parametrize(
    ("fields", "stored"),
    [
        # times: last_seen_ms in base 36, the others as base-36 ms before it
        (
            {"first_seen_ms": "1767994000000", "last_seen_ms": "1767994092828"},
            "3|||||||||1zmk|mk7e18v0",
        ),
        (
            {"last_purchase_ms": "1767994092830", "last_seen_ms": "1767994092828"},
            "3" + "|" * 10 + "mk7e18v0|-2",
        ),  # a purchase after the latest event (late): a negative gap
        ({"first_seen_ms": "5"}, "3|||||||||=5"),  # last_seen_ms not known: written whole
        ({"last_seen_ms": "007"}, "3||||||||||=007"),  # not an int as str() writes one
        # codes, and values written whole: unknown, a code itself, or led by "="
        ({"device_top": "TABLET", "propensity_tier": "low"}, "3" + "|" * 14 + "t||l"),
        ({"device_top": "WATCH"}, "3" + "|" * 14 + "WATCH"),
        ({"device_top": "m"}, "3" + "|" * 14 + "=m"),
        ({"propensity_tier": "=x"}, "3" + "|" * 16 + "==x"),
    ],
)
def test_profile_format_3_writes_times_and_codes_short(fields: dict[str, str], stored: str) -> None:
    assert encode_profile(fields) == stored
    assert decode_profile(stored) == {name: fields.get(name) for name in PROFILE_ORDER}


def test_profile_format_2_is_still_read_and_a_bad_time_is_refused() -> None:
    fields = {"events": "3", "last_seen_ms": "1767994092828", "device_top": "MOBILE"}
    assert decode_profile(encode_profile_2(fields)) == decode_profile(encode_profile(fields))
    with pytest.raises(ValueError, match="profile format '9'"):
        decode_profile("9|1")
    with pytest.raises(ValueError, match="invalid literal"):
        decode_profile("3" + "|" * 10 + "x!")  # last_seen_ms not base 36
    with pytest.raises(ValueError, match="relative to last_seen_ms"):
        decode_profile("3|||||||||1zmk")  # first_seen_ms before an unknown last_seen_ms
