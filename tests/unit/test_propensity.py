"""Purchase propensity: features, leakage boundary, progressive validation, drift, tiers."""

from __future__ import annotations

import pickle
import random

import pytest

from attune.operators.events import Event, EventType, LineItem, PageView, ProductView, Purchase
from attune.operators.features import FEATURES as PROFILE_FEATURES
from attune.operators.propensity import (
    BUFFER,
    FEATURES,
    HIGH,
    INPUTS,
    MEDIUM,
    PropensityModel,
    PropensityScorer,
    feature_vector,
    inputs,
    is_outcome_boundary,
    tier,
)


def _session(rng: random.Random, flip: bool = False) -> tuple[dict[str, int], bool]:
    """A session whose outcome depends on the cart (or, flipped, on its absence)."""
    carted = rng.random() < 0.5
    views = rng.randint(1, 8)
    bought = (carted != flip) and rng.random() < 0.8
    return {"cart_lines": int(carted), "session_product_views": views, "sessions": 2}, bought


def test_features_are_profile_features() -> None:
    # The live path hands the model FeatureView(state); every name must exist there.
    assert set(FEATURES) <= set(PROFILE_FEATURES)


def test_feature_vector_transforms_and_handles_missing() -> None:
    x = feature_vector(
        {"cart_value_minor": 9_900, "days_since_last_purchase": None, "channel_top": "APP"}
    )
    assert x["cart_value_minor"] == pytest.approx(4.6052, abs=1e-3)  # log1p(99 euros)
    assert x["days_since_last_purchase_known"] == 0.0
    assert x["channel_top=APP"] == 1.0 and x["channel_top=WEB"] == 0.0
    assert x["has_cart"] == 0.0 and x["fresh_cart"] == 0.0
    assert x["cart_lines"] == 0.0  # missing counts as 0
    y = feature_vector({"cart_lines": 2, "session_add_to_carts": 1})
    assert y["has_cart"] == 1.0 and y["fresh_cart"] == 1.0


@pytest.mark.parametrize(
    ("payload", "boundary"),
    [
        (PageView("CHECKOUT"), True),
        (PageView("CART"), True),
        (Purchase("o1", (LineItem("i", 1, 100),), 100, "EUR"), True),
        (PageView("HOME"), False),
        (ProductView("i1"), False),
    ],
)
def test_outcome_boundary(payload: object, boundary: bool) -> None:
    etype = {
        PageView: EventType.PAGE_VIEW,
        Purchase: EventType.PURCHASE,
        ProductView: EventType.PRODUCT_VIEW,
    }[type(payload)]
    event = Event("e", etype, 1_767_571_200_000, payload, user_id="u")  # type: ignore[arg-type]
    assert is_outcome_boundary(event) is boundary


def test_tiers_at_their_thresholds() -> None:
    assert tier(HIGH) == "high" and tier(HIGH - 1e-9) == "medium"
    assert tier(MEDIUM) == "medium" and tier(MEDIUM - 1e-9) == "low"
    assert tier(1.0) == "high" and tier(0.0) == "low"


def test_learns_a_rule_with_progressive_validation() -> None:
    rng = random.Random(3)
    m = PropensityModel(seed=0)
    for _ in range(1500):
        features, bought = _session(rng)
        before = m.score(features)
        assert m.learn(features, bought) == pytest.approx(before)  # scored before learning
    met = m.metrics()
    assert met["sessions"] == 1500 and met["window"] == m.window
    assert met["auc"] > 0.85
    assert met["log_loss"] < 0.5
    assert m.score({"cart_lines": 1}) > HIGH > MEDIUM > m.score({"cart_lines": 0})


def test_metrics_before_both_classes_are_seen() -> None:
    m = PropensityModel()
    assert m.metrics()["auc"] is None and m.metrics()["log_loss"] is None
    m.learn({"cart_lines": 1}, True)
    assert m.metrics()["auc"] is None  # one class only: undefined, not 0.5
    assert m.metrics()["log_loss"] is not None


def test_drift_resets_and_the_model_recovers() -> None:
    rng = random.Random(5)
    m = PropensityModel(seed=0, lr=0.05, window=300)
    for _ in range(1500):
        m.learn(*_session(rng))
    assert m.drifts == 0
    for _ in range(1500):  # the concept flips: carts now mean no purchase
        m.learn(*_session(rng, flip=True))
    assert m.drifts >= 1
    assert m.last_drift_at is not None and m.last_drift_at > 1500
    assert m.metrics()["auc"] > 0.85  # rolling window after the change
    assert m.score({"cart_lines": 0}) > m.score({"cart_lines": 1})


def test_pickles_with_the_same_scores() -> None:
    rng = random.Random(1)
    m = PropensityModel()
    for _ in range(200):
        m.learn(*_session(rng))
    copy = pickle.loads(pickle.dumps(m))
    probe = {"cart_lines": 1, "session_product_views": 4}
    assert copy.score(probe) == m.score(probe)
    assert copy.metrics() == m.metrics()


def test_published_parameters_score_like_the_model() -> None:
    import orjson

    rng = random.Random(7)
    m = PropensityModel()
    for _ in range(800):
        m.learn(*_session(rng))
    params = orjson.loads(orjson.dumps(m.publish()))  # what goes through Redis
    scorer = PropensityScorer.from_params(params)
    assert scorer.version == m.version == 800
    for _ in range(50):
        features, _ = _session(rng)
        features["cart_value_minor"] = rng.randint(0, 50_000)
        assert scorer.score(features) == pytest.approx(m.score(features), abs=1e-9)
    with pytest.raises(ValueError, match="not propensity parameters"):
        PropensityScorer.from_params({"version": 1, "mean": {}})


def test_learns_in_mini_batches_cut_by_count_only() -> None:
    rng = random.Random(11)
    sessions = [_session(rng) for _ in range(200)]
    one, other = PropensityModel(), PropensityModel()
    for features, bought in sessions:
        one.learn(features, bought)
    for features, bought in sessions[:77]:
        other.learn(features, bought)
    other = pickle.loads(pickle.dumps(other))  # a snapshot between two examples
    for features, bought in sessions[77:]:
        other.learn(features, bought)
    assert one.count == other.count == 192  # six steps of MINI_BATCH; 8 sessions wait
    assert len(one.pending) == 200 - 192
    assert (one.weights, one.means, one.vars) == (other.weights, other.means, other.vars)
    assert one.metrics() == other.metrics()
    with pytest.raises(ValueError, match="mini-batch"):
        PropensityModel(mini_batch=0)


def test_a_constant_input_keeps_no_spread() -> None:
    m = PropensityModel(mini_batch=4)
    for i in range(40):
        m.learn({"cart_lines": i % 2, "sessions": 3}, bool(i % 2))
    spread = {INPUTS[i] for i, *_ in m.terms}
    assert spread == {"cart_lines", "has_cart"}  # sessions is always 3: no term, no blow-up
    assert m.score({"cart_lines": 1, "sessions": 3}) > 0.5 > m.score({"sessions": 3})


def test_reads_a_model_pickled_with_a_river_pipeline() -> None:
    from collections import deque

    from river import compose, linear_model, optim, preprocessing

    rng = random.Random(2)
    pipeline = compose.Pipeline(
        preprocessing.StandardScaler(),
        linear_model.LogisticRegression(optimizer=optim.SGD(0.005), l2=1e-4),
    )
    old = PropensityModel()
    for _ in range(300):
        features, bought = _session(rng)
        x = feature_vector(features)
        pipeline.learn_one(x, bought)
        old.recent.append((float(bought), 0.5))
        old.n += 1
    # the slots of a model pickled before session 10: a pipeline, buffered input dicts
    got_state: tuple[None, dict[str, object]] = old.__getstate__()  # type: ignore[assignment]
    state = got_state[1]
    for name in ("l2", "intercept_lr", "mini_batch", "count", "means", "vars", "weights"):
        del state[name]
    del state["intercept"], state["pending"], state["terms"]
    state["model"] = pipeline
    state["buffer"] = deque([(feature_vector({"cart_lines": 1}), True)], maxlen=BUFFER)
    got = PropensityModel.__new__(PropensityModel)
    got.__setstate__((None, state))
    for _ in range(20):
        probe, _ = _session(rng)
        want = pipeline.predict_proba_one(feature_vector(probe))[True]
        assert got.score(probe) == pytest.approx(want, abs=1e-9)
    assert got.buffer[0] == (inputs({"cart_lines": 1}), True)
    assert got.n == 300 and got.count == 300
    got.learn(*_session(rng))  # and learns on
