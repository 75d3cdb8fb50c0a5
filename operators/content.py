"""The item catalogue as the models see it: metadata by row and content vectors.

Fed by :class:`~attune.operators.events.ItemUpdate` (topic ``attune.items``, or the
generator's ``<out>.items.avro``). Each item gets a row; rows never move, so
numpy arrays of every model (trending scores, embeddings, filters) line up
with :attr:`Catalogue.ids`.

Content vectors make an item recommendable before anyone touched it
(``similar-content``): feature hashing (blake2b, so stable across processes
and ``PYTHONHASHSEED``) of its metadata tokens into :data:`CONTENT_DIM`
signed dimensions, L2-normalised. Tokens and weights:

=====================================  ======  =================================
token                                   weight  why
=====================================  ======  =================================
``top:<top category>``                  1.0     broad taste
``cat:<category path>``                 1.5     the strongest content signal
``brand:<top>/<brand>``                 0.8     brand loyalty within a domain
``band:<category path>/<low|mid|high>`` 1.0     price band within the category
``tag:<tag>``                           0.3     each free-form tag
=====================================  ======  =================================

The price band is the item's tertile among its category's current prices
(recomputed by :meth:`Catalogue.refresh`, at most every
``REFRESH_EVERY`` updates or when asked). Cosine similarity of two content
vectors is the similarity the ranking's diversity step (MMR) and the
evaluator's intra-list diversity use.

>>> from attune.operators.events import ItemUpdate
>>> cat = Catalogue()
>>> for i, (path, price) in enumerate([("a/x", 100), ("a/x", 300), ("b/y", 100)]):
...     _ = cat.update(ItemUpdate(f"i{i}", "t", tuple(path.split("/")), price, "EUR", True,
...                               0, 0, brand="B"))
>>> cat.refresh()
>>> v = cat.vectors
>>> bool(v[0] @ v[1] > v[0] @ v[2])   # same category beats same price
True
>>> cat.category_of("i2"), cat.row("i9") is None
('b/y', True)
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from attune.operators.events import ItemUpdate

__all__ = ["CONTENT_DIM", "Catalogue", "hashed_token"]

#: Dimensions of the hashed content vectors (float32: 1 KiB per item).
CONTENT_DIM = 256
#: Token weights (see the module docstring).
W_TOP, W_CAT, W_BRAND, W_BAND, W_TAG = 1.0, 1.5, 0.8, 1.0, 0.3
#: Rebuild price bands and vectors after this many changed items.
REFRESH_EVERY = 256
BANDS = ("low", "mid", "high")

F32 = npt.NDArray[np.float32]


def hashed_token(token: str, dim: int = CONTENT_DIM) -> tuple[int, float]:
    """The (dimension, sign) a token hashes to: stable in every process.

    >>> hashed_token("cat:a/x") == hashed_token("cat:a/x")
    True
    """
    h = int.from_bytes(hashlib.blake2b(token.encode(), digest_size=8).digest(), "little")
    return h % dim, (1.0 if (h >> 63) & 1 else -1.0)


@dataclass(slots=True)
class Catalogue:
    """Items by row: ids, categories, stock, prices and content vectors. Pickles.

    ``update`` is cheap (dict and list operations); ``refresh`` rebuilds price
    bands and content vectors, vectorised, and bumps :attr:`version`.
    """

    ids: list[str] = field(default_factory=list)
    index: dict[str, int] = field(default_factory=dict)
    categories: list[str] = field(default_factory=list)  # category path "top/sub" per row
    brands: list[str | None] = field(default_factory=list)
    tags: list[tuple[str, ...]] = field(default_factory=list)
    prices: list[int] = field(default_factory=list)
    stock: list[bool] = field(default_factory=list)
    category_names: list[str] = field(default_factory=list)  # distinct categories, by code
    category_code: dict[str, int] = field(default_factory=dict)
    version: int = 0
    pending: int = 0
    # Rebuilt by refresh():
    vectors: F32 = field(default_factory=lambda: np.zeros((0, CONTENT_DIM), np.float32))
    codes: npt.NDArray[np.int32] = field(default_factory=lambda: np.zeros(0, np.int32))
    in_stock: npt.NDArray[np.bool_] = field(default_factory=lambda: np.zeros(0, np.bool_))
    bands: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    def row(self, item: str) -> int | None:
        return self.index.get(item)

    def category_of(self, item: str) -> str | None:
        r = self.index.get(item)
        return None if r is None else self.categories[r]

    def update(self, item: ItemUpdate) -> int:
        """Add or replace an item (the whole current version); returns its row."""
        path = "/".join(item.category_path)
        r = self.index.get(item.item_id)
        if r is None:
            r = len(self.ids)
            self.index[item.item_id] = r
            self.ids.append(item.item_id)
            self.categories.append(path)
            self.brands.append(item.brand)
            self.tags.append(item.tags)
            self.prices.append(item.price_minor)
            self.stock.append(item.in_stock)
        else:
            self.categories[r] = path
            self.brands[r] = item.brand
            self.tags[r] = item.tags
            self.prices[r] = item.price_minor
            self.stock[r] = item.in_stock
            if r < len(self.in_stock):
                self.in_stock[r] = item.in_stock  # stock changes are live without a refresh
        if path not in self.category_code:
            self.category_code[path] = len(self.category_names)
            self.category_names.append(path)
        self.pending += 1
        if len(self.vectors) < len(self.ids) and self.pending >= REFRESH_EVERY:
            self.refresh()
        return r

    def ensure_fresh(self) -> None:
        """Refresh if items were added since the last refresh (new rows need vectors)."""
        if len(self.vectors) != len(self.ids) or self.pending >= REFRESH_EVERY:
            self.refresh()

    def refresh(self) -> None:
        """Recompute price bands, category codes, stock flags and content vectors."""
        n = len(self.ids)
        self.codes = np.fromiter(
            (self.category_code[c] for c in self.categories), dtype=np.int32, count=n
        )
        self.in_stock = np.fromiter(self.stock, dtype=np.bool_, count=n)
        prices = np.asarray(self.prices, dtype=np.float64)
        bands = ["mid"] * n
        for code in range(len(self.category_names)):
            rows = np.flatnonzero(self.codes == code)
            if len(rows) == 0:
                continue
            lo, hi = np.quantile(prices[rows], [1 / 3, 2 / 3])
            for row in rows.tolist():
                p = prices[row]
                bands[row] = "low" if p <= lo else "high" if p > hi else "mid"
        self.bands = bands
        cols: list[int] = []
        vals: list[float] = []
        rows_of: list[int] = []
        for r in range(n):
            path = self.categories[r]
            top = path.split("/", 1)[0]
            tokens = [
                (f"top:{top}", W_TOP),
                (f"cat:{path}", W_CAT),
                (f"band:{path}/{bands[r]}", W_BAND),
            ]
            brand = self.brands[r]
            if brand:
                tokens.append((f"brand:{top}/{brand}", W_BRAND))
            tokens.extend((f"tag:{t}", W_TAG) for t in self.tags[r])
            for token, w in tokens:
                d, sign = hashed_token(token)
                cols.append(d)
                vals.append(sign * w)
                rows_of.append(r)
        m = np.zeros((n, CONTENT_DIM), dtype=np.float32)
        np.add.at(m, (np.asarray(rows_of, np.int64), np.asarray(cols, np.int64)), vals)
        norms = np.linalg.norm(m, axis=1, keepdims=True)
        np.divide(m, norms, out=m, where=norms > 0)
        self.vectors = m
        self.pending = 0
        self.version += 1

    def content_of(self, items: list[str]) -> F32:
        """Content vectors of ``items`` (zero rows for unknown ones)."""
        self.ensure_fresh()
        out = np.zeros((len(items), CONTENT_DIM), dtype=np.float32)
        for i, item in enumerate(items):
            r = self.index.get(item)
            if r is not None:
                out[i] = self.vectors[r]
        return out
