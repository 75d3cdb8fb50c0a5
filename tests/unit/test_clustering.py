"""Online clustering: planted blobs are recovered, personas name them, params travel intact."""

from __future__ import annotations

import math
import os
import pickle
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from attune.operators.clustering import (
    CLUSTER_FEATURES,
    LOG1P_FEATURES,
    ClusterModel,
    ClusterParams,
    original_units,
    vector,
)
from attune.operators.features import FEATURES

BROWSERS, BARGAIN_BUYERS, BIG_SPENDERS = 0, 1, 2
#: The feature each blob is planted on (far from the other blobs on it).
PLANTED = {
    BROWSERS: "product_views_7d",
    BARGAIN_BUYERS: "purchases_30d",
    BIG_SPENDERS: "avg_order_value_minor",
}


def blob_users(seed: int, n: int = 3000) -> list[tuple[dict[str, float | int | None], int]]:
    """Feature dicts in original units from 3 well-separated blobs, shuffled."""
    rng = random.Random(seed)

    def around(median: float, spread: float = 0.15) -> float:
        return rng.lognormvariate(math.log(median), spread)

    users: list[tuple[dict[str, float | int | None], int]] = []
    for i in range(n):
        blob = i % 3
        f: dict[str, float | int | None] = {
            "product_views_7d": around(10),
            "add_to_carts_7d": around(2),
            "purchases_30d": 1,
            "avg_order_value_minor": around(3000),
            "premium_view_share_7d": min(1.0, around(0.2)),
            "long_dwells": around(2),
            "sessions": around(4),
        }
        if blob == BROWSERS:  # many views over many sessions, rarely a cart, no order
            f.update(
                product_views_7d=around(150),
                long_dwells=around(20),
                sessions=around(8),
                add_to_carts_7d=around(1),
                purchases_30d=0,
                avg_order_value_minor=None,
            )
        elif blob == BARGAIN_BUYERS:  # many small orders
            f.update(
                purchases_30d=round(around(12, 0.1)),
                avg_order_value_minor=around(800),
                add_to_carts_7d=around(15),
            )
        else:  # a few large orders of premium items
            f.update(
                purchases_30d=2,
                avg_order_value_minor=around(60_000),
                premium_view_share_7d=min(1.0, around(0.8)),
                sessions=around(2),
            )
        orders, aov = f["purchases_30d"], f["avg_order_value_minor"]
        assert isinstance(orders, int)
        f["revenue_30d_minor"] = orders * aov if aov is not None else 0
        users.append((f, blob))
    rng.shuffle(users)
    return users


def learn(model: ClusterModel, vectors: list[tuple[float, ...]], batch: int = 200) -> None:
    for start in range(0, len(vectors), batch):
        model.learn_many(vectors[start : start + batch])


@pytest.fixture(scope="module")
def blobs() -> list[tuple[tuple[float, ...], int]]:
    return [(vector(f), blob) for f, blob in blob_users(seed=3)]


@pytest.mark.parametrize("seed", [42, 7])
def test_blobs_map_to_distinct_pure_clusters_and_personas_name_them(
    blobs: list[tuple[tuple[float, ...], int]], seed: int
) -> None:
    model = ClusterModel(k=3, seed=seed)
    learn(model, [v for v, _ in blobs])
    params = model.params()
    assert params.ready
    counts = Counter((blob, params.assign(v)) for v, blob in blobs)
    majority = {}
    for blob in PLANTED:
        per_cluster = {c: n for (b, c), n in counts.items() if b == blob}
        cluster = max(per_cluster, key=per_cluster.__getitem__)
        assert per_cluster[cluster] >= 0.9 * sum(per_cluster.values()), per_cluster
        majority[blob] = cluster
    assert len(set(majority.values())) == 3, majority
    for blob, cluster in majority.items():
        persona = params.personas[cluster]
        assert persona.cluster == cluster
        z = dict(persona.distinguishing)
        assert len(z) == 3
        assert z.get(PLANTED[blob], 0.0) > 0, (blob, persona.distinguishing)
        assert f"high {PLANTED[blob]}" in persona.label
    # Sizes count the window's assignments; the default window holds all 3000.
    assert sum(p.size for p in params.personas) == 3000
    # Centroids in original units land in the blobs they summarise.
    browsers = params.personas[majority[BROWSERS]].centroid
    assert 100 < browsers["product_views_7d"] < 200
    spenders = params.personas[majority[BIG_SPENDERS]].centroid
    assert 40_000 < spenders["avg_order_value_minor"] < 90_000


def test_assign_agrees_with_rivers_own_prediction(
    blobs: list[tuple[tuple[float, ...], int]],
) -> None:
    model = ClusterModel(k=6)
    learn(model, [v for v, _ in blobs[:1500]])
    params = model.params()
    for v, _ in blobs[1500:2000]:
        assert params.assign(v) == model.predict_one(v)


def test_params_round_trip_through_json(blobs: list[tuple[tuple[float, ...], int]]) -> None:
    model = ClusterModel(k=4)
    learn(model, [v for v, _ in blobs[:600]])
    params = model.params()
    again = ClusterParams.from_json(params.to_json())
    assert again == params
    assert ClusterParams.from_json(params.to_json().decode()) == params
    assert [again.assign(v) for v, _ in blobs[:200]] == [params.assign(v) for v, _ in blobs[:200]]
    assert again.descriptions() == {f"persona_{p.cluster}": p.label for p in params.personas}


def test_from_json_rejects_other_features_and_garbage() -> None:
    other = ClusterParams(version=1, ready=False, n_learned=0, features=("sessions",))
    with pytest.raises(ValueError, match="wait for the learner"):
        ClusterParams.from_json(other.to_json())
    with pytest.raises(ValueError, match="invalid cluster parameters JSON"):
        ClusterParams.from_json(b"{not json")
    with pytest.raises(ValueError, match="invalid cluster parameters JSON"):
        ClusterParams.from_json(b"[1, 2]")
    with pytest.raises(ValueError, match="invalid cluster parameters JSON"):
        ClusterParams.from_json(b'{"features": %s}' % json_list(CLUSTER_FEATURES))


def json_list(names: tuple[str, ...]) -> bytes:
    return ("[" + ", ".join(f'"{n}"' for n in names) + "]").encode()


def test_model_pickles_to_identical_params_and_continues_identically(
    blobs: list[tuple[tuple[float, ...], int]],
) -> None:
    model = ClusterModel(k=5, seed=11)
    learn(model, [v for v, _ in blobs[:400]])
    clone = pickle.loads(pickle.dumps(model))
    assert clone.params() == model.params()
    more = [v for v, _ in blobs[400:800]]
    learn(model, more)
    learn(clone, more)
    assert clone.params() == model.params()
    assert clone.params().to_json() == model.params().to_json()


def test_deterministic_for_a_seed_and_order(blobs: list[tuple[tuple[float, ...], int]]) -> None:
    vectors = [v for v, _ in blobs[:500]]
    a, b = ClusterModel(seed=5), ClusterModel(seed=5)
    learn(a, vectors)
    learn(b, vectors)
    assert a.params().to_json() == b.params().to_json()
    c = ClusterModel(seed=6)
    learn(c, vectors)
    assert c.params().centroids_scaled != a.params().centroids_scaled


def test_deterministic_across_processes_whatever_the_hash_seed() -> None:
    code = (
        "from tests.unit.test_clustering import blob_users, learn\n"
        "from attune.operators.clustering import ClusterModel, vector\n"
        "m = ClusterModel(seed=9)\n"
        "learn(m, [vector(f) for f, _ in blob_users(seed=1, n=300)])\n"
        "import sys; sys.stdout.buffer.write(m.params().to_json())\n"
    )
    root = Path(__file__).parents[2]
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            cwd=root,
            env={**os.environ, "PYTHONHASHSEED": hash_seed},
            capture_output=True,
            check=True,
        ).stdout
        for hash_seed in ("1", "2")
    }
    assert len(outputs) == 1


def test_empty_model_is_not_ready_and_assign_refuses() -> None:
    model = ClusterModel()
    params = model.params()
    assert (params.ready, params.version, params.n_learned, params.k) == (False, 0, 0, 0)
    assert params.personas == ()
    with pytest.raises(ValueError, match="not ready"):
        params.assign(vector({}))
    assert ClusterParams.from_json(params.to_json()) == params
    model.learn_many([])
    assert model.params() == params
    model.learn_many([vector({"sessions": 1})] * 99)  # min_vectors is 100
    assert not model.params().ready
    model.learn_many([vector({"sessions": 2})])
    assert model.params().ready


def test_assign_on_an_all_zero_vector(blobs: list[tuple[tuple[float, ...], int]]) -> None:
    model = ClusterModel(k=6)
    learn(model, [v for v, _ in blobs[:600]])
    params = model.params()
    zero = vector({})
    assert zero == (0.0,) * len(CLUSTER_FEATURES)
    assert 0 <= params.assign(zero) < 6
    assert params.assign(zero) == model.predict_one(zero)
    with pytest.raises(ValueError, match="components"):
        params.assign((0.0, 1.0))


def test_constant_features_and_small_first_batch() -> None:
    # Every feature constant but one, first batch smaller than k: no dead clusters,
    # no division by zero, and the constant features play no part.
    model = ClusterModel(k=3, min_vectors=10)
    model.learn_many([vector({"sessions": 1}), vector({"sessions": 50})])
    model.learn_many([vector({"sessions": s}) for s in (1, 2, 50, 60, 400, 500) * 5])
    params = model.params()
    assert params.stds[CLUSTER_FEATURES.index("product_views_7d")] == 0.0
    picks = {params.assign(vector({"sessions": s})) for s in (1, 55, 450)}
    assert len(picks) == 3


def test_window_bounds_the_sizes(blobs: list[tuple[tuple[float, ...], int]]) -> None:
    model = ClusterModel(k=3, window=250)
    learn(model, [v for v, _ in blobs[:1000]], batch=100)
    params = model.params()
    assert sum(p.size for p in params.personas) == 250
    assert (params.n_learned, params.version) == (1000, 10)


def test_learn_many_rejects_bad_vectors_without_learning() -> None:
    model = ClusterModel()
    with pytest.raises(ValueError, match="components"):
        model.learn_many([vector({}), (1.0, 2.0)])
    with pytest.raises(ValueError, match="non-finite"):
        model.learn_many([(math.nan,) * len(CLUSTER_FEATURES)])
    assert model.n_learned == 0
    with pytest.raises(ValueError, match="k must be"):
        ClusterModel(k=0)


def test_vector_transform_and_inverse() -> None:
    assert set(CLUSTER_FEATURES) <= FEATURES.keys()
    assert len(CLUSTER_FEATURES) == 8
    features = {
        "product_views_7d": 99,
        "add_to_carts_7d": 3,
        "purchases_30d": 2,
        "revenue_30d_minor": 12_345,
        "avg_order_value_minor": None,
        "premium_view_share_7d": 0.4,
        "long_dwells": -5,  # never produced by the state: clamped to 0
        "sessions": 7,
    }
    v = vector(features)
    assert v[0] == math.log1p(99)
    assert v[CLUSTER_FEATURES.index("avg_order_value_minor")] == 0.0
    assert v[CLUSTER_FEATURES.index("premium_view_share_7d")] == 0.4  # not log-transformed
    assert v[CLUSTER_FEATURES.index("long_dwells")] == 0.0
    back = original_units(v)
    for name in ("product_views_7d", "purchases_30d", "revenue_30d_minor", "sessions"):
        assert back[name] == pytest.approx(features[name])
    assert set(CLUSTER_FEATURES) - {"premium_view_share_7d"} == LOG1P_FEATURES
