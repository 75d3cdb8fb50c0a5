"""Item embeddings, user vectors, co-visitation and trending shards, content vectors."""

from __future__ import annotations

import pickle
import random

import numpy as np
import pytest

from attune.operators.clock import DAY_MS
from attune.operators.content import Catalogue
from attune.operators.covisit import (
    BOUGHT,
    HALF_LIFE_MS,
    PAIR_WINDOW,
    TOP_N,
    VIEWED,
    CovisitIndex,
    ItemNeighbours,
    purchase_pairs,
    session_pairs,
)
from attune.operators.embeddings import (
    EmbeddingSnapshot,
    Item2Vec,
    user_vectors,
)
from attune.operators.events import ItemUpdate
from attune.operators.trending import HALF_LIFE_MS as TREND_HL
from attune.operators.trending import ItemTrend, TrendingBoard, log_weight

# --- item2vec ---------------------------------------------------------------------------------


def _group_sessions(rng: random.Random, n: int) -> list[list[str]]:
    """Sessions that stay within one of two groups of 10 items."""
    out = []
    for _ in range(n):
        g = rng.choice("ab")
        out.append([f"{g}{rng.randrange(10)}" for _ in range(rng.randint(2, 6))])
    return out


def test_item2vec_separates_groups_that_never_co_occur() -> None:
    learner = Item2Vec(dim=16, seed=2, batch_pairs=64)
    rng = random.Random(0)
    for _ in range(10):
        learner.learn_sessions(_group_sessions(rng, 100))
    snap = learner.snapshot(now_ms=5)
    idx = snap.index()
    va = snap.vectors[[idx[f"a{i}"] for i in range(10)]]
    vb = snap.vectors[[idx[f"b{i}"] for i in range(10)]]
    within = float((va @ va.T).mean() + (vb @ vb.T).mean()) / 2
    across = float((va @ vb.T).mean())
    assert within > across + 0.3
    assert snap.version == 10 and snap.pairs_trained == learner.pairs_trained > 0
    assert np.allclose(np.linalg.norm(snap.vectors, axis=1), 1.0, atol=1e-5)


def test_item2vec_memory_is_bounded() -> None:
    learner = Item2Vec(dim=4, max_items=5)
    learner.learn_sessions([[f"i{j}" for j in range(10)]])
    assert len(learner.items) == 5
    assert learner.snapshot(0).vectors.shape == (5, 4)


def test_learner_pickles_and_keeps_learning_the_same_way() -> None:
    rng = random.Random(1)
    a = Item2Vec(dim=8, seed=3)
    a.learn_sessions(_group_sessions(rng, 50))
    b = pickle.loads(pickle.dumps(a))
    more = _group_sessions(rng, 50)
    a.learn_sessions(more)
    b.learn_sessions(more)
    assert np.array_equal(a.snapshot(0).vectors, b.snapshot(0).vectors)


def _apply_with_add_at(w: np.ndarray, rows: np.ndarray, grad: np.ndarray) -> None:
    """The update as first written (``np.add.at``): the reference for ``Item2Vec._apply``."""
    uniq, inv, counts = np.unique(rows, return_inverse=True, return_counts=True)
    total = np.zeros((len(uniq), w.shape[1]))
    np.add.at(total, inv, grad)
    w[uniq] += (total / counts[:, None]).astype(np.float32)


@pytest.mark.parametrize("seed", range(5))
def test_item2vec_update_equals_add_at_bit_for_bit(seed: int) -> None:
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(50, 32)).astype(np.float32)
    # popular rows appear hundreds of times, as in a real batch
    rows = np.minimum(rng.zipf(1.3, size=900), 50) - 1
    grad = (rng.normal(size=(900, 32)) * 10.0 ** rng.integers(-6, 2, size=(900, 1))).astype(
        np.float32
    )
    expected = w.copy()
    _apply_with_add_at(expected, rows, grad)
    got = w.copy()
    Item2Vec._apply(got, rows, grad)
    assert got.tobytes() == expected.tobytes()


def test_snapshot_bytes_round_trip_and_bad_input() -> None:
    learner = Item2Vec(dim=8, seed=0)
    learner.learn_sessions([["x", "y", "z"], ["y", "z"]])
    snap = learner.snapshot(now_ms=1234)
    data = snap.to_bytes()
    back = EmbeddingSnapshot.from_bytes(data)
    assert back.items == snap.items and back.version == snap.version
    assert back.created_ms == 1234 and back.pairs_trained == snap.pairs_trained
    assert np.allclose(back.vectors, snap.vectors, atol=2e-3)  # float16 on the wire
    assert len(data) < 100 + 3 * 8 * 2 + 20
    with pytest.raises(ValueError, match="bad magic"):
        EmbeddingSnapshot.from_bytes(b"nonsense" * 10)
    with pytest.raises(ValueError, match="truncated or corrupt"):
        EmbeddingSnapshot.from_bytes(data[:-3])
    with pytest.raises(ValueError, match="3 items but 2 vectors"):
        EmbeddingSnapshot(1, 0, ("a", "b", "c"), np.zeros((2, 4), np.float32))


def test_user_vectors_short_term_follows_the_latest_items() -> None:
    v = np.eye(3, dtype=np.float32)
    now = 30 * DAY_MS
    rows = np.array([0, 0, 0, 1, -1])
    times = np.array([now - 20 * DAY_MS, now - 20 * DAY_MS, now - 19 * DAY_MS, now, now])
    short, long = user_vectors(v, rows, times, np.ones(5), now)
    assert short is not None and long is not None
    assert int(np.argmax(short)) == 1  # the item of the last minutes
    assert long[0] > 0.1 and long[1] > long[0]  # three old views still count long-term
    assert short[2] == 0.0  # unknown rows (-1) are skipped
    assert user_vectors(v, np.array([-1]), np.array([now]), np.ones(1), now) == (None, None)


# --- co-visitation ------------------------------------------------------------------------------


def test_session_pairs_use_a_window_of_distinct_items() -> None:
    session = [f"i{j}" for j in range(10)] + ["i9", "i8"]
    pairs = session_pairs(session, "new")
    partners = [b for a, b in pairs if a == "new"]
    assert partners == ["i8", "i9", "i7", "i6", "i5"]  # latest distinct first
    assert len(partners) == PAIR_WINDOW
    assert ("i8", "new") in pairs  # both directions
    assert session_pairs(["x"], "x") == []
    assert sorted(purchase_pairs(["a", "b", "a", "c"])) == [
        ("a", "b"), ("a", "c"), ("b", "a"), ("b", "c"), ("c", "a"), ("c", "b"),
    ]  # fmt: skip


def test_neighbours_decay_prune_and_publish() -> None:
    st = ItemNeighbours("a")
    st.update("old", VIEWED, 0, weight=3.0)
    st.update("new", VIEWED, 2 * HALF_LIFE_MS, weight=1.0)  # 3 / 4 < 1
    top = st.top(VIEWED, 5, now_ms=2 * HALF_LIFE_MS)
    assert [n for n, _ in top] == ["new", "old"]
    assert top[1][1] == pytest.approx(0.75)
    for j in range(3 * TOP_N):
        st.update(f"x{j}", VIEWED, 2 * HALF_LIFE_MS, weight=1.0 + j)
    assert len(st.weights[VIEWED]) <= 2 * TOP_N  # bounded
    st.update("b", BOUGHT, 2 * HALF_LIFE_MS)
    pub = st.publish(now_ms=3 * HALF_LIFE_MS, n=3)
    assert pub.item == "a" and len(pub.viewed) == 3 and pub.bought[0][0] == "b"
    assert pub.viewed[0][0] == f"x{3 * TOP_N - 1}"
    assert pub.bought[0][1] == pytest.approx(0.5)  # one half-life later
    assert pub.to_json()["bought"] == [["b", pytest.approx(0.5)]]


def test_forward_decay_rebase_keeps_ratios() -> None:
    st = ItemNeighbours("a")
    st.update("p", VIEWED, 0, weight=2.0)
    st.update("q", VIEWED, 0, weight=1.0)
    far = 50 * HALF_LIFE_MS  # past the rebase exponent
    st.update("q", VIEWED, far, weight=1.0)
    assert st.t0 == far
    top = dict(st.top(VIEWED, 5, now_ms=far))
    assert top["q"] == pytest.approx(1.0 + 2.0**-50)
    assert top["p"] == pytest.approx(2.0 * 2.0**-50)


def test_covisit_index_reads_states_and_published_lists() -> None:
    idx = CovisitIndex()
    idx.learn([("a", "b"), ("a", "c"), ("a", "b")], VIEWED, 0)
    assert [n for n, _ in idx.neighbours("a", VIEWED, 5, 0)] == ["b", "c"]
    other = CovisitIndex()
    other.put(idx.states["a"].publish(now_ms=0))
    name, score = other.neighbours("a", VIEWED, 5, HALF_LIFE_MS)[0]
    assert name == "b" and score == pytest.approx(1.0)  # 2 decayed by one half-life
    assert other.neighbours("zz", VIEWED, 5, 0) == []


# --- trending -----------------------------------------------------------------------------------


def test_trend_scores_compare_across_times_and_publish_scopes() -> None:
    a = ItemTrend("a", "home/decor")
    b = ItemTrend("b", "home/kitchen")
    a.update(0, 4.0, segments=("vip",))
    b.update(2 * TREND_HL, 1.0)
    assert a.score == pytest.approx(b.score)  # 4 two half-lives ago == 1 now
    assert a.score == pytest.approx(log_weight(2 * TREND_HL, 1.0))
    scopes = {s: v for s, _, v in a.publish()}
    assert set(scopes) == {"global", "category:home", "category:home/decor", "segment:vip"}
    assert ItemTrend("c").publish() == [("global", "c", float("-inf"))]


def test_trending_board_shares() -> None:
    board = TrendingBoard()
    assert board.shares(3).tolist() == [0.0, 0.0, 0.0]
    board.update(0, 0, 3.0)
    board.update(2, 0, 1.0, segments=("s",))
    shares = board.shares(4)
    assert shares.tolist() == pytest.approx([0.75, 0.0, 0.25, 0.0])
    assert board.shares(4, "s").tolist() == pytest.approx([0.0, 0.0, 1.0, 0.0])
    board.set_scores("global", np.array([1, 3]), np.array([5.0, 4.0]), 4)
    assert board.shares(4).tolist() == pytest.approx([0.0, 2 / 3, 0.0, 1 / 3])


# --- content ------------------------------------------------------------------------------------


def _item(i: str, path: str, price: int, brand: str = "B", stock: bool = True) -> ItemUpdate:
    return ItemUpdate(i, "t", tuple(path.split("/")), price, "EUR", stock, 0, 0, brand, ("x",))


def test_content_vectors_and_live_stock() -> None:
    cat = Catalogue()
    for i, (path, price, brand) in enumerate(
        [("a/x", 100, "B"), ("a/x", 110, "B"), ("a/x", 900, "C"), ("b/y", 100, "B")]
    ):
        cat.update(_item(f"i{i}", path, price, brand))
    cat.ensure_fresh()
    v = cat.vectors
    assert v.shape == (4, 256)
    assert v[0] @ v[1] > v[0] @ v[2] > v[0] @ v[3]  # same band and brand > same category > other
    assert cat.in_stock.all()
    cat.update(_item("i1", "a/x", 110, stock=False))
    assert not cat.in_stock[1]  # stock changes apply without a refresh
    cat.update(_item("i9", "c/z", 5))
    cat.ensure_fresh()
    assert len(cat.vectors) == 5 and cat.category_of("i9") == "c/z"
    assert cat.content_of(["i9", "nope"])[1].tolist() == [0.0] * 256
