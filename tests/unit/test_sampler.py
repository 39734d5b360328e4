"""DynamicSampler: decisions take effect at the next draw, a restored state continues exactly, draws carry
their probability."""

import itertools

import pytest
import torch

from dataflex.train.sampler import DynamicSampler, _Streams


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


def test_a_restored_sampler_continues_exactly_without_replaying(monkeypatch):
    """The state saved at a checkpoint's draw position (behind the live, prefetching iterator, with
    a plan pushed for a later draw) continues the stream exactly; the draws before it are
    placeholders the trainer skips, not replayed draws."""
    domains = [0] * 30 + [1] * 30
    live = DynamicSampler(domains, num_draws=120, seed=9, batch_size=4)
    it = iter(live)
    stream = take(it, 13)
    live.set_indices(list(range(0, 60, 2)))
    stream += take(it, 20)
    live.set_proportions([0.2, 0.8])
    stream += take(it, 7)  # live position 40
    state = live.state_dict(position=32)  # the checkpoint: 8 steps of 4 draws trained
    live.set_proportions([0.9, 0.1])  # a decision after the checkpoint, pushed at draw 40
    stream += take(it, 80)

    resumed = DynamicSampler(domains, num_draws=120, seed=9, batch_size=4)
    resumed.load_state_dict(state)
    assert resumed.resume_position == 32
    made = []
    original = _Streams.draw
    monkeypatch.setattr(_Streams, "draw", lambda self, i: made.append(i) or original(self, i))
    it = iter(resumed)
    head = take(it, 40)
    assert all(type(d).__name__ == "_SkippedDraw" for d in head[:32]) and made == list(range(32, 40))
    assert head[32:] == stream[32:40]
    resumed.set_proportions([0.9, 0.1])  # the resumed run makes the same decision at the same draw
    assert take(it, 80) == stream[40:]
    assert made[0] == 32  # nothing before the checkpoint was drawn again


def test_without_skipping_a_restored_sampler_starts_at_its_position():
    live = DynamicSampler([0, 1] * 10, num_draws=50, seed=2)
    stream = list(live)
    partial = DynamicSampler([0, 1] * 10, num_draws=50, seed=2)
    it = iter(partial)
    take(it, 21)
    resumed = DynamicSampler([0, 1] * 10, num_draws=50, seed=2)
    resumed.load_state_dict(partial.state_dict())
    resumed.skip_resumed = False  # ignore_data_skip: the trainer skips nothing
    assert len(resumed) == 29 and list(resumed) == stream[21:]


def test_a_state_the_sampler_no_longer_holds_is_refused():
    sampler = DynamicSampler([0] * 10, num_draws=100, seed=0, batch_size=5)
    it = iter(sampler)
    take(it, 20)
    with pytest.raises(RuntimeError, match="no sampler state kept for draw 12"):
        sampler.state_dict(position=12)


def test_each_domain_stream_continues_across_proportion_changes():
    """A proportion change keeps every domain's permutation and cursor: each domain still yields
    every one of its samples once per pass."""
    domains = [0] * 10 + [1] * 10
    sampler = DynamicSampler(domains, num_draws=400, seed=4)
    sampler.set_proportions([0.5, 0.5])
    it = iter(sampler)
    draws = []
    for step in range(40):
        draws += take(it, 10)
        sampler.set_proportions([0.1 + 0.02 * step, 0.9 - 0.02 * step])  # a new plan every 10 draws
    for d in (0, 1):
        own = [i for i in draws if domains[i] == d]
        for p in range(len(own) // 10):
            assert sorted(own[10 * p : 10 * (p + 1)]) == list(range(10 * d, 10 * d + 10))


def test_every_draw_carries_its_draw_time_probability():
    domains = [0] * 4 + [1] * 16
    sampler = DynamicSampler(domains, num_draws=60, seed=0)
    sampler.set_proportions([0.25, 0.75])
    it = iter(sampler)
    first = take(it, 30)
    sampler.set_indices([0, 1, 4, 5, 6, 7, 8, 9, 10, 11])  # domain 0: 2 selected, domain 1: 8
    sampler.set_proportions([0.5, 0.5])
    rest = take(it, 30)
    for draw in first:
        p = 0.25 if domains[draw] == 0 else 0.75
        assert draw.domain_probability == pytest.approx(p)
        assert draw.probability == pytest.approx(p / (4 if domains[draw] == 0 else 16))
    for draw in rest:
        assert draw.domain_probability == pytest.approx(0.5)
        assert draw.probability == pytest.approx(0.5 / (2 if domains[draw] == 0 else 8))
    unmixed = DynamicSampler(domains, num_draws=5, seed=0)
    assert all(d.probability == pytest.approx(1 / 20) for d in unmixed)
    assert all(d.domain_probability == pytest.approx(0.2 if domains[d] == 0 else 0.8) for d in unmixed)


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
