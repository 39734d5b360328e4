"""Cosine kNN (dataflex.signals.knn): exact search against brute force, IVF on an easy clustered case,
range search, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dataflex.signals.knn import KnnIndex, as_normalized_array, knn, sort_rows


def clustered(n: int, centers: torch.Tensor, noise: float, generator: torch.Generator) -> torch.Tensor:
    """Unit vectors around random ``centers`` (cosine to the centre about 1/sqrt(1 + noise²))."""
    d = centers.shape[1]
    which = torch.randint(len(centers), (n,), generator=generator)
    return F.normalize(centers[which] + noise * torch.randn(n, d, generator=generator) / d**0.5, dim=1)


@pytest.fixture(scope="module")
def clusters():
    g = torch.Generator().manual_seed(0)
    centers = F.normalize(torch.randn(16, 24, generator=g), dim=1)
    return clustered(4000, centers, 0.3, g), clustered(40, centers, 0.3, g)


def brute_force(candidates: torch.Tensor, queries: torch.Tensor, k: int):
    """Top-k cosine by a dense torch product (float64), ties to the lower index."""
    scores = F.normalize(queries.double(), dim=1) @ F.normalize(candidates.double(), dim=1).T
    # a stable sort of -score keeps equal scores in increasing index
    order = torch.sort(-scores, dim=1, stable=True).indices[:, :k]
    return scores.gather(1, order), order


def test_normalisation_by_hand():
    x = as_normalized_array(torch.tensor([[3.0, 4.0], [0.0, 0.0], [0.0, -2.0]]))
    assert x.dtype == np.float32 and x.flags["C_CONTIGUOUS"]
    np.testing.assert_allclose(x, [[0.6, 0.8], [0.0, 0.0], [0.0, -1.0]])
    with pytest.raises(ValueError, match="2-D"):
        as_normalized_array(np.zeros(3))
    with pytest.raises(ValueError, match="NaN"):
        as_normalized_array(np.array([[np.nan, 1.0]]))


def test_sort_rows_orders_by_score_then_index_padding_last():
    scores = np.array([[0.5, 0.9, 0.5, -1.0]], dtype=np.float32)
    indices = np.array([[7, 3, 2, -1]])
    s, i = sort_rows(scores, indices)
    assert i.tolist() == [[3, 2, 7, -1]] and s[0].tolist() == pytest.approx([0.9, 0.5, 0.5, -1.0])


def test_exact_search_equals_brute_force():
    g = torch.Generator().manual_seed(1)
    candidates, queries = torch.randn(700, 16, generator=g), torch.randn(30, 16, generator=g)
    index = KnnIndex(candidates)
    assert index.exact and index.nlist == 1
    scores, indices = index.search(queries, 25)
    want_scores, want_indices = brute_force(candidates, queries, 25)
    assert torch.equal(indices, want_indices)
    assert torch.allclose(scores.double(), want_scores, atol=1e-5)
    # the convenience wrapper is the same search
    assert torch.equal(knn(candidates, queries, 25)[1], want_indices)


def test_exact_search_breaks_ties_by_lower_index_and_finds_itself():
    base = F.normalize(torch.randn(50, 8, generator=torch.Generator().manual_seed(2)), dim=1)
    candidates = torch.cat([base, base[:5]])  # rows 50..54 duplicate rows 0..4
    _, indices = KnnIndex(candidates).search(base[:5], 2)
    assert indices.tolist() == [[j, 50 + j] for j in range(5)]


def test_ivf_returns_the_exact_answer_on_clustered_data(clusters):
    candidates, queries = clusters
    exact = KnnIndex(candidates)
    ivf = KnnIndex(candidates, exact_max=0, seed=0)
    assert not ivf.exact and ivf.nlist == round(4000**0.5) and ivf.nlist <= 4000 // 39
    # every candidate sits in exactly one cell
    assert sorted(np.concatenate(ivf._members).tolist()) == list(range(4000))
    assert all((ivf.cell_of[m] == c).all() for c, m in enumerate(ivf._members))
    for k in (1, 10, 60):
        s_exact, i_exact = exact.search(queries, k)
        s_ivf, i_ivf = ivf.search(queries, k)
        assert torch.equal(i_ivf, i_exact), k
        assert torch.allclose(s_ivf, s_exact, atol=1e-5)
    _, i_brute = brute_force(candidates, queries, 10)
    assert torch.equal(exact.search(queries, 10)[1], i_brute)


def test_ivf_always_returns_k_real_neighbours(clusters):
    candidates, queries = clusters
    ivf = KnnIndex(candidates, exact_max=0, nprobe=1)
    k = 3000  # more than the cells scanned at first hold: those rows are searched over every cell
    scores, indices = ivf.search(queries, k)
    assert (indices >= 0).all()
    assert all(row.unique().numel() == k for row in indices)
    assert (scores[:, :-1] >= scores[:, 1:]).all()


def test_ivf_is_deterministic_for_a_seed(clusters):
    candidates, queries = clusters
    a = KnnIndex(candidates, exact_max=0, nprobe=2, seed=3)
    b = KnnIndex(candidates, exact_max=0, nprobe=2, seed=3)
    assert np.array_equal(a.cell_of, b.cell_of)
    assert torch.equal(a.search(queries, 50)[1], b.search(queries, 50)[1])


@pytest.mark.parametrize("max_results", [None, 7])
def test_range_search_equals_brute_force(clusters, max_results):
    candidates, queries = clusters
    scores = F.normalize(queries.double(), dim=1) @ F.normalize(candidates.double(), dim=1).T
    in_range = [set(torch.nonzero(row > 0.9).flatten().tolist()) for row in scores]
    assert sum(map(len, in_range)) > 100  # the threshold does select something
    for index in (
        KnnIndex(candidates),
        KnnIndex(candidates, exact_max=0, nprobe=40),
    ):  # nprobe 40 of 63: the near cells
        found = index.range_search(queries, 0.9, max_results=max_results)
        assert found.owners().tolist() == sorted(found.owners().tolist())
        for j, want in enumerate(in_range):
            got = found.indices[found.lims[j] : found.lims[j + 1]].tolist()
            got_scores = found.scores[found.lims[j] : found.lims[j + 1]]
            assert len(got) == len(set(got)) == min(len(want), max_results or len(want))
            assert set(got) <= want and (got_scores > 0.9).all()
            assert (np.diff(got_scores) <= 0).all()  # best first
            np.testing.assert_allclose(got_scores, scores[j, got].numpy(), atol=1e-5)
            left_out = want - set(got)
            if left_out:  # the best ones are kept (up to float32 rounding)
                assert got_scores.min() >= scores[j, sorted(left_out)].max().item() - 1e-5


def test_range_search_on_given_cells_scans_only_those(clusters):
    candidates, _ = clusters
    ivf = KnnIndex(candidates, exact_max=0)
    rows = np.arange(0, 4000, 97)
    found = ivf.range_search(ivf.data[rows], 0.5, cells=ivf.cell_of[rows][:, None])
    for j, r in enumerate(rows):
        got = found.indices[found.lims[j] : found.lims[j + 1]]
        assert r in got  # a candidate is in its own cell
        assert (ivf.cell_of[got] == ivf.cell_of[r]).all()


def test_bad_arguments_are_refused():
    x = torch.randn(20, 4)
    index = KnnIndex(x)
    with pytest.raises(ValueError, match=r"k must lie in \[1, 20\]"):
        index.search(x[:2], 21)
    with pytest.raises(ValueError, match="dimension 3, candidates 4"):
        index.search(torch.randn(2, 3), 1)
    with pytest.raises(ValueError, match="no candidates"):
        KnnIndex(torch.zeros(0, 4))
    with pytest.raises(ValueError, match="train_per_list"):
        KnnIndex(x, train_per_list=10)
    with pytest.raises(ValueError, match="max_results"):
        index.range_search(x[:2], 0.5, max_results=0)
