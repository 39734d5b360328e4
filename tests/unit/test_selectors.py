"""Selectors static, random, loss, delta_loss: pure cores against hand-computed values and the
ALGORITHMS.md invariants, then one end-to-end run per selector on the tiny model."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
from support.runs import check_rounds, run_selection

from dataflex.selectors.base import PoolLossSelector, resolve_budget, seeded_generator
from dataflex.selectors.delta_loss import count_updates, delta_loss_probabilities, window_bounds
from dataflex.selectors.loss import LossSelector, loss_scores_to_indices, tercile_buckets, tercile_probabilities
from dataflex.selectors.random import RandomSelector, random_indices


# -- budget ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("budget, k", [(5, 5), (10, 10), (0.5, 5), (1.0, 10), (0.3, 3), (0.25, 2)])
def test_budget_count_or_fraction(budget, k):
    assert resolve_budget(budget, 10) == k


@pytest.mark.parametrize("budget", [0, -1, 11, 0.0, 1.5, -0.2, 0.05, True, "8"])
def test_budget_errors(budget):
    with pytest.raises(ValueError):
        resolve_budget(budget, 10)


def test_constructor_rejects_bad_budget_and_hyperparameters():
    with pytest.raises(ValueError, match="budget"):
        RandomSelector(budget=0)
    with pytest.raises(ValueError, match="rule"):
        LossSelector(budget=4, rule="bottomk")
    with pytest.raises(ValueError, match="focus"):
        LossSelector(budget=4, rule="tercile", focus="middle")


def test_seeded_generator_depends_on_seed_round_and_stream():
    def draw(*a):
        return torch.randint(10**9, (4,), generator=seeded_generator(*a)).tolist()

    assert draw(1, 3) == draw(1, 3)
    assert len({tuple(draw(*a)) for a in [(1, 3), (1, 4), (2, 3), (1, 3, 1), (1, -1)]}) == 5


# -- random ----------------------------------------------------------------------------------------
def test_random_same_seed_and_round_same_indices():
    assert torch.equal(random_indices(100, 10, seed=7, update_index=2), random_indices(100, 10, 7, 2))
    assert not torch.equal(random_indices(100, 10, 7, 2), random_indices(100, 10, 7, 3))
    assert not torch.equal(random_indices(100, 10, 7, 2), random_indices(100, 10, 8, 2))


def test_random_no_duplicates_and_k_equal_n_covers_everything():
    idx = random_indices(50, 20, 0, 0)
    assert idx.unique().numel() == 20 and int(idx.min()) >= 0 and int(idx.max()) < 50
    assert sorted(random_indices(50, 50, 0, 0).tolist()) == list(range(50))
    with_replacement = random_indices(5, 5, 0, 0, replacement=True)
    assert with_replacement.numel() == 5 and int(with_replacement.max()) < 5
    with pytest.raises(ValueError):
        random_indices(5, 6, 0, 0)


# -- loss ------------------------------------------------------------------------------------------
def test_topk_hand_computed():
    assert loss_scores_to_indices(torch.tensor([0.5, 2.0, 1.0, 3.0]), 2).tolist() == [3, 1]
    assert loss_scores_to_indices(torch.tensor([1.0, 1.0, 1.0]), 2).tolist() == [0, 1]  # stable ties


def test_topk_unchanged_by_monotone_transforms():
    losses = torch.rand(200, generator=torch.Generator().manual_seed(0)) * 5
    base = set(loss_scores_to_indices(losses, 30).tolist())
    for f in (torch.exp, torch.log, lambda x: 3 * x + 1, torch.sigmoid, lambda x: x**3):
        assert set(loss_scores_to_indices(f(losses), 30).tolist()) == base


def test_tercile_buckets_and_probabilities_hand_computed():
    losses = torch.tensor([6.0, 1.0, 4.0, 2.0, 5.0, 3.0])
    # q1 = 2 + 2/3, q2 = 4 + 1/3 (linear interpolation): 1, 2 low; 3, 4 medium; 5, 6 high
    assert tercile_buckets(losses).tolist() == [2, 0, 1, 0, 2, 1]
    p = tercile_probabilities(losses, "high", 1.0)
    torch.testing.assert_close(p, torch.tensor([5, 1, 1, 1, 5, 1], dtype=torch.float64) / 14)
    p = tercile_probabilities(losses, "low", 2.0)
    w = torch.tensor([1, math.sqrt(5), 1, math.sqrt(5), 1, 1], dtype=torch.float64)
    torch.testing.assert_close(p, w / w.sum())
    p = tercile_probabilities(losses, "medium", 1e6)  # T -> inf: uniform
    torch.testing.assert_close(p, torch.full((6,), 1 / 6, dtype=torch.float64), rtol=0, atol=1e-5)


def test_tercile_draw_without_replacement_and_focus():
    losses = torch.tensor([6.0, 1.0, 4.0, 2.0, 5.0, 3.0])
    g = torch.Generator().manual_seed(0)
    # T -> 0: the focus bucket's weight dominates, so its two samples are drawn first
    idx = loss_scores_to_indices(losses, 2, rule="tercile", focus="high", temperature=0.02, generator=g)
    assert sorted(idx.tolist()) == [0, 4]
    idx = loss_scores_to_indices(losses, 6, rule="tercile", generator=g)
    assert sorted(idx.tolist()) == list(range(6))

    def same():
        return loss_scores_to_indices(losses, 3, "tercile", generator=seeded_generator(1, 0)).tolist()

    assert same() == same()


def test_loss_core_errors():
    with pytest.raises(ValueError):
        loss_scores_to_indices(torch.ones(3), 4)
    with pytest.raises(ValueError):
        loss_scores_to_indices(torch.ones(3), 2, rule="nope")
    with pytest.raises(ValueError):
        loss_scores_to_indices(torch.arange(3.0), 2, rule="tercile", temperature=0.0)


def test_candidate_subset_is_seeded_sorted_and_bounded():
    def ctx(u):
        return SimpleNamespace(pool_size=100, update_index=u)

    sel = PoolLossSelector(budget=10, candidates=0.3, seed=3)
    a, b = sel.candidate_indices(ctx(1)), sel.candidate_indices(ctx(1))
    assert torch.equal(a, b) and a.numel() == 30 and torch.equal(a, a.unique())
    assert not torch.equal(a, sel.candidate_indices(ctx(2)))
    assert torch.equal(PoolLossSelector(budget=10).candidate_indices(ctx(0)), torch.arange(100))
    with pytest.raises(ValueError, match="at least the budget"):
        PoolLossSelector(budget=10, candidates=5).candidate_indices(ctx(0))


# -- delta loss ------------------------------------------------------------------------------------
DELTA = torch.tensor([0.5, -0.1, 0.9, 0.3, 0.0, 0.2, 0.1, 0.4, 0.6, 0.7])
# descending: 0.9 (2), 0.7 (9), 0.6 (8), 0.5 (0), 0.4 (7), 0.3 (3), 0.2 (5), 0.1 (6), 0.0 (4), -0.1 (1)


def inside(delta, u, U, w=0.2):
    order, start, end = window_bounds(delta, u, U, w)
    return sorted(order[start:end].tolist())


def test_delta_window_hand_computed():
    # N = 10, w = 0.2: size 2; start = floor(sigmoid(10 (t - 0.5)) * 8)
    assert inside(DELTA, 0, 1) == [2, 9]  # U = 1: t = 0, sigmoid(-5) * 8 = 0.05 -> 0
    assert inside(DELTA, 0, 3) == [2, 9]
    assert inside(DELTA, 1, 3) == [3, 7]  # t = 0.5: start 4
    assert inside(DELTA, 2, 3) == [4, 6]  # t = 1: sigmoid(5) * 8 = 7.95 -> 7
    p = delta_loss_probabilities(DELTA, 1, 3)
    expected = torch.full((10,), 0.025, dtype=torch.float64)
    expected[[3, 7]] = 1.0
    torch.testing.assert_close(p, expected / 2.2)


def test_delta_window_cut_at_first_negative():
    delta = DELTA.clone()
    delta[4] = -0.05  # now position 8 holds a negative: the window [7, 9) is cut to [7, 8)
    assert inside(delta, 2, 3) == [6]
    all_negative = -torch.arange(1.0, 11.0)
    p = delta_loss_probabilities(all_negative, 2, 3)  # empty window: uniform
    torch.testing.assert_close(p, torch.full((10,), 0.1, dtype=torch.float64))


def test_delta_invariants():
    g = torch.Generator().manual_seed(0)
    losses0 = torch.rand(50, generator=g) * 3
    zero = losses0 - losses0  # θ_t = θ_0
    assert torch.equal(zero, torch.zeros(50))
    for U in (1, 2, 5):
        for u in range(U):
            p = delta_loss_probabilities(zero, u, U)
            assert torch.all(p > 0) and math.isclose(float(p.sum()), 1.0, rel_tol=1e-12)
    delta = torch.randn(50, generator=g)
    starts = []
    for u in range(7):
        order, start, end = window_bounds(delta, u, 7)
        starts.append(start)
        assert not torch.any(delta[order[start:end]] < 0)
        p = delta_loss_probabilities(delta, u, 7)
        assert math.isclose(float(p.sum()), 1.0, rel_tol=1e-12) and torch.all(p > 0)
    assert starts == sorted(starts) and starts[-1] > starts[0]


def test_delta_errors_and_update_count():
    with pytest.raises(ValueError):
        delta_loss_probabilities(DELTA, 3, 3)
    with pytest.raises(ValueError):
        delta_loss_probabilities(DELTA, 0, 0)
    with pytest.raises(ValueError):
        delta_loss_probabilities(DELTA, 0, 1, window=0.0)
    from dataflex.train.components import Schedule

    assert count_updates(Schedule(2, 2, 0), 6) == 2  # steps 2, 4 (a round due at the last step is not run)
    assert count_updates(Schedule(2, 2, 0), 7) == 3  # steps 2, 4, 6
    assert count_updates(Schedule(2, 2, 2), 7) == 2
    assert count_updates(Schedule(0, 0, 0), 6) == 1
    from dataflex.train.components import selection_due

    assert selection_due(Schedule(2, 2, 0), 4, 1, 6) and not selection_due(Schedule(2, 2, 0), 6, 2, 6)
    assert Schedule(2, 2, 0).is_update_step(6, 2)  # the schedule has it; only a selection skips it


# -- end to end on the tiny model ------------------------------------------------------------------
SCHEDULE = [
    "selector.budget=16",
    "selector.warmup_steps=2",
    "selector.update_every=2",
    "eval.before=false",
    "eval.after=false",
    "trainer.max_steps=6",
]


def test_e2e_static(tmp_path):
    _, state = run_selection(
        tmp_path, ["selector=static", "eval.before=false", "eval.after=false", "trainer.max_steps=6"]
    )
    assert state["components"]["selector"] == {"decisions": 1, "indices": None}
    assert "selector" in state["updates_done"] and state["updates_done"]["selector"] == 0
    assert all(p["indices"] is None for p in state["sampler"]["history"])


def test_e2e_random(tmp_path):
    cfg, state = run_selection(tmp_path, ["selector=random", *SCHEDULE])
    rounds = check_rounds(state, tmp_path / "x")
    for r in rounds:
        assert r["indices"] == random_indices(256, 16, cfg.selector.seed, r["update_index"]).tolist()


def test_e2e_loss(tmp_path):
    _, state = run_selection(tmp_path, ["selector=loss", *SCHEDULE])
    rounds = check_rounds(state, tmp_path / "x")
    scores = state["components"]["selector"]["last_scores"]
    assert scores["update_index"] == 1 and torch.equal(scores["candidates"], torch.arange(256))
    losses = scores["losses"]
    assert losses.shape == (256,) and torch.isfinite(losses).all() and (losses > 0).all()
    assert rounds[-1]["indices"] == torch.topk(losses, 16).indices.tolist()
    saved = json.loads((tmp_path / "x" / "selections" / "round_002.json").read_text())
    assert saved["stats"] == {"selector/scored": 256.0}  # the round scored the whole pool


def test_e2e_delta_loss(tmp_path):
    _, state = run_selection(tmp_path, ["selector=delta_loss", "selector.candidates=64", *SCHEDULE])
    rounds = check_rounds(state, tmp_path / "x")
    sel = state["components"]["selector"]
    l0 = sel["initial_losses"]
    assert l0.shape == (256,) and torch.isfinite(l0).all() and (l0 > 0).all()
    scores = sel["last_scores"]
    assert scores["num_updates"] == 2 and scores["update_index"] == 1  # the last round held the last window
    cand = scores["candidates"]
    assert cand.numel() == 64 and torch.equal(cand, cand.unique())
    assert set(rounds[-1]["indices"]) <= set(cand.tolist())
    assert torch.isfinite(scores["delta"]).all() and scores["delta"].abs().max() > 0  # the model moved
    saved = json.loads((tmp_path / "x" / "selections" / "round_002.json").read_text())
    assert saved["stats"] == {"selector/scored": 64.0}  # the round's candidates, not the pool
