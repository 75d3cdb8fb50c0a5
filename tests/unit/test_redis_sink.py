"""Redis sink without Redis: what :func:`plan` coalesces a batch into.

Besides examples of each coalescing rule, a property test runs random
operation sequences two ways, op by op with plain semantics and through
``plan`` in random batches on a small Redis model, and checks that they end in
the same keys and values, with a TTL on every key the sink wrote.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis.connection
from hypothesis import given, settings
from hypothesis import strategies as st

from attune.operators.features import PROFILE_FIELDS
from attune.operators.recs_encoding import decode_compact, encode, encode_compact, stored
from attune.operators.redis_keys import (
    CHUNK,
    PROFILE_ORDER,
    RedisKeys,
    decode_profile,
    encode_profile,
    is_reserved,
    joined,
    stale_chunks,
)
from attune.operators.redis_sink import (
    AliasWrite,
    Command,
    ForgetUser,
    JsonWrite,
    ProfileWrite,
    RecsWrite,
    RedisConfig,
    RedisOp,
    RespPacker,
    SegmentsWrite,
    encode_value,
    plan,
)

KEYS = RedisKeys()
TTL = 3600
#: The sink's wall clock in these tests: generation 681 of the default 30-day alias period.
NOW = 1_767_000_000.0
GENERATION = KEYS.alias_generation(NOW)
FIELDS = ("events", "device_top")
STALE_P = stale_chunks("P", 0)
STALE_R = stale_chunks("R", 0)


def test_last_profile_of_a_user_wins_and_every_field_is_written() -> None:
    commands = plan(
        [
            ProfileWrite("u1", {"events": "1", "device_top": "mobile"}),
            ProfileWrite("u2", {"events": "7"}),
            ProfileWrite("u1", {"events": "2"}),
        ],
        ttl_s=TTL,
        profile_fields=FIELDS,
    )
    assert (
        commands
        == [
            ("HSET", "attune:{u:u1}", "P", b"13|2"),
            ("HDEL", "attune:{u:u1}", *STALE_P[1:]),  # pieces of a longer earlier profile
            ("EXPIRE", "attune:{u:u1}", TTL),  # one TTL: segments live as long as the profile
            ("HSET", "attune:{u:u2}", "P", b"13|7"),
            ("HDEL", "attune:{u:u2}", *STALE_P[1:]),
            ("EXPIRE", "attune:{u:u2}", TTL),
        ]
    )


def test_profile_writes_every_profile_field_in_the_documented_order() -> None:
    (hset, _, _) = plan([ProfileWrite("u1", {"events": "3", "device_top": "MOBILE"})])
    assert PROFILE_ORDER == PROFILE_FIELDS  # a new profile field is appended to the format
    assert hset[2:] == ("P", b"13|3|||||||||||||m")
    assert decode_profile(joined({"P": hset[3]}, "P") or "") == {
        name: {"events": "3", "device_top": "MOBILE"}.get(name) for name in PROFILE_FIELDS
    }


def test_profile_values_with_separators_round_trip() -> None:
    fields = {"events": "1", "top_category_7d": "a|b%7C", "device_top": "%"}
    value = encode_profile(fields)
    assert value.count("|") == PROFILE_FIELDS.index("device_top") + 1
    decoded = decode_profile(value)
    assert {k: v for k, v in decoded.items() if v is not None} == fields
    # a reader of a longer field list reads the values it knows, the rest as not known
    assert decode_profile(value, (*PROFILE_FIELDS, "later"))["later"] is None
    with pytest.raises(ValueError, match="profile format"):
        decode_profile("4|1")


def test_recommendations_are_stored_in_format_5() -> None:
    value = encode([("i1", 0.5, "trending", "a/x"), ("i2", 0.25, "trending", "a/x")], "m1", 7, "t")
    (hset, hdel, expire) = plan([RecsWrite("u1", value)], ttl_s=TTL)
    # format 2 -> 3 -> 4 -> 5: scores in base 36, the ids' common prefix "i" once, the ids
    # of 1 digit and the scores of 2 base-36 digits without separators
    assert hset == ("HSET", "attune:{u:u1}", "R", b"15|m1|7|t|a/x|i|1|1dw,tr,0;26y")
    assert hdel == ("HDEL", "attune:{u:u1}", "R1", "R2", "R3", "R4", "R5", "R6", "R7")
    assert expire == ("EXPIRE", "attune:{u:u1}", TTL)


def test_long_values_are_written_in_pieces_that_keep_the_hash_a_listpack() -> None:
    items = [(f"{i:02d}-item", 0.5, "trending", "a/x") for i in range(14)]  # no common prefix
    value = stored(encode_compact(items, "m1", 7, "trending"))
    (hset, hdel, _) = plan([RecsWrite("u1", value)])
    pieces: dict[Any, Any] = dict(zip(hset[2::2], hset[3::2], strict=True))
    assert list(pieces) == ["R", "R1", "R2"] and hdel[2:] == ("R3", "R4", "R5", "R6", "R7")
    assert all(isinstance(p, bytes) and len(p) <= CHUNK for p in pieces.values())
    assert joined(pieces, "R") == value.decode()
    # A value too long for MAX_CHUNKS pieces is kept whole, the hash then a hashtable.
    many = [(f"{i:02d}-item", 0.5, "trending", "a/x") for i in range(60)]
    huge = stored(encode_compact(many, "m1", 7, "trending"))
    assert len(huge) >= CHUNK * 8
    (hset, hdel, _) = plan([RecsWrite("u1", huge)])
    assert hset[2:] == ("R", b"1" + huge) and list(hdel[2:]) == STALE_R[1:]


def test_segment_names_that_are_attunes_fields_are_refused() -> None:
    for name in ("P", "R1", "Vip", ""):
        with pytest.raises(ValueError, match="upper-case"):
            plan([SegmentsWrite("u1", entered=(name,))])


def test_unknown_profile_field_is_refused() -> None:
    with pytest.raises(ValueError, match=r"\['evnts'\]"):
        plan([ProfileWrite("u1", {"evnts": "3"})], profile_fields=FIELDS)


def test_profile_from_features_encodes_values() -> None:
    features: dict[str, Any] = {"events": 12, "top_category_7d": None, "device_top": "mobile"}
    write = ProfileWrite.from_features("u1", features)
    assert list(write.fields) == list(PROFILE_FIELDS)
    assert write.fields["events"] == "12"
    assert write.fields["top_category_7d"] == ""
    assert write.fields["last_purchase_ms"] == ""  # absent -> not known
    assert write.fields["device_top"] == "mobile"


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (None, ""),
        (0, "0"),
        (-5, "-5"),
        (1_700_000_000_000, "1700000000000"),
        (0.5, "0.5"),
        (1 / 3, "0.333333"),
        (0.1 + 0.2, "0.3"),
        (12.0, "12.0"),
        (float("inf"), "inf"),
        ("x y", "x y"),
        (False, "0"),
    ],
)
def test_encode_value(value: Any, encoded: str) -> None:
    assert encode_value(value) == encoded


def test_segments_fold_in_order_per_user_and_group_per_audience() -> None:
    commands = plan(
        [
            SegmentsWrite("u1", entered=("vip", "browsers")),
            SegmentsWrite("u2", entered=("vip",)),
            SegmentsWrite("u1", exited=("browsers",), entered=("loyal",)),
            SegmentsWrite("u2", exited=("vip",)),
            SegmentsWrite("u2", entered=("vip",), exited=("vip",)),  # entries before exits
        ],
        ttl_s=TTL,
        audience_ttl_s=99,
    )
    assert commands == [
        ("HSET", "attune:{u:u1}", "vip", "1", "loyal", "1"),
        ("HDEL", "attune:{u:u1}", "browsers"),
        ("EXPIRE", "attune:{u:u1}", TTL),
        ("HDEL", "attune:{u:u2}", "vip"),
        ("EXPIRE", "attune:{u:u2}", TTL),
        ("SADD", "attune:segment:vip", "u1"),
        ("SREM", "attune:segment:vip", "u2"),
        ("EXPIRE", "attune:segment:vip", 99),
        ("SREM", "attune:segment:browsers", "u1"),
        ("EXPIRE", "attune:segment:browsers", 99),
        ("SADD", "attune:segment:loyal", "u1"),
        ("EXPIRE", "attune:segment:loyal", 99),
    ]


def test_enter_then_exit_in_one_batch_is_a_removal() -> None:
    commands = plan([SegmentsWrite("u1", entered=("vip",)), SegmentsWrite("u1", exited=("vip",))])
    assert ("HDEL", "attune:{u:u1}", "vip") in commands
    assert ("SREM", "attune:segment:vip", "u1") in commands
    assert not [c for c in commands if c[0] in {"SADD", "HSET"}]
    assert commands == plan(
        [SegmentsWrite("u1", entered=("vip",)), SegmentsWrite("u1", exited=("vip",))]
    )


def test_forget_drops_the_users_earlier_operations() -> None:
    commands = plan(
        [
            ProfileWrite("anon", {"events": "1"}),
            SegmentsWrite("anon", entered=("browsers",)),
            AliasWrite("anon", "someone-else"),
            ProfileWrite("u2", {"events": "4"}),
            ForgetUser("anon", audiences=("window_shoppers",)),
        ],
        ttl_s=TTL,
        profile_fields=FIELDS,
        now_s=NOW,
    )
    current, previous = KEYS.alias_lookup("anon", NOW)
    assert commands == [
        ("DEL", *KEYS.user_keys("anon")),
        ("HSET", "attune:{u:u2}", "P", b"13|4"),
        ("HDEL", "attune:{u:u2}", *STALE_P[1:]),
        ("EXPIRE", "attune:{u:u2}", TTL),
        # Its alias, if one was written before, goes from the buckets readers look in.
        ("HDEL", current, "anon"),
        ("HDEL", previous, "anon"),
        # The entry made earlier in the batch is undone, with the given audiences.
        ("SREM", "attune:segment:browsers", "anon"),
        ("EXPIRE", "attune:segment:browsers", TTL),
        ("SREM", "attune:segment:window_shoppers", "anon"),
        ("EXPIRE", "attune:segment:window_shoppers", TTL),
    ]


def test_operations_after_forget_apply_after_the_delete() -> None:
    commands = plan(
        [
            ForgetUser("u1", audiences=("vip",)),
            ProfileWrite("u1", {"events": "1"}),
            SegmentsWrite("u1", entered=("vip",)),
        ],
        ttl_s=TTL,
        profile_fields=FIELDS,
        now_s=NOW,
    )
    assert commands == [
        ("DEL", *KEYS.user_keys("u1")),
        ("HSET", "attune:{u:u1}", "P", b"13|1", "vip", "1"),
        ("HDEL", "attune:{u:u1}", *STALE_P[1:]),
        ("EXPIRE", "attune:{u:u1}", TTL),
        *(("HDEL", bucket, "u1") for bucket in KEYS.alias_lookup("u1", NOW)),
        ("SADD", "attune:segment:vip", "u1"),
        ("EXPIRE", "attune:segment:vip", TTL),
    ]


def test_merging_an_anonymous_id_forgets_it_then_writes_its_alias() -> None:
    merge: list[RedisOp] = [ForgetUser("anon-1", ("browsers",)), AliasWrite("anon-1", "u9")]
    commands = plan(merge, ttl_s=TTL, now_s=NOW)
    bucket = KEYS.alias_bucket("anon-1", GENERATION)
    assert bucket == f"attune:alias:{GENERATION}:{zlib.crc32(b'anon-1') % 1024}"
    assert commands[0] == ("DEL", *KEYS.user_keys("anon-1"))
    # The forget's HDELs come before the alias's HSET (the same bucket, the same field).
    assert commands[1:5] == [
        ("HDEL", bucket, "anon-1"),
        ("HDEL", KEYS.alias_bucket("anon-1", GENERATION - 1), "anon-1"),
        ("HSET", bucket, "anon-1", "u9"),
        ("EXPIREAT", bucket, (GENERATION + 2) * KEYS.alias_period_s),
    ]
    # The other order deletes the alias it just wrote: forget first.
    assert ("HSET", bucket, "anon-1", "u9") not in plan(merge[::-1], now_s=NOW)


def test_aliases_of_one_bucket_are_one_hset_and_live_a_period_to_two() -> None:
    keys = RedisKeys(alias_buckets=1, alias_period_s=100)
    commands = plan([AliasWrite("a1", "u1"), AliasWrite("a2", "u2")], keys=keys, now_s=250.0)
    assert commands == [
        ("HSET", "attune:alias:2:0", "a1", "u1", "a2", "u2"),
        ("EXPIREAT", "attune:alias:2:0", 400),  # written at 250: lives 150 s, in [100, 200)
    ]
    # A reader at 399 still finds it (the previous generation); at 400 it is gone.
    assert "attune:alias:2:0" in keys.alias_lookup("a1", 399.0)
    assert "attune:alias:2:0" not in keys.alias_lookup("a1", 400.0)
    assert plan([AliasWrite("a1", "u1")], keys=keys, now_s=299.0)[1][2] == 400


def test_json_writes_last_value_per_key_wins() -> None:
    commands = plan(
        [
            JsonWrite("attune:model:kmeans", b'{"v":1}'),
            JsonWrite("attune:model:persona", b"{}", ttl_s=60),
            JsonWrite("attune:model:kmeans", b'{"v":2}'),
        ]
    )
    assert commands == [
        ("SET", "attune:model:persona", b"{}", "EX", 60),
        ("SET", "attune:model:kmeans", b'{"v":2}'),
    ]


def test_empty_batch_plans_nothing() -> None:
    assert plan([]) == []


def test_not_an_operation_is_refused() -> None:
    with pytest.raises(TypeError, match="not a Redis write operation"):
        plan(["HSET x"])  # type: ignore[list-item]


ARGS = st.one_of(st.text(max_size=20), st.binary(max_size=20), st.integers(-(2**63), 2**63 - 1))


@given(st.lists(st.tuples(st.sampled_from(["HSET", "SET", "EXPIRE"]), st.lists(ARGS, max_size=6))))
def test_resp_packer_packs_as_redis_py_does(raw: list[tuple[str, list[Any]]]) -> None:
    commands: list[Command] = [(name, *args) for name, args in raw]
    packer = RespPacker(["HSET", "events", "", 3600, "é"])
    reference = redis.connection.Connection()  # packs only
    expected = b"".join(b"".join(reference.pack_command(*command)) for command in commands)
    assert packer.pack(commands) == expected


def test_config_validates_and_hides_the_password() -> None:
    config = RedisConfig("redis://bob:s3cret@127.0.0.1:6379/0", password="other")
    assert "s3cret" not in repr(config) and "other" not in repr(config)
    assert config.safe_url == "redis://bob:***@127.0.0.1:6379/0"
    assert RedisConfig("rediss://h:1/0").safe_url == "rediss://h:1/0"
    with pytest.raises(ValueError, match="ATTUNE_REDIS_URL"):
        RedisConfig("")
    with pytest.raises(ValueError, match="positive"):
        RedisConfig("redis://h", ttl_s=0)
    with pytest.raises(ValueError, match="hash tag"):
        RedisConfig("redis://h", prefix="{x}:")


def test_config_from_settings() -> None:
    from attune.flows.settings import Settings

    settings = Settings(redis_url="redis://h:1/0", redis_password="pw", redis_ttl_s=5)
    config = RedisConfig.from_settings(settings)
    assert (config.url, config.password, config.ttl_s, config.prefix) == (
        "redis://h:1/0",
        "pw",
        5,
        "attune:",
    )


# --- model-based property: plan == op-by-op semantics -----------------------------------------


@dataclass
class RedisModel:
    """Just enough Redis: strings, hashes, sets (empty ones vanish) and which keys have a TTL."""

    data: dict[str, Any] = field(default_factory=dict)
    ttl: set[str] = field(default_factory=set)

    def run(self, command: Command) -> None:
        name, key, *args = command
        assert isinstance(key, str)
        if name == "DEL":
            self.delete(key, *args)
        elif name == "HSET":
            self.fresh(key)
            self.data.setdefault(key, {}).update(zip(args[::2], args[1::2], strict=True))
        elif name == "HDEL":
            self.remove(key, args)
        elif name == "SADD":
            self.fresh(key)
            self.data.setdefault(key, set()).update(args)
        elif name == "SREM":
            self.remove(key, args)
        elif name in {"EXPIRE", "EXPIREAT"}:
            if key in self.data:
                self.ttl.add(key)
        elif name == "SET":
            self.data[key] = args[0]
            if "EX" in args[1:]:
                self.ttl.add(key)
            else:
                self.ttl.discard(key)
        else:
            raise AssertionError(f"unexpected command {name!r}")

    def delete(self, *keys: object) -> None:
        for k in keys:
            assert isinstance(k, str)
            self.data.pop(k, None)
            self.ttl.discard(k)

    def fresh(self, key: str) -> None:
        """A key about to be created has no TTL (one that exists keeps its own)."""
        if key not in self.data:
            self.ttl.discard(key)

    def remove(self, key: str, members: Sequence[object]) -> None:
        """SREM or HDEL ``members``; a set or hash left empty vanishes, TTL and all."""
        left = self.data.get(key, set())
        for member in members:
            if isinstance(left, dict):
                left.pop(member, None)
            else:
                left.discard(member)
        if not left:
            self.data.pop(key, None)
            self.ttl.discard(key)


def reference(ops: list[RedisOp]) -> dict[str, Any]:
    """Each operation applied on its own, with the plain meaning of the docstrings."""
    state: dict[str, Any] = {}

    def srem(key: str, member: str) -> None:
        if key in state:
            if isinstance(state[key], dict):
                state[key].pop(member, None)
            else:
                state[key].discard(member)
            if not state[key]:
                del state[key]

    for op in ops:
        if isinstance(op, ProfileWrite):
            profile = {f: op.fields.get(f) or None for f in FIELDS}  # the whole profile
            state.setdefault(KEYS.user(op.user), {})["P"] = profile
        elif isinstance(op, RecsWrite):  # the list's values, whatever the format
            state.setdefault(KEYS.user(op.user), {})["R"] = decode_compact(op.value.decode())
        elif isinstance(op, SegmentsWrite):
            for segment in op.entered:
                state.setdefault(KEYS.user(op.user), {})[segment] = "1"
                state.setdefault(KEYS.audience(segment), set()).add(op.user)
            for segment in op.exited:
                srem(KEYS.user(op.user), segment)
                srem(KEYS.audience(segment), op.user)
        elif isinstance(op, ForgetUser):
            for key in KEYS.user_keys(op.user):
                state.pop(key, None)
            for segment in op.audiences:
                srem(KEYS.audience(segment), op.user)
            for bucket in KEYS.alias_lookup(op.user, NOW):
                srem(bucket, op.user)
        elif isinstance(op, AliasWrite):
            bucket = KEYS.alias_bucket(op.anonymous_id, GENERATION)
            state.setdefault(bucket, {})[op.anonymous_id] = op.user
        elif isinstance(op, JsonWrite):
            state[op.key] = op.value
    return state


USERS = st.sampled_from(["u1", "u2", "a}b", "anon-1"])
SEGMENTS = st.lists(st.sampled_from(["vip", "loyal", "new"]), max_size=2).map(tuple)
VALUES = st.sampled_from(["", "1", "22"])


@st.composite
def operation_sequences(draw: st.DrawFn) -> list[RedisOp]:
    ops: list[RedisOp] = []
    segments_of: dict[str, set[str]] = {}
    for _ in range(draw(st.integers(0, 25))):
        kind = draw(st.sampled_from(["profile", "recs", "segments", "forget", "alias", "json"]))
        user = draw(USERS)
        if kind == "profile":
            names = draw(st.lists(st.sampled_from(FIELDS), unique=True))
            ops.append(ProfileWrite(user, {n: draw(VALUES) for n in names}))
        elif kind == "recs":  # lists of 0 to 9 pieces, so that shorter lists follow longer
            items = [(f"i{i:03d}", 0.5, "trending", None) for i in range(draw(st.integers(0, 40)))]
            ops.append(RecsWrite(user, encode_compact(items, "m1", 7, "trending")))
        elif kind == "segments":
            entered, exited = draw(SEGMENTS), draw(SEGMENTS)
            ops.append(SegmentsWrite(user, entered, exited))
            current = segments_of.setdefault(user, set())
            current |= set(entered)
            current -= set(exited)
        elif kind == "forget":
            # The contract: a caller names the audiences the user is in.
            ops.append(ForgetUser(user, tuple(sorted(segments_of.pop(user, set())))))
        elif kind == "alias":
            ops.append(AliasWrite(user, draw(USERS)))
        else:
            ops.append(JsonWrite(KEYS.model(draw(st.sampled_from("ab"))), draw(VALUES).encode()))
    return ops


@settings(max_examples=300, deadline=None)
@given(operation_sequences(), st.lists(st.integers(1, 6), min_size=1, max_size=8))
def test_plan_in_any_batches_equals_applying_each_operation(
    ops: list[RedisOp], batch_sizes: list[int]
) -> None:
    model = RedisModel()
    start = 0
    i = 0
    while start < len(ops):
        size = batch_sizes[i % len(batch_sizes)]
        batch = ops[start : start + size]
        for command in plan(batch, ttl_s=TTL, profile_fields=FIELDS, now_s=NOW):
            model.run(command)
        start += size
        i += 1

    assert as_values(model.data) == reference(ops)
    user_or_audience = {k for k in model.data if not k.startswith(KEYS.model(""))}
    assert user_or_audience <= model.ttl  # every per-user and audience key has a TTL


def as_values(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with each user hash's pieces joined into values (``P``, ``R``), checking that
    no piece is left beyond the count its first piece gives and every piece fits a listpack."""
    out = dict(data)
    for key, fields in data.items():
        if key.startswith("attune:{u:") and key.endswith("}"):
            values = {f: v for f, v in fields.items() if not is_reserved(f)}
            for first in ("P", "R"):
                value = joined(fields, first)
                pieces = [f for f in fields if f[:1] == first]
                if value is not None:
                    values[first] = (
                        decode_profile(value, FIELDS) if first == "P" else decode_compact(value)
                    )
                    assert len(pieces) == int(fields[first][:1]), (key, sorted(pieces))
                    if len(pieces) > 1:
                        assert all(len(fields[f]) <= CHUNK for f in pieces)
                else:
                    assert not pieces
            out[key] = values
    return out


@settings(max_examples=100, deadline=None)
@given(operation_sequences())
def test_replaying_a_batch_changes_nothing(ops: list[RedisOp]) -> None:
    once, twice = RedisModel(), RedisModel()
    commands = plan(ops, ttl_s=TTL, profile_fields=FIELDS, now_s=NOW)
    for command in commands:
        once.run(command)
    for command in [*commands, *commands]:
        twice.run(command)
    assert once.data == twice.data
