"""What Redis keeps of a user's list: format 5, or 4 when the list's ids or scores do not
allow 5 (:func:`attune.operators.recs_encoding.stored`), holds the same values as the
ranking step's format 3, in fewer bytes, and every reader reads all three."""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from attune.clients.recommendations import parse_recs
from attune.operators import recs_encoding
from attune.operators.recs_encoding import (
    decode_compact,
    encode,
    encode_compact,
    encode_stored,
    stored,
)

IDS = st.one_of(
    st.integers(0, 99_999).map(lambda i: f"i{i:05d}"),  # a shared prefix, as the generator's
    st.integers(0, 10**21).map(lambda i: f"x{i:021d}"),  # too many digits for format 5
    st.text(min_size=1, max_size=12),  # anything, separators and escapes included
)
ENTRIES = st.lists(
    st.tuples(
        IDS,
        st.floats(-2, 2, allow_nan=False),
        st.sampled_from([*recs_encoding.REASON_CODES, "co-visited", "a|b,c%"]),
        st.one_of(st.none(), st.sampled_from(["shoes", "shoes/running", "a,b|%"])),
    ),
    max_size=12,
    unique_by=lambda e: e[0],
)


@settings(max_examples=300)
@given(ENTRIES, st.text(max_size=10), st.sampled_from(["personalized", "trending", "x|y"]))
@example(  # found by hypothesis on a fresh clone: format 5 is 3 bytes longer here
    [("i00600", 0.0, "similar-to-viewed", None), ("i00601", 0.0, "viewed-together", None)],
    "",
    "personalized",
)
def test_formats_4_and_5_hold_what_format_3_holds(
    items: list[recs_encoding.Entry], version: str, source: str
) -> None:
    three = encode_compact(items, version, 1_767_571_200_000, source)
    kept = stored(three)
    assert kept[:2] in (b"4|", b"5|") and stored(kept) == kept  # stored once, kept as it is
    assert decode_compact(kept.decode()) == decode_compact(three.decode())
    assert parse_recs(kept) == parse_recs(three)
    assert encode_stored(items, version, 1_767_571_200_000, source) == kept  # made directly
    four = recs_encoding._format_4(three.decode()).encode()
    assert stored(four) == kept  # a ranking step that makes format 4: made format 5
    # stored's one pass is format 5 of format 4, or format 4
    assert kept.decode() == (recs_encoding._format_5(four.decode()) or four.decode())
    assert decode_compact(four.decode()) == decode_compact(three.decode())
    if len(items) > 1:
        assert len(four) <= len(three) + 1  # at worst one more byte: the empty prefix field
        # format 5 at worst 3 more: "|<digits>", its pads and a separator (two items that
        # share a long prefix, scores 0: 39 bytes against format 4's 36)
        assert len(kept) <= len(four) + 3
    if kept.startswith(b"5|") and len(items) >= 4:
        assert len(kept) < len(four)


def test_format_5_of_a_list_of_ids_sharing_a_prefix_is_half_the_size() -> None:
    items = [(f"i0{i:04d}", 0.8 - i / 100, "similar-content", "toys/building") for i in range(10)]
    three = encode_compact(items, "m4-c9-e4", 1_767_571_200_000, "personalized")
    four = recs_encoding._format_4(three.decode()).encode()
    assert four == (
        b"4|m4-c9-e4|mk0e96o0|p|toys/building|i0000|0,m8,sc,0|1,ly|2,lo|3,le|4,l4|5,ku|6,kk"
        b"|7,ka|8,k0|9,jq"
    )
    assert len(four) < 0.75 * len(three)  # 96 bytes against 155
    five = stored(three)
    assert (
        five == b"5|m4-c9-e4|mk0e96o0|p|toys/building|i0000|1|0m8,sc,0;1ly2lo3le4l45ku6kk7ka8k09jq"
    )
    assert len(five) == 80 and parse_recs(five) == parse_recs(three)


def test_format_5_ids_keep_their_leading_zeros_and_lists_it_cannot_hold_stay_format_4() -> None:
    items = [("i00093", 0.5, "trending", None), ("i10000", 0.25, "trending", None)]
    five = stored(encode_compact(items, "m", 7, "t"))
    assert five == b"5|m|7|t||i|5|002ldw,tr,;07ps6y"  # 93 and 10000 in 4 base-36 digits
    assert [r.item for r in parse_recs(five).items] == ["i00093", "i10000"]
    for other in (
        [("a1", 0.5, "trending", None), ("a22", 0.5, "trending", None)],  # 1 and 2 digits
        [("i1", 1.5, "trending", None), ("i2", 0.5, "trending", None)],  # a 3-digit score
        [("i1", -0.5, "trending", None), ("i2", 0.5, "trending", None)],  # a negative score
        [("i1", 0.5, "a;b", None), ("i2", 0.5, "trending", None)],  # a ';' in a reason
        [(f"i{i}", 0.5, "trending", None) for i in (10**19, 2 * 10**19)],  # 20 digits each
    ):
        kept = stored(encode_compact(other, "m", 7, "t"))
        assert kept.startswith(b"4|")
        assert [r.item for r in parse_recs(kept).items] == [o[0] for o in other]


def test_what_is_not_format_3_is_stored_as_it_is_or_as_format_3_first() -> None:
    assert stored(b"b") == b"b"  # a test writer's bytes: readers judge them
    assert stored(b"3|m|7|p||i1,x") == b"3|m|7|p||i1,x"  # not what encode_compact writes
    # an item of 3 fields is not what encode_compact writes: format 4 as it is, never 5
    assert stored(b"3|m|7|p||i1,500,vt|i2,400") == b"4|m|7|p||i|1,dw,vt|2,b4"
    two = encode([("i1", 0.5, "trending", "a/x"), ("i2", 0.25, "trending", "a/x")], "m", 7, "t")
    assert stored(two) == b"5|m|7|t|a/x|i|1|1dw,tr,0;26y"  # format 2 -> 3 -> 4 -> 5
