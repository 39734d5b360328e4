"""Cosine k-nearest-neighbour search over embeddings (FAISS): what NEAR and TSDS read.

Candidates and queries are L2-normalised float32, so the inner product is the cosine and ranking by
it equals ranking by Euclidean distance (‖x − y‖² = 2 − 2·cos).

Two index kinds, chosen by the pool size:

* ``N <= exact_max`` (default :data:`EXACT_MAX`): exact search, ``faiss.IndexFlatIP``.
* ``N > exact_max``: ``faiss.IndexIVFFlat`` with the inner-product metric. ``nlist =
  round(nlist_factor·sqrt(N))`` k-means cells (at most N/39, FAISS's minimum of training points per
  cell), trained for ``niter`` iterations on a seeded sample of ``train_per_list·nlist`` candidates;
  a query scans its ``nprobe`` nearest cells. For a kNN search ``nprobe`` is raised where needed
  so that the scanned cells hold, on average, at least ``4·k`` candidates, and a query whose
  scanned cells still hold fewer than ``k`` candidates is searched again over every cell, so every
  row has ``k`` real neighbours.

:meth:`KnnIndex.search` is FAISS's own search. :meth:`KnnIndex.range_search` (every candidate above
a cosine threshold; TSDS's kernel density reads it for hundreds of thousands of points) scans the
same cells, but as dense matrix products: the queries that probe a cell are multiplied with the
cell's candidates in one block (BLAS, through torch), which on a CPU is many times faster than
scanning the cell once per query. The blocks are small, so each runs single-threaded and a thread
pool spreads them over the cores (no parallel region that must wait for every thread of a busy
machine). The exact index is scanned the same way in blocks of :data:`CELL_BLOCK` candidates.

Determinism: the training sample comes from a NumPy generator seeded by ``seed`` and FAISS's
k-means uses the same seed, so the same candidates and seed build the same index and return the
same neighbours. Every result is ordered by (score descending, candidate index ascending): equal
scores always resolve to the lower candidate index.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

#: pools up to this many candidates are searched exactly (IndexFlatIP); larger ones through IVF
EXACT_MAX = 50_000
#: query rows per FAISS search call
CHUNK_SIZE = 4096
#: query rows per matrix product in range_search
QUERY_BLOCK = 1024
#: candidates per block when range_search scans the exact index
CELL_BLOCK = 8192


def as_normalized_array(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """``x`` as a C-contiguous float32 ``[n, d]`` array with unit L2 rows (zero rows stay zero)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float32).numpy()
    x = np.array(x, dtype=np.float32, order="C", copy=True)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be a 2-D [n, d] array, got shape {tuple(x.shape)}")
    if not np.isfinite(x).all():
        raise ValueError("embeddings contain NaN or infinite values")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    np.divide(x, norms, out=x, where=norms > 0)
    return x


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op thread count set to ``n`` inside the block."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def sort_rows(scores: np.ndarray, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row ordered by score descending, then candidate index ascending (padding, index -1, last)."""
    missing = indices < 0
    key_index = np.where(missing, np.iinfo(np.int64).max, indices)
    key_score = np.where(missing, np.inf, -scores.astype(np.float64))
    order = np.lexsort((key_index, key_score), axis=-1)
    return np.take_along_axis(scores, order, -1), np.take_along_axis(indices, order, -1)


@dataclass
class RangeResult:
    """Neighbours above a score threshold, CSR-style: query ``q``'s are ``[lims[q], lims[q+1])``,
    each query's ordered by score descending then index ascending."""

    lims: np.ndarray  # int64 [M + 1]
    scores: np.ndarray  # float32 [lims[-1]]
    indices: np.ndarray  # int64 [lims[-1]]

    def owners(self) -> np.ndarray:
        """The query of every entry (int64 ``[lims[-1]]``)."""
        return np.repeat(np.arange(self.lims.size - 1), np.diff(self.lims))


class KnnIndex:
    """A cosine kNN index over fixed candidates (exact for small pools, IVF for large ones).

    Args:
        candidates: ``[N, d]`` embeddings (normalised here; a copy is kept).
        exact_max: largest pool searched exactly; larger pools use IVF.
        nlist_factor: IVF cells per sqrt(N).
        nprobe: IVF cells scanned per query (a kNN search raises it where ``k`` needs more, see the
            module doc).
        train_per_list: IVF k-means training points per cell (at least 39, FAISS's minimum; more
            points cost build time in proportion and barely change the cells).
        niter: IVF k-means iterations.
        seed: seeds the IVF training sample and k-means.
        chunk_size: query rows per FAISS call.

    Attributes:
        data: the normalised candidates (float32 ``[N, d]``).
        exact: True for the exact (flat) index.
        nlist: number of IVF cells (1 for the exact index).
        cell_of: the IVF cell of every candidate (int64 ``[N]``; all 0 for the exact index).
    """

    def __init__(
        self,
        candidates: torch.Tensor | np.ndarray,
        exact_max: int = EXACT_MAX,
        nlist_factor: float = 1.0,
        nprobe: int = 32,
        train_per_list: int = 39,
        niter: int = 10,
        seed: int = 0,
        chunk_size: int = CHUNK_SIZE,
    ):
        import faiss

        if int(nprobe) < 1 or int(chunk_size) < 1 or int(niter) < 1:
            raise ValueError(f"nprobe, chunk_size and niter must be >= 1, got {nprobe}, {chunk_size}, {niter}")
        if int(train_per_list) < 39:
            raise ValueError(f"train_per_list must be >= 39 (FAISS's minimum per cell), got {train_per_list}")
        if not nlist_factor > 0:
            raise ValueError(f"nlist_factor must be > 0, got {nlist_factor}")
        if int(exact_max) < 0:
            raise ValueError(f"exact_max must be >= 0, got {exact_max}")
        self.data = as_normalized_array(candidates)
        self.n, self.dim = self.data.shape
        if self.n == 0:
            raise ValueError("no candidates to index")
        self.exact = self.n <= int(exact_max)
        self.chunk_size = int(chunk_size)
        self.nprobe = int(nprobe)
        if self.exact:
            self.nlist = 1
            self.index = faiss.IndexFlatIP(self.dim)
            self.index.add(self.data)
            self.cell_of = np.zeros(self.n, dtype=np.int64)
            self._members = [np.arange(s, min(s + CELL_BLOCK, self.n)) for s in range(0, self.n, CELL_BLOCK)]
            return
        self.nlist = max(1, min(round(nlist_factor * math.sqrt(self.n)), self.n // 39))
        quantizer = faiss.IndexFlatIP(self.dim)
        self.index = faiss.IndexIVFFlat(quantizer, self.dim, self.nlist, faiss.METRIC_INNER_PRODUCT)
        self._quantizer = quantizer  # FAISS does not own it from Python: keep it alive
        self.index.cp.seed = int(seed)
        self.index.cp.niter = int(niter)
        train_size = min(self.n, int(train_per_list) * self.nlist)
        self.index.cp.max_points_per_centroid = train_size // self.nlist + 1  # FAISS must not subsample again
        rows = np.sort(np.random.default_rng(int(seed)).choice(self.n, size=train_size, replace=False))
        self.index.train(self.data[rows])
        self.index.add(self.data)
        lists = self.index.invlists
        self._members = [
            faiss.rev_swig_ptr(lists.get_ids(c), lists.list_size(c)).astype(np.int64) for c in range(self.nlist)
        ]
        self.cell_of = np.empty(self.n, dtype=np.int64)
        for c, members in enumerate(self._members):
            self.cell_of[members] = c

    # -- kNN ---------------------------------------------------------------------------------------
    def _nprobe_for(self, k: int) -> int:
        """Cells to scan so that they hold ~4k candidates on average (never fewer than ``nprobe``)."""
        return min(self.nlist, max(self.nprobe, math.ceil(4 * k * self.nlist / self.n)))

    def _queries(self, queries: torch.Tensor | np.ndarray) -> np.ndarray:
        q = as_normalized_array(queries)
        if q.shape[1] != self.dim:
            raise ValueError(f"queries have dimension {q.shape[1]}, candidates {self.dim}")
        return q

    def search(self, queries: torch.Tensor | np.ndarray, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``k`` candidates of highest cosine for every query.

        Args:
            queries: ``[M, d]`` embeddings (normalised here).
            k: neighbours per query, ``1 <= k <= N``.

        Returns:
            ``(scores [M, k] float32, indices [M, k] int64)``, best first; equal scores in
            increasing candidate index.
        """
        if not 1 <= k <= self.n:
            raise ValueError(f"k must lie in [1, {self.n}], got {k}")
        q = self._queries(queries)
        scores = np.empty((len(q), k), dtype=np.float32)
        indices = np.empty((len(q), k), dtype=np.int64)
        if not self.exact:
            self.index.nprobe = self._nprobe_for(k)
        for start in range(0, len(q), self.chunk_size):
            chunk = slice(start, start + self.chunk_size)
            d, i = self.index.search(q[chunk], k)
            if not self.exact:
                short = np.flatnonzero((i < 0).any(axis=1))
                if short.size:  # the scanned cells held fewer than k candidates: scan them all
                    self.index.nprobe = self.nlist
                    d[short], i[short] = self.index.search(q[chunk][short], k)
                    self.index.nprobe = self._nprobe_for(k)
            scores[chunk], indices[chunk] = sort_rows(d, i)
        return torch.from_numpy(scores), torch.from_numpy(indices)

    # -- range search --------------------------------------------------------------------------------
    def probes(self, queries: np.ndarray, nprobe: int) -> np.ndarray:
        """The ``nprobe`` IVF cells nearest to each (normalised) query, int64 ``[M, nprobe]``."""
        nprobe = min(int(nprobe), self.nlist)
        _, cells = self._quantizer.search(np.ascontiguousarray(queries), nprobe)
        return cells.astype(np.int64)

    def _groups(self, n_queries: int, cells: np.ndarray | None) -> list[tuple[np.ndarray, np.ndarray]]:
        """``(candidate_ids, query_ids)`` pairs that together cover every (query, candidate of a
        probed cell) pair once, with at most :data:`QUERY_BLOCK` queries each."""
        if self.exact:
            everyone = np.arange(n_queries)
            groups = [(members, everyone) for members in self._members]
        else:
            flat = cells.reshape(-1)
            owner = np.repeat(np.arange(n_queries), cells.shape[1])
            keep = flat >= 0
            flat, owner = flat[keep], owner[keep]
            order = np.argsort(flat, kind="stable")
            flat, owner = flat[order], owner[order]
            bounds = np.flatnonzero(np.diff(flat)) + 1
            starts, ends = np.r_[0, bounds], np.r_[bounds, flat.size]
            groups = [(self._members[flat[s]], owner[s:e]) for s, e in zip(starts, ends) if e > s]
        return [
            (members, query_ids[b : b + QUERY_BLOCK])
            for members, query_ids in groups
            if members.size
            for b in range(0, query_ids.size, QUERY_BLOCK)
        ]

    def range_search(
        self,
        queries: torch.Tensor | np.ndarray,
        min_score: float,
        max_results: int | None = None,
        nprobe: int | None = None,
        cells: np.ndarray | None = None,
    ) -> RangeResult:
        """Every candidate whose cosine with a query is above ``min_score`` (at most the best
        ``max_results`` per query).

        Args:
            queries: ``[M, d]`` embeddings (normalised here).
            min_score: the threshold (strictly greater counts).
            max_results: keep only the best this many per query (None: all).
            nprobe: IVF cells scanned per query (default: the index's ``nprobe``).
            cells: the IVF cells each query scans (int64 ``[M, p]``, -1 for none), instead of its
                ``nprobe`` nearest; e.g. ``cell_of[rows][:, None]`` for candidates' own cells.

        Returns:
            :class:`RangeResult`. On the exact index every candidate is scanned.
        """
        if max_results is not None and int(max_results) < 1:
            raise ValueError(f"max_results must be >= 1, got {max_results}")
        q = self._queries(queries)
        if not self.exact and cells is None:
            cells = self.probes(q, nprobe or self.nprobe)
        elif cells is not None:
            cells = np.asarray(cells, dtype=np.int64).reshape(len(q), -1)
        qt = torch.from_numpy(q)

        def scan(group: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            members, ids = group
            s = qt[torch.from_numpy(ids)] @ torch.from_numpy(self.data[members]).T
            hit = s > min_score
            if max_results is not None and s.shape[1] > max_results:
                crowded = torch.nonzero(hit.sum(1) > max_results).flatten()
                if crowded.numel():  # keep only each crowded row's best max_results here already
                    top = s[crowded].topk(int(max_results), dim=1).indices
                    keep = torch.zeros_like(hit[crowded])
                    keep.scatter_(1, top, True)
                    hit[crowded] &= keep
            r, c = torch.nonzero(hit, as_tuple=True)
            return ids[r.numpy()], members[c.numpy()], s[r, c].numpy()

        # many small products: one single-threaded torch product per block, the blocks spread over
        # a thread pool (torch releases the GIL). Faster than multithreading each small product,
        # and robust on a busy machine, where a parallel region waits for every thread it uses.
        workers = torch.get_num_threads()
        with _torch_threads(1), ThreadPoolExecutor(max_workers=workers) as pool:
            parts = list(pool.map(scan, self._groups(len(q), cells)))
        parts_q, parts_i, parts_s = ([p[j] for p in parts] for j in range(3))
        owner = np.concatenate(parts_q) if parts_q else np.zeros(0, np.int64)
        index = np.concatenate(parts_i) if parts_i else np.zeros(0, np.int64)
        score = np.concatenate(parts_s) if parts_s else np.zeros(0, np.float32)
        order = np.lexsort((index, -score.astype(np.float64), owner))  # by query, best first, then index
        owner, index, score = owner[order], index[order], score[order]
        counts = np.bincount(owner, minlength=len(q))
        lims = np.r_[0, np.cumsum(counts)].astype(np.int64)
        if max_results is not None and counts.size and counts.max() > max_results:
            keep = (np.arange(owner.size) - lims[owner]) < max_results
            owner, index, score = owner[keep], index[keep], score[keep]
            lims = np.r_[0, np.cumsum(np.minimum(counts, max_results))].astype(np.int64)
        return RangeResult(lims, score.astype(np.float32), index.astype(np.int64))


def knn(
    candidates: torch.Tensor | np.ndarray, queries: torch.Tensor | np.ndarray, k: int, **index_options
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine top-``k`` candidates of every query (a one-off :class:`KnnIndex`; options as there)."""
    return KnnIndex(candidates, **index_options).search(queries, k)
