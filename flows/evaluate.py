"""``attune evaluate EVENTS.avro``: prequential replay of an event log, Attune against baselines.

Protocol (docs/models.md has the reasoning; every rule applies to every method):

- The file is replayed in its order (emission order for generated files).
  Duplicated event ids are dropped. Catalogue updates (``<events>.items.avro``
  next to the file, or ``--items``) are applied when their ``updated_time``
  is reached; without a catalogue file, items enter the catalogue when first
  seen in an event (category and price from the event).
- Users are keyed by user id, else by anonymous id; an event carrying both
  links them, and the anonymous history moves to the user (if the user had
  none yet).
- **Interactions** are product views, add-to-carts and purchase lines.
  An **evaluation point** is a product view or add-to-cart of an item the user
  has not interacted with before in the replay (a *new* item: re-finding an
  item is what "recently viewed" widgets are for, not recommendations), whose
  item is in the catalogue at that time. A deterministic 1-in-``--sample``
  subset of them (by a CRC32 of the event id) is evaluated; every method is
  asked at the same points.
- At an evaluation point, each method recommends ``k`` items **before** the
  event is learnt from; candidates for every method exclude the items the user
  already interacted with and items out of stock. Then every method learns
  from the event. All methods learn from every event, sampled or not.
- Metrics per method: HR@k, NDCG@k, MRR (cut at k), catalogue coverage (items
  recommended at least once / catalogue size), intra-list diversity (1 - mean
  pairwise cosine of the content vectors of the k items).
- Propensity: every session (30-minute gap) gives one example, its features
  at the decision point (before the first cart/checkout page or purchase),
  scored before learning: ROC AUC and log loss over all sessions, and the
  model's rolling figures.

Methods: ``attune`` (:func:`attune.operators.ranking.rank` on the online models),
``most-popular`` (interaction counts since the start), ``recent-trending``
(time-decayed counts, half-life 12 h), ``covisit`` (co-visitation alone: the
viewed- and bought-together lists of the user's recent items, the same lists
Attune reads, padded with most-popular when shorter than k), ``biased-mf`` and
``funk-mf`` (River's ``reco.BiasedMF`` / ``reco.FunkMF``, 16 factors, learning
each interaction as rating 1 plus one uniformly sampled catalogue item as 0;
they score every item they have learnt, vectorised from their own latent
vectors and biases).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt
import orjson
from river import optim, reco

from attune.operators.clock import DAY_MS
from attune.operators.container import read_container, read_events_file
from attune.operators.content import Catalogue
from attune.operators.covisit import BOUGHT, VIEWED, CovisitIndex, purchase_pairs, session_pairs
from attune.operators.embeddings import Item2Vec
from attune.operators.events import (
    AddToCart,
    DeadLetter,
    Event,
    ItemUpdate,
    ProductView,
    Purchase,
    RemoveFromCart,
    item_from_record,
)
from attune.operators.metrics import RankingTally, intra_list_diversity, log_loss, roc_auc
from attune.operators.profiles import FeatureView
from attune.operators.propensity import FEATURES as PROPENSITY_FEATURES
from attune.operators.propensity import PropensityModel, is_outcome_boundary
from attune.operators.ranking import (
    CART,
    PURCHASE,
    VIEW,
    Filters,
    Interaction,
    Models,
    UserSignals,
    Weights,
    rank,
)
from attune.operators.schemas import ITEM
from attune.operators.sessions import PriceBands
from attune.operators.trending import BUY_W, CART_W, VIEW_W, TrendingBoard
from attune.operators.user_config import ProfileConfig
from attune.operators.user_state import UserState
from attune.operators.user_step import apply

SESSION_GAP_MS = 30 * 60_000
#: Sessions the embedding learner waits for before a training step and a new snapshot.
EMBED_EVERY_SESSIONS = 200
#: Interactions kept per user for the methods (the live path keeps the same cap).
MAX_RECENT = 50
#: Event ids remembered for dedupe.
MAX_SEEN_IDS = 1_000_000

#: Plots leave out days with fewer evaluation points than this (their figures are noise).
MIN_POINTS_PER_PLOTTED_DAY = 30

METHODS = ("attune", "most-popular", "recent-trending", "covisit", "biased-mf", "funk-mf")


class EvaluationError(ValueError):
    """The input cannot be evaluated (missing, not an event file, nothing to evaluate)."""


# --- per-user replay state -------------------------------------------------------------------


@dataclass(slots=True)
class Track:
    """What the replay knows of one user (shared by all methods)."""

    profile: UserState
    recent: deque[Interaction] = field(default_factory=lambda: deque(maxlen=MAX_RECENT))
    interacted: set[str] = field(default_factory=set)
    in_cart: dict[str, int] = field(default_factory=dict)
    purchased: set[str] = field(default_factory=set)
    session_items: list[str] = field(default_factory=list)
    last_ms: int | None = None
    snapshot: dict[str, Any] | None = None
    bought_in_session: bool = False


# --- the methods -----------------------------------------------------------------------------


def _top_k(scores: npt.NDArray[np.float64], mask: npt.NDArray[np.bool_], k: int) -> list[int]:
    n = len(mask)
    padded = (
        scores[:n]
        if len(scores) >= n
        else np.concatenate([scores, np.full(n - len(scores), -np.inf)])
    )
    v = np.where(mask, padded, -np.inf)
    finite = int(np.count_nonzero(np.isfinite(v)))
    if finite == 0:
        return []
    k = min(k, finite)
    idx = np.argpartition(-v, k - 1)[:k]
    return [int(i) for i in idx[np.argsort(-v[idx], kind="stable")]]


@dataclass(slots=True)
class MF:
    """A River MF baseline with implicit feedback and vectorised scoring.

    River keeps latent vectors in dicts; after each ``learn_one`` the two items
    touched are copied into a numpy mirror so that scoring every learnt item
    is one matrix-vector product (the model's own parameters, not a refit).
    """

    model: Any
    biased: bool
    rng: np.random.Generator
    n_factors: int = 16
    mat: npt.NDArray[np.float64] = field(default_factory=lambda: np.zeros((0, 0)))
    bias: npt.NDArray[np.float64] = field(default_factory=lambda: np.zeros(0))
    known: npt.NDArray[np.bool_] = field(default_factory=lambda: np.zeros(0, np.bool_))

    def _fit(self, n: int) -> None:
        if len(self.known) >= n:
            return
        cap = max(n, 2 * len(self.known), 64)
        mat = np.zeros((cap, self.n_factors))
        if len(self.mat):
            mat[: len(self.mat)] = self.mat
        bias = np.zeros(cap)
        bias[: len(self.bias)] = self.bias
        known = np.zeros(cap, np.bool_)
        known[: len(self.known)] = self.known
        self.mat, self.bias, self.known = mat, bias, known

    def learn(self, user: str, row: int, cat: Catalogue) -> None:
        neg = int(self.rng.integers(len(cat)))
        m = self.model
        m.learn_one(user, cat.ids[row], 1.0)
        if neg != row:
            m.learn_one(user, cat.ids[neg], 0.0)
        self._fit(max(row, neg) + 1)
        for r in (row, neg):
            item = cat.ids[r]
            self.mat[r] = m.i_latents[item]
            if self.biased:
                self.bias[r] = m.i_biases[item]
            self.known[r] = True

    def scores(self, user: str, cat: Catalogue) -> npt.NDArray[np.float64]:
        n = len(cat)
        self._fit(n)
        m = self.model
        u = m.u_latents[user] if user in m.u_latents else np.zeros(self.n_factors)
        s = self.mat[:n] @ u + self.bias[:n]
        return np.where(self.known[:n], s, -np.inf)


class Replay:
    """The replay: shared user tracks, every method's models, the tallies."""

    def __init__(self, k: int, sample: int, seed: int, price_bands: PriceBands) -> None:
        self.k = k
        self.sample = sample
        self.cat = Catalogue()
        self.tracks: dict[str, Track] = {}
        self.alias: dict[str, str] = {}
        self.seen_ids: dict[str, None] = {}
        self.profile_cfg = ProfileConfig(price_bands=price_bands)
        # Attune
        self.covisit = CovisitIndex()
        self.trend = TrendingBoard()
        self.item2vec = Item2Vec(seed=seed)
        self.pending_sessions: list[list[str]] = []
        self.models = Models(self.cat, self.covisit, self.trend)
        self.weights = Weights()
        self.propensity = PropensityModel(seed=seed)
        # baselines
        self.popular = np.zeros(0)
        self.recent_trend = TrendingBoard()
        rng = np.random.default_rng(seed)
        self.mfs = {
            "biased-mf": MF(
                reco.BiasedMF(
                    n_factors=16,
                    bias_optimizer=optim.SGD(0.01),
                    latent_optimizer=optim.SGD(0.05),
                    l2_latent=0.001,
                    seed=seed,
                ),
                True,
                rng,
            ),
            "funk-mf": MF(
                reco.FunkMF(n_factors=16, optimizer=optim.SGD(0.05), l2=0.001, seed=seed),
                False,
                rng,
            ),
        }
        # tallies
        self.tallies = {m: RankingTally(k) for m in METHODS}
        self.call_s = dict.fromkeys(METHODS, 0.0)
        self.by_day: dict[str, dict[int, list[float]]] = {m: {} for m in METHODS}
        self.start_ms: int | None = None
        self.events = 0
        self.duplicates = 0
        self.dead_letters = 0
        self.eligible = 0
        self.unknown_targets = 0
        self.sessions_y: list[float] = []
        self.sessions_p: list[float] = []
        self.prop_series: list[tuple[int, float | None, float | None]] = []

    # -- catalogue

    def apply_item(self, item: ItemUpdate) -> None:
        self.cat.update(item)

    def _ensure_item(self, item_id: str, category: str | None, price: int | None) -> int:
        r = self.cat.row(item_id)
        if r is None:
            path = tuple((category or "unknown").split("/"))
            r = self.cat.update(ItemUpdate(item_id, "", path, price or 0, "EUR", True, 0, 0))
        return r

    # -- events

    def _key(self, e: Event) -> str:
        if e.user_id and e.anonymous_id and self.alias.get(e.anonymous_id) != e.user_id:
            self.alias[e.anonymous_id] = e.user_id
            anon = self.tracks.pop(e.anonymous_id, None)
            if anon is not None and e.user_id not in self.tracks:
                anon.profile.user_id = e.user_id
                self.tracks[e.user_id] = anon
        if e.user_id:
            return e.user_id
        a = e.anonymous_id or ""
        return self.alias.get(a, a)

    def event(self, e: Event) -> None:
        if e.event_id in self.seen_ids:
            self.duplicates += 1
            return
        self.seen_ids[e.event_id] = None
        if len(self.seen_ids) > MAX_SEEN_IDS:
            del self.seen_ids[next(iter(self.seen_ids))]
        self.events += 1
        t = e.event_time
        if self.start_ms is None:
            self.start_ms = t
        user = self._key(e)
        tr = self.tracks.get(user)
        if tr is None:
            tr = self.tracks[user] = Track(UserState(user_id=user))
        if tr.last_ms is not None and t - tr.last_ms > SESSION_GAP_MS:
            self._close_session(tr)
        if is_outcome_boundary(e) and tr.snapshot is None:
            tr.snapshot = self._features(tr)
        apply(tr.profile, e, self.profile_cfg)
        tr.last_ms = t if tr.last_ms is None else max(tr.last_ms, t)
        p = e.payload
        if isinstance(p, ProductView | AddToCart):
            self._view_or_add(user, tr, e.event_id, p, t)
        elif isinstance(p, RemoveFromCart):
            left = tr.in_cart.get(p.item_id, 0) - p.quantity
            if left > 0:
                tr.in_cart[p.item_id] = left
            else:
                tr.in_cart.pop(p.item_id, None)
        elif isinstance(p, Purchase):
            self._purchase(user, tr, p, t)

    def _view_or_add(
        self, user: str, tr: Track, event_id: str, p: ProductView | AddToCart, t: int
    ) -> None:
        """A view or add of an item: if the user never touched it before, a target for the
        methods (evaluated on a sample of the events, by event id); then learned from."""
        kind = VIEW if isinstance(p, ProductView) else CART
        price = p.price_minor if isinstance(p, ProductView) else p.unit_price_minor
        known = self.cat.row(p.item_id) is not None
        row = self._ensure_item(p.item_id, p.category, price)
        if p.item_id not in tr.interacted:
            self.eligible += 1
            if not known:
                self.unknown_targets += 1
            elif zlib.crc32(event_id.encode()) % self.sample == 0:
                self._evaluate(user, tr, p.item_id, t)
        self._learn_interaction(user, tr, p.item_id, row, t, kind)
        if isinstance(p, AddToCart):
            tr.in_cart[p.item_id] = tr.in_cart.get(p.item_id, 0) + p.quantity

    def _purchase(self, user: str, tr: Track, p: Purchase, t: int) -> None:
        """A purchase: bought-together pairs and an interaction per line; the cart empties."""
        tr.bought_in_session = True
        items = [line.item_id for line in p.lines]
        self.covisit.learn(purchase_pairs(items), BOUGHT, t)
        for line in p.lines:
            row = self._ensure_item(line.item_id, line.category, line.unit_price_minor)
            self._learn_interaction(user, tr, line.item_id, row, t, PURCHASE, line.quantity)
            tr.purchased.add(line.item_id)
        tr.in_cart.clear()

    def _learn_interaction(  # noqa: PLR0917
        self, user: str, tr: Track, item: str, row: int, t: int, kind: str, qty: int = 1
    ) -> None:
        if kind != PURCHASE:
            self.covisit.learn(session_pairs(tr.session_items, item), VIEWED, t)
            if not tr.session_items or tr.session_items[-1] != item:
                tr.session_items.append(item)
        weight = {VIEW: VIEW_W, CART: CART_W, PURCHASE: BUY_W * qty}[kind]
        self.trend.update(row, t, weight)
        self.recent_trend.update(row, t, 1.0)
        if len(self.popular) <= row:
            grown = np.zeros(max(row + 1, 2 * len(self.popular), 64))
            grown[: len(self.popular)] = self.popular
            self.popular = grown
        self.popular[row] += 1.0
        for mf in self.mfs.values():
            mf.learn(user, row, self.cat)
        tr.recent.append(Interaction(item, t, kind))
        tr.interacted.add(item)

    def _features(self, tr: Track) -> dict[str, Any]:
        view = FeatureView(tr.profile, tr.profile.max_time)
        return {name: view[name] for name in PROPENSITY_FEATURES}

    def _close_session(self, tr: Track) -> None:
        if tr.session_items:
            self.pending_sessions.append(tr.session_items)
            if len(self.pending_sessions) >= EMBED_EVERY_SESSIONS:
                self._train_embeddings(tr.last_ms or 0)
        features = tr.snapshot if tr.snapshot is not None else self._features(tr)
        p = self.propensity.learn(features, tr.bought_in_session)
        self.sessions_y.append(1.0 if tr.bought_in_session else 0.0)
        self.sessions_p.append(p)
        if len(self.sessions_y) % 500 == 0:
            m = self.propensity.metrics()
            self.prop_series.append((len(self.sessions_y), m["auc"], m["log_loss"]))
        tr.session_items = []
        tr.snapshot = None
        tr.bought_in_session = False

    def _train_embeddings(self, now_ms: int) -> None:
        self.item2vec.learn_sessions(self.pending_sessions)
        self.pending_sessions = []
        self.models.embeddings = self.item2vec.snapshot(now_ms)

    def finish(self) -> None:
        for tr in self.tracks.values():
            if tr.last_ms is not None and (tr.session_items or tr.profile.session_events):
                self._close_session(tr)

    # -- evaluation

    def _evaluate(self, user: str, tr: Track, target: str, t: int) -> None:
        cat = self.cat
        cat.ensure_fresh()
        mask = cat.in_stock.copy()
        for item in tr.interacted:
            r = cat.index.get(item)
            if r is not None:
                mask[r] = False
        day = (t - (self.start_ms or t)) // DAY_MS
        recs: dict[str, list[str]] = {}
        for name in METHODS:
            started = time.perf_counter()
            recs[name] = self._recommend(name, user, tr, t, mask)
            self.call_s[name] += time.perf_counter() - started
        for name, items in recs.items():
            rows = [cat.index[i] for i in items]
            div = intra_list_diversity(cat.vectors[rows]) if len(rows) > 1 else None
            hit = self.tallies[name].add(items, target, div)
            day_tally = self.by_day[name].setdefault(int(day), [0.0, 0.0, 0.0])
            day_tally[0] += hit
            day_tally[1] += 1
            r = items.index(target) + 1 if hit else 0
            day_tally[2] += 1.0 / math.log2(r + 1) if r else 0.0

    def _recommend(
        self, name: str, user: str, tr: Track, t: int, mask: npt.NDArray[np.bool_]
    ) -> list[str]:
        cat = self.cat
        k = self.k
        if name == "attune":
            signals = UserSignals(
                user,
                t,
                recent=tuple(tr.recent),
                purchased=frozenset(tr.purchased),
                in_cart=frozenset(tr.in_cart),
                seen=frozenset(tr.interacted),
            )
            return [r.item for r in rank(signals, self.models, k, Filters(), self.weights)]
        if name == "most-popular":
            rows = _top_k(self.popular, mask, k)
        elif name == "recent-trending":
            rows = _top_k(self.recent_trend.scores, mask, k)
        elif name == "covisit":
            rows = self._covisit(tr, t, mask)
        else:
            mf = self.mfs[name]
            rows = _top_k(mf.scores(user, cat), mask, k)
        return [cat.ids[r] for r in rows]

    def _covisit(self, tr: Track, t: int, mask: npt.NDArray[np.bool_]) -> list[int]:
        cat = self.cat
        acc: dict[int, float] = {}
        sources: list[str] = []
        for inter in reversed(tr.recent):
            if inter.item not in sources:
                sources.append(inter.item)
            if len(sources) >= 10:
                break
        for item in sources:
            for kind in (VIEWED, BOUGHT):
                lst = self.covisit.neighbours(item, kind, 30, t)
                if not lst or lst[0][1] <= 0:
                    continue
                best = lst[0][1]
                for other, s in lst:
                    r = cat.index.get(other)
                    if r is not None and mask[r]:
                        acc[r] = acc.get(r, 0.0) + s / best
        ranked = sorted(acc, key=lambda r: -acc[r])[: self.k]
        if len(ranked) < self.k:
            pad_mask = mask.copy()
            pad_mask[ranked] = False
            ranked += _top_k(self.popular, pad_mask, self.k - len(ranked))
        return ranked

    # -- results

    def results(self) -> dict[str, Any]:
        n = max(len(self.cat), 1)
        methods = {}
        for name in METHODS:
            s = self.tallies[name].summary(n)
            s["ms_per_call"] = 1000.0 * self.call_s[name] / max(self.tallies[name].points, 1)
            methods[name] = s
        m = self.propensity.metrics()
        return {
            "events": self.events,
            "duplicates_dropped": self.duplicates,
            "dead_letters": self.dead_letters,
            "users": len(self.tracks),
            "catalogue_items": len(self.cat),
            "eligible_points": self.eligible,
            "unknown_target_points": self.unknown_targets,
            "k": self.k,
            "sample": self.sample,
            "methods": methods,
            "propensity": {
                "sessions": len(self.sessions_y),
                "positives": int(sum(self.sessions_y)),
                "auc": roc_auc(self.sessions_y, self.sessions_p),
                "log_loss": log_loss(self.sessions_y, self.sessions_p),
                "rolling_auc": m["auc"],
                "rolling_log_loss": m["log_loss"],
                "drifts": m["drifts"],
            },
            "over_time": {
                "hr_by_day": {
                    name: {str(d): v[0] / v[1] for d, v in sorted(days.items())}
                    for name, days in self.by_day.items()
                },
                "ndcg_by_day": {
                    name: {str(d): v[2] / v[1] for d, v in sorted(days.items())}
                    for name, days in self.by_day.items()
                },
                "points_by_day": {
                    str(d): int(v[1]) for d, v in sorted(self.by_day["attune"].items())
                },
                "propensity": [
                    {"sessions": s, "auc": a, "log_loss": ll} for s, a, ll in self.prop_series
                ],
            },
        }


# --- input -----------------------------------------------------------------------------------


def count_records(path: Path) -> int | None:
    """Records in a container file from its block headers (no decoding); None if unreadable."""
    import fastavro

    try:
        with path.open("rb") as fh:
            return sum(block.num_records for block in fastavro.block_reader(fh))
    except Exception:
        return None


def read_items(path: Path) -> list[ItemUpdate]:
    items = []
    bad = 0
    for rec in read_container(path, ITEM):
        if isinstance(rec.value, DeadLetter):
            bad += 1
            continue
        items.append(item_from_record(rec.value))
    if bad and not items:
        raise EvaluationError(f"{path} is not a readable Avro container of item updates")
    items.sort(key=lambda i: (i.updated_time, i.item_id))
    return items


def default_items_path(events: Path) -> Path:
    """``e.avro`` -> ``e.items.avro`` (what ``attune generate`` writes)."""
    return events.with_suffix(".items.avro")


class Progress:
    """A progress bar on stderr: in place on a terminal, a line every 10 s otherwise."""

    def __init__(self, total: int | None, stream: IO[str] | None = None) -> None:
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()
        self.every = 0.5 if self.tty else 10.0
        self.start = time.monotonic()
        self.next = self.start + self.every
        self.shown = False

    def update(self, done: int, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now < self.next:
            return
        self.next = now + self.every
        rate = done / max(now - self.start, 1e-9)
        if self.total:
            frac = min(1.0, done / self.total)
            bar = "#" * int(30 * frac) + "." * (30 - int(30 * frac))
            eta = (self.total - done) / rate if rate > 0 else 0.0
            line = (
                f"evaluate [{bar}] {100 * frac:5.1f}% {done:,}/{self.total:,} events "
                f"{rate:,.0f}/s eta {eta:,.0f}s"
            )
        else:
            line = f"evaluate {done:,} events {rate:,.0f}/s"
        self.stream.write(("\r" + line + ("\n" if final else "")) if self.tty else line + "\n")
        self.stream.flush()
        self.shown = True


def replay(
    events_path: Path,
    items_path: Path | None = None,
    *,
    k: int = 10,
    sample: int = 10,
    seed: int = 0,
    progress: bool = True,
    on_progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Run the prequential replay of ``events_path``; returns the results dict (see module doc)."""
    items_path = _check_inputs(events_path, items_path, k, sample)
    items = read_items(items_path) if items_path is not None else []
    started = time.monotonic()
    rp = Replay(k, sample, seed, PriceBands.from_items(items))
    pending = deque(items)
    while pending and pending[0].updated_time <= (items[0].updated_time if items else 0):
        rp.apply_item(pending.popleft())
    first_dead = _replay_events(rp, events_path, pending, progress, on_progress)
    if rp.events == 0:
        why = f": {first_dead.reason}" if first_dead is not None else " (it is empty)"
        raise EvaluationError(f"{events_path} holds no readable events{why}")
    rp.finish()
    if not any(t.points for t in rp.tallies.values()):
        raise EvaluationError(
            f"{events_path}: no evaluation point (no product view or add-to-cart of a new item"
            f" among {rp.events} events, sampled 1 in {sample}); lower --sample"
        )
    out = rp.results()
    out["file"] = str(events_path)
    out["items_file"] = str(items_path) if items_path is not None else None
    out["elapsed_s"] = round(time.monotonic() - started, 1)
    return out


def _check_inputs(events_path: Path, items_path: Path | None, k: int, sample: int) -> Path | None:
    """Check the arguments of :func:`evaluate`; the items file to read, if any (by default
    the one beside the events file, when it exists)."""
    if k < 1:
        raise EvaluationError(f"--k must be >= 1, got {k}")
    if sample < 1:
        raise EvaluationError(f"--sample must be >= 1 (evaluate 1 point in N), got {sample}")
    if not events_path.is_file():
        raise EvaluationError(f"events file {events_path} does not exist")
    if items_path is None:
        guess = default_items_path(events_path)
        return guess if guess.is_file() else None
    if not items_path.is_file():
        raise EvaluationError(f"items file {items_path} does not exist")
    return items_path


def _replay_events(
    rp: Replay,
    events_path: Path,
    pending: deque[ItemUpdate],
    progress: bool,
    on_progress: Callable[[int], None] | None,
) -> DeadLetter | None:
    """Feed the events of ``events_path`` to ``rp`` in file order, each after the item
    updates ``pending`` before it, counting dead letters; returns the first of them."""
    bar = Progress(count_records(events_path)) if progress else None
    first_dead: DeadLetter | None = None
    done = 0
    for _, ev in _events(events_path):
        done += 1
        if isinstance(ev, DeadLetter):
            rp.dead_letters += 1
            first_dead = first_dead or ev
        else:
            while pending and pending[0].updated_time <= ev.event_time:
                rp.apply_item(pending.popleft())
            rp.event(ev)
        if bar is not None and not done & 1023:
            bar.update(done)
        if on_progress is not None:
            on_progress(done)
    if bar is not None:
        bar.update(done, final=True)
    return first_dead


def _events(path: Path) -> Iterator[tuple[int, Event | DeadLetter]]:
    return read_events_file(path)


# --- output ----------------------------------------------------------------------------------


def _fmt(x: float | None, pct: bool = False) -> str:
    if x is None:
        return "-"
    return f"{100 * x:.2f}%" if pct else f"{x:.4f}"


def render(res: dict[str, Any]) -> str:
    k = res["k"]
    head = f"{'method':<16}{'HR@' + str(k):>9}{'NDCG@' + str(k):>10}{'MRR':>9}"
    head += f"{'coverage':>10}{'diversity':>11}{'ms/call':>9}"
    lines = [
        f"{res['file']}: {res['events']:,} events, {res['users']:,} users, "
        f"{res['catalogue_items']:,} items; {res['methods']['attune']['points']:,} evaluation "
        f"points (1 in {res['sample']} of {res['eligible_points']:,} new-item interactions)",
        head,
        "-" * len(head),
    ]
    for name, m in res["methods"].items():
        lines.append(
            f"{name:<16}{_fmt(m['hr'], True):>9}{_fmt(m['ndcg']):>10}{_fmt(m['mrr']):>9}"
            f"{_fmt(m['coverage'], True):>10}{_fmt(m['diversity']):>11}{m['ms_per_call']:>9.2f}"
        )
    p = res["propensity"]
    lines.append(
        f"propensity: ROC AUC {_fmt(p['auc'])}, log loss {_fmt(p['log_loss'])} over "
        f"{p['sessions']:,} sessions ({p['positives']:,} with a purchase); rolling last "
        f"window: AUC {_fmt(p['rolling_auc'])}, log loss {_fmt(p['rolling_log_loss'])}; "
        f"drift resets {p['drifts']}"
    )
    lines.append(f"elapsed {res['elapsed_s']:.1f}s")
    return "\n".join(lines)


def write_plots(res: dict[str, Any], out_dir: Path) -> list[Path]:
    """PNG plots: HR@k and NDCG@k by day per method, propensity rolling AUC/log loss."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    ot = res["over_time"]
    # Days with few points (e.g. sessions running past the log's last day) are noise.
    enough = {d for d, n in ot["points_by_day"].items() if n >= MIN_POINTS_PER_PLOTTED_DAY}
    for key, label in (("hr_by_day", f"HR@{res['k']}"), ("ndcg_by_day", f"NDCG@{res['k']}")):
        fig, ax = plt.subplots(figsize=(8, 4.5))
        for name, series in ot[key].items():
            kept = {d: v for d, v in series.items() if d in enough or not enough}
            ax.plot([int(d) for d in kept], list(kept.values()), marker="o", label=name)
        ax.set_xlabel(f"day of the replay (days with >= {MIN_POINTS_PER_PLOTTED_DAY} points)")
        ax.set_ylabel(label)
        ax.set_title(f"{label} per day (prequential), {Path(res['file']).name}")
        ax.grid(alpha=0.3)
        ax.legend()
        path = out_dir / f"{key.removesuffix('_by_day')}_over_time.png"
        fig.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    series = ot["propensity"]
    xs = [s["sessions"] for s in series]
    ax.plot(xs, [s["auc"] for s in series], label="rolling ROC AUC")
    ax.plot(xs, [s["log_loss"] for s in series], label="rolling log loss")
    ax.set_xlabel("sessions learnt")
    ax.set_title("propensity, progressive validation (last 1000 sessions)")
    ax.grid(alpha=0.3)
    ax.legend()
    path = out_dir / "propensity_over_time.png"
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    written.append(path)
    return written


# --- the command -----------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("events", type=Path, help="Avro container file of events")
    parser.add_argument(
        "--items", type=Path, help="item updates container (default <events>.items.avro if present)"
    )
    parser.add_argument("--k", type=int, default=10, help="list length (default 10)")
    parser.add_argument(
        "--sample",
        type=int,
        default=10,
        metavar="N",
        help="evaluate 1 in N eligible points, chosen by a hash of the event id (default 10; "
        "every event is learnt from)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the models (default 0)")
    parser.add_argument("--json", type=Path, help="write the results as JSON here")
    parser.add_argument("--plots", type=Path, help="write PNG plots into this directory")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    res = replay(
        args.events,
        args.items,
        k=args.k,
        sample=args.sample,
        seed=args.seed,
        progress=not args.no_progress,
    )
    print(render(res))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_bytes(orjson.dumps(res, option=orjson.OPT_INDENT_2))
        print(f"wrote {args.json}")
    if args.plots is not None:
        for path in write_plots(res, args.plots):
            print(f"wrote {path}")
    return 0
