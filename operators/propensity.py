"""Purchase propensity: will this session end in a purchase? Learned online, validated online.

A standardised logistic regression (the running mean and variance of each
input, then SGD on the log loss, as River's ``StandardScaler | LogisticRegression``
with ``optim.SGD(lr)``, ``l2=1e-4``) learns from **session outcomes**: one example
per session, the user's features at the session's *decision point* (below) ->
whether the session ended in a purchase. It learns in mini-batches of
:data:`MINI_BATCH` sessions, one numpy step each (the summed gradients of the
batch at its starting parameters, the scaler updated with the batch's moments):
River's per-example ``learn_one`` cost ~25 us of Python per session on the one
learner key, the step ~1 us per session. Batches are cut by count, never by
Bytewax's batches or the clock, so the model depends on the order of the
sessions only.

Leakage. The features must be what the per-user state knew before the outcome
was visible. The decision point of a session is the moment just **before** its
first outcome-funnel event: a ``PURCHASE``, or a ``PAGE_VIEW`` of page type
``CART`` or ``CHECKOUT`` (the checkout funnel is the outcome being predicted,
not evidence for it; a score is only useful before it). A session without such
an event is judged at its last event. The same rule holds for both classes, so
the model cannot learn "reached checkout". :func:`is_outcome_boundary` tells the
per-user path when to take the snapshot (before applying the event).

Features (:data:`FEATURES`) are the per-user profile features of
:mod:`attune.operators.features`, transformed by :func:`feature_vector` (``log1p`` of
counts and money, device/channel one-hot, missing -> 0 plus an indicator).

Progressive validation: :meth:`PropensityModel.learn` scores the example
first (with the parameters of the last step), records ``(label, score)`` in a rolling window of
:data:`METRIC_WINDOW` sessions (ROC AUC and log loss over it) and in
lifetime totals, feeds the example's log loss to an ADWIN drift detector,
then learns. Drift reaction (warm retrain): when ADWIN flags a change in the
loss and the loss went **up** (ADWIN flags improvements too; those are kept),
after the first ``window`` sessions, the model is replaced by a fresh one
trained on the most recent ``min(ADWIN window width, buffer)`` sessions of a bounded buffer
(:data:`BUFFER` sessions), i.e. on data from after the change only; the
rolling metrics keep running, ``drifts`` counts resets.

Tiers (:func:`tier`): ``high`` for score >= :data:`HIGH` (0.5), ``medium`` for
>= :data:`MEDIUM` (0.2), else ``low``. About a quarter of generated sessions
convert, so ``medium`` is "above base rate" and ``high`` "more likely than not".

>>> m = PropensityModel(seed=1)
>>> for i in range(400):
...     carted = i % 2
...     _ = m.learn({"cart_lines": carted, "session_product_views": 3}, bool(carted and i % 3))
>>> m.score({"cart_lines": 2, "session_product_views": 3}) > m.score({"cart_lines": 0})
True
>>> tier(0.7), tier(0.3), tier(0.05)
('high', 'medium', 'low')
>>> m.metrics()["auc"] > 0.75
True
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from river import drift

from attune.operators.events import Event, PageView, Purchase
from attune.operators.features import FeatureValue
from attune.operators.metrics import log_loss, roc_auc

__all__ = [
    "FEATURES",
    "HIGH",
    "INPUTS",
    "MEDIUM",
    "MINI_BATCH",
    "FeatureRow",
    "PropensityModel",
    "PropensityScorer",
    "feature_vector",
    "inputs",
    "is_outcome_boundary",
    "tier",
]

HIGH = 0.5
MEDIUM = 0.2
#: Sessions in the rolling validation window.
METRIC_WINDOW = 1000
#: Recent sessions kept for a warm retrain after drift.
BUFFER = 2000
#: Sessions learnt together in one vectorised step.
MINI_BATCH = 32
#: Profile features the model reads (names from attune.operators.features.FEATURES).
COUNT_FEATURES: tuple[str, ...] = (
    "session_events",
    "session_product_views",
    "session_add_to_carts",
    "cart_lines",
    "cart_units",
    "sessions",
    "purchases",
    "product_views_7d",
    "add_to_carts_7d",
    "purchases_30d",
    "long_dwells",
)
MONEY_FEATURES: tuple[str, ...] = ("cart_value_minor", "revenue_minor")
TIME_FEATURES: tuple[str, ...] = ("session_duration_ms",)
RATIO_FEATURES: tuple[str, ...] = ("top_category_share_7d", "premium_view_share_7d")
OPTIONAL_FEATURES: tuple[str, ...] = ("days_since_last_purchase",)
CATEGORICAL: dict[str, tuple[str, ...]] = {
    "device_top": ("DESKTOP", "MOBILE", "TABLET"),
    "channel_top": ("WEB", "APP"),
}
FEATURES: tuple[str, ...] = (
    *COUNT_FEATURES,
    *MONEY_FEATURES,
    *TIME_FEATURES,
    *RATIO_FEATURES,
    *OPTIONAL_FEATURES,
    *CATEGORICAL,
)
_OUTCOME_PAGES = frozenset({"CART", "CHECKOUT"})
_INDEX: dict[str, int] = {name: i for i, name in enumerate(FEATURES)}


class FeatureRow(Mapping[str, FeatureValue | None]):
    """The features :data:`FEATURES` as they stood at a decision point, as a row in that
    order: what a dict of them holds, in half the memory (~240 bytes against ~470, the
    values aside) and with a pickle a few times smaller (no names in it). A user whose
    session reached its outcome funnel keeps one until the session closes, and each
    session summary carries one, so the model learner's replay waiting list (up to
    20,000 summaries) holds as many. Every name is present (its value ``None`` if
    the user had none), as in the dict it replaces; an unknown name is missing.

    >>> row = FeatureRow.of({"cart_lines": 2, "device_top": "MOBILE"})
    >>> row["cart_lines"], row.get("purchases"), row.get("nope", -1), len(row) == len(FEATURES)
    (2, None, -1, True)
    >>> import pickle
    >>> row == {name: row[name] for name in FEATURES}, pickle.loads(pickle.dumps(row)) == row
    (True, True)
    """

    __slots__ = ("row",)

    def __init__(self, values: tuple[FeatureValue | None, ...]) -> None:
        if len(values) != len(FEATURES):
            raise ValueError(f"a feature row has {len(FEATURES)} values, got {len(values)}")
        self.row = values

    @classmethod
    def of(cls, features: Mapping[str, FeatureValue | None]) -> FeatureRow:
        """The row of ``features`` (each name read once: a view computes it on a read)."""
        get = features.get
        return cls(tuple([get(name) for name in FEATURES]))

    def __getitem__(self, name: str) -> FeatureValue | None:
        return self.row[_INDEX[name]]

    def get(self, name: str, default: Any = None) -> Any:  # the hot path: no KeyError
        i = _INDEX.get(name)
        return default if i is None else self.row[i]

    def __iter__(self) -> Iterator[str]:
        return iter(FEATURES)

    def __len__(self) -> int:
        return len(FEATURES)

    def __reduce__(self) -> tuple[type[FeatureRow], tuple[tuple[FeatureValue | None, ...]]]:
        return (FeatureRow, (self.row,))

    def __repr__(self) -> str:
        return f"FeatureRow({dict(zip(FEATURES, self.row, strict=True))!r})"


def is_outcome_boundary(event: Event) -> bool:
    """True for events that start the outcome funnel: snapshot the features *before* them.

    >>> from attune.operators.events import EventType, ProductView
    >>> is_outcome_boundary(Event("e", EventType.PAGE_VIEW, 0, PageView("CHECKOUT"), "u"))
    True
    >>> is_outcome_boundary(Event("e", EventType.PRODUCT_VIEW, 0, ProductView("i"), "u"))
    False
    """
    p = event.payload
    return isinstance(p, Purchase) or (isinstance(p, PageView) and p.page_type in _OUTCOME_PAGES)


def _num(value: FeatureValue) -> float:
    if value is None or isinstance(value, str):
        return 0.0
    return float(value)


#: The model's input names (:func:`feature_vector`), in order.
INPUTS: tuple[str, ...] = (
    *COUNT_FEATURES,
    *MONEY_FEATURES,
    "session_minutes",
    *RATIO_FEATURES,
    *(n for name in OPTIONAL_FEATURES for n in (f"{name}_known", name)),
    *(f"{name}={level}" for name, levels in CATEGORICAL.items() for level in levels),
    "has_cart",
    "fresh_cart",
)
_CART_LINES = INPUTS.index("cart_lines")
_SESSION_CARTS = INPUTS.index("session_add_to_carts")


def feature_vector(features: Mapping[str, FeatureValue]) -> dict[str, float]:
    """The model's input from profile features: log1p counts, minutes, one-hots, indicators.

    Missing names count as 0 (a fresh user). The names are :data:`INPUTS`, in order
    (:func:`inputs` gives the values alone).

    >>> v = feature_vector({"cart_lines": 1, "session_duration_ms": 120_000,
    ...                     "device_top": "MOBILE"})
    >>> round(v["cart_lines"], 3), v["session_minutes"], v["device_top=MOBILE"], v["has_cart"]
    (0.693, 2.0, 1.0, 1.0)
    """
    return dict(zip(INPUTS, inputs(features), strict=True))


def inputs(features: Mapping[str, FeatureValue]) -> list[float]:
    """:func:`feature_vector`'s values in the order of :data:`INPUTS`, each feature read
    once (a :class:`~attune.operators.profiles.FeatureView` computes it on every read;
    this runs once per batch of every user).

    >>> dict(zip(INPUTS, inputs({"cart_lines": 2}), strict=True)) == feature_vector(
    ...     {"cart_lines": 2})
    True
    """
    get = features.get
    log1p = math.log1p
    x: list[float] = [log1p(max(0.0, _num(get(name)))) for name in COUNT_FEATURES]
    for name in MONEY_FEATURES:
        x.append(log1p(max(0.0, _num(get(name))) / 100.0))
    x.append(max(0.0, _num(get("session_duration_ms"))) / 60_000.0)
    for name in RATIO_FEATURES:
        x.append(_num(get(name)))
    for name in OPTIONAL_FEATURES:
        value = get(name)
        x.append(0.0 if value is None else 1.0)
        x.append(log1p(max(0.0, _num(value))))
    for name, levels in CATEGORICAL.items():
        value = get(name)
        for level in levels:
            x.append(1.0 if value == level else 0.0)
    # cart_lines and session_add_to_carts are among the counts: their log1p is > 0 iff
    # the number is, so the flags need no second read.
    has_cart = x[_CART_LINES] > 0
    x.append(1.0 if has_cart else 0.0)
    # Intent shown in this session on top of a cart (a linear model cannot make this product).
    x.append(1.0 if has_cart and x[_SESSION_CARTS] > 0 else 0.0)
    return x


def tier(score: float) -> str:
    """``high`` (>= HIGH), ``medium`` (>= MEDIUM) or ``low``."""
    return "high" if score >= HIGH else "medium" if score >= MEDIUM else "low"


def _sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


@dataclass(slots=True)
class PropensityModel:
    """Online propensity with progressive validation and drift reaction. Pickles.

    One instance learns from every session end (one message per session, to one
    learner key, like the persona learner) and publishes :meth:`publish` (JSON
    parameters and :meth:`metrics`) for the per-user path's
    :class:`PropensityScorer`. ``means``, ``vars`` (population variances) and
    ``weights`` are in the order of :data:`INPUTS`; ``pending`` holds the inputs
    scored but not yet learnt (fewer than ``mini_batch``).
    """

    lr: float = 0.005
    window: int = METRIC_WINDOW
    buffer_size: int = BUFFER
    drift_delta: float = 0.002
    seed: int = 0
    l2: float = 1e-4
    intercept_lr: float = 0.01  # River's LogisticRegression default
    mini_batch: int = MINI_BATCH
    count: int = 0  # examples the scaler has seen
    means: list[float] = field(default_factory=lambda: [0.0] * len(INPUTS))
    vars: list[float] = field(default_factory=lambda: [0.0] * len(INPUTS))
    weights: list[float] = field(default_factory=lambda: [0.0] * len(INPUTS))
    intercept: float = 0.0
    pending: list[tuple[list[float], bool]] = field(default_factory=list)
    detector: drift.ADWIN = field(init=False)
    recent: deque[tuple[float, float]] = field(init=False)  # (label, score) window
    buffer: deque[tuple[list[float], bool]] = field(init=False)
    n: int = 0
    positives: int = 0
    loss_sum: float = 0.0
    drifts: int = 0
    last_drift_at: int | None = None
    version: int = 0
    #: ``(position in INPUTS, weight, mean, std)`` of the inputs with a spread: what
    #: :meth:`score` sums (as :class:`PropensityScorer` does), rebuilt at each step.
    terms: list[tuple[int, float, float, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.mini_batch < 1:
            raise ValueError(f"propensity mini-batch must be >= 1, got {self.mini_batch}")
        self.detector = drift.ADWIN(delta=self.drift_delta)  # type: ignore[no-untyped-call]
        self.recent = deque(maxlen=self.window)
        self.buffer = deque(maxlen=self.buffer_size)

    def __setstate__(self, state: tuple[Any, dict[str, Any]] | dict[str, Any]) -> None:
        """Also reads the state of a model pickled before session 10 (a River pipeline
        in ``model``, inputs as dicts): its scaler and weights become the lists."""
        slots = state[1] if isinstance(state, tuple) else state
        pipeline = slots.pop("model", None)
        for name, value in slots.items():
            setattr(self, name, value)
        if pipeline is not None:
            self._adopt(pipeline)

    def _adopt(self, pipeline: Any) -> None:
        scaler, logreg = pipeline.steps.values()
        self.count = max((int(c) for c in scaler.counts.values()), default=0)
        self.means = [float(scaler.means.get(name, 0.0)) for name in INPUTS]
        self.vars = [float(scaler.vars.get(name, 0.0)) for name in INPUTS]
        weights = logreg.weights
        self.weights = [float(weights.get(name, 0.0)) for name in INPUTS]
        self.intercept = float(logreg.intercept)
        for name, default in (("l2", 1e-4), ("intercept_lr", 0.01), ("mini_batch", MINI_BATCH)):
            if not hasattr(self, name):
                setattr(self, name, default)
        self.pending = []
        self.buffer = deque(((_as_inputs(x), y) for x, y in self.buffer), maxlen=self.buffer_size)
        self._terms()

    def score(self, features: Mapping[str, FeatureValue]) -> float:
        """P(this session ends in a purchase), from profile features."""
        return self._score(inputs(features))

    def _score(self, x: list[float]) -> float:
        z = self.intercept
        for i, w, m, s in self.terms:
            z += w * (x[i] - m) / s
        return _sigmoid(z)

    def _terms(self) -> None:
        self.terms = [
            (i, w, m, v**0.5)
            for i, (w, m, v) in enumerate(zip(self.weights, self.means, self.vars, strict=True))
            if v > 0
        ]

    def learn(self, features: Mapping[str, FeatureValue], purchased: bool) -> float:
        """Score (before learning), validate, check drift, learn; returns the pre-learning score."""
        x = inputs(features)
        p = self._score(x)
        y = 1.0 if purchased else 0.0
        self.recent.append((y, p))
        self.n += 1
        self.positives += int(purchased)
        q = min(max(p, 1e-15), 1 - 1e-15)
        loss = -(y * math.log(q) + (1 - y) * math.log(1 - q))
        self.loss_sum += loss
        self.buffer.append((x, purchased))
        before = self.detector.estimation
        self.detector.update(loss)  # type: ignore[no-untyped-call]
        worse = self.detector.estimation > before  # ADWIN also flags improvements: keep those
        if self.detector.drift_detected and worse and self.n > self.window:
            self._warm_retrain(int(self.detector.width))
        else:
            self.pending.append((x, purchased))
            if len(self.pending) >= self.mini_batch:
                self._step(self.pending)
                self.pending = []
        self.version += 1
        return p

    def _step(self, batch: list[tuple[list[float], bool]]) -> None:
        """Learn ``batch`` at once: the scaler takes each example in turn (River's running
        mean and variance, every input at once: a constant input keeps a variance of
        exactly 0, which a batch formula would not), then one SGD step on the sum of the
        batch's log-loss gradients (and ``l2`` once per example) at the scaled inputs."""
        x = np.array([row for row, _ in batch], np.float64)
        y = np.array([1.0 if label else 0.0 for _, label in batch])
        n = self.count
        mean, var = np.array(self.means), np.array(self.vars)
        for row in x:
            n += 1
            old = row - mean
            mean += old / n
            var += (old * (row - mean) - var) / n
        k = len(batch)
        std = np.sqrt(var)
        scaled = np.divide(x - mean, std, out=np.zeros_like(x), where=std > 0)
        w = np.array(self.weights)
        z = scaled @ w + self.intercept
        g = 1.0 / (1.0 + np.exp(-np.clip(z, -500.0, 500.0))) - y  # d(log loss)/dz
        w -= self.lr * (scaled.T @ g + (self.l2 * k) * w)
        self.intercept -= self.intercept_lr * float(g.sum())
        self.count = n
        self.means, self.vars, self.weights = mean.tolist(), var.tolist(), w.tolist()
        self._terms()

    def _warm_retrain(self, width: int) -> None:
        self.drifts += 1
        self.last_drift_at = self.n
        self.count, self.intercept, self.pending = 0, 0.0, []
        self.means = [0.0] * len(INPUTS)
        self.vars = [0.0] * len(INPUTS)
        self.weights = [0.0] * len(INPUTS)
        keep = min(max(width, 1), len(self.buffer))
        recent = list(self.buffer)[-keep:]
        for start in range(0, len(recent), self.mini_batch):
            self._step(recent[start : start + self.mini_batch])
        self._terms()

    def publish(self, metrics: dict[str, Any] | None = None) -> dict[str, Any]:
        """The parameters the per-user path scores with (JSON for ``attune:model:propensity``).

        ``{"version", "mean": {feature: m}, "std": {feature: s}, "weights": {feature: w},
        "intercept", "metrics"}``: a scaled logistic regression, read back by
        :class:`PropensityScorer` (no pickle crosses Redis). ``metrics``: :meth:`metrics`
        if the caller has just computed them (a window's ROC AUC is not free). Before the
        first step the lists are empty (River's were: nothing seen).
        """
        seen = self.count > 0
        return {
            "version": self.version,
            "mean": dict(zip(INPUTS, self.means, strict=True)) if seen else {},
            "std": {k: v**0.5 for k, v in zip(INPUTS, self.vars, strict=True)} if seen else {},
            "weights": dict(zip(INPUTS, self.weights, strict=True)) if seen else {},
            "intercept": self.intercept,
            "metrics": self.metrics() if metrics is None else metrics,
        }

    def metrics(self) -> dict[str, Any]:
        """Rolling (last ``window`` sessions) ROC AUC and log loss, counts and drift state."""
        labels = [y for y, _ in self.recent]
        scores = [p for _, p in self.recent]
        return {
            "sessions": self.n,
            "positives": self.positives,
            "window": len(self.recent),
            "auc": roc_auc(labels, scores),
            "log_loss": log_loss(labels, scores),
            "log_loss_lifetime": self.loss_sum / self.n if self.n else None,
            "drifts": self.drifts,
            "last_drift_at_session": self.last_drift_at,
            "version": self.version,
        }


def _as_inputs(x: Mapping[str, float] | list[float]) -> list[float]:
    """A buffered input of a pre-session-10 model (a dict by input name) as a list."""
    if isinstance(x, list):
        return x
    return [float(x.get(name, 0.0)) for name in INPUTS]


@dataclass(frozen=True, slots=True)
class PropensityScorer:
    """Scores with published parameters (:meth:`PropensityModel.publish`): the per-user side.

    >>> m = PropensityModel()
    >>> for i in range(50):
    ...     _ = m.learn({"cart_lines": i % 2}, bool(i % 2))
    >>> s = PropensityScorer.from_params(m.publish())
    >>> abs(s.score({"cart_lines": 1}) - m.score({"cart_lines": 1})) < 1e-9
    True
    """

    version: int
    mean: dict[str, float]
    std: dict[str, float]
    weights: dict[str, float]
    intercept: float
    #: ``(position in INPUTS, weight, mean, std)`` for the inputs with a spread (the
    #: others add nothing), in the order of :data:`INPUTS`: one tuple per input instead
    #: of three lookups per score, no dict of inputs.
    terms: tuple[tuple[int, float, float, float], ...] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        terms = tuple(
            (i, self.weights.get(name, 0.0), self.mean.get(name, 0.0), self.std[name])
            for i, name in enumerate(INPUTS)
            if self.std.get(name)
        )
        object.__setattr__(self, "terms", terms)

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> PropensityScorer:
        try:
            return cls(
                int(params["version"]),
                {k: float(v) for k, v in params["mean"].items()},
                {k: float(v) for k, v in params["std"].items()},
                {k: float(v) for k, v in params["weights"].items()},
                float(params["intercept"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"not propensity parameters: {exc!r}") from None

    def score(self, features: Mapping[str, FeatureValue]) -> float:
        """P(purchase): the scaled inputs' weighted sum, added in the order of
        :data:`INPUTS` (the model's own order), through the logistic function."""
        z = self.intercept
        x = inputs(features)
        for i, w, m, s in self.terms:
            z += w * (x[i] - m) / s
        if z >= 0:
            return 1.0 / (1.0 + math.exp(-z))
        e = math.exp(z)
        return e / (1.0 + e)
