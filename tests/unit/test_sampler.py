"""DynamicSampler: decisions take effect at the next draw, replay is exact, state round-trips."""

import itertools

import pytest
import torch

from dataflex.train.sampler import DynamicSampler


def take(iterator, n):
    return list(itertools.islice(iterator, n))


def test_without_plan_every_sample_once_per_pass():
    sampler = DynamicSampler([0] * 10, num_draws=30, seed=1)
    draws = list(sampler)
    assert len(draws) == 30
    for p in range(3):
        assert sorted(draws[10 * p : 10 * (p + 1)]) == list(range(10))
    assert draws[:10] != draws[10:20]  # each pass is a fresh permutation


def test_same_seed_same_stream_other_seed_other_stream():
    a, b, c = (list(DynamicSampler([0] * 50, 50, seed=s)) for s in (3, 3, 4))
    assert a == b and a != c


def test_selection_takes_effect_at_next_draw():
    sampler = DynamicSampler([0] * 100, num_draws=60, seed=0)
    it = iter(sampler)
    first = take(it, 7)
    sampler.set_indices([5, 6, 7])
    rest = take(it, 53)
    assert len(first) == 7 and set(rest) == {5, 6, 7}
    assert sampler.history[-1].start == 7


def test_proportions_follow_the_domains():
    domains = [0] * 50 + [1] * 50
    sampler = DynamicSampler(domains, num_draws=4000, seed=0)
    sampler.set_proportions([0.9, 0.1])
    draws = torch.tensor(list(sampler))
    share = (draws < 50).float().mean().item()
    assert abs(share - 0.9) < 0.03
    sampler2 = DynamicSampler(domains, num_draws=200, seed=0)
    sampler2.set_proportions([0.0, 1.0])
    assert all(i >= 50 for i in sampler2)


def test_mixture_within_a_selection():
    domains = [0] * 10 + [1] * 10
    sampler = DynamicSampler(domains, num_draws=300, seed=0)
    sampler.set_indices([0, 1, 15])
    sampler.set_proportions([0.5, 0.5])
    draws = list(sampler)
    assert set(draws) == {0, 1, 15}
    # domain 1 has one selected sample, drawn about half the time
    assert 100 < draws.count(15) < 200


def test_replay_with_restored_history_is_identical():
    """A resumed run replays draws from 0 with the restored plan history: same stream."""
    domains = [0] * 30 + [1] * 30
    live = DynamicSampler(domains, num_draws=120, seed=9)
    it = iter(live)
    stream = take(it, 13)
    live.set_indices(list(range(0, 60, 2)))
    stream += take(it, 20)
    live.set_proportions([0.2, 0.8])
    stream += take(it, 87)

    resumed = DynamicSampler(domains, num_draws=120, seed=9)
    resumed.load_state_dict(live.state_dict())
    assert list(resumed) == stream


def test_state_for_another_run_is_refused():
    state = DynamicSampler([0] * 5, 10, seed=1).state_dict()
    with pytest.raises(ValueError, match="seed"):
        DynamicSampler([0] * 5, 10, seed=2).load_state_dict(state)


@pytest.mark.parametrize(
    "action, match",
    [
        (lambda s: s.set_indices([]), "at least one"),
        (lambda s: s.set_indices([0, 99]), r"\[0, 4\)"),
        (lambda s: s.set_proportions([1.0]), "2 domains"),
        (lambda s: s.set_proportions([-0.5, 1.5]), ">= 0"),
        (lambda s: s.set_proportions([float("nan"), 1.0]), "finite"),
    ],
)
def test_bad_decisions_are_refused(action, match):
    sampler = DynamicSampler([0, 0, 1, 1], 10, 0)
    with pytest.raises(ValueError, match=match):
        action(sampler)


def test_a_domain_without_selected_samples_is_skipped_and_no_drawable_domain_is_refused():
    # selector + mixer: the proportions apply over the domains the selection holds (renormalised)
    sampler = DynamicSampler([0, 0, 1, 1, 2, 2], 10, 0)
    sampler.set_indices([0, 1, 4])
    sampler.set_proportions([0.25, 0.5, 0.25])
    drawn = list(sampler)
    assert set(drawn) == {0, 1, 4}
    sampler = DynamicSampler([0, 0, 1, 1, 2, 2], 10, 0)
    sampler.set_indices([0, 1, 4])
    sampler.set_proportions([0.0, 1.0, 0.0])  # the only weighted domain has no selected sample
    with pytest.raises(ValueError, match=r"domains \[1\]"):
        list(sampler)


def _chi_square(draws: torch.Tensor, domains: torch.Tensor, proportions: list[float]) -> float:
    """Pearson's statistic of the drawn domains' counts against the proportions."""
    counts = torch.bincount(domains[draws], minlength=len(proportions)).double()
    expected = torch.tensor(proportions, dtype=torch.float64) * draws.numel()
    return float(((counts - expected) ** 2 / expected).sum())


# chi-square critical value, 3 degrees of freedom, p = 0.001 (the tests use a fixed seed: a failure
# means the draws do not follow the proportions, not bad luck)
CHI2_3DF_P001 = 16.266


def test_domain_frequencies_match_the_proportions_chi_square():
    domains = torch.tensor([0] * 40 + [1] * 7 + [2] * 100 + [3] * 13)  # sizes unrelated to the proportions
    proportions = [0.1, 0.2, 0.3, 0.4]
    sampler = DynamicSampler(domains, num_draws=5000, seed=3)
    sampler.set_proportions(proportions)
    draws = torch.tensor(list(sampler))
    assert _chi_square(draws, domains, proportions) < CHI2_3DF_P001
    # the statistic can fail: the same draws against the domain sizes are far off
    sizes = (torch.bincount(domains).double() / len(domains)).tolist()
    assert _chi_square(draws, domains, sizes) > 100 * CHI2_3DF_P001


def test_after_a_proportion_change_the_next_draws_follow_the_new_proportions():
    domains = torch.tensor([0] * 25 + [1] * 25 + [2] * 25 + [3] * 25)
    before, after = [0.7, 0.1, 0.1, 0.1], [0.05, 0.05, 0.1, 0.8]
    sampler = DynamicSampler(domains, num_draws=4300, seed=5)
    sampler.set_proportions(before)
    it = iter(sampler)
    first = torch.tensor(take(it, 300))
    sampler.set_proportions(after)  # a live update, as a mixer makes between steps
    rest = torch.tensor(take(it, 4000))
    assert sampler.history[-1].start == 300
    assert _chi_square(first, domains, before) < CHI2_3DF_P001
    assert _chi_square(rest, domains, after) < CHI2_3DF_P001
    assert _chi_square(rest[:200], domains, before) > 10 * CHI2_3DF_P001  # the very next draws already changed
