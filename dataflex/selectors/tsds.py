"""TSDS selector (Liu, Karbasi, Rekatsinas, NeurIPS 2024): a sampling distribution over the pool
that balances matching the validation/target prompts (optimal transport) against diversity, with a
kernel-density correction for near-duplicates (ALGORITHMS.md, tsds).

The problem: p over the N candidates minimising (α/C)·OT(P_query, p) + (1 − α)·G_KDE(p), P_query
uniform over the M queries. Its kNN closed form, as used here:

* Every query j sends its mass 1/M to its nearest candidates x_j1, x_j2, ... (cosine order). At a
  global "water level" s > 0, each neighbour i gets 1/(M·s·ρ_ji) until the query's mass runs out:
  with c_j(i) = Σ_{i' <= i} 1/ρ_ji', neighbour i gets (min(c_j(i), s) − min(c_j(i−1), s)) / (M·s).
  So query j uses K_j(s) neighbours, more as s grows, each in proportion to 1/KDE; its last
  neighbour (rank max_K) takes whatever is left.
* s grows through the breakpoints c_j(k) of all queries, in increasing order: a global heap of
  (c_j(k), k, j) entries, popping one extends query j to neighbour k+1 (K_j grows by one). Between
  breakpoints the objective is Σ_j (α/C)·(d_j,K_j − cost_j/s)/M + (1 − α)/s with
  cost_j = d_j,K_j·c_j(K_j − 1) − Σ_{i < K_j} d_ji/ρ_ji >= 0, so its slope is
  ((α/C)·Σ_j cost_j/M − (1 − α))/s². Every cost_j only grows with s, so the objective is minimal at
  the first breakpoint where (α/C)·Σ_j cost_j >= (1 − α)·M: s stops there. No stop: every query
  uses all its max_K neighbours.
* ρ(x) = KDE(x) = Σ_{x' in kNN(x)} max(0, 1 − ‖x − x'‖²/σ²) over the kde_K nearest candidates of x
  (x itself included, contributing exactly 1, so ρ >= 1): ten copies of a candidate (nothing else
  within σ) together get the mass one copy would get, a tenth each (α = 1: all to the first copy,
  the 1-NN histogram). σ = 0 turns the correction off (ρ ≡ 1).

Choices where the paper and its reference code leave room (stated, as ALGORITHMS.md asks): the
transport cost is the Euclidean distance between the L2-normalised embeddings (‖q − x‖ =
sqrt(2 − 2·cos)); kNN(x) of the KDE is taken among ALL candidates (the paper's code searches
only among the retrieved neighbours), on an IVF index within x's own cell by default
(``kde_nprobe``); the heap is realised as one global sort of the breakpoints in
the heap's (count, k, j) order, which pops exactly the sequence a heap pops.

Cost: one kNN search of the M queries (max_K each), and the KDE for the candidates the sweep
reaches only: the sweep first runs on the queries' nearest ``start_rank`` neighbours and doubles
that prefix until the stop falls strictly before any query's next breakpoint (so the result is
exactly that of the full max_K lists), computing densities for the newly reached candidates each
time.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
import torch

from dataflex.errors import ConfigError
from dataflex.selectors.base import EmbeddingSelector, seeded_generator
from dataflex.signals.knn import KnnIndex
from dataflex.train.components import UpdateContext
from dataflex.train.fields import param

#: candidates per range search of the kernel density
KDE_CHUNK = 65536
#: TSDS's default exact_max: the exact KDE scans the whole pool for every candidate it reaches
#: (cost ∝ N × reached), so IVF takes over at a smaller pool than for NEAR's query-only searches
TSDS_EXACT_MAX = 10_000


class TransportPlan(NamedTuple):
    """The closed form on sorted neighbour lists.

    Attributes:
        mass: ``[M, K]`` float64 mass each query sends to each of its neighbours (rows sum to 1/M).
        s: the water level the sweep stopped at.
        stopped: True when the stopping condition was met (False: every breakpoint was popped).
    """

    mass: torch.Tensor
    s: float
    stopped: bool


def transport_mass(
    distances: torch.Tensor, densities: torch.Tensor, alpha: float = 0.5, C: float = 5.0
) -> TransportPlan:
    """The TSDS closed form for queries with known neighbour distances and densities.

    Args:
        distances: ``[M, K]`` d_ji, each row non-decreasing (neighbour 0 nearest).
        densities: ``[M, K]`` ρ of those neighbours (> 0).
        alpha: α in [0, 1]: 1 is pure distribution matching, 0 pure diversity.
        C: C > 0, the scale of the transport term.

    Returns:
        :class:`TransportPlan`. ``α = 1`` stops at the first breakpoint: every query sends all of its
        1/M to its nearest neighbour.
    """
    d = torch.as_tensor(distances, dtype=torch.float64)
    rho = torch.as_tensor(densities, dtype=torch.float64)
    if d.ndim != 2 or d.shape != rho.shape or d.numel() == 0:
        raise ValueError(
            f"distances and densities must be the same non-empty [M, K] shape, got {tuple(d.shape)}, {tuple(rho.shape)}"
        )
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    if not C > 0:
        raise ValueError(f"C must be > 0, got {C}")
    if not (rho > 0).all():
        raise ValueError("densities must be > 0")
    m, k = d.shape
    inv = 1.0 / rho
    c = inv.cumsum(1)  # c[j, i]: the level at which query j's first i+1 neighbours hold all its mass
    if k == 1:
        s, stopped = float(c[:, 0].min()), True
    else:
        # breakpoint (j, i), i < K-1: popping it extends query j from i+1 to i+2 neighbours, after
        # which its cost rate is d[j, i+1]·c[j, i] − Σ_{i' <= i} d[j, i']/ρ[j, i']
        cost = d[:, 1:] * c[:, :-1] - (d * inv).cumsum(1)[:, :-1]
        rise = torch.diff(cost, dim=1, prepend=torch.zeros(m, 1, dtype=torch.float64))
        level = c[:, :-1].reshape(-1).numpy()
        rank = np.tile(np.arange(k - 1), m)
        query = np.repeat(np.arange(m), k - 1)
        order = torch.from_numpy(np.lexsort((query, rank, level)))  # the heap's (count, k, j) order
        total = rise.reshape(-1)[order].cumsum(0)
        hit = torch.nonzero((alpha / C) * total >= (1.0 - alpha) * m)
        stopped = hit.numel() > 0
        t = int(hit[0]) if stopped else order.numel() - 1
        s = float(level[int(order[t])])
    upper = torch.minimum(c, torch.tensor(s, dtype=torch.float64))
    upper[:, -1] = s  # the last neighbour takes what is left
    lower = torch.cat([torch.zeros(m, 1, dtype=torch.float64), upper[:, :-1]], dim=1)
    return TransportPlan((upper - lower) / (m * s), s, stopped)


def kde_densities(
    index: KnnIndex, rows: torch.Tensor, sigma: float, kde_K: int, nprobe: int | None = 1, chunk: int = KDE_CHUNK
) -> torch.Tensor:
    """ρ(x) = Σ over the kde_K nearest candidates x' of max(0, 1 − ‖x − x'‖²/σ²), for the candidates ``rows``.

    x itself is one of its kde_K nearest (‖x − x‖ = 0 contributes exactly 1), so ρ >= 1 and a
    candidate with no other candidate within σ has ρ = 1. Only candidates within distance σ
    contribute, so the others are found by a range search at cosine ``1 − σ²/2``
    (:meth:`KnnIndex.range_search`, the best kde_K − 1 besides x); when σ² >= 2 that range is a
    hemisphere or more and a kNN search of kde_K is used instead.

    On an IVF index each candidate scans the ``nprobe`` cells nearest to it (1: its own cell, where
    its near-duplicates almost always are); the exact index is scanned in full.

    Args:
        index: the index over all candidates.
        rows: candidate indices (distinct).
        sigma: the bandwidth σ >= 0 (0: no correction, ρ ≡ 1).
        kde_K: neighbours counted, x included (>= 1).
        nprobe: IVF cells scanned per candidate (None: the index's nprobe).
        chunk: candidates per range search (bounds the memory of the results).

    Returns:
        ``Tensor[len(rows)]`` float64.
    """
    rows = torch.as_tensor(rows, dtype=torch.long).flatten()
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    if int(kde_K) < 1:
        raise ValueError(f"kde_K must be >= 1, got {kde_K}")
    rho = np.ones(rows.numel(), dtype=np.float64)
    if sigma == 0 or rows.numel() == 0 or kde_K == 1:
        return torch.from_numpy(rho)
    r = rows.numpy()
    min_score = 1.0 - sigma**2 / 2.0
    # candidates grouped by IVF cell, so each range search meets few cells with many rows each
    order = np.argsort(index.cell_of[r], kind="stable")
    for start in range(0, order.size, chunk):
        part = order[start : start + chunk]
        points = index.data[r[part]]
        if min_score > 0:
            own = index.cell_of[r[part]][:, None] if (not index.exact and (nprobe or index.nprobe) == 1) else None
            found = index.range_search(points, min_score, max_results=kde_K, nprobe=nprobe, cells=own)
            owner, scores, neighbours = found.owners(), found.scores.astype(np.float64), found.indices
        else:
            s, i = index.search(points, kde_K)
            owner = np.repeat(np.arange(part.size), kde_K)
            scores, neighbours = s.numpy().astype(np.float64).reshape(-1), i.numpy().reshape(-1)
        # x itself counts exactly 1 (added above), whatever the float rounding of its own score:
        # drop it from the results and keep the best kde_K − 1 others
        others = neighbours != r[part][owner]
        owner, scores = owner[others], scores[others]
        rank = np.arange(owner.size) - np.searchsorted(owner, owner)  # position within its row
        keep = rank < kde_K - 1
        kernel = np.maximum(0.0, 1.0 - (2.0 - 2.0 * scores[keep]) / sigma**2)
        rho[part] += np.bincount(owner[keep], weights=kernel, minlength=part.size)
    return torch.from_numpy(rho)


def draw(p: torch.Tensor, k: int, replacement: bool = True, generator: torch.Generator | None = None) -> torch.Tensor:
    """``k`` indices drawn from the distribution ``p`` (any size of p, unlike ``torch.multinomial``).

    With replacement: k independent inverse-CDF draws. Without: the k smallest of E_i / p_i with
    E_i ~ Exp(1) (the exponential race, equal in law to drawing one at a time and renormalising);
    needs at least k entries with p > 0.

    Returns:
        LongTensor[k].
    """
    p = torch.as_tensor(p, dtype=torch.float64).flatten()
    if (p < 0).any() or not torch.isfinite(p).all() or not p.sum() > 0:
        raise ValueError("p must be finite, >= 0, with a positive sum")
    support = int((p > 0).sum())
    if replacement:
        cdf = torch.cumsum(p, 0)
        u = torch.rand(k, generator=generator, dtype=torch.float64) * cdf[-1]
        idx = torch.searchsorted(cdf, u, right=True)
        # u < cdf[-1], so idx < N; float rounding could still land on a trailing p = 0 entry
        last = int(torch.nonzero(p > 0).max())
        return idx.clamp(max=last)
    if support < k:
        raise ValueError(f"cannot draw {k} distinct samples: only {support} have p > 0")
    keys = torch.empty_like(p).exponential_(generator=generator) / p  # p = 0 gives inf: never drawn
    return torch.topk(keys, k, largest=False, sorted=True).indices


def check_parameters(alpha: float, C: float, sigma: float, max_K: int, kde_K: int) -> None:
    """ValueError naming the first TSDS hyperparameter out of range."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    if not C > 0:
        raise ValueError(f"C must be > 0, got {C}")
    if not sigma >= 0:
        raise ValueError(f"sigma must be >= 0 (0 turns the density correction off), got {sigma}")
    if int(max_K) < 1 or int(kde_K) < 1:
        raise ValueError(f"max_K and kde_K must be >= 1, got {max_K}, {kde_K}")


def capped(value: int, n: int) -> int:
    """``value`` capped at N/10 (and at least 1)."""
    return max(1, min(int(value), n // 10))


def tsds_probabilities(
    candidates: torch.Tensor,
    queries: torch.Tensor,
    alpha: float = 0.5,
    C: float = 5.0,
    sigma: float = 0.75,
    max_K: int = 5000,
    kde_K: int = 1000,
    *,
    index: KnnIndex | None = None,
    kde_nprobe: int | None = 1,
    start_rank: int = 64,
    info: dict[str, Any] | None = None,
    **index_options: Any,
) -> torch.Tensor:
    """The pure core: TSDS sampling probabilities over the N candidates.

    Args:
        candidates: ``[N, d]`` candidate embeddings (normalised here).
        queries: ``[M, d]`` query embeddings (normalised here).
        alpha: α in [0, 1] (1: each query's nearest neighbour only).
        C: scale of the transport term.
        sigma: KDE bandwidth σ (0: no density correction).
        max_K: neighbours per query considered, capped at N/10.
        kde_K: neighbours of the KDE, capped at N/10.
        index: a :class:`KnnIndex` already built over ``candidates`` (reused across rounds).
        kde_nprobe: IVF cells scanned by the KDE's range search (None: the index's nprobe).
        start_rank: neighbour prefix of the first sweep (doubled until exact, see the module doc).
        info: if given, filled with what the computation did: ``max_K``, ``kde_K`` (after the cap),
            ``prefix`` (the neighbour prefix that settled it), ``densities`` (candidates whose KDE
            was computed), ``s``, ``stopped``, ``support`` (candidates with p > 0).
        index_options: :class:`KnnIndex` options when ``index`` is None (exact_max, by default
            :data:`TSDS_EXACT_MAX`, nprobe, seed, ...).

    Returns:
        ``Tensor[N]`` float64, p >= 0, Σp = 1.
    """
    check_parameters(alpha, C, sigma, max_K, kde_K)
    if index is None:
        index = KnnIndex(candidates, **{"exact_max": TSDS_EXACT_MAX, **index_options})
    elif index.n != len(candidates):
        raise ValueError(f"index holds {index.n} candidates, got {len(candidates)}")
    if len(queries) == 0:
        raise ValueError("no queries")
    n = index.n
    k_max, k_kde = capped(max_K, n), capped(kde_K, n)
    scores, neighbors = index.search(queries, k_max)
    distances = torch.sqrt(torch.clamp(2.0 - 2.0 * scores.double(), min=0.0))
    rho = torch.full((n,), math.nan, dtype=torch.float64)
    r = min(k_max, max(2, int(start_rank)))
    while True:
        cols = neighbors[:, :r]
        new = torch.unique(cols[torch.isnan(rho[cols])])
        rho[new] = kde_densities(index, new, sigma, k_kde, kde_nprobe)
        plan = transport_mass(distances[:, :r], rho[cols], alpha, C)
        if r == k_max:
            break
        next_level = (1.0 / rho[cols]).sum(1)  # each query's next breakpoint c_j(r-1)
        if plan.stopped and plan.s < float(next_level.min()):
            break  # the full lists would have stopped at the same point
        r = min(2 * r, k_max)
    p = torch.zeros(n, dtype=torch.float64).index_add_(0, cols.reshape(-1), plan.mass.reshape(-1))
    p = p / p.sum()
    if info is not None:
        info.update(
            max_K=k_max,
            kde_K=k_kde,
            prefix=r,
            densities=int((~torch.isnan(rho)).sum()),
            s=plan.s,
            stopped=plan.stopped,
            support=int((p > 0).sum()),
        )
    return p


class TSDSSelector(EmbeddingSelector):
    """Every round, draw ``budget`` samples from the TSDS distribution over the pool.

    Candidates are the pool's texts (prompt and response), queries the validation set's prompts,
    embedded as in :class:`~dataflex.selectors.base.EmbeddingSelector`. The draw is seeded by
    (seed, round), with replacement by default (the paper's choice).

    Attributes:
        alpha, C, sigma, max_K, kde_K: as :func:`tsds_probabilities`.
        replacement: draw with replacement (False: without; needs at least ``budget`` candidates
            with p > 0).
        kde_nprobe: IVF cells scanned by the KDE (large pools only).
        exact_max: as :class:`~dataflex.selectors.base.EmbeddingSelector`, by default
            :data:`TSDS_EXACT_MAX`.
        (others as :class:`~dataflex.selectors.base.EmbeddingSelector`)

    ``last_round`` (checkpointed) summarises the last decision: what ``info`` of
    :func:`tsds_probabilities` reports, and ``max_p``.
    """

    #: the original DataFlex's params with no counterpart here, and why (used by dataflex-cli)
    legacy_unused = {"probs_path": "sampling probabilities are computed in the run"}

    method = "tsds"

    exact_max: int = param(TSDS_EXACT_MAX, ge=0)
    alpha: float = param(0.5, ge=0, le=1)
    C: float = param(5.0, gt=0)
    sigma: float = param(0.75, ge=0)
    max_K: int = param(5000, ge=1)
    kde_K: int = param(1000, ge=1)
    replacement: bool = True
    kde_nprobe: int = param(1, ge=1)

    def choose(self, ctx: UpdateContext, candidates: torch.Tensor, queries: torch.Tensor) -> tuple[torch.Tensor, dict]:
        info: dict[str, Any] = {}
        p = tsds_probabilities(
            candidates,
            queries,
            self.alpha,
            self.C,
            self.sigma,
            self.max_K,
            self.kde_K,
            index=self.index(candidates),
            kde_nprobe=self.kde_nprobe,
            info=info,
        )
        k = self.k(ctx)
        if not self.replacement and info["support"] < k:
            raise ConfigError(
                f"drawing {k} samples without replacement needs {k} candidates with p > 0, but only "
                f"{info['support']} have any (set selector.replacement=true, lower the budget, or lower alpha)"
            )
        indices = draw(p, k, self.replacement, seeded_generator(self.seed, ctx.update_index))
        return indices, {"update_index": ctx.update_index, "max_p": float(p.max()), **info}
