"""Item embeddings learned online from in-session co-occurrence, and user vectors.

Item2vec: skip-gram with negative sampling (SGNS, word2vec's objective) over
sessions' item sequences, in numpy, one vectorised SGD step per mini-batch of
(centre, context) pairs. Items that occur close together in sessions (a user
compares phones of one price band) end up with similar vectors.

Where it runs (the scaling rule, docs/models.md): the per-user path sends one
:class:`SessionItems` per ended session (not per event) to **one learner**
(:class:`Item2Vec`), which trains on batches of sessions and publishes an
:class:`EmbeddingSnapshot` (``to_bytes``: a compact versioned blob of the item
index and a float16 matrix) to Redis; every worker's per-user path reads the
latest snapshot and computes user vectors locally. The learner sees one message
per session, so its load is ~1/20 of the event rate; the snapshot is at most
one publish interval (plus the session gap for the newest session) stale.

User vectors (:func:`user_vectors`) are computed on the read side from the
user's recent items, so they are fresh to the event: a short-term one (decayed
mean of recently viewed/carted item vectors, half-life :data:`SHORT_HALF_LIFE_MS`)
and a long-term one (half-life :data:`LONG_HALF_LIFE_MS`).

>>> learner = Item2Vec(dim=8, seed=1, epochs=3, batch_pairs=8)
>>> sessions = [["a", "b", "c"], ["a", "b"], ["x", "y", "z"], ["y", "z"]] * 60
>>> learner.learn_sessions(sessions) > 0
True
>>> snap = EmbeddingSnapshot.from_bytes(learner.snapshot(now_ms=0).to_bytes())
>>> bool(snap.similarity("a", "b") > snap.similarity("a", "z"))
True
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import orjson

from attune.operators.clock import DAY_MS, MINUTE_MS

__all__ = [
    "LONG_HALF_LIFE_MS",
    "SHORT_HALF_LIFE_MS",
    "EmbeddingSnapshot",
    "Item2Vec",
    "SessionItems",
    "user_vectors",
]

F32 = npt.NDArray[np.float32]

SHORT_HALF_LIFE_MS = 30 * MINUTE_MS
LONG_HALF_LIFE_MS = 7 * DAY_MS
#: Weight of a carted or bought item in a user vector, relative to a view.
CART_WEIGHT = 2.0
#: Items a learner keeps at most; beyond it the least frequent are not added (bounded memory).
MAX_ITEMS = 500_000
#: Items of one session the learner uses at most (the latest ones).
MAX_SESSION_ITEMS = 50

_MAGIC = b"ATEMB1"
_HEADER = struct.Struct("<6sQqIIQ")  # magic, version, created ms, n items, dim, pairs trained


@dataclass(frozen=True, slots=True)
class SessionItems:
    """What the per-user path sends the learner when a session ends: its items in order."""

    user: str
    end_ms: int
    items: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class EmbeddingSnapshot:
    """Published item vectors: versioned, L2-normalised rows, with the item index.

    ``to_bytes``/``from_bytes``: a 42-byte header (``ATEMB1``, version, created
    ms, item count, dim, pairs trained), the item ids as an orjson list, then
    the matrix as little-endian float16 (half the bytes of float32; cosine
    similarities change by < 1e-3).
    """

    version: int
    created_ms: int
    items: tuple[str, ...]
    vectors: F32
    pairs_trained: int = 0

    def __post_init__(self) -> None:
        if self.vectors.shape[0] != len(self.items):
            raise ValueError(
                f"embedding snapshot has {len(self.items)} items but "
                f"{self.vectors.shape[0]} vectors"
            )

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def to_bytes(self) -> bytes:
        ids = orjson.dumps(list(self.items))
        head = _HEADER.pack(
            _MAGIC, self.version, self.created_ms, len(self.items), self.dim, self.pairs_trained
        )
        body = self.vectors.astype("<f2").tobytes()
        return head + struct.pack("<I", len(ids)) + ids + body

    @classmethod
    def from_bytes(cls, data: bytes) -> EmbeddingSnapshot:
        if len(data) < _HEADER.size + 4 or data[:6] != _MAGIC:
            raise ValueError("not an Attune embedding snapshot (bad magic or too short)")
        _, version, created, n, dim, pairs = _HEADER.unpack_from(data)
        pos = _HEADER.size
        (n_ids,) = struct.unpack_from("<I", data, pos)
        pos += 4
        items = tuple(orjson.loads(data[pos : pos + n_ids]))
        pos += n_ids
        need = n * dim * 2
        if len(items) != n or len(data) - pos != need:
            raise ValueError(
                f"embedding snapshot is truncated or corrupt: {n} items x {dim} dims need "
                f"{need} bytes of vectors, found {len(data) - pos}"
            )
        vectors = np.frombuffer(data, dtype="<f2", count=n * dim, offset=pos).astype(np.float32)
        return cls(version, created, items, vectors.reshape(n, dim), pairs)

    def index(self) -> dict[str, int]:
        return {item: i for i, item in enumerate(self.items)}

    def similarity(self, a: str, b: str) -> float:
        idx = self.index()
        return float(self.vectors[idx[a]] @ self.vectors[idx[b]])


@dataclass(slots=True)
class Item2Vec:
    """SGNS learner of item vectors from sessions; one instance per flow (see module doc).

    Parameters: ``dim`` vector size; ``window`` how many neighbours on each side
    of an item in its session are its context; ``negatives`` negative samples
    per pair, drawn from item frequency ** 0.75 (word2vec's); ``lr`` SGD step;
    ``epochs`` passes over each batch. Pickles (numpy arrays and dicts).
    """

    dim: int = 32
    window: int = 3
    negatives: int = 5
    lr: float = 0.2
    epochs: int = 1
    seed: int = 0
    max_items: int = MAX_ITEMS
    batch_pairs: int = 128
    items: list[str] = field(default_factory=list)
    index: dict[str, int] = field(default_factory=dict)
    counts: npt.NDArray[np.float64] = field(default_factory=lambda: np.zeros(0))
    w_in: F32 = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    w_out: F32 = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    pairs_trained: int = 0
    version: int = 0
    rng: np.random.Generator = field(init=False)

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)
        if self.w_in.shape[1] != self.dim:
            self.w_in = np.zeros((0, self.dim), np.float32)
            self.w_out = np.zeros((0, self.dim), np.float32)

    def _rows(self, items: Sequence[str]) -> list[int]:
        out = []
        for item in items:
            r = self.index.get(item)
            if r is None:
                if len(self.items) >= self.max_items:
                    continue
                r = len(self.items)
                self.index[item] = r
                self.items.append(item)
            out.append(r)
        n = len(self.items)
        if n > len(self.w_in):
            grow = max(n, 2 * len(self.w_in), 64)
            w_in = ((self.rng.random((grow, self.dim)) - 0.5) / self.dim).astype(np.float32)
            w_in[: len(self.w_in)] = self.w_in
            w_out = np.zeros((grow, self.dim), np.float32)
            w_out[: len(self.w_out)] = self.w_out
            counts = np.zeros(grow)
            counts[: len(self.counts)] = self.counts
            self.w_in, self.w_out, self.counts = w_in, w_out, counts
        return out

    def _pairs(self, sessions: Iterable[Sequence[str]]) -> tuple[npt.NDArray[np.int64], ...]:
        centres: list[int] = []
        contexts: list[int] = []
        seen: list[int] = []  # every session's rows: counted at the end, in one bincount
        for session in sessions:
            rows = self._rows(session[-MAX_SESSION_ITEMS:])
            seen.extend(rows)
            for i, c in enumerate(rows):
                for j in range(max(0, i - self.window), min(len(rows), i + self.window + 1)):
                    if j != i and rows[j] != c:
                        centres.append(c)
                        contexts.append(rows[j])
        if seen:  # whole numbers: the same float64 counts as adding 1 per occurrence
            counted = np.bincount(np.asarray(seen, np.int64))
            self.counts[: len(counted)] += counted
        return np.asarray(centres, np.int64), np.asarray(contexts, np.int64)

    def learn_sessions(self, sessions: Iterable[Sequence[str]]) -> int:
        """One SGD pass (``epochs`` times) over the pairs of these sessions; returns pairs used."""
        centres, contexts = self._pairs(sessions)
        if len(centres) == 0:
            return 0
        n = len(self.items)
        noise = self.counts[:n] ** 0.75
        cum = np.cumsum(noise / noise.sum())
        for _ in range(self.epochs):
            order = self.rng.permutation(len(centres))
            # One draw of the epoch's negatives: the generator yields the same numbers as
            # one draw per mini-batch (nothing else draws in between), with one searchsorted.
            negs = np.searchsorted(cum, self.rng.random((len(order), self.negatives)))
            np.minimum(negs, n - 1, out=negs)
            c_all, o_all = centres[order], contexts[order]
            for start in range(0, len(order), self.batch_pairs):
                end = start + self.batch_pairs
                self._step(c_all[start:end], o_all[start:end], negs[start:end])
        self.pairs_trained += len(centres)
        self.version += 1
        return len(centres)

    def _step(
        self, c: npt.NDArray[np.int64], o: npt.NDArray[np.int64], neg: npt.NDArray[np.int64]
    ) -> None:
        lr = self.lr
        vc = self.w_in[c]  # (B, d)
        uo = self.w_out[o]  # (B, d)
        un = self.w_out[neg]  # (B, K, d)
        pos = 1.0 / (1.0 + np.exp(-np.clip(np.einsum("bd,bd->b", vc, uo), -10, 10)))
        g_pos = (1.0 - pos) * lr  # gradient ascent on log sigma(vc.uo)
        negs = 1.0 / (1.0 + np.exp(-np.clip(np.einsum("bkd,bd->bk", un, vc), -10, 10)))
        g_neg = -negs * lr  # ascent on log sigma(-vc.un)
        grad_c = g_pos[:, None] * uo + np.einsum("bk,bkd->bd", g_neg, un)
        # Gradients of one row within a batch are averaged, not summed: a popular item
        # appears in hundreds of pairs of a batch, and their sum would be a step far too
        # long (the batch then oscillates instead of converging).
        out_rows = np.concatenate([o, neg.ravel()])
        out_grad = np.concatenate(
            [g_pos[:, None] * vc, (g_neg[:, :, None] * vc[:, None, :]).reshape(-1, self.dim)]
        )
        self._apply(self.w_out, out_rows, out_grad)
        self._apply(self.w_in, c, grad_c)

    @staticmethod
    def _apply(w: F32, rows: npt.NDArray[np.int64], grad: npt.NDArray[np.floating]) -> None:
        """Add each row's mean gradient to ``w``.

        The per-row sums are one ``np.bincount`` over (row, dimension) bins: it adds in
        float64 in input order, as ``np.add.at`` does, so the sums are bit for bit those
        of ``np.add.at(total, inv, grad)``, at a fraction of its cost (tests show both).
        """
        # The distinct rows without a sort: each row's slot is the position that wrote it
        # last into a scratch array (whichever that is, exactly one position per row
        # reads itself back); the sums per row do not depend on how rows are numbered.
        n = len(rows)
        scratch = np.empty(len(w), np.int64)
        scratch[rows] = np.arange(n)
        uniq = rows[scratch[rows] == np.arange(n)]
        scratch[uniq] = np.arange(len(uniq))
        inv = scratch[rows]
        counts = np.bincount(inv, minlength=len(uniq))
        d = w.shape[1]
        bins = (inv.reshape(-1, 1) * d + np.arange(d)).ravel()
        total = np.bincount(bins, weights=grad.reshape(-1), minlength=len(uniq) * d)
        w[uniq] += (total.reshape(len(uniq), d) / counts[:, None]).astype(np.float32)

    def snapshot(self, now_ms: int) -> EmbeddingSnapshot:
        """The current item vectors (input matrix), L2-normalised, as a publishable snapshot."""
        n = len(self.items)
        v = self.w_in[:n].astype(np.float32, copy=True)
        norms = np.linalg.norm(v, axis=1, keepdims=True)
        np.divide(v, norms, out=v, where=norms > 0)
        return EmbeddingSnapshot(self.version, now_ms, tuple(self.items), v, self.pairs_trained)


def decay_weights(
    times: npt.NDArray[np.int64], now_ms: int, half_life_ms: float
) -> npt.NDArray[np.float64]:
    """``2 ** (-(now - t) / half_life)``, with future times counted as now.

    >>> decay_weights(np.array([0, 50, 100]), 100, 50.0).tolist()
    [0.25, 0.5, 1.0]
    """
    age = np.maximum(now_ms - times, 0).astype(np.float64)
    return np.exp2(-age / half_life_ms)


def user_vectors(
    vectors: F32,
    rows: npt.NDArray[np.int64],
    times: npt.NDArray[np.int64],
    weights: npt.NDArray[np.float64],
    now_ms: int,
) -> tuple[F32 | None, F32 | None]:
    """Short- and long-term user vectors: decayed, weighted means of item vectors, normalised.

    ``rows`` index ``vectors`` (rows < 0 are skipped: items the snapshot does
    not know); ``weights`` are per interaction (view 1, cart :data:`CART_WEIGHT`).

    >>> v = np.array([[1, 0], [0, 1]], np.float32)
    >>> short, long = user_vectors(v, np.array([0, 1]), np.array([0, 10 * DAY_MS]),
    ...                            np.ones(2), now_ms=10 * DAY_MS)
    >>> short.round(3).tolist(), bool(long[0] > 0)
    ([0.0, 1.0], True)
    """
    keep = rows >= 0
    if not keep.any():
        return None, None
    m = vectors[rows[keep]]
    out: list[F32 | None] = []
    for hl in (SHORT_HALF_LIFE_MS, LONG_HALF_LIFE_MS):
        w = decay_weights(times[keep], now_ms, hl) * weights[keep]
        u = (w[:, None] * m).sum(axis=0).astype(np.float32)
        norm = float(np.linalg.norm(u))
        out.append(u / norm if norm > 1e-6 else None)
    return out[0], out[1]
