"""Ranking on hand-made catalogues: filters, candidates, reasons, MMR, the Redis value."""

from __future__ import annotations

import pickle
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from attune.clients.recommendations import parse_recs
from attune.operators import recs_encoding
from attune.operators.content import Catalogue
from attune.operators.covisit import BOUGHT, VIEWED, CovisitIndex, ItemNeighbours, NeighbourList
from attune.operators.embeddings import EmbeddingSnapshot
from attune.operators.events import ItemUpdate
from attune.operators.models import ModelSnapshot
from attune.operators.ranking import (
    CART,
    CV_WIDTH,
    N_EMB_NEIGHBOURS,
    VIEW,
    Filters,
    Interaction,
    Models,
    Recommendation,
    UserSignals,
    Weights,
    _covisit_scores,
    _mmr,
    rank,
    rank_many,
    recs_value,
    source_of,
)
from attune.operators.recs_encoding import SCORE_DECIMALS
from attune.operators.trending import TrendingBoard

NOW = 1_767_571_200_000
#: item -> (category path, in stock)
ITEMS = {
    "s1": ("shoes/running", True),
    "s2": ("shoes/running", True),
    "s3": ("shoes/running", False),
    "s4": ("shoes/trail", True),
    "b1": ("books/fiction", True),
    "b2": ("books/fiction", True),
    "bx": ("booksale/misc", True),
    "t1": ("toys/games", True),
}
ONLY = Weights(embedding=0, viewed_together=0, bought_together=0, category=0, trending=0, content=0)


def _models() -> Models:
    cat = Catalogue()
    for i, (item, (path, stock)) in enumerate(ITEMS.items()):
        cat.update(ItemUpdate(item, item, tuple(path.split("/")), 1000 + i, "EUR", stock, 0, 0))
    m = Models(cat)
    # Trending: t1 most, then b1, b2, s1, s2, ... (all items have some popularity).
    for item, w in {
        "t1": 50,
        "b1": 20,
        "b2": 18,
        "s1": 10,
        "s2": 9,
        "s3": 8,
        "s4": 7,
        "bx": 6,
    }.items():
        m.trending.update(cat.index[item], NOW, float(w))
    return m


def _items(recs: list[Recommendation]) -> list[str]:
    return [r.item for r in recs]


def test_cold_user_gets_trending_without_out_of_stock() -> None:
    m = _models()
    signals = UserSignals("new", NOW)
    recs = rank(signals, m, k=20, weights=Weights(mmr_lambda=1.0))
    assert _items(recs)[:3] == ["t1", "b1", "b2"]
    assert "s3" not in _items(recs)  # out of stock
    assert {r.reason for r in recs} == {"trending"}
    assert source_of(signals, m) == "trending"
    assert recs[0].category == "toys/games"
    assert len(set(_items(recs))) == len(recs) == 7  # no duplicates, k > what is left


def test_business_filters() -> None:
    m = _models()
    signals = UserSignals(
        "u",
        NOW,
        recent=(Interaction("s1", NOW - 60_000, VIEW),),
        purchased=frozenset({"b1"}),
        in_cart=frozenset({"t1"}),
        seen=frozenset({"b2"}),
    )
    got = _items(rank(signals, m, k=20))
    assert not {"s1", "b1", "t1", "b2", "s3"} & set(got)  # seen, bought, in cart, no stock
    assert set(got) == {"s2", "s4", "bx"}
    # allow list: "books" matches books/... but not booksale/...
    allow = _items(rank(signals, m, k=20, filters=Filters(allow_categories=("books",))))
    assert allow == []  # b1 bought, b2 seen
    allow = _items(
        rank(signals, m, k=20, filters=Filters(allow_categories=("books",), exclude_seen=False))
    )
    assert allow == ["b2"]
    deny = _items(rank(signals, m, k=20, filters=Filters(deny_categories=("shoes",))))
    assert deny == ["bx"]
    # seen items may come back when the filter says so; stock never
    again = _items(rank(signals, m, k=20, filters=Filters(exclude_seen=False)))
    assert "s1" in again and "s3" not in again
    with_stock = _items(rank(signals, m, k=20, filters=Filters(in_stock_only=False)))
    assert "s3" in with_stock
    assert "s2" not in _items(rank(signals, m, k=20, filters=Filters(exclude=frozenset({"s2"}))))


def test_category_affinity_beats_global_trending_and_says_so() -> None:
    m = _models()
    signals = UserSignals("u", NOW, recent=(Interaction("s4", NOW - 60_000, VIEW),))
    recs = rank(signals, m, k=3, weights=Weights(mmr_lambda=1.0))
    # affinity is for shoes/trail, whose only item (s4) is seen: the category term is 0
    # everywhere, and running shoes win over the more popular t1 by content similarity
    assert recs[0].item in {"s1", "s2"}
    assert recs[0].reason == "similar-content"
    signals = UserSignals("u", NOW, recent=(Interaction("s1", NOW - 60_000, VIEW),))
    w = Weights(category=1.0, content=0.2, embedding=0, viewed_together=0, bought_together=0,
                trending=0, mmr_lambda=1.0)  # fmt: skip
    recs = rank(signals, m, k=1, weights=w)
    assert (recs[0].item, recs[0].reason) == ("s2", "trending-in-category")


def test_co_visitation_reasons() -> None:
    m = _models()
    m.covisit.learn([("s1", "b2")] * 3 + [("s1", "t1")], VIEWED, NOW)
    m.covisit.learn([("s1", "bx")], BOUGHT, NOW)
    signals = UserSignals("u", NOW, recent=(Interaction("s1", NOW - 1000, CART),))
    w = Weights(viewed_together=1.0, bought_together=0.9, category=0, trending=0, content=0,
                embedding=0, mmr_lambda=1.0)  # fmt: skip
    recs = rank(signals, m, k=3, weights=w)
    assert [(r.item, r.reason) for r in recs] == [
        ("b2", "viewed-together"),
        ("bx", "bought-together"),
        ("t1", "viewed-together"),
    ]


def test_embedding_neighbours_and_reason() -> None:
    m = _models()
    vec = {"s1": [1, 0], "b2": [0.9, 0.1], "t1": [0, 1], "bx": [0.2, 0.8]}
    items = tuple(vec)
    v = np.asarray([vec[i] for i in items], np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    m.embeddings = EmbeddingSnapshot(3, NOW, items, v)
    signals = UserSignals("u", NOW, recent=(Interaction("s1", NOW, VIEW),))
    w = Weights(embedding=1.0, viewed_together=0, bought_together=0, category=0, trending=0.01,
                content=0, mmr_lambda=1.0)  # fmt: skip
    recs = rank(signals, m, k=2, weights=w)
    assert (recs[0].item, recs[0].reason) == ("b2", "similar-to-viewed")
    assert m.version == f"c{m.catalogue.version}-e3"


def test_cold_item_found_by_content_similarity() -> None:
    m = _models()
    m.catalogue.update(ItemUpdate("s9", "new", ("shoes", "running"), 1001, "EUR", True, 0, 0))
    signals = UserSignals("u", NOW, recent=(Interaction("s1", NOW, VIEW),))
    w = Weights(content=1.0, embedding=0, viewed_together=0, bought_together=0, category=0,
                trending=0, mmr_lambda=1.0)  # fmt: skip
    # s9 has no interaction at all (no trend score), so only the content candidates find it;
    # s2, its twin in content, is excluded to make the point
    recs = rank(signals, m, k=1, weights=w, filters=Filters(exclude=frozenset({"s2"})))
    assert (recs[0].item, recs[0].reason) == ("s9", "similar-content")


def test_segment_trending_for_cold_users() -> None:
    m = _models()
    m.trending.update(m.catalogue.index["bx"], NOW, 5.0, segments=("bargain",))
    recs = rank(UserSignals("u", NOW, segments=("bargain", "unknown")), m, k=1)
    assert (recs[0].item, recs[0].reason) == ("bx", "trending-in-segment")
    # profile categories steer a cold user too
    recs = rank(UserSignals("u", NOW, top_categories=("shoes/running",)), m, k=1)
    assert (recs[0].item, recs[0].reason) == ("s1", "trending-in-category")


def test_mmr_by_hand() -> None:
    # candidates 0 and 1 identical, 2 orthogonal; scores 1.0, 0.9, 0.5
    v = np.array([[1, 0], [1, 0], [0, 1]], np.float32)
    s = np.array([1.0, 0.9, 0.5])
    assert _mmr(s, v, 3, 1.0) == [0, 1, 2]  # relevance only
    # lambda 0.5: after 0, candidate 1 = 0.5*0.9 - 0.5*1 = -0.05, candidate 2 = 0.5*0.5 - 0 = 0.25
    assert _mmr(s, v, 3, 0.5) == [0, 2, 1]
    # lambda 0.9: 1 = 0.81 - 0.1 = 0.71 beats 2 = 0.45
    assert _mmr(s, v, 2, 0.9) == [0, 1]
    assert _mmr(s, v, 10, 0.5) == [0, 2, 1]  # k larger than the candidates


def test_mmr_lowers_list_similarity() -> None:
    m = _models()
    signals = UserSignals("u", NOW, top_categories=("shoes/running", "books/fiction"))
    plain = rank(signals, m, k=3, weights=Weights(mmr_lambda=1.0))
    diverse = rank(signals, m, k=3, weights=Weights(mmr_lambda=0.3))

    def mean_sim(recs: list[Recommendation]) -> float:
        v = m.catalogue.content_of(_items(recs))
        s = v @ v.T
        return float((s.sum() - np.trace(s)) / (len(v) * (len(v) - 1)))

    assert mean_sim(diverse) < mean_sim(plain)


def test_recs_value_and_pickling() -> None:
    m = _models()
    signals = UserSignals("u", NOW, recent=(Interaction("s1", NOW, VIEW),))
    recs = rank(signals, m, k=3)
    raw = recs_value(recs, m.version, NOW, source_of(signals, m))
    parsed = parse_recs(raw)  # format 3 (docs/redis.md), read back by the client
    assert parsed.source == "personalized" and parsed.generated_at == NOW
    assert parsed.model_version == m.version
    stored = parsed.items
    assert [x.item for x in stored] == _items(recs)
    assert [(x.reason, x.category) for x in stored] == [(r.reason, r.category) for r in recs]
    assert [x.score for x in stored] == [round(r.score, SCORE_DECIMALS) for r in recs]
    with pytest.raises(ValueError, match="source must be"):
        recs_value(recs, "v", NOW, "cached")
    copy = pickle.loads(pickle.dumps(m))
    assert rank(signals, copy, k=3) == recs


def test_no_weights_at_all_still_returns_a_valid_list() -> None:
    m = _models()
    signals = UserSignals("u", NOW, recent=(Interaction("s1", NOW, VIEW),))
    recs = rank(signals, m, k=2, weights=ONLY)
    assert len(recs) == 2 and all(r.score == 0.0 for r in recs)
    # a user without known items is ranked by the trending fallback whatever the weights
    cold = rank(UserSignals("u", NOW), m, k=2, weights=ONLY)
    assert [(r.item, r.reason) for r in cold] == [("t1", "trending"), ("b1", "trending")]
    assert rank(UserSignals("u", NOW), Models(Catalogue()), k=5) == []
    assert rank(UserSignals("u", NOW), m, k=0) == []


def _world(seed: int) -> tuple[Catalogue, CovisitIndex, TrendingBoard, EmbeddingSnapshot]:
    """A random catalogue with trending (global and per segment), published co-visitation
    lists (some naming items the catalogue lacks, one naming an item twice) and embeddings."""
    rng = np.random.default_rng(seed)
    cat = Catalogue()
    paths = ["a/x", "a/y", "b/x", "c/z"]
    for i in range(120):
        path = paths[int(rng.integers(len(paths)))]
        cat.update(ItemUpdate(f"i{i}", "t", tuple(path.split("/")), int(rng.integers(100, 900)),
                              "EUR", bool(rng.random() > 0.1), 0, 0))  # fmt: skip
    cat.refresh()
    trending = TrendingBoard()
    for _ in range(300):
        segs = ("vip",) if rng.random() < 0.3 else ("bargain", "vip") if rng.random() < 0.2 else ()
        trending.update(int(rng.integers(100)), NOW - int(rng.integers(10**8)), 1.0, segs)
    covisit = CovisitIndex()
    for i in range(100):
        others = [f"i{int(j)}" for j in rng.integers(130, size=12)]  # i120.. are unknown
        state = ItemNeighbours(f"i{i}")
        for j, other in enumerate(others):
            state.update(other, VIEWED if j % 3 else BOUGHT, NOW - int(rng.integers(10**8)))
        covisit.put(state.publish(NOW - 10**7))
    covisit.put(NeighbourList("i0", NOW, (("i1", 2.0), ("i1", 1.0), ("i2", 0.5)), ()))
    items = tuple(f"i{i}" for i in range(0, 125, 2))
    v = rng.normal(size=(len(items), 8)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return cat, covisit, trending, EmbeddingSnapshot(1, NOW, items, v)


def _signals(rng: np.random.Generator) -> UserSignals:
    n = int(rng.integers(0, 12))
    recent = tuple(
        Interaction(
            f"i{int(rng.integers(125))}",
            NOW - int(rng.integers(10**8)),
            (VIEW, CART)[int(rng.integers(2))],
        )
        for _ in range(n)
    )
    segments = (("bargain", "vip"), ("vip",), ("none",), ())[int(rng.integers(4))]
    return UserSignals("u", NOW, tuple(sorted(recent, key=lambda i: i.time_ms)),
                       top_categories=("a/x",) if n == 0 else (), segments=segments)  # fmt: skip


def test_cached_ranking_equals_a_fresh_models_every_time() -> None:
    """Models caches what depends on the catalogue and the trending board only (shares per
    category, float64 content vectors, co-visitation rows): a long-lived Models must rank
    exactly as one built for the call, also after the board and the catalogue changed."""
    cat, covisit, trending, emb = _world(5)
    warm = Models(cat, covisit, trending, emb)
    rng = np.random.default_rng(6)
    for step in range(160):
        signals = _signals(rng)
        fresh = Models(cat, covisit, trending, emb)
        assert rank(signals, warm, k=8) == rank(signals, fresh, k=8), step
        if step % 40 == 39:
            trending.update(int(rng.integers(120)), NOW, 50.0, ("vip",))
        if step == 100:  # a new item: the catalogue refreshes, and its version changes
            cat.update(ItemUpdate("i200", "t", ("a", "x"), 500, "EUR", True, 0, 0))
    assert warm.constants().trend_version == trending.version


@pytest.mark.parametrize(
    ("filters", "k", "weights"),
    [
        (Filters(), 8, None),
        (Filters(deny_categories=("b",), exclude=frozenset({"i3", "i5"})), 5, None),
        (Filters(allow_categories=("a/x", "c"), in_stock_only=False, exclude_seen=False), 1, None),
        (Filters(), 12, Weights(mmr_lambda=1.0)),
        (Filters(), 30, Weights(mmr_lambda=0.3, content=0.0)),
    ],
)
def test_rank_many_gives_ranks_lists_exactly(
    filters: Filters, k: int, weights: Weights | None
) -> None:
    """Users of all kinds ranked together (no recent item, unknown items only, carts and
    purchases, segments with and without trending, many and few candidates) get exactly
    rank's lists, scores and reasons included, whatever their order and batch size; the
    embedding neighbours of a batch are filled together, rank's one call at a time."""
    cat, covisit, trending, emb = _world(7)
    rng = np.random.default_rng(8)
    users = [_signals(rng) for _ in range(70)]
    users[3] = replace(users[3], recent=(Interaction("nope", NOW - 5),))  # unknown only
    users[4] = replace(users[4], in_cart=frozenset({"i2", "i4"}), purchased=frozenset({"i6"}))
    one = Models(cat, covisit, trending, emb)
    expected = [rank(u, one, k, filters, weights) for u in users]
    assert sum(bool(e) for e in expected) > 60
    for size in (1, 3, 7, 70):
        many = Models(cat, covisit, trending, emb)
        got = []
        for at in range(0, len(users), size):
            got += rank_many(users[at : at + size], many, k, filters, weights)
        assert got == expected, size
    assert rank_many([], one, k) == []
    assert rank_many(users[:3], Models(Catalogue()), k) == [[], [], []]


def test_rank_many_with_live_learner_states_ranks_each_user_at_its_time() -> None:
    """With live co-visitation states (the evaluator's models) the lists decay with each
    user's time: rank_many reads them per user, as rank does."""
    cat, _, trending, emb = _world(9)
    covisit = CovisitIndex()
    rng = np.random.default_rng(10)
    for i in range(40):
        state = covisit.states.setdefault(f"i{i}", ItemNeighbours(f"i{i}"))
        for j in rng.integers(120, size=8):
            state.update(f"i{int(j)}", VIEWED if j % 2 else BOUGHT, NOW - int(rng.integers(10**8)))
    users = [replace(_signals(rng), now_ms=NOW + int(rng.integers(10**8))) for _ in range(30)]
    models = Models(cat, covisit, trending, emb)
    assert rank_many(users, models, 6) == [rank(u, models, 6) for u in users]


def test_covisit_rows_match_the_neighbour_lists() -> None:
    cat, covisit, trending, emb = _world(7)
    m = Models(cat, covisit, trending, emb)
    later = NOW + 5 * 10**7
    for item in ("i0", "i3", "i50", "nothing"):
        for kind in (VIEWED, BOUGHT):
            lst = covisit.neighbours(item, kind, 30, later)
            got = m.covisit_rows(item, kind, later)
            if not lst:
                assert got is None
                continue
            assert got is not None
            rows, values, best, scale = got
            known = [(cat.index[o], v) for o, v in lst if o in cat.index]
            assert rows.tolist() == [r for r, _ in known]
            assert (values * scale).tolist() == [v for _, v in known]  # the same floats
            assert best * scale == lst[0][1]


def _snapshot_arrays(covisit: CovisitIndex) -> tuple[object, ...]:
    """The co-visitation arrays a worker decodes from a snapshot of these lists."""
    snap = ModelSnapshot(1, NOW, 0, None, dict(covisit.published), {}, {}, None, {})
    arrays = ModelSnapshot.from_bytes(snap.to_bytes()).cv_arrays
    assert arrays is not None
    return arrays


def test_blocks_made_from_the_snapshot_arrays_equal_the_ones_filled_per_seed() -> None:
    """The co-visitation blocks of a snapshot made at once from its arrays hold the same
    rows, bins and ratio bits as the blocks filled item by item from covisit_norm (lists
    naming unknown items, an item twice, empty kinds), and both rank alike."""
    cat, covisit, trending, emb = _world(11)
    primed = Models(cat, covisit, trending, emb, covisit_arrays=_snapshot_arrays(covisit))
    lazy = Models(cat, covisit, trending, emb)
    n = len(cat)
    rows = list(range(n))
    got = primed.blocks()
    assert got.cv_filled[[cat.index[i] for i in covisit.published if i in cat.index]].all()
    a = primed.covisit_block([(cat.ids[r], r) for r in rows], NOW)
    b = lazy.covisit_block([(cat.ids[r], r) for r in rows], NOW)
    for x, y in zip(a, b, strict=True):
        assert x.tobytes() == y.tobytes()
    assert (a[0][cat.index["i0"]][:3] == [cat.index["i1"], cat.index["i1"], cat.index["i2"]]).all()
    assert a[0][cat.index["i110"]].tolist() == [n] * CV_WIDTH  # no list: all padding
    rng = np.random.default_rng(12)
    for step in range(80):
        signals = _signals(rng)
        assert rank(signals, primed, k=8) == rank(signals, lazy, k=8), step


def test_embedding_neighbour_blocks_are_the_best_positive_cosines() -> None:
    cat, covisit, trending, emb = _world(13)
    m = Models(cat, covisit, trending, emb)
    vectors = m.aligned_embeddings()
    assert vectors is not None
    n = len(cat)
    rows = [0, 2, 7, 64, 119]  # 7 and 119: not in the snapshot (zero vectors)
    block = m.neighbour_block(rows)
    assert block.shape == (len(rows), N_EMB_NEIGHBOURS)
    for r, got in zip(rows, block, strict=True):
        sims = vectors @ vectors[r]
        sims[r] = 0.0
        best = sorted((c for c in range(n) if sims[c] >= 1e-12), key=lambda c: (-sims[c], c))
        expected = best[:N_EMB_NEIGHBOURS]
        assert got.tolist() == expected + [n] * (N_EMB_NEIGHBOURS - len(expected))
    assert [x.tolist() for x in m.embedding_neighbours([2, 7])] == [
        [c for c in block[1] if c < n],
        [],
    ]
    # new embeddings (the vectors of other items): the kept neighbours are not reused
    m.embeddings = EmbeddingSnapshot(2, NOW, emb.items, emb.vectors[::-1].copy())
    vectors = m.aligned_embeddings()
    assert vectors is not None
    sims = vectors @ vectors[0]
    sims[0] = 0.0
    best = sorted((c for c in range(n) if sims[c] >= 1e-12), key=lambda c: (-sims[c], c))
    assert m.neighbour_block([0])[0].tolist()[: len(best[:N_EMB_NEIGHBOURS])] == best[:20]
    assert m.neighbour_block([0]).tolist() != block[:1].tolist()


def test_covisit_scores_add_like_a_loop_over_the_sources() -> None:
    rng = np.random.default_rng(8)
    n = 40
    parts = []
    expected = np.zeros(n)
    for _ in range(7):
        rows = rng.integers(n, size=int(rng.integers(0, 12)))  # repeats within a list too
        norm = rng.random(len(rows))
        weight = float(rng.random())
        parts.append((rows.astype(np.int64), norm, weight))
        for r, v in zip(rows.tolist(), norm.tolist(), strict=True):
            expected[r] = expected[r] + weight * v
    got, rows = _covisit_scores(parts, n)
    assert got.tobytes() == expected.tobytes()
    assert sorted(rows.tolist()) == sorted(r for p in parts for r in p[0].tolist())


def test_covisit_norm_is_the_decayed_ratio_to_the_best_score() -> None:
    """The decay scales a list's scores and its best alike: the cached ratio is the ratio
    of the decayed numbers at any time."""
    cat, covisit, trending, emb = _world(7)
    m = Models(cat, covisit, trending, emb)
    for later in (NOW, NOW + 5 * 10**7):
        for item in ("i0", "i3", "i50", "nothing"):
            for kind in (VIEWED, BOUGHT):
                got = m.covisit_norm(item, kind, later)
                full = m.covisit_rows(item, kind, later)
                if full is None:
                    assert got is None
                    continue
                assert got is not None
                rows, values, best, scale = full
                assert got[0].tolist() == rows.tolist()
                np.testing.assert_allclose(got[1], (values * scale) / (best * scale))


def test_covisit_rows_are_shared_across_snapshots_while_lists_are_equal() -> None:
    cat, covisit, trending, emb = _world(9)
    first = Models(cat, covisit, trending, emb)
    old = covisit.published["i3"]
    rows, _, _, _ = first.covisit_rows("i3", VIEWED, NOW) or pytest.fail("no list")
    assert first.covisit_rows("i4", VIEWED, NOW) is not None  # cached, then changed below
    # the next snapshot: i3's list decoded again (equal), i4's list changed
    changed = NeighbourList("i4", NOW, (("i7", 1.0), ("i8", 0.5)), ())
    published = dict(covisit.published)
    published["i3"] = NeighbourList(old.item, old.at_ms, tuple(old.viewed), tuple(old.bought))
    published["i4"] = changed
    second = Models(cat, CovisitIndex(published=published), trending, emb,
                    covisit_rows_cache=first.covisit_rows_cache)  # fmt: skip
    again = second.covisit_rows("i3", VIEWED, NOW)
    assert again is not None and again[0] is rows  # reused, not rebuilt
    got = second.covisit_rows("i4", VIEWED, NOW)
    assert got is not None and got[0].tolist() == [cat.index["i7"], cat.index["i8"]]


def _mmr_by_loop(score: np.ndarray, v: np.ndarray, k: int, lam: float) -> list[int]:
    """MMR as written in the docs, one candidate at a time (the reference)."""
    rel = score / score.max() if score.max() > 0 else np.zeros_like(score)
    picked: list[int] = []
    for _ in range(min(k, len(score))):
        best, j = -np.inf, -1
        for i in range(len(score)):
            if i in picked:
                continue
            sim = max([max(0.0, float(v[i] @ v[p])) for p in picked], default=0.0)
            value = lam * rel[i] - (1.0 - lam) * sim
            if value > best + 1e-12:
                best, j = value, i
        picked.append(j)
    return picked


def test_mmr_and_the_pool_pick_as_the_loop_does() -> None:
    from attune.operators.ranking import MMR_POOL_PER_PICK, _mmr_pool

    rng = np.random.default_rng(11)
    for _ in range(300):
        m = int(rng.integers(1, 40))
        v = rng.normal(size=(m, 6)).astype(np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        if m > 2:
            v[1] = v[0]  # identical items
        score = rng.random(m).round(int(rng.integers(1, 4)))  # ties too
        k = int(rng.integers(1, 12))
        lam = float(rng.choice([0.0, 0.3, 0.9]))
        want = _mmr_by_loop(score, v, k, lam)
        assert _mmr(score, v, k, lam) == want
        pool = _mmr_pool(score, k)
        assert len(pool) == min(m, MMR_POOL_PER_PICK * k)
        assert sorted(pool.tolist()) == pool.tolist()
        assert score[pool].min() >= np.delete(score, pool).max(initial=-1.0)


def test_candidate_ranking_keeps_the_full_rankings_items() -> None:
    """rank scores a bounded candidate set; on a small world it finds what rank_full does."""
    from attune.operators.ranking import rank_full

    cat, covisit, trending, emb = _world(5)
    m = Models(cat, covisit, trending, emb)
    rng = np.random.default_rng(12)
    overlap = []
    for _ in range(60):
        signals = _signals(rng)
        got, full = rank(signals, m, k=8), rank_full(signals, m, k=8)
        assert len(got) == len(full)
        overlap.append(len({r.item for r in got} & {r.item for r in full}) / max(1, len(full)))
    assert float(np.mean(overlap)) > 0.9


@given(
    st.lists(
        st.tuples(
            st.text(min_size=1, max_size=8),
            st.floats(min_value=0, max_value=2, allow_nan=False),
            st.sampled_from([*recs_encoding.REASON_CODES, "co-visited", "a|b,c%"]),
            st.one_of(st.none(), st.sampled_from(["shoes/running", "a,b", "c|d", "%"])),
        ),
        max_size=12,
    ),
    st.sampled_from(["m3-c5", "m|1,%"]),
    st.sampled_from(["personalized", "trending"]),
)
def test_format_3_made_directly_is_format_2_compacted(
    items: list[recs_encoding.Entry], version: str, source: str
) -> None:
    direct = recs_encoding.encode_compact(items, version, 1_767_571_200_000, source)
    assert direct == recs_encoding.compact(
        recs_encoding.encode(items, version, 1_767_571_200_000, source)
    )
