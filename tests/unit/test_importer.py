"""``attune import``: presets and generic mapping on small CSVs written here, read back
through the codec; bad rows counted with line numbers, bad layouts refused."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from attune.flows.cli import main
from attune.flows.importer import (
    NO_CURRENCY,
    PRESETS,
    ImportLayoutError,
    generic_layout,
    import_csv,
)
from attune.operators.container import read_events_file
from attune.operators.events import (
    AddToCart,
    DeadLetter,
    Event,
    EventType,
    LineItem,
    ProductView,
    Purchase,
    RemoveFromCart,
)

MIN = 60_000


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text.lstrip("\n"), encoding="utf-8")
    return path


def read_back(path: Path) -> list[Event]:
    out: list[Event] = []
    for _, item in read_events_file(path):
        assert not isinstance(item, DeadLetter), item.reason
        out.append(item)
    return out


def rejects_of(path: Path) -> list[tuple[int, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["line", "reason", "detail", "row"]
    return [(int(r[0]), r[1]) for r in rows[1:]]


# --- RetailRocket ----------------------------------------------------------------------------

RR_T0 = 1_433_221_332_117
RR = f"""
timestamp,visitorid,event,itemid,transactionid
{RR_T0},257597,view,355908,
{RR_T0 + 40 * MIN},992329,view,248676,
{RR_T0 + 5 * MIN},257597,addtocart,355908,
{RR_T0 + 9 * MIN},257597,transaction,355908,4000
{RR_T0 + 9 * MIN},257597,transaction,111,4000
{RR_T0 + 10 * MIN},257597,transaction,7,4001
{RR_T0 + 120 * MIN},257597,view,5,
"""


def test_retailrocket_views_carts_and_grouped_purchases(tmp_path: Path) -> None:
    src = write_csv(tmp_path / "events.csv", RR)
    out = tmp_path / "rr.avro"
    summary = import_csv(src, PRESETS["retailrocket"], out, progress=False)

    s1 = f"events:257597:{RR_T0}"  # first session of visitor 257597
    s2 = f"events:257597:{RR_T0 + 120 * MIN}"  # after a 110-minute gap
    assert read_back(out) == [
        Event("events-2", EventType.PRODUCT_VIEW, RR_T0, ProductView("355908"),
              anonymous_id="257597", session_id=s1),
        Event("events-4", EventType.ADD_TO_CART, RR_T0 + 5 * MIN,
              AddToCart("355908", 1, 0, NO_CURRENCY), anonymous_id="257597", session_id=s1),
        Event("events-5", EventType.PURCHASE, RR_T0 + 9 * MIN,
              Purchase("4000", (LineItem("355908", 1, 0), LineItem("111", 1, 0)), 0, NO_CURRENCY),
              anonymous_id="257597", session_id=s1),
        Event("events-7", EventType.PURCHASE, RR_T0 + 10 * MIN,
              Purchase("4001", (LineItem("7", 1, 0),), 0, NO_CURRENCY),
              anonymous_id="257597", session_id=s1),
        Event("events-3", EventType.PRODUCT_VIEW, RR_T0 + 40 * MIN, ProductView("248676"),
              anonymous_id="992329", session_id=f"events:992329:{RR_T0 + 40 * MIN}"),
        Event("events-8", EventType.PRODUCT_VIEW, RR_T0 + 120 * MIN, ProductView("5"),
              anonymous_id="257597", session_id=s2),
    ]  # fmt: skip
    assert (summary.rows, summary.events, sum(summary.rejected.values())) == (7, 6, 0)
    assert summary.by_type == {"PRODUCT_VIEW": 3, "ADD_TO_CART": 1, "PURCHASE": 2}
    assert summary.purchase_rows == 3
    assert summary.unknown_price == 3  # the cart and both orders: price not in the log
    assert (summary.first_ms, summary.last_ms) == (RR_T0, RR_T0 + 120 * MIN)


def test_retailrocket_lines_of_one_order_at_different_times(tmp_path: Path) -> None:
    """An order's rows spread over time: one purchase at its latest row, its session."""
    src = write_csv(
        tmp_path / "e.csv",
        f"""
timestamp,visitorid,event,itemid,transactionid
{RR_T0 + 2 * MIN},1,transaction,b,9
{RR_T0},1,transaction,a,9
{RR_T0 + MIN},1,view,c,
""",
    )
    out = tmp_path / "e.avro"
    import_csv(src, PRESETS["retailrocket"], out, progress=False)
    view, purchase = read_back(out)
    assert view.event_id == "e-4" and view.event_time == RR_T0 + MIN
    assert purchase.event_id == "e-2" and purchase.event_time == RR_T0 + 2 * MIN
    assert isinstance(purchase.payload, Purchase)
    assert [line.item_id for line in purchase.payload.lines] == ["a", "b"]  # in time order
    assert purchase.session_id == view.session_id == f"e:1:{RR_T0}"


def test_bad_rows_are_counted_with_line_numbers(tmp_path: Path) -> None:
    src = write_csv(
        tmp_path / "events.csv",
        f"""
timestamp,visitorid,event,itemid,transactionid
{RR_T0},1,view,10,
{RR_T0},1,refund,10,
{RR_T0},1,transaction,10,
not-a-time,1,view,10,
{RR_T0},1,view
{RR_T0},1,view,,

{RR_T0},,view,10,
{RR_T0 + 1},1,view,11,,extra
{RR_T0 + 2},1,view,12,
""",
    )
    rejects = tmp_path / "rejects.csv"
    out = tmp_path / "out.avro"
    summary = import_csv(src, PRESETS["retailrocket"], out, rejects_path=rejects, progress=False)
    assert [e.event_id for e in read_back(out)] == ["events-2", "events-11"]
    assert rejects_of(rejects) == [
        (3, "unknown_type"),
        (4, "missing_value"),  # a transaction without transactionid
        (5, "bad_time"),
        (6, "wrong_field_count"),  # a column missing
        (7, "missing_value"),  # empty itemid
        (8, "blank_line"),
        (9, "missing_value"),  # empty visitorid
        (10, "wrong_field_count"),
    ]
    assert summary.rejected == {
        "unknown_type": 1,
        "missing_value": 3,
        "bad_time": 1,
        "wrong_field_count": 2,
        "blank_line": 1,
    }
    # Every row accounted for: events' rows + rejected + skipped.
    assert summary.rows == 10 == summary.events + sum(summary.rejected.values()) + summary.skipped
    assert summary.shown_rejects[0].startswith("line 3: unknown_type: event type 'refund'")
    with rejects.open(newline="", encoding="utf-8") as fh:
        first = list(csv.reader(fh))[1]
    assert first == [
        "3",
        "unknown_type",
        "event type 'refund' is not one of addtocart, transaction, view",
        f"{RR_T0},1,refund,10,",  # the row as read, CSV-joined
    ]


def test_bad_header_is_a_clear_error_and_writes_nothing(tmp_path: Path) -> None:
    src = write_csv(tmp_path / "e.csv", "timestamp,visitorid,event,itemid\n1,2,view,3\n")
    out, rejects = tmp_path / "e.avro", tmp_path / "rejects.csv"
    with pytest.raises(ImportLayoutError, match=r"lacks column\(s\) transactionid \(for order\)"):
        import_csv(src, PRESETS["retailrocket"], out, rejects_path=rejects, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.csv"]  # no output, no rejects
    empty = write_csv(tmp_path / "empty.csv", "")
    with pytest.raises(ImportLayoutError, match="is empty: a header row"):
        import_csv(empty, PRESETS["retailrocket"], out, progress=False)
    dup = write_csv(tmp_path / "dup.csv", "timestamp,visitorid,event,itemid,itemid\n")
    with pytest.raises(ImportLayoutError, match=r"names column\(s\) itemid twice"):
        import_csv(dup, PRESETS["retailrocket"], out, progress=False)
    assert not out.exists()


# --- MovieLens -------------------------------------------------------------------------------

ML_T0 = 1_260_759_144  # seconds
ML = f"""
userId,movieId,rating,timestamp
1,31,2.5,{ML_T0}
1,1029,4.0,{ML_T0 + 35}
2,10,5.0,{ML_T0 - 44}
2,11,x,{ML_T0}
"""


def test_movielens_views_and_positive_ratings(tmp_path: Path) -> None:
    src = write_csv(tmp_path / "ratings.csv", ML)
    out = tmp_path / "ml.avro"
    summary = import_csv(src, PRESETS["movielens"], out, progress=False)
    t0 = ML_T0 * 1000
    u1 = f"ratings:1:{t0}"
    u2 = f"ratings:2:{t0 - 44_000}"
    liked = AddToCart("10", 1, 0, NO_CURRENCY)
    assert read_back(out) == [
        Event("ratings-4", EventType.PRODUCT_VIEW, t0 - 44_000, ProductView("10"),
              user_id="2", session_id=u2),
        Event("ratings-4.1", EventType.ADD_TO_CART, t0 - 44_000, liked, user_id="2",
              session_id=u2),
        Event("ratings-2", EventType.PRODUCT_VIEW, t0, ProductView("31"), user_id="1",
              session_id=u1),
        Event("ratings-3", EventType.PRODUCT_VIEW, t0 + 35_000, ProductView("1029"),
              user_id="1", session_id=u1),
        Event("ratings-3.1", EventType.ADD_TO_CART, t0 + 35_000,
              AddToCart("1029", 1, 0, NO_CURRENCY), user_id="1", session_id=u1),
    ]  # fmt: skip
    assert summary.rejected == {"bad_number": 1}
    assert summary.rows == 4 and summary.events == 5


def test_movielens_threshold_flag_and_logs_before_2000(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = 883_000_000  # 1997-12-25: validate_event rejects times before 2000
    src = write_csv(
        tmp_path / "r.csv", f"userId,movieId,rating,timestamp\n1,5,4.5,{old}\n1,6,5,{old + 60}\n"
    )
    out = tmp_path / "r.avro"
    assert main(["import", str(src), "--preset", "movielens", "--out", str(out)]) == 2
    printed = capsys.readouterr().out
    assert "line 2: invalid_event: event_time 883000000000 is outside 2000-01-01..2100-01-01" in (
        printed
    )
    assert "rejected 2 rows (invalid_event 2)" in printed
    assert read_back(out) == []

    code = main(
        ["import", str(src), "--preset", "movielens", "--out", str(out),
         "--positive-rating", "5", "--start", "2026-01-05T00:00Z"]
    )  # fmt: skip
    assert code == 0
    start = 1_767_571_200_000  # 2026-01-05T00:00Z
    events = read_back(out)
    assert [(e.event_id, e.event_type, e.event_time) for e in events] == [
        ("r-2", EventType.PRODUCT_VIEW, start),  # 4.5 < 5: no add-to-cart
        ("r-3", EventType.PRODUCT_VIEW, start + 60_000),
        ("r-3.1", EventType.ADD_TO_CART, start + 60_000),
    ]
    assert "read 2 rows, wrote 3 events (1 ADD_TO_CART, 2 PRODUCT_VIEW)" in capsys.readouterr().out


# --- generic mapping -------------------------------------------------------------------------

GENERIC = """
ts,visitor,product,action,price,order_no,qty,cat
2026-01-05T10:00:00Z,v1,p1,view,19.99,,,shoes
2026-01-05T10:01:00+01:00,v1,p9,view,,,,
2026-01-05T10:02:00Z,v1,p1,cart,19.99,,2,shoes
2026-01-05T10:03:00Z,v1,p1,hover,,,,
2026-01-05T10:04:00Z,v1,p1,remove,,,1,
2026-01-05T10:05:00Z,v1,p1,buy,19.99,o-1,1,shoes
2026-01-05T10:05:00Z,v1,p2,buy,5,o-1,3,
2026-01-05 10:06:00,v2,p3,BUY,1.5,o-2,,
2026-01-05T10:07:00Z,v2,p3,wishlist,,,,
2026-01-05T10:08:00Z,v2,p3,buy,1.999,o-3,,
"""


def test_generic_mapping_iso_times_type_map_and_prices(tmp_path: Path) -> None:
    src = write_csv(tmp_path / "shop.csv", GENERIC)
    out = tmp_path / "shop.avro"
    rejects = tmp_path / "rej.csv"
    layout = generic_layout(
        {"user": "visitor", "item": "product", "time": "ts", "type": "action",
         "price": "price", "order": "order_no", "quantity": "qty", "category": "cat"},
        {"view": "product_view", "cart": "add_to_cart", "remove": "remove_from_cart",
         "buy": "purchase", "hover": "skip"},
        time_format="iso",
        currency="EUR",
    )  # fmt: skip
    summary = import_csv(src, layout, out, rejects_path=rejects, id_prefix="s", progress=False)
    t = 1_767_607_200_000  # 2026-01-05T10:00Z
    s1 = f"s:v1:{t - 59 * MIN}"  # the +01:00 row is at 09:01Z, the user's first
    s2 = f"s:v2:{t + 6 * MIN}"
    assert read_back(out) == [
        Event("s-3", EventType.PRODUCT_VIEW, t - 59 * MIN, ProductView("p9"), user_id="v1",
              session_id=s1),
        Event("s-2", EventType.PRODUCT_VIEW, t, ProductView("p1", "shoes", 1999, "EUR"),
              user_id="v1", session_id=f"s:v1:{t}"),  # 59 minutes later: a new session
        Event("s-4", EventType.ADD_TO_CART, t + 2 * MIN, AddToCart("p1", 2, 1999, "EUR", "shoes"),
              user_id="v1", session_id=f"s:v1:{t}"),
        Event("s-6", EventType.REMOVE_FROM_CART, t + 4 * MIN, RemoveFromCart("p1", 1),
              user_id="v1", session_id=f"s:v1:{t}"),
        Event("s-7", EventType.PURCHASE, t + 5 * MIN,
              Purchase("o-1", (LineItem("p1", 1, 1999, "shoes"), LineItem("p2", 3, 500)),
                       1999 + 1500, "EUR"),
              user_id="v1", session_id=f"s:v1:{t}"),
        Event("s-9", EventType.PURCHASE, t + 6 * MIN,
              Purchase("o-2", (LineItem("p3", 1, 150),), 150, "EUR"), user_id="v2",
              session_id=s2),
    ]  # fmt: skip
    assert summary.skipped == 1
    assert rejects_of(rejects) == [(10, "unknown_type"), (11, "bad_number")]
    assert summary.rows == 10
    assert "skipped 1 rows by --type-map" in summary.line()
    assert "3 purchase rows -> 2 orders" in summary.line()


def test_generic_epoch_auto_and_default_product_views(tmp_path: Path) -> None:
    """Without a type column every row is a product view; auto reads s and ms by magnitude."""
    src = write_csv(tmp_path / "v.csv", "u,i,t\na,x,1767571200\na,y,1767571260000\n")
    out = tmp_path / "v.avro"
    import_csv(src, generic_layout({"user": "u", "item": "i", "time": "t"}), out, progress=False)
    assert [(e.event_type, e.event_time) for e in read_back(out)] == [
        (EventType.PRODUCT_VIEW, 1_767_571_200_000),
        (EventType.PRODUCT_VIEW, 1_767_571_260_000),
    ]


def test_spilled_runs_give_the_same_bytes(tmp_path: Path) -> None:
    """Sorting in runs of 2 rows (several spills and a merge) writes exactly what one run does."""
    src = write_csv(tmp_path / "events.csv", RR)
    one, many = tmp_path / "one.avro", tmp_path / "many.avro"
    a = import_csv(src, PRESETS["retailrocket"], one, progress=False)
    b = import_csv(
        src, PRESETS["retailrocket"], many, chunk_rows=2, tmp_dir=tmp_path, progress=False
    )
    assert (a.runs, b.runs) == (2, 7)  # 7 rows in 4 runs, 6 events in 3
    assert one.read_bytes() == many.read_bytes()
    assert not list(tmp_path.glob("attune-import-*"))  # spilled runs removed


@pytest.mark.parametrize(
    ("mapping", "type_map", "message"),
    [
        ({"user": "u", "time": "t"}, None, "lacks item"),
        ({"item": "i", "time": "t"}, None, r"lacks user \(or anonymous\)"),
        ({"user": "u", "item": "i", "time": "t", "colour": "c"}, None, r"field\(s\) colour"),
        ({"user": "u", "item": "i", "time": "t", "type": "a"}, {"view": "glance"}, "'glance'"),
        ({"user": "u", "item": "i", "time": "t", "price": "p"}, None, "needs its currency"),
        ({"user": "u", "item": "i", "time": "t", "type": "a", "rating": "r"}, None, "not both"),
    ],
)
def test_bad_layouts_are_refused(
    mapping: dict[str, str], type_map: dict[str, str] | None, message: str
) -> None:
    with pytest.raises(ImportLayoutError, match=message):
        generic_layout(mapping, type_map)


def test_cli_flag_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = write_csv(tmp_path / "e.csv", RR)
    assert main(["import", str(src)]) == 1
    assert "give --preset retailrocket|movielens or a column map" in capsys.readouterr().err
    assert main(["import", str(src), "--preset", "retailrocket", "--map", "user=x"]) == 1
    assert "fixes the layout; drop --map" in capsys.readouterr().err
    assert main(["import", str(src), "--map", "user=visitorid,item"]) == 1
    assert "'item' is not KEY=VALUE" in capsys.readouterr().err
    assert main(["import", str(src), "--preset", "retailrocket"]) == 0
    assert (tmp_path / "e.avro").exists()
    assert capsys.readouterr().out.startswith("read 7 rows, wrote 6 events")


def test_tab_separated_file_with_delimiter_flag(tmp_path: Path) -> None:
    """MovieLens 100k's u.data is tab-separated: a header line and --delimiter '\\t' read it."""
    src = write_csv(
        tmp_path / "u.tsv", "userId\tmovieId\trating\ttimestamp\n196\t242\t3\t1767571200\n"
    )
    out = tmp_path / "u.avro"
    argv = ["import", str(src), "--preset", "movielens", "--delimiter", "\\t", "--out", str(out)]
    assert main(argv) == 0
    assert [(e.user_id, e.event_type) for e in read_back(out)] == [
        ("196", EventType.PRODUCT_VIEW)  # rating 3 < 4: no add-to-cart
    ]
    assert main([*argv, "--delimiter", "ab"]) == 1


def test_auto_time_format_reads_iso_8601_times(tmp_path: Path) -> None:
    """Issue 16, finding 1: ``auto`` took any value starting with a digit for an epoch
    number and rejected every ISO 8601 time; the docs say it reads them."""
    src = write_csv(
        tmp_path / "iso.csv", "u,i,ts\na,x,2026-01-05T10:00:00Z\na,y,2026-01-05T10:01:00+00:00\n"
    )
    out = tmp_path / "iso.avro"
    summary = import_csv(src, generic_layout({"user": "u", "item": "i", "time": "ts"}), out,
                         progress=False)  # fmt: skip
    assert [e.event_time for e in read_back(out)] == [1_767_607_200_000, 1_767_607_260_000]
    assert summary.line().endswith("rejected 0 rows")
