"""Online clustering of users into behavioural personas, with readable summaries.

Stage 6 of the flow, next to the rule segments (:mod:`attune.operators.segments`).
The scaling rule (docs/architecture.md) forbids funnelling every event through
one key, so the work is split in two:

1. The per-user state emits a feature :func:`vector` only at a session boundary
   (a session ends, or the next one starts): one vector per session, not per event.
2. ONE learner, :class:`ClusterModel`, learns from those vectors in mini-batches
   (River ``StandardScaler`` then River ``KMeans``) and publishes its parameters,
   a :class:`ClusterParams`, e.g. to Redis as JSON every publish interval.
3. The per-user path reads the latest published parameters and assigns a user to
   the nearest centroid with :meth:`ClusterParams.assign`, a few microseconds of
   plain Python. Assignments are at most one publish interval stale.

Three spaces are involved. *Original units* are the features as the state
computes them (counts, minor currency units, shares). The *vector* applies
``log1p`` to the heavy-tailed counts and money (:data:`LOG1P_FEATURES`) so that
one big spender does not stretch the whole scale. The *scaled* space
standardises each vector component with the running mean and standard deviation;
the k-means centroids live there, so a centroid's coordinates are z-scores.

>>> import random
>>> rng = random.Random(1)
>>> def user(views, orders, revenue):
...     return vector({"product_views_7d": views * rng.uniform(0.8, 1.2), "sessions": 3,
...                    "purchases_30d": orders, "revenue_30d_minor": revenue})
>>> data = [user(100, 0, 0) if i % 2 else user(5, 4, 80_000) for i in range(400)]
>>> model = ClusterModel(k=2, seed=7)
>>> model.learn_many(data)
>>> params = model.params()
>>> params.ready, params.assign(user(120, 0, 0)) != params.assign(user(4, 5, 90_000))
(True, True)
>>> for persona in sorted(params.personas, key=lambda p: p.label):
...     print(persona.size, persona.label)
200 high purchases_30d, high revenue_30d_minor, low product_views_7d
200 low purchases_30d, low revenue_30d_minor, high product_views_7d
"""

from __future__ import annotations

import math
import pickle
import random
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from operator import mul
from typing import Any, Final, Protocol

import orjson
from bytewax.operators import StatefulBatchLogic
from river import cluster, preprocessing

from attune.operators.events import MAX_EVENT_TIME_MS
from attune.operators.features import FEATURES, Features
from attune.operators.segments import cluster_segment
from attune.operators.stream_clock import replaying, settled_count, wait_in_order

__all__ = [
    "CLUSTER_FEATURES",
    "LOG1P_FEATURES",
    "ClusterLearnerLogic",
    "ClusterModel",
    "ClusterParams",
    "ClusterVector",
    "LocalBoard",
    "ParamsBoard",
    "Persona",
    "PublishParams",
    "RedisBoard",
    "original_units",
    "vector",
]

#: The behavioural features clustered, in vector order (names from operators/features.py).
CLUSTER_FEATURES: Final[tuple[str, ...]] = (
    "product_views_7d",
    "add_to_carts_7d",
    "purchases_30d",
    "revenue_30d_minor",
    "avg_order_value_minor",
    "premium_view_share_7d",
    "long_dwells",
    "sessions",
)
#: Heavy-tailed counts and money, clustered as ``log1p(x)``; the others (shares in
#: [0, 1]) as they are.
LOG1P_FEATURES: Final[frozenset[str]] = frozenset(CLUSTER_FEATURES) - {"premium_view_share_7d"}
#: Persona labels name only features whose centroid is at least this many standard
#: deviations from the mean.
LABEL_MIN_Z: Final = 0.5
#: Features named in a persona's ``distinguishing`` list.
N_DISTINGUISHING: Final = 3

_LOG: Final = tuple(name in LOG1P_FEATURES for name in CLUSTER_FEATURES)
_DIM: Final = len(CLUSTER_FEATURES)

if not set(CLUSTER_FEATURES) <= FEATURES.keys():  # pragma: no cover - a contract check
    raise ImportError(
        f"CLUSTER_FEATURES not in FEATURES: {set(CLUSTER_FEATURES) - FEATURES.keys()}"
    )


def vector(features: Features) -> tuple[float, ...]:
    """A user's features as the vector clustered: :data:`CLUSTER_FEATURES` in order.

    ``None`` or a missing feature counts as 0 (``avg_order_value_minor`` of a user
    with no order). Counts and money are ``log1p``-transformed (:data:`LOG1P_FEATURES`).
    The state never produces negative or non-finite values; should one appear it is
    clamped to 0, so that one bad vector cannot poison the shared model.

    >>> vector({"product_views_7d": 9, "premium_view_share_7d": 0.25})
    (2.302585092994046, 0.0, 0.0, 0.0, 0.0, 0.25, 0.0, 0.0)
    """
    out: list[float] = []
    get, log1p, inf = features.get, math.log1p, math.inf
    for name, log in _NAMES_LOG:
        raw = get(name)
        x = float(raw) if isinstance(raw, _NUMBER) else 0.0
        if not 0.0 <= x < inf:
            x = 0.0
        out.append(log1p(x) if log else x)
    return tuple(out)


_NAMES_LOG: Final = tuple(zip(CLUSTER_FEATURES, _LOG, strict=True))
_NUMBER: Final = (int, float)  # isinstance(raw, int | float), without a union per call


def original_units(vec: Sequence[float]) -> dict[str, float]:
    """A vector back in the features' original units (``expm1`` undoes ``log1p``).

    >>> round(original_units(vector({"sessions": 4, "premium_view_share_7d": 0.5}))["sessions"], 9)
    4.0
    """
    return {
        name: (max(0.0, math.expm1(x)) if log else x)
        for name, log, x in zip(CLUSTER_FEATURES, _LOG, vec, strict=True)
    }


@dataclass(frozen=True, slots=True)
class Persona:
    """A readable summary of one cluster.

    Attributes
    ----------
    cluster
        The cluster index, ``0 .. k-1``.
    size
        How many of the vectors in the model's current window (the last ``window``
        vectors learned) were assigned to this cluster when they were learned.
        0 means no recent user looks like this centroid.
    centroid
        The centroid in original units (``log1p`` undone), by feature name.
    distinguishing
        The :data:`N_DISTINGUISHING` features whose centroid z-score deviates most from
        0, with the signed z-score, largest first.
    label
        e.g. ``"high purchases_30d, high revenue_30d_minor, low sessions"``: the
        distinguishing features at least :data:`LABEL_MIN_Z` from the mean, or
        ``"average on every feature"``.
    """

    cluster: int
    size: int
    centroid: dict[str, float]
    distinguishing: list[tuple[str, float]]
    label: str


def _sq_dist(a: Sequence[float], b: Sequence[float]) -> float:
    return sum((x - y) * (x - y) for x, y in zip(a, b, strict=True))


def _persona(cluster_id: int, size: int, scaled: Sequence[float], orig: Sequence[float]) -> Persona:
    ranked = sorted(zip(CLUSTER_FEATURES, scaled, strict=True), key=lambda item: -abs(item[1]))[
        :N_DISTINGUISHING
    ]
    terms = [f"{'high' if z > 0 else 'low'} {name}" for name, z in ranked if abs(z) >= LABEL_MIN_Z]
    return Persona(
        cluster=cluster_id,
        size=size,
        centroid=dict(zip(CLUSTER_FEATURES, orig, strict=True)),
        distinguishing=ranked,
        label=", ".join(terms) or "average on every feature",
    )


@dataclass(frozen=True, slots=True)
class ClusterParams:
    """What the learner publishes and the per-user path reads.

    Attributes
    ----------
    version
        Mini-batches learned so far; grows with every :meth:`ClusterModel.learn_many`
        that learned something, so readers can tell new parameters from old.
    ready
        ``False`` until the model has learned ``min_vectors`` vectors; the flow then
        skips assignment (and :meth:`assign` raises).
    n_learned
        Vectors learned so far.
    features
        The vector's feature names (:data:`CLUSTER_FEATURES` when published).
    means, stds
        The scaler's running mean and standard deviation of each vector component
        (``log1p`` units for :data:`LOG1P_FEATURES`). A zero std means the feature has
        been constant: it scales to 0 and plays no part in assignment.
    centroids_scaled
        One centroid per cluster in the scaled space (z-scores).
    centroids
        The same centroids in original units.
    personas
        One :class:`Persona` per cluster.
    """

    version: int
    ready: bool
    n_learned: int
    features: tuple[str, ...] = CLUSTER_FEATURES
    means: tuple[float, ...] = ()
    stds: tuple[float, ...] = ()
    centroids_scaled: tuple[tuple[float, ...], ...] = ()
    centroids: tuple[tuple[float, ...], ...] = ()
    personas: tuple[Persona, ...] = ()
    # Nearest centroid as an argmax of linear scores, precomputed (see __post_init__).
    _linear: tuple[tuple[tuple[float, ...], float], ...] = field(
        init=False, repr=False, compare=False, default=()
    )

    def __post_init__(self) -> None:
        # |z - c|^2 = |z|^2 - 2 z.c + |c|^2 with z = (x - m) / s, so the nearest centroid
        # maximises a.x - b with a = c / s and b = m.a + |c|^2 / 2: one dot product per
        # cluster and no per-call scaling. A zero std gives a = 0, as River's scaler maps
        # such a feature to 0.
        inv = [1.0 / s if s > 0 else 0.0 for s in self.stds]
        linear = []
        for c in self.centroids_scaled:
            a = tuple(ci * si for ci, si in zip(c, inv, strict=True))
            b = sum(map(mul, self.means, a)) + 0.5 * sum(ci * ci for ci in c)
            linear.append((a, b))
        object.__setattr__(self, "_linear", tuple(linear))

    @property
    def k(self) -> int:
        """Number of clusters (0 when not ready)."""
        return len(self.centroids_scaled)

    def assign(self, vec: Sequence[float]) -> int:
        """The cluster whose centroid is nearest to ``vec`` in the scaled space.

        Parameters
        ----------
        vec
            A :func:`vector` (in :data:`CLUSTER_FEATURES` order).

        Returns
        -------
        int
            The cluster index; ties go to the lowest index, as in River's ``KMeans``.

        Raises
        ------
        ValueError
            The parameters are not ready, or ``vec`` has the wrong length.

        Examples
        --------
        >>> ClusterParams(version=0, ready=False, n_learned=0).assign((0.0,) * 8)
        Traceback (most recent call last):
        ...
        ValueError: cluster parameters are not ready (0 vectors learned); skip assignment
        """
        if len(vec) != len(self.features) or not self.ready:
            if not self.ready:
                raise ValueError(
                    f"cluster parameters are not ready ({self.n_learned} vectors learned); "
                    "skip assignment"
                )
            raise ValueError(f"vector has {len(vec)} components, expected {len(self.features)}")
        best, best_score = 0, -math.inf
        for i, (a, b) in enumerate(self._linear):
            score = sum(map(mul, a, vec)) - b
            if score > best_score:
                best, best_score = i, score
        return best

    def descriptions(self) -> dict[str, str]:
        """Persona segment name -> label, for :func:`attune.operators.segments.membership_changes`.

        >>> ClusterParams(version=0, ready=False, n_learned=0).descriptions()
        {}
        """
        return {cluster_segment(p.cluster): p.label for p in self.personas}

    def to_json(self) -> bytes:
        """The parameters as JSON (orjson), as published to Redis.

        >>> p = ClusterParams(version=3, ready=False, n_learned=12)
        >>> ClusterParams.from_json(p.to_json()) == p
        True
        """
        return orjson.dumps(
            {
                "version": self.version,
                "ready": self.ready,
                "n_learned": self.n_learned,
                "features": self.features,
                "log1p": [name in LOG1P_FEATURES for name in self.features],
                "means": self.means,
                "stds": self.stds,
                "centroids_scaled": self.centroids_scaled,
                "centroids": self.centroids,
                "personas": [
                    {
                        "cluster": p.cluster,
                        "size": p.size,
                        "centroid": p.centroid,
                        "distinguishing": p.distinguishing,
                        "label": p.label,
                    }
                    for p in self.personas
                ],
            }
        )

    @classmethod
    def from_json(cls, data: bytes | str) -> ClusterParams:
        """Parameters from :meth:`to_json`'s output.

        Raises
        ------
        ValueError
            Not valid JSON, a field is missing, or the parameters were published for
            other features than this code's :data:`CLUSTER_FEATURES` (a deploy that
            changed them: keep the old assignments until the learner republishes).
        """
        try:
            raw: dict[str, Any] = orjson.loads(data)
            features = tuple(raw["features"])
            if features != CLUSTER_FEATURES:
                raise ValueError(
                    f"cluster parameters are for features {features}, this code clusters "
                    f"{CLUSTER_FEATURES}; wait for the learner to publish new ones"
                )
            return cls(
                version=int(raw["version"]),
                ready=bool(raw["ready"]),
                n_learned=int(raw["n_learned"]),
                features=features,
                means=tuple(float(x) for x in raw["means"]),
                stds=tuple(float(x) for x in raw["stds"]),
                centroids_scaled=tuple(tuple(float(x) for x in c) for c in raw["centroids_scaled"]),
                centroids=tuple(tuple(float(x) for x in c) for c in raw["centroids"]),
                personas=tuple(
                    Persona(
                        cluster=int(p["cluster"]),
                        size=int(p["size"]),
                        centroid={str(k): float(v) for k, v in p["centroid"].items()},
                        distinguishing=[(str(n), float(z)) for n, z in p["distinguishing"]],
                        label=str(p["label"]),
                    )
                    for p in raw["personas"]
                ),
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"invalid cluster parameters JSON: {exc!r}") from exc


class ClusterModel:
    """The one online learner of behavioural personas: River scaler + k-means.

    Learns from session-boundary :func:`vector` s in mini-batches and publishes
    :class:`ClusterParams`. Each mini-batch first updates River's
    ``preprocessing.StandardScaler`` (running mean and variance over the whole stream),
    then feeds every scaled vector to River's ``cluster.KMeans``, which moves the
    nearest centre ``halflife`` of the way towards it: an exponential moving average,
    so personas follow slow drift in behaviour. About 40 us per vector, so one learner
    keeps up with tens of thousands of sessions a second.

    Deterministic for a seed and input order: vector components are keyed by index
    (ints hash the same in every process, unlike str under ``PYTHONHASHSEED``), and
    the only randomness is KMeans's seeded initial centres. Pickles (Bytewax snapshots
    it) with its random state, so a restored model continues exactly.

    Parameters
    ----------
    k
        Number of clusters.
    seed
        Seed of the initial centres.
    halflife
        KMeans step towards each vector, in (0, 1]: smaller is smoother and slower to
        adapt.
    sigma
        Standard deviation of the initial centres in the scaled space.
    window
        Number of recent vectors whose assignments give the personas' sizes.
    min_vectors
        Vectors to learn before the parameters are ``ready``.

    Examples
    --------
    >>> model = ClusterModel(k=3)
    >>> model.params().ready
    False
    >>> model.learn_many([vector({"sessions": n % 5, "product_views_7d": n}) for n in range(150)])
    >>> p = model.params()
    >>> p.ready, p.version, p.n_learned, sum(persona.size for persona in p.personas)
    (True, 1, 150, 150)
    """

    def __init__(
        self,
        k: int = 6,
        seed: int = 42,
        *,
        halflife: float = 0.05,
        sigma: float = 1.0,
        window: int = 10_000,
        min_vectors: int = 100,
    ) -> None:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if not 0.0 < halflife <= 1.0:
            raise ValueError(f"halflife must be in (0, 1], got {halflife}")
        if window < 1 or min_vectors < 1:
            raise ValueError(f"window and min_vectors must be >= 1, got {window}, {min_vectors}")
        self.k = k
        self.seed = seed
        self.halflife = halflife
        self.sigma = sigma
        self.window = window
        self.min_vectors = min_vectors
        # River is untyped: Any keeps mypy-strict from flagging every call.
        self.scaler: Any = preprocessing.StandardScaler()
        self.kmeans: Any = cluster.KMeans(
            n_clusters=k, halflife=halflife, mu=0.0, sigma=sigma, p=2, seed=seed
        )
        self.n_learned = 0
        self.version = 0
        self.seeded = 0  # centres seeded from data (k-means++), the rest River's random ones
        self._recent: deque[int] = deque(maxlen=window)
        self._sizes = [0] * k

    def learn_many(self, vectors: Sequence[tuple[float, ...]]) -> None:
        """Learn a mini-batch of :func:`vector` s (the scaler first, then k-means).

        Raises
        ------
        ValueError
            A vector has the wrong length or a non-finite component (nothing is learned).
        """
        rows = [self._row(v) for v in vectors]
        if not rows:
            return
        for x in rows:
            self.scaler.learn_one(x)
        scaled = [self.scaler.transform_one(x) for x in rows]
        if self.seeded < self.k:
            self._seed_centres(scaled)
        recent, sizes = self._recent, self._sizes
        for z in scaled:
            c: int = self.kmeans.learn_predict_one(z)
            if len(recent) == self.window:
                sizes[recent[0]] -= 1
            recent.append(c)
            sizes[c] += 1
        self.n_learned += len(rows)
        self.version += 1

    def predict_one(self, vec: tuple[float, ...]) -> int:
        """River's own nearest centre for ``vec`` (the learner's view; the flow uses
        :meth:`ClusterParams.assign`)."""
        if self.n_learned == 0:
            raise ValueError("the model has learned nothing yet")
        c: int = self.kmeans.predict_one(self.scaler.transform_one(self._row(vec)))
        return c

    def params(self) -> ClusterParams:
        """The current parameters, to publish; read-only (the model does not change).

        Returns
        -------
        ClusterParams
            ``ready`` once ``min_vectors`` vectors have been learned.
        """
        if self.n_learned < self.min_vectors:
            return ClusterParams(version=self.version, ready=False, n_learned=self.n_learned)
        means = tuple(float(self.scaler.means.get(j, 0.0)) for j in range(_DIM))
        stds = tuple(math.sqrt(max(0.0, float(self.scaler.vars.get(j, 0.0)))) for j in range(_DIM))
        scaled: list[tuple[float, ...]] = []
        orig: list[tuple[float, ...]] = []
        personas: list[Persona] = []
        for i in range(self.k):
            centre: Mapping[int, float] = self.kmeans.centers[i]
            c = tuple(float(centre.get(j, 0.0)) for j in range(_DIM))
            o = tuple(
                original_units([m + s * z for m, s, z in zip(means, stds, c, strict=True)]).values()
            )
            scaled.append(c)
            orig.append(o)
            personas.append(_persona(i, self._sizes[i], c, o))
        return ClusterParams(
            version=self.version,
            ready=True,
            n_learned=self.n_learned,
            features=CLUSTER_FEATURES,
            means=means,
            stds=stds,
            centroids_scaled=tuple(scaled),
            centroids=tuple(orig),
            personas=tuple(personas),
        )

    def _seed_centres(self, scaled: Sequence[dict[int, float]]) -> None:
        """Greedy k-means++ over this batch for the centres not seeded yet.

        River's KMeans draws its initial centres from N(mu, sigma). Where several
        features are constant or skewed, a random centre can be farther from every
        vector than another centre is, never win one and stay dead. Seeding the centres
        on data (greedy k-means++: D^2 sampling with a few trials per centre, as
        scikit-learn seeds its KMeans) avoids that; the draw is seeded, so the model
        stays deterministic. A first batch with fewer distinct vectors than ``k`` leaves
        the remaining centres to be seeded from the next batch.
        """
        rng = random.Random(f"{self.seed}/{self.n_learned}")
        centres = self.kmeans.centers
        chosen = [[centres[i][j] for j in range(_DIM)] for i in range(self.seeded)]
        points = [[z[j] for j in range(_DIM)] for z in scaled]
        trials = 2 + int(math.log(self.k))
        nearest = [min((_sq_dist(p, c) for c in chosen), default=math.inf) for p in points]
        while self.seeded < self.k:
            if not chosen:
                pick = points[rng.randrange(len(points))]
            else:
                if sum(nearest) <= 0.0:
                    return  # every vector sits on a centre: seed the rest from later batches
                # Greedy k-means++: of a few D^2-sampled candidates, keep the one that
                # lowers the total squared distance most.
                best_cost, pick = math.inf, points[0]
                for candidate in rng.choices(points, weights=nearest, k=trials):
                    cost = sum(
                        min(d, _sq_dist(p, candidate)) for d, p in zip(nearest, points, strict=True)
                    )
                    if cost < best_cost:
                        best_cost, pick = cost, candidate
            nearest = [min(d, _sq_dist(p, pick)) for d, p in zip(nearest, points, strict=True)]
            # Update in place: the centre stays River's defaultdict.
            centres[self.seeded].update(enumerate(pick))
            chosen.append(pick)
            self.seeded += 1

    @staticmethod
    def _row(vec: Sequence[float]) -> dict[int, float]:
        if len(vec) != _DIM:
            raise ValueError(f"vector has {len(vec)} components, expected {_DIM}: {vec!r}")
        if not all(math.isfinite(x) for x in vec):
            raise ValueError(f"vector has a non-finite component: {vec!r}")
        return {j: float(x) for j, x in enumerate(vec)}

    def __repr__(self) -> str:
        return (
            f"ClusterModel(k={self.k}, seed={self.seed}, halflife={self.halflife}, "
            f"n_learned={self.n_learned}, version={self.version})"
        )


# --- in the flow: vectors to one learner, parameters published, users assigned ----------------


@dataclass(frozen=True, slots=True)
class ClusterVector:
    """A user's behaviour at a session boundary, sent to the one learner; ``closed_ms``:
    the event time of the event that closed the session (the learner's replay order)."""

    user: str
    vector: tuple[float, ...]
    closed_ms: int = MAX_EVENT_TIME_MS

    def order_key(self) -> tuple[int, str]:
        """Where the vector stands in the learner's replay order: (closed, user)."""
        return (self.closed_ms, self.user)


@dataclass(frozen=True, slots=True)
class PublishParams:
    """New cluster parameters (with persona summaries) for Redis and the boards."""

    params: ClusterParams


class ParamsBoard(Protocol):
    """Where the per-user step reads the latest published :class:`ClusterParams`."""

    def get(self) -> ClusterParams | None: ...


class LocalBoard:
    """In-process board, for the embedded default (one process); the learner's sink puts."""

    def __init__(self) -> None:
        self.params: ClusterParams | None = None

    def get(self) -> ClusterParams | None:
        return self.params

    def put(self, params: ClusterParams) -> None:
        self.params = params


class RedisBoard:
    """Reads the parameters the learner published to Redis, at most every ``refresh_s``.

    Every worker process has one; the client is made on first use (never pickled).
    Staleness is bounded by the learner's publish interval plus ``refresh_s``.
    """

    def __init__(self, connect: Callable[[], Any], key: str, refresh_s: float = 2.0) -> None:
        self.connect = connect
        self.key = key
        self.refresh_s = refresh_s
        self._client: Any = None
        self._params: ClusterParams | None = None
        self._checked = 0.0

    def get(self) -> ClusterParams | None:
        now = time.monotonic()
        if now - self._checked >= self.refresh_s:
            self._checked = now
            if self._client is None:
                self._client = self.connect()
            raw = self._client.get(self.key)
            if raw is not None:
                self._params = ClusterParams.from_json(raw)
        return self._params


#: The learner publishes after this many new vectors (and at end of input).
PUBLISH_EVERY = 200
#: Vectors a replay's learner keeps waiting for the stream clock, at most (as
#: :data:`attune.operators.models.MAX_WAITING`; beyond it the oldest are learnt at once).
MAX_WAITING = 20_000


class ClusterLearnerLogic(StatefulBatchLogic[ClusterVector, PublishParams, bytes]):
    """The one learner (a single key): mini-batch learning, periodic publishing.

    It receives one vector per user session, not per event, so it stays far
    below the per-event rate (design.md's scaling rule).

    Tailing live (or without a ``clock``) it learns each batch of vectors as one
    mini-batch. In a replay (a ``clock``, the stream clock, that is not live) it keeps
    the vectors until the clock's settled time has passed their closing time (every
    vector closed before it has then arrived), and learns them in
    :meth:`ClusterVector.order_key` order in mini-batches of :data:`PUBLISH_EVERY`,
    publishing after each: the versions are the same in every batching of a replay.
    At the end of input the rest, in order, as one mini-batch. When the clock turns
    live, what waits is learnt first.
    """

    def __init__(self, resume: bytes | None, k: int, seed: int, clock: Any = None) -> None:
        state = pickle.loads(resume) if resume else ClusterModel(k=k, seed=seed)
        #: Vectors waiting for the clock in a replay, in order (at most MAX_WAITING).
        self.waiting: list[ClusterVector] = []
        if isinstance(state, tuple):  # (model, waiting)
            state, self.waiting = state
        self.model: ClusterModel = state
        self.unpublished = 0
        self.clock = clock

    def _replaying(self) -> bool:
        """In a replay (:func:`~attune.operators.stream_clock.replaying`)."""
        return replaying(self.clock)

    def on_batch(self, values: list[ClusterVector]) -> tuple[Iterable[PublishParams], bool]:
        if self._replaying():
            wait_in_order(self.waiting, values)
            return self._learn_through(self.clock.now_ms()), StatefulBatchLogic.RETAIN
        out = self._learn_through(MAX_EVENT_TIME_MS, final=True) if self.waiting else []
        self.model.learn_many([v.vector for v in values])
        self.unpublished += len(values)
        if self.unpublished >= PUBLISH_EVERY:
            out += self._publish()
        return out, StatefulBatchLogic.RETAIN

    def _learn_through(self, through_ms: int | None, final: bool = False) -> list[PublishParams]:
        """Learn the waiting vectors closed at or before ``through_ms`` in whole
        mini-batches of :data:`PUBLISH_EVERY` (``final``: the rest too), publishing after
        each; beyond :data:`MAX_WAITING` waiting, the oldest whole mini-batches anyway."""
        if through_ms is None:
            return []
        waiting = self.waiting
        n = settled_count(waiting, through_ms, final)
        if not final:
            n -= n % PUBLISH_EVERY
        over = len(waiting) - MAX_WAITING
        if over > n:  # whole mini-batches of the oldest, until no more than that wait
            n = min(len(waiting), -(-over // PUBLISH_EVERY) * PUBLISH_EVERY)
        out: list[PublishParams] = []
        for at in range(0, n, PUBLISH_EVERY):
            chunk = waiting[at : min(n, at + PUBLISH_EVERY)]
            self.model.learn_many([v.vector for v in chunk])
            self.unpublished += len(chunk)
            out += self._publish()
        del waiting[:n]
        return out

    def on_notify(self) -> tuple[Iterable[PublishParams], bool]:
        if self._replaying():  # a poll of the clock
            return self._learn_through(self.clock.now_ms()), StatefulBatchLogic.RETAIN
        return self._learn_through(MAX_EVENT_TIME_MS, final=True), StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime | None:
        return datetime.now(UTC) + timedelta(seconds=1) if self.waiting else None

    def on_eof(self) -> tuple[Iterable[PublishParams], bool]:
        out = self._learn_through(MAX_EVENT_TIME_MS, final=True) if self.waiting else []
        return out + (self._publish() if self.unpublished else []), StatefulBatchLogic.RETAIN

    def _publish(self) -> list[PublishParams]:
        params = self.model.params()
        if not params.ready:
            return []
        self.unpublished = 0
        return [PublishParams(params)]

    def snapshot(self) -> bytes:
        state = (self.model, self.waiting) if self.waiting else self.model
        return pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)
