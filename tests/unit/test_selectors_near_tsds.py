"""NEAR and TSDS: the pure cores against hand-computed values and ALGORITHMS.md's invariants, an
independent heap implementation of TSDS, the selector shells, and end to end on the tiny model."""

from __future__ import annotations

import heapq
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
import yaml
from support.config import compose_config
from support.distributed import run_distributed

from dataflex.selectors.base import interleave_groups
from dataflex.selectors.near import NearSelector, near_indices, round_robin
from dataflex.selectors.tsds import TSDSSelector, capped, draw, kde_densities, transport_mass, tsds_probabilities
from dataflex.signals.knn import KnnIndex

SIGMA2 = 0.75**2


# -- NEAR: round robin -------------------------------------------------------------------------
def test_round_robin_by_hand():
    neighbors = torch.tensor([[3, 1, 2], [3, 4, 5], [1, 0, 6]])
    # rank 1: 3, (3 taken), 1; rank 2: (1 taken), 4, 0; rank 3: 2, 5, 6
    assert round_robin(neighbors, 5).tolist() == [3, 1, 4, 0, 2]
    assert round_robin(neighbors, 7).tolist() == [3, 1, 4, 0, 2, 5, 6]
    assert round_robin(neighbors, 1).tolist() == [3]
    assert round_robin(torch.tensor([[-1, 2], [5, -1]]), 2).tolist() == [5, 2]  # padding skipped
    with pytest.raises(ValueError, match="7 distinct candidates among the neighbours, 8 asked"):
        round_robin(neighbors, 8)
    with pytest.raises(ValueError, match=r"\[M, K\]"):
        round_robin(torch.tensor([1, 2]), 1)


def naive_round_robin(neighbors: list[list[int]], k: int) -> list[int]:
    taken: list[int] = []
    for rank in range(len(neighbors[0])):
        for row in neighbors:
            if row[rank] >= 0 and row[rank] not in taken:
                taken.append(row[rank])
                if len(taken) == k:
                    return taken
    raise AssertionError("not enough")


@pytest.mark.parametrize("seed", range(5))
def test_round_robin_invariants(seed):
    g = torch.Generator().manual_seed(seed)
    m, depth, pool = 7, 6, 15  # a small pool: many duplicates across queries
    neighbors = torch.stack([torch.randperm(pool, generator=g)[:depth] for _ in range(m)])
    distinct = neighbors.unique().numel()
    for k in (1, m, distinct // 2, distinct):
        picked = round_robin(neighbors, k)
        assert picked.tolist() == naive_round_robin(neighbors.tolist(), k)
        assert picked.unique().numel() == k  # no duplicates
        # the rank at which each pick was taken: all rank-r picks precede all rank-(r+1) picks
        first_rank = [int(torch.nonzero(neighbors == c)[:, 1].min()) for c in picked]
        assert first_rank == sorted(first_rank)
        assert torch.equal(picked, round_robin(neighbors.clone(), k))  # deterministic


def test_near_puts_a_candidate_identical_to_a_query_first():
    g = torch.Generator().manual_seed(0)
    candidates = F.normalize(torch.randn(300, 16, generator=g), dim=1)
    queries = torch.cat([candidates[[17]], F.normalize(torch.randn(4, 16, generator=g), dim=1), candidates[[250]]])
    index = KnnIndex(candidates)
    picked = near_indices(index, queries, 40)
    assert picked[0] == 17  # query 0 is candidate 17
    assert picked[: len(queries)].tolist()[-1] == 250  # the last query's rank-1 pick closes rank 1
    assert picked.unique().numel() == 40
    # equal to the round robin over the full neighbour lists
    _, full = index.search(queries, 300)
    assert torch.equal(picked, round_robin(full, 40))
    assert torch.equal(near_indices(index, queries, 300).sort().values, torch.arange(300))


def test_interleave_groups_by_hand():
    assert interleave_groups(torch.tensor([0, 0, 0, 1, 1, 2])).tolist() == [0, 3, 5, 1, 4, 2]
    assert interleave_groups(torch.tensor([2, 1, 2, 1, 0])).tolist() == [4, 1, 0, 3, 2]
    assert interleave_groups(torch.tensor([5, 5])).tolist() == [0, 1]


# -- TSDS: the closed form ---------------------------------------------------------------------
def test_transport_mass_by_hand():
    # one query, neighbours at distance 0, 1, 2, ρ ≡ 1: levels c = 1, 2, 3
    d, rho = torch.tensor([[0.0, 1.0, 2.0]]), torch.ones(1, 3)
    # α/C = 0.1, stop when 0.1·Σcost >= 0.5. Pop level 1: cost = 1·1 − 0 = 1. Pop level 2:
    # cost = 2·2 − (0 + 1) = 3. No stop: s = 2, neighbours 0 and 1 get 1/2 each, neighbour 2 nothing.
    plan = transport_mass(d, rho, alpha=0.5, C=5.0)
    assert plan.mass.tolist() == [[0.5, 0.5, 0.0]] and plan.s == 2.0 and not plan.stopped
    # α/C = 0.5: the first pop already gives 0.5·1 >= 0.5: s = 1, all to the nearest
    plan = transport_mass(d, rho, alpha=0.5, C=1.0)
    assert plan.mass.tolist() == [[1.0, 0.0, 0.0]] and plan.s == 1.0 and plan.stopped
    # densities 2, 1, 1: levels 0.5, 1.5, 2.5. Pop 0.5: cost = 1·0.5 − 0 = 0.5; pop 1.5:
    # cost = 2·1.5 − (0/2 + 1/1) = 2 -> 0.1·2 < 0.5, no stop: s = 1.5;
    # masses 0.5/1.5, (1.5 − 0.5)/1.5, 0
    plan = transport_mass(d, torch.tensor([[2.0, 1.0, 1.0]]), alpha=0.5, C=5.0)
    assert plan.mass[0].tolist() == pytest.approx([1 / 3, 2 / 3, 0.0]) and plan.s == 1.5


def test_transport_mass_two_queries_share_one_water_level():
    # query 0: neighbours at 0, 0.1, 0.2; query 1: at 0, 1.0, 1.1 (ρ ≡ 1). Stop when Σcost >= 1 (α/C = 0.5).
    d = torch.tensor([[0.0, 0.1, 0.2], [0.0, 1.0, 1.1]])
    # heap order (level, rank, query): (1,0,0): cost0 = 0.1 -> 0.1; (1,0,1): cost1 = 1.0 -> 1.1 >= 1: stop, s = 1
    plan = transport_mass(d, torch.ones(2, 3), alpha=0.5, C=0.5)  # α/C = 1: stop at Σcost >= 0.5·2/1 = 1
    assert plan.stopped and plan.s == 1.0
    assert plan.mass.tolist() == [[0.5, 0.0, 0.0], [0.5, 0.0, 0.0]]
    # α/C = 0.25: stop at Σcost >= 4. Pops: (1,0,0) 0.1; (1,0,1) 1.1; (2,1,0): cost0 = 0.2·2 − 0.1 = 0.3 -> 1.3;
    # (2,1,1): cost1 = 1.1·2 − 1.0 = 1.2 -> 1.5; no more: s = 2
    plan = transport_mass(d, torch.ones(2, 3), alpha=0.5, C=2.0)
    assert not plan.stopped and plan.s == 2.0
    assert plan.mass.tolist() == [[0.25, 0.25, 0.0], [0.25, 0.25, 0.0]]


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 0.9, 1.0])
def test_transport_mass_rows_hold_one_over_m(alpha):
    g = torch.Generator().manual_seed(1)
    d = torch.sort(torch.rand(6, 9, generator=g) * 2, dim=1).values
    rho = 1 + 3 * torch.rand(6, 9, generator=g)
    plan = transport_mass(d, rho, alpha=alpha, C=5.0)
    assert (plan.mass >= 0).all()
    assert torch.allclose(plan.mass.sum(1), torch.full((6,), 1 / 6, dtype=torch.float64))
    if alpha == 1.0:  # all mass to each query's nearest neighbour
        assert torch.equal(plan.mass[:, 0], torch.full((6,), 1 / 6, dtype=torch.float64))
    if alpha == 0.0:  # never stops: every breakpoint is popped
        assert not plan.stopped and (plan.mass[:, :-1] > 0).all()


# -- TSDS: hand-computed geometry --------------------------------------------------------------
def unit(*coords: float, dim: int = 40) -> torch.Tensor:
    v = torch.zeros(dim)
    v[: len(coords)] = torch.tensor(coords)
    return F.normalize(v, dim=0)


def fillers(start: int, dim: int = 40) -> list[torch.Tensor]:
    """Orthogonal unit vectors e_start..e_{dim-1}: distance sqrt(2) from each other and from the
    vectors living in the first `start` coordinates, so they never count in a KDE."""
    return [torch.eye(dim)[i] for i in range(start, dim)]


def test_kde_by_hand():
    # x0 = e0; x1 at cos 0.9 to x0 (d² = 0.2); x2 at cos 0.8 to x0 (d² = 0.4), cos(x1, x2) < 0.5 (too far)
    x0, x1, x2 = unit(1.0), unit(0.9, math.sqrt(0.19)), unit(0.8, -0.6)
    candidates = torch.stack([x0, x1, x2, *fillers(2)])
    index = KnnIndex(candidates)
    k01, k02 = 1 - 0.2 / SIGMA2, 1 - 0.4 / SIGMA2
    rho = kde_densities(index, torch.tensor([0, 1, 2, 3]), sigma=0.75, kde_K=4)
    assert rho.tolist() == pytest.approx([1 + k01 + k02, 1 + k01, 1 + k02, 1.0], abs=1e-6)
    # kde_K = 2: x itself and its single nearest other
    assert kde_densities(index, torch.tensor([0]), sigma=0.75, kde_K=2).tolist() == pytest.approx([1 + k01], abs=1e-6)
    assert kde_densities(index, torch.tensor([0, 1]), sigma=0.0, kde_K=4).tolist() == [1.0, 1.0]
    # σ² >= 2 (a hemisphere or more): a kNN search of kde_K instead of a range search
    wide = kde_densities(index, torch.tensor([0]), sigma=1.5, kde_K=3)
    assert wide.tolist() == pytest.approx([1 + (1 - 0.2 / 2.25) + (1 - 0.4 / 2.25)], abs=1e-6)


def copies_geometry(copies: int):
    """Query e0; `copies` candidates equal to e0; b at cos 0.5 (distance 1); fillers at distance sqrt(2)."""
    b = unit(0.5, math.sqrt(0.75))
    candidates = torch.stack([*[unit(1.0)] * copies, b, *fillers(2)])
    return candidates, unit(1.0)[None]


def test_tsds_by_hand():
    # two copies of the query's own point: ρ = 2 each (their kernel is 1), b and fillers ρ = 1.
    # Neighbours (max_K = 4): copy, copy, b, first filler; distances 0, 0, 1, sqrt(2); levels 0.5, 1, 2, 3.
    # α/C = 0.1, stop at Σcost >= 5: pop 0.5: cost 0·0.5 − 0 = 0; pop 1: cost 1·1 − 0 = 1;
    # pop 2: cost sqrt(2)·2 − (0 + 0 + 1) = 1.83: no stop, s = 2. Masses 0.5/2, 0.5/2, 1/2, 0.
    candidates, query = copies_geometry(2)
    p = tsds_probabilities(candidates, query, alpha=0.5, C=5.0, sigma=0.75, max_K=4, kde_K=4)
    want = torch.zeros(len(candidates), dtype=torch.float64)
    want[:3] = torch.tensor([0.25, 0.25, 0.5], dtype=torch.float64)
    assert torch.allclose(p, want, atol=1e-6)
    # without the density correction the two copies count as two samples: levels 1, 2, 3;
    # pops: 1: cost 0; 2: cost 1·2 − 0 = 2; 3: cost sqrt(2)·3 − 1 = 3.24 < 5: s = 3, 1/3 each
    p = tsds_probabilities(candidates, query, alpha=0.5, C=5.0, sigma=0.0, max_K=4, kde_K=4)
    want[:3] = 1 / 3
    assert torch.allclose(p, want, atol=1e-6)
    # α/C = 2 (C = 0.25): stop at Σcost >= 0.25: the pop at level 1 (cost 1) stops, s = 1: the copies share it
    p = tsds_probabilities(candidates, query, alpha=0.5, C=0.25, sigma=0.75, max_K=4, kde_K=4)
    want = torch.zeros(len(candidates), dtype=torch.float64)
    want[:2] = 0.5
    assert torch.allclose(p, want, atol=1e-6)


def test_max_K_and_kde_K_are_capped_at_a_tenth_of_the_pool():
    candidates, query = copies_geometry(2)  # 41 candidates: caps at 4
    info: dict = {}
    tsds_probabilities(candidates, query, max_K=5000, kde_K=1000, info=info)
    assert info["max_K"] == 4 and info["kde_K"] == 4
    assert capped(5000, 9) == 1 and capped(3, 1000) == 3


# -- TSDS: invariants and an independent implementation ----------------------------------------
def reference_tsds(candidates, queries, alpha, C, sigma, max_K, kde_K):
    """TSDS from the definition with dense float64 torch and a literal heap (ALGORITHMS.md, tsds)."""
    x, q = F.normalize(candidates.double(), dim=1), F.normalize(queries.double(), dim=1)
    n, m = len(x), len(q)
    k, kk = max(1, min(max_K, n // 10)), max(1, min(kde_K, n // 10))
    scores = q @ x.T
    order = torch.sort(-scores, dim=1, stable=True).indices[:, :k]
    dist = torch.sqrt(torch.clamp(2 - 2 * scores.gather(1, order), min=0))
    rho = torch.ones(n, dtype=torch.float64)
    if sigma > 0:
        sq = torch.clamp(2 - 2 * (x @ x.T), min=0)
        sq.fill_diagonal_(0)
        for i in range(n):
            others = torch.cat([sq[i, :i], sq[i, i + 1 :]])
            nearest = torch.sort(others).values[: kk - 1]
            rho[i] = 1 + torch.clamp(1 - nearest / sigma**2, min=0).sum()
    r = rho[order]
    level = torch.cumsum(1 / r, dim=1)
    if k == 1:
        s = float(level[:, 0].min())
    else:
        heap = [(float(level[j, 0]), 0, j) for j in range(m)]
        heapq.heapify(heap)
        cost = [0.0] * m
        while heap:
            s, i, j = heapq.heappop(heap)
            cost[j] = float(dist[j, i + 1] * level[j, i] - (dist[j, : i + 1] / r[j, : i + 1]).sum())
            if alpha / C * sum(cost) >= (1 - alpha) * m:
                break
            if i + 1 < k - 1:
                heapq.heappush(heap, (float(level[j, i + 1]), i + 1, j))
    p = torch.zeros(n, dtype=torch.float64)
    for j in range(m):
        upper = torch.clamp(level[j], max=s)
        upper[-1] = s
        lower = torch.cat([torch.zeros(1, dtype=torch.float64), upper[:-1]])
        p.index_add_(0, order[j], (upper - lower) / (m * s))
    return p


def random_case(seed: int, n: int = 400, m: int = 6, dim: int = 8):
    g = torch.Generator().manual_seed(seed)
    centers = F.normalize(torch.randn(5, dim, generator=g), dim=1)
    which = torch.randint(5, (n,), generator=g)
    candidates = F.normalize(centers[which] + 0.5 * torch.randn(n, dim, generator=g) / dim**0.5, dim=1)
    queries = F.normalize(torch.randn(m, dim, generator=g), dim=1)
    return candidates, queries


@pytest.mark.parametrize(
    "seed, alpha, C, sigma",
    [
        (0, 0.5, 5.0, 0.75),
        (1, 0.9, 5.0, 0.75),
        (2, 0.5, 0.5, 0.3),
        (3, 0.0, 5.0, 0.75),
        (4, 1.0, 5.0, 0.75),
        (5, 0.7, 2.0, 0.0),
    ],
)
def test_tsds_equals_an_independent_heap_implementation(seed, alpha, C, sigma):
    candidates, queries = random_case(seed)
    want = reference_tsds(candidates, queries, alpha, C, sigma, max_K=30, kde_K=12)
    info: dict = {}
    p = tsds_probabilities(candidates, queries, alpha, C, sigma, max_K=30, kde_K=12, start_rank=2, info=info)
    # float32 search scores against a float64 reference: agreement to float32 rounding
    assert torch.allclose(p, want, atol=1e-6), (p - want).abs().max()
    assert (p >= 0).all() and p.sum().item() == pytest.approx(1.0, abs=1e-12)
    # the prefix doubling (start_rank 2) gives exactly what the full neighbour lists give
    full = tsds_probabilities(candidates, queries, alpha, C, sigma, max_K=30, kde_K=12, start_rank=30)
    assert torch.allclose(p, full, atol=1e-12)
    assert info["support"] == int((p > 0).sum()) and info["prefix"] <= 30


def test_tsds_alpha_one_is_the_nearest_neighbour_histogram():
    candidates, queries = random_case(7, m=12)
    queries = torch.cat([queries, queries[:3]])  # repeated queries: their nearest counts twice
    p = tsds_probabilities(candidates, queries, alpha=1.0, max_K=30, kde_K=12)
    nearest = (F.normalize(queries, dim=1) @ candidates.T).argmax(1)
    want = torch.bincount(nearest, minlength=len(candidates)).double() / len(queries)
    assert torch.allclose(p, want, atol=1e-12)


@pytest.mark.parametrize("alpha", [0.5, 1.0])
def test_ten_copies_share_the_mass_of_one_copy(alpha):
    g = torch.Generator().manual_seed(8)
    candidates, queries = (
        F.normalize(torch.randn(500, 16, generator=g), dim=1),
        F.normalize(torch.randn(5, 16, generator=g), dim=1),
    )
    one = tsds_probabilities(candidates, queries, alpha=alpha, C=1.0, max_K=40, kde_K=20)
    x0 = int(one.argmax())
    distances = torch.sqrt(torch.clamp(2 - 2 * candidates @ candidates[x0], min=0))
    assert (distances.sort().values[1] > 0.75).item()  # nothing else within σ of x0: its ρ is 1
    ten = torch.cat([candidates, candidates[[x0] * 9]])  # x0 and 9 copies of it
    info: dict = {}
    p = tsds_probabilities(ten, queries, alpha=alpha, C=1.0, max_K=40, kde_K=20, info=info)
    assert info["stopped"]  # the sweep ended by the criterion, not by running out of neighbours
    copies = p[[x0, *range(500, 509)]]
    # equal up to float32 rounding of the copies' self-similarity (their kernel is 1 ± 1e-7)
    assert copies.sum().item() == pytest.approx(one[x0].item(), abs=1e-6)  # not ten times as much
    if alpha < 1:  # each copy a tenth (α = 1 is the 1-NN histogram: the lowest-index copy takes it all)
        assert torch.allclose(copies, torch.full((10,), one[x0].item() / 10, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(p[:500][torch.arange(500) != x0], one[torch.arange(500) != x0], atol=1e-6)


def test_tsds_on_ivf_equals_exact_when_the_kde_scans_every_cell():
    g = torch.Generator().manual_seed(9)
    centers = F.normalize(torch.randn(12, 24, generator=g), dim=1)
    which = torch.randint(12, (3000,), generator=g)
    candidates = F.normalize(centers[which] + 0.3 * torch.randn(3000, 24, generator=g) / 24**0.5, dim=1)
    queries = F.normalize(centers[:6] + 0.3 * torch.randn(6, 24, generator=g) / 24**0.5, dim=1)
    exact = tsds_probabilities(candidates, queries, max_K=100, kde_K=50, sigma=0.3)
    ivf = KnnIndex(candidates, exact_max=0)
    assert not ivf.exact
    p = tsds_probabilities(candidates, queries, max_K=100, kde_K=50, sigma=0.3, index=ivf, kde_nprobe=ivf.nlist)
    assert torch.allclose(p, exact, atol=1e-9)
    # the default KDE scans each candidate's own cell only: an approximation, still a distribution
    own = tsds_probabilities(candidates, queries, max_K=100, kde_K=50, sigma=0.3, index=ivf)
    assert (own >= 0).all() and own.sum().item() == pytest.approx(1.0)


def test_tsds_refuses_bad_parameters():
    candidates, query = copies_geometry(1)
    for kwargs, message in [
        ({"alpha": 1.5}, r"alpha must lie in \[0, 1\]"),
        ({"C": 0.0}, "C must be > 0"),
        ({"sigma": -1.0}, "sigma must be >= 0"),
        ({"max_K": 0}, "max_K and kde_K must be >= 1"),
    ]:
        with pytest.raises(ValueError, match=message):
            tsds_probabilities(candidates, query, **kwargs)
    with pytest.raises(ValueError, match="dimension"):
        tsds_probabilities(candidates, torch.randn(1, 3))


# -- drawing from p ----------------------------------------------------------------------------
def test_draw_with_and_without_replacement():
    p = torch.tensor([0.0, 0.5, 0.0, 0.3, 0.2, 0.0], dtype=torch.float64)

    def g():
        return torch.Generator().manual_seed(0)

    many = draw(p, 20000, True, g())
    assert set(many.tolist()) <= {1, 3, 4}  # never a p = 0 entry
    freq = torch.bincount(many, minlength=6).double() / 20000
    assert torch.allclose(freq, p, atol=0.02)
    assert torch.equal(many, draw(p, 20000, True, g()))  # seeded
    distinct = draw(p, 3, False, g())
    assert sorted(distinct.tolist()) == [1, 3, 4]
    with pytest.raises(ValueError, match="only 3 have p > 0"):
        draw(p, 4, False, g())
    # without replacement the first draw follows p
    firsts = torch.bincount(
        torch.stack([draw(p, 1, False, torch.Generator().manual_seed(s)) for s in range(3000)]).flatten(), minlength=6
    )
    assert torch.allclose(firsts.double() / 3000, p, atol=0.03)


# -- the selector shells -----------------------------------------------------------------------
class FakeCtx:
    def __init__(self, pool_size: int, update_index: int = 0):
        self.pool_size, self.update_index, self.global_step = pool_size, update_index, 2 * (update_index + 1)


def test_tsds_selector_draws_from_p_seeded_by_round(monkeypatch):
    candidates, queries = random_case(10)
    selector = TSDSSelector(budget=50, seed=3, max_K=30, kde_K=12)
    monkeypatch.setattr(selector, "embeddings", lambda ctx: (candidates, queries))
    p = tsds_probabilities(candidates, queries, max_K=30, kde_K=12)
    picked = selector.select(FakeCtx(400, update_index=1))
    from dataflex.selectors.base import seeded_generator

    assert torch.equal(picked, draw(p, 50, True, seeded_generator(3, 1)))
    assert selector.last_round["support"] == int((p > 0).sum())
    assert (p[picked] > 0).all()
    strict = TSDSSelector(budget=399, replacement=False, max_K=30, kde_K=12)
    monkeypatch.setattr(strict, "embeddings", lambda ctx: (candidates, queries))
    with pytest.raises(
        ValueError, match=r"needs 399 candidates with p > 0, but only \d+ have any \(set selector.replacement=true"
    ):
        strict.select(FakeCtx(400))


def test_warmup_zero_makes_the_first_decision_the_selection(monkeypatch):
    candidates, queries = random_case(11)
    index = KnnIndex(candidates)
    for warmup, expect_near in ((0, True), (4, False)):
        selector = NearSelector(budget=20, warmup_steps=warmup)
        monkeypatch.setattr(selector, "embeddings", lambda ctx: (candidates, queries))
        first = selector.initial_indices(FakeCtx(400, update_index=-1))
        assert torch.equal(first, near_indices(index, queries, 20)) == expect_near
        assert len(first) == 20


def test_queries_are_embedded_like_candidates(monkeypatch):
    """query: example (default): a query's text is the whole validation example, prompt + response, built
    exactly as a candidate's; query: prompt (the earlier behaviour) embeds the prompt only."""
    from datasets import Dataset

    from dataflex.config import ConfigError

    class Words:  # decodes token t as the word "w<t>"
        def decode(self, ids, skip_special_tokens=True):
            return " ".join(f"w{t}" for t in ids)

    rows = {"input_ids": [[1, 2, 3, 4], [5, 6, 7]], "labels": [[-100, -100, 3, 4], [-100, 6, 7]]}
    validation, pool = Dataset.from_dict(rows), Dataset.from_dict(rows)
    ctx = SimpleNamespace(require_validation=lambda who: validation, pool=pool, tokenizer=Words(), run_dir=None)
    for query, expected in (("example", ["w1 w2\nw3 w4", "w5\nw6 w7"]), ("prompt", ["w1 w2", "w5"])):
        selector = NearSelector(budget=1, query=query)
        encoded = []
        monkeypatch.setattr(selector, "_encode", lambda ctx, texts: encoded.append(list(texts)) or torch.eye(2, 3))  # noqa: B023
        selector.embeddings(ctx)
        candidates, queries = encoded
        assert candidates == ["w1 w2\nw3 w4", "w5\nw6 w7"] and queries == expected
    assert TSDSSelector(budget=1).query == "example" and TSDSSelector(budget=1, query="prompt").query == "prompt"
    with pytest.raises(ConfigError, match="query must be one of example, prompt"):
        NearSelector(budget=1, query="response")


def test_selectors_refuse_bad_settings():
    with pytest.raises(ValueError, match="embedding must be one of"):
        NearSelector(budget=4, embedding="tfidf")
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        NearSelector(budget=4, batch_size=0)
    with pytest.raises(ValueError, match=r"alpha must lie in \[0, 1\]"):
        TSDSSelector(budget=4, alpha=-0.1)
    with pytest.raises(ValueError, match="kde_nprobe must be >= 1"):
        TSDSSelector(budget=4, kde_nprobe=0)


@pytest.mark.parametrize("name, cls", [("near", NearSelector), ("tsds", TSDSSelector)])
def test_conf_documents_every_hyperparameter(name, cls):
    import inspect

    from dataflex.train.build import build_component

    path = Path(__file__).parents[2] / "dataflex" / "conf" / "selector" / f"{name}.yaml"
    text = path.read_text()
    assert text.startswith(f"# dataflex-run selector={name}")
    keys = set(yaml.safe_load(text)) - {"_target_", "name"}
    # restart_every: set by dataflex-cli's translation of an original YAML (its Flex epoch), not listed in the confs
    params = set(inspect.signature(cls.__init__).parameters) - {"self", "restart_every"}
    assert keys == params
    for key in keys:  # each documented: a comment on its line or a schedule paragraph
        line = next(line for line in text.splitlines() if line.startswith(f"{key}:"))
        assert "#" in line or key in ("warmup_steps", "update_every", "num_updates")
    component = build_component("selector", compose_config([f"selector={name}"])["selector"])
    assert isinstance(component, cls) and component.config_name == name


# -- end to end on the tiny model --------------------------------------------------------------
SCHEDULE = [
    "selector.budget=16",
    "selector.warmup_steps=2",
    "selector.update_every=2",
    "selector.num_updates=2",
    "eval.before=false",
    "eval.after=false",
    "trainer.max_steps=6",
]


def run_selector(tmp_path, overrides):
    from dataflex.run import Run

    run_dir = tmp_path / "run"
    run = Run(compose_config(overrides), run_dir)
    metrics = run.fit()
    assert math.isfinite(metrics["final_train_loss"])
    state = torch.load(run_dir / "checkpoints" / "checkpoint-6" / "dataflex_state.pt", weights_only=False)
    from support.runs import saved_rounds

    rounds = saved_rounds(run_dir)
    assert [r["update_index"] for r in rounds] == [-1, 0, 1]  # warm-up, then two update rounds
    assert [r["step"] for r in rounds] == [0, 2, 4] and state["updates_done"]["selector"] == 2
    assert [s["round"] for s in rounds] == [0, 1, 2]
    for record in rounds:
        assert record["run_id"] == run.run_id and record["selected"] == 16
    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "selector/selected" in r] == [0, 2, 4]
    # the last decision is the sampler's plan in force (the checkpoint keeps that plan only)
    assert state["sampler"]["history"][-1]["indices"].tolist() == rounds[-1]["indices"]
    return run_dir, state, rounds


def test_e2e_near_sentence_embeddings(tmp_path):
    run_dir, state, rounds = run_selector(tmp_path, ["selector=near", *SCHEDULE])
    pool = 256
    # the pool's sentence embeddings were cached under the run directory; the selection is NEAR's
    # round robin over them for the (subtask-interleaved) validation prompts
    (cache,) = (run_dir / "cache").glob("pool_sentence_*.pt")
    embeddings = torch.load(cache, weights_only=True)
    assert embeddings.shape == (pool, 384) and torch.allclose(embeddings.norm(dim=1), torch.ones(pool), atol=1e-5)
    for r in rounds[1:]:
        assert len(set(r["indices"])) == 16 and all(0 <= i < pool for i in r["indices"])
    assert rounds[1]["indices"] == rounds[2]["indices"]  # sentence embeddings: the same every round
    last = state["components"]["selector"]["last_round"]
    assert last["update_index"] == 1 and last["depth"] >= 4  # 100 prompts, k = 16: 4·ceil(16/100) deep at least
    assert rounds[0]["indices"] != rounds[1]["indices"]  # the warm-up was a random subset


def test_e2e_tsds_model_embeddings(tmp_path):
    _, state, rounds = run_selector(tmp_path, ["selector=tsds", "selector.embedding=model", *SCHEDULE])
    last = state["components"]["selector"]["last_round"]
    assert last["update_index"] == 1 and last["max_K"] == 25 and last["support"] >= 1
    for r in rounds[1:]:
        assert all(0 <= i < 256 for i in r["indices"])  # drawn with replacement: repeats allowed


def test_e2e_tsds_one_shot_sentence(tmp_path):
    """The paper's recipe: warmup_steps 0 and update_every 0: one draw at the start, kept for the run."""
    from dataflex.run import Run

    run_dir = tmp_path / "run"
    overrides = ["selector=tsds", "selector.budget=32", "eval.before=false", "eval.after=false", "trainer.max_steps=3"]
    metrics = Run(compose_config(overrides), run_dir).fit()
    assert math.isfinite(metrics["final_train_loss"])
    state = torch.load(run_dir / "checkpoints" / "checkpoint-3" / "dataflex_state.pt", weights_only=False)
    from support.runs import saved_rounds

    (decision,) = saved_rounds(run_dir)
    assert decision["update_index"] == -1 and len(decision["indices"]) == 32
    assert state["components"]["selector"]["last_round"]["update_index"] == -1
    assert [p.name for p in (run_dir / "selections").glob("round_*.json")] == ["round_000.json"]


# -- two gloo processes ------------------------------------------------------------------------
def _near_tsds_on_two_ranks():
    rank = torch.distributed.get_rank()
    ctx = SimpleNamespace(pool_size=300, update_index=0, global_step=2, run_dir=None, model=torch.nn.Linear(1, 1))
    texts = [f"sample number {i} is about topic {i % 7}" + " and more" * (i % 5) for i in range(23)]
    result = {"encoded": NearSelector(budget=20)._encode(ctx, texts).tolist()}
    # each rank sees different embeddings: rank 0's decision must be the one every rank keeps
    g = torch.Generator().manual_seed(rank)
    candidates = F.normalize(torch.randn(300, 16, generator=g), dim=1)
    queries = F.normalize(torch.randn(6, 16, generator=g), dim=1)
    for name, selector in (("near", NearSelector(budget=20)), ("tsds", TSDSSelector(budget=20, max_K=30, kde_K=10))):
        selector.embeddings = lambda ctx: (candidates, queries)
        picked = selector.select(ctx)
        result[name] = {"picked": picked.tolist(), "last_round": selector.last_round}
    # a bad setting found on rank 0 reaches every rank as the same error (no rank left waiting)
    strict = TSDSSelector(budget=299, replacement=False, max_K=30, kde_K=10)
    strict.embeddings = lambda ctx: (candidates, queries)
    try:
        strict.select(ctx)
        result["error"] = None
    except ValueError as err:
        result["error"] = str(err)
    return result


def test_two_processes_encode_sharded_and_keep_rank_zeros_decision():
    from dataflex.signals.embeddings import SentenceEncoder

    results = run_distributed(_near_tsds_on_two_ranks, 2, timeout=300)
    texts = [f"sample number {i} is about topic {i % 7}" + " and more" * (i % 5) for i in range(23)]
    alone = SentenceEncoder().encode(texts)
    g = torch.Generator().manual_seed(0)
    candidates, queries = (
        F.normalize(torch.randn(300, 16, generator=g), dim=1),
        F.normalize(torch.randn(6, 16, generator=g), dim=1),
    )
    for res in results:
        # each rank encoded every other text; gathered, they equal one process encoding them all
        assert torch.allclose(torch.tensor(res["encoded"]), alone, atol=1e-5)
        assert res["near"]["picked"] == near_indices(KnnIndex(candidates), queries, 20).tolist()
    assert results[0]["tsds"] == results[1]["tsds"]  # the same draw and summary on both ranks
    assert results[0]["error"] == results[1]["error"] and "needs 299 candidates with p > 0" in results[0]["error"]
    assert results[0]["tsds"]["last_round"]["support"] == int(
        (tsds_probabilities(candidates, queries, max_K=30, kde_K=10) > 0).sum()
    )
