"""Mixers: the DoReMi/ODM pure cores against hand-computed values and the ALGORITHMS.md invariants,
the static and random mixers, and end-to-end runs on the tiny model."""

from __future__ import annotations

import itertools
import json
import math
from types import SimpleNamespace

import pytest
import torch
from support.config import compose_config

from dataflex.errors import ConfigError
from dataflex.mixers.doremi import domain_excess_loss, doremi_update, running_mean
from dataflex.mixers.odm import exp3_epsilon, exp3_probabilities, odm_update_rewards
from dataflex.mixers.random import RandomMixer, dirichlet_draw
from dataflex.mixers.static import StaticMixer


def on_simplex(p, atol=1e-6):
    return bool((p >= 0).all()) and abs(float(p.sum()) - 1.0) < atol


def ctx_for(domain_ids, update_index=-1, global_step=0):
    """A stand-in UpdateContext: the mixers here only read domain ids and counters."""
    return SimpleNamespace(
        domain_ids=torch.as_tensor(domain_ids),
        update_index=update_index,
        global_step=global_step,
    )


# -- DoReMi -------------------------------------------------------------------------------------
def test_doremi_update_hand_computed():
    # α' = [0.5·3, 0.5·1] -> [0.75, 0.25]; with c = 0.1, K = 2: 0.9·α + 0.05.
    out = doremi_update(
        torch.tensor([0.5, 0.5]),
        torch.tensor([math.log(3.0), 0.0]),
        eta=1.0,
        smoothing=0.0,
    )
    assert torch.allclose(out, torch.tensor([0.75, 0.25]), atol=1e-6)
    out = doremi_update(
        torch.tensor([0.5, 0.5]),
        torch.tensor([math.log(3.0), 0.0]),
        eta=1.0,
        smoothing=0.1,
    )
    assert torch.allclose(out, torch.tensor([0.725, 0.275]), atol=1e-6)
    assert out.dtype == torch.float32


def test_doremi_simplex_and_floor_even_for_huge_steps():
    torch.manual_seed(0)
    k, c = 7, 1e-3
    alpha = torch.full((k,), 1.0 / k, dtype=torch.float64)
    for _ in range(50):
        alpha = doremi_update(alpha, torch.rand(k, dtype=torch.float64) * 1e4, eta=10.0, smoothing=c)
        assert torch.isfinite(alpha).all() and on_simplex(alpha, 1e-9)
        assert (alpha >= c / k - 1e-12).all()


def test_doremi_equal_losses_keep_alpha_uniform():
    losses = torch.rand(3, 5) * 4
    domains = torch.tensor([[0] * 5, [1] * 5, [2, 2, 2, -1, -1]])
    excess = domain_excess_loss(losses, losses.clone(), domains, 4)
    assert torch.equal(excess, torch.zeros(4))
    alpha = torch.full((4,), 0.25)
    for _ in range(5):
        alpha = doremi_update(alpha, excess)
    assert torch.allclose(alpha, torch.full((4,), 0.25))


def test_doremi_largest_excess_gains_weight():
    alpha = torch.tensor([0.1, 0.2, 0.3, 0.4])
    new = doremi_update(alpha, torch.tensor([0.1, 2.0, 0.5, 0.0]))
    assert new[1] > alpha[1] and int(torch.argmax(new / alpha)) == 1


def test_doremi_eta_zero_moves_toward_uniform():
    alpha = torch.tensor([0.7, 0.2, 0.1], dtype=torch.float64)
    uniform = torch.full((3,), 1 / 3, dtype=torch.float64)
    new = doremi_update(alpha, torch.tensor([5.0, 0.0, 1.0]), eta=0.0, smoothing=0.1)
    assert (new - uniform).abs().sum() < (alpha - uniform).abs().sum()
    assert torch.allclose(new, 0.9 * alpha + 0.1 / 3)


def test_doremi_clip_option():
    alpha = torch.tensor([0.5, 0.5], dtype=torch.float64)
    clipped = doremi_update(alpha, torch.tensor([100.0, 0.0]), smoothing=0.0, clip=5.0)
    assert torch.allclose(clipped, doremi_update(alpha, torch.tensor([5.0, 0.0]), smoothing=0.0))
    assert clipped[0] < doremi_update(alpha, torch.tensor([100.0, 0.0]), smoothing=0.0)[0]


def test_doremi_rejects_bad_inputs():
    with pytest.raises(ValueError, match="excess"):
        doremi_update(torch.ones(3) / 3, torch.zeros(2))
    with pytest.raises(ValueError, match="smoothing"):
        doremi_update(torch.ones(2) / 2, torch.zeros(2), smoothing=2.0)
    with pytest.raises(ValueError, match="weights"):
        doremi_update(torch.tensor([-0.5, 1.5]), torch.zeros(2))


def test_domain_excess_loss_hand_computed_and_absent_domain():
    losses = torch.tensor([[2.0, 1.0, 3.0], [1.0, 1.0, 0.0]])
    ref = torch.tensor([[1.0, 2.0, 1.0], [1.0, 0.0, 9.0]])
    domains = torch.tensor([[0, 0, 0], [1, 1, -1]])  # -1: a token that does not count
    # domain 0: (1 + 0 + 2)/3 = 1; domain 1: (0 + 1)/2 = 0.5; domain 2 absent: 0.
    out = domain_excess_loss(losses, ref, domains, 3)
    assert torch.allclose(out, torch.tensor([1.0, 0.5, 0.0]))
    # Per-sample ids broadcast over tokens; a mask drops tokens like -1 does.
    mask = torch.tensor([[True, True, True], [True, True, False]])
    assert torch.allclose(domain_excess_loss(losses, ref, torch.tensor([[0], [1]]), 3, mask=mask), out)
    with pytest.raises(ValueError, match="num_domains"):
        domain_excess_loss(losses, ref, domains, 1)


def test_running_mean_equals_mean():
    values = [torch.rand(4) for _ in range(6)]
    mean = None
    for n, v in enumerate(values):
        mean = running_mean(mean, v, n)
    assert torch.allclose(mean, torch.stack(values).mean(0), atol=1e-6)


# -- ODM ----------------------------------------------------------------------------------------
def test_exp3_epsilon_and_probabilities_hand_computed():
    k = 4
    assert exp3_epsilon(0, k) == 0.25 and exp3_epsilon(1, k) == 0.25  # sqrt(ln4/4) > 1/4
    assert exp3_epsilon(100, k) == pytest.approx(math.sqrt(math.log(4) / 400))
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    assert torch.allclose(exp3_probabilities(rewards, 1), torch.full((4,), 0.25, dtype=torch.float64))
    e_t, e_prev = math.sqrt(math.log(4) / 400), math.sqrt(math.log(4) / 396)
    soft0 = math.exp(e_prev) / (math.exp(e_prev) + 3)
    expected = [(1 - 4 * e_t) * soft0 + e_t] + [(1 - 4 * e_t) * (1 - soft0) / 3 + e_t] * 3
    assert torch.allclose(exp3_probabilities(rewards, 100), torch.tensor(expected, dtype=torch.float64))
    with pytest.raises(ValueError, match="step"):
        exp3_probabilities(rewards, 0)


def test_exp3_invariants():
    torch.manual_seed(0)
    for k in (1, 2, 7):
        eps = [exp3_epsilon(t, k) for t in range(500)]
        assert all(a >= b for a, b in itertools.pairwise(eps))  # non-increasing
        for t in (1, 5, 50, 499):
            rewards = torch.randn(k, dtype=torch.float64) * 100
            pi = exp3_probabilities(rewards, t)
            assert on_simplex(pi, 1e-9) and (pi >= exp3_epsilon(t, k) - 1e-12).all()
            equal = exp3_probabilities(torch.full((k,), 3.0, dtype=torch.float64), t)
            assert torch.allclose(equal, torch.full((k,), 1.0 / k, dtype=torch.float64))


def test_odm_update_rewards_hand_computed():
    rewards = torch.tensor([1.0, 2.0, 3.0])
    losses = torch.tensor([2.0, 5.0, float("nan")])  # the absent domain's loss is never read
    pi = torch.tensor([0.5, 0.25, 0.25])
    present = torch.tensor([True, True, False])
    out = odm_update_rewards(rewards, losses, pi, present, alpha=0.9)
    assert torch.allclose(out, torch.tensor([0.9 + 0.1 * 4, 1.8 + 0.1 * 20, 3.0]))
    # exp_loss (the reference code's smoothed mean): exp(L_i), no importance weight 1/π
    out = odm_update_rewards(rewards, losses, pi, present, alpha=0.9, reward="exp_loss")
    assert torch.allclose(out, torch.tensor([0.9 + 0.1 * math.exp(2), 1.8 + 0.1 * math.exp(5), 3.0]))
    with pytest.raises(ValueError, match="reward"):
        odm_update_rewards(rewards, losses, pi, present, reward="nope")


def test_odm_exp_loss_check_value():
    """docs/ALGORITHMS.md's check: K = 3, L = (2, 3, 4), R̂ from 0, α = 0.9, t = 100 gives
    π ≈ (0.134, 0.261, 0.605) under the linear policy."""
    from types import SimpleNamespace

    from dataflex.mixers.odm import ODMMixer, linear_probabilities

    rewards = odm_update_rewards(
        torch.zeros(3, dtype=torch.float64),
        torch.tensor([2.0, 3.0, 4.0]),
        torch.full((3,), 1 / 3),
        torch.ones(3, dtype=torch.bool),
        alpha=0.9,
        reward="exp_loss",
    )
    by_hand = [0.1 * math.exp(x) for x in (2.0, 3.0, 4.0)]
    eps = math.sqrt(math.log(3) / 300)
    expected = [(1 - 3 * eps) * r / sum(by_hand) + eps for r in by_hand]
    pi = linear_probabilities(rewards, 100)
    assert pi.tolist() == pytest.approx(expected, rel=1e-12)
    assert pi.tolist() == pytest.approx([0.134, 0.261, 0.605], abs=5e-4)
    # the component: one update at the end of global optimizer step 100 (ε indexed by the step)
    mixer = ODMMixer(reward="exp_loss", update_every=100)
    mixer.initial_proportions(SimpleNamespace(domain_ids=torch.tensor([0, 1, 2, 2])))
    mixer.observe_batch(torch.tensor([2.0, 3.0, 4.0, 4.0]), {"domain_id": torch.tensor([0, 1, 2, 2])})
    assert mixer.update(SimpleNamespace(global_step=100)).tolist() == pytest.approx(expected, rel=1e-12)
    assert linear_probabilities(torch.zeros(3), 1).tolist() == pytest.approx([1 / 3] * 3)


def test_odm_epsilon_follows_the_global_step_and_warmup_keeps_the_initial_proportions():
    from types import SimpleNamespace

    from dataflex.mixers.odm import ODMMixer

    # natural initial proportions (3 : 1), held through the warm-up: the first update is at step 4
    mixer = ODMMixer(warmup_steps=4, update_every=20)
    start = mixer.initial_proportions(SimpleNamespace(domain_ids=torch.tensor([0, 0, 0, 1])))
    assert start.tolist() == [0.75, 0.25]
    assert [mixer.schedule.is_update_step(s, 0) for s in (1, 2, 3, 4)] == [False, False, False, True]
    assert ODMMixer(initial="uniform").initial_proportions(
        SimpleNamespace(domain_ids=torch.tensor([0, 0, 0, 1]))
    ).tolist() == [0.5, 0.5]
    # an update at global step 24 (the second update) uses ε_24 and ε_23, not ε_2 and ε_1
    mixer.observe_batch(torch.tensor([3.0, 1.0]), {"domain_id": torch.tensor([0, 1])})
    mixer.rewards = torch.tensor([10.0, 0.0], dtype=torch.float64)
    got = mixer.update(SimpleNamespace(global_step=24))
    r = [0.9 * 10 + 0.1 * 3.0 / 0.75, 0.1 * 1.0 / 0.25]
    e24, e23 = math.sqrt(math.log(2) / 48), math.sqrt(math.log(2) / 46)
    soft = [math.exp(e23 * x) / sum(math.exp(e23 * y) for y in r) for x in r]
    assert got.tolist() == pytest.approx([(1 - 2 * e24) * s + e24 for s in soft], rel=1e-12)
    assert mixer.t == 24
    with pytest.raises(ConfigError, match="initial must be one of natural, uniform"):
        ODMMixer(initial="zipf")


def test_odm_higher_loss_domain_gains_probability():
    k = 4
    rewards = torch.zeros(k, dtype=torch.float64)
    losses = torch.tensor([3.0, 1.0, 1.0, 1.0], dtype=torch.float64)
    present = torch.ones(k, dtype=torch.bool)
    history = []
    for t in range(1, 300):
        pi = exp3_probabilities(rewards, t)
        history.append(float(pi[0]))
        rewards = odm_update_rewards(rewards, losses, pi, present)
    # Importance weighting damps the gain (a likelier domain earns less per draw), but it persists.
    assert history[0] == pytest.approx(1.0 / k) and history[-1] > 1.0 / k + 0.02
    assert all(p > 1.0 / k for p in history[k * 2 :])  # once ε_t < 1/K, always ahead of uniform
    assert pi[0] == pi.max() and torch.allclose(pi[1:], pi[1].expand(3))


# -- static -------------------------------------------------------------------------------------
DOMAINS = ["d_code", "d_drama", "d_quotes"]


def test_static_list_dict_and_size_default():
    ids = torch.tensor([0, 0, 0, 1, 2, 2])
    assert torch.allclose(
        StaticMixer(proportions=[2, 1, 1], domains=DOMAINS).initial_proportions(ctx_for(ids)),
        torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64),
    )
    by_name = StaticMixer(proportions={"d_code": 1, "drama": 3, "quotes": 0}, domains=DOMAINS).initial_proportions(
        ctx_for(ids)
    )
    assert torch.allclose(by_name, torch.tensor([0.25, 0.75, 0.0], dtype=torch.float64))
    sizes = StaticMixer().initial_proportions(ctx_for(ids))
    assert torch.allclose(sizes, torch.tensor([0.5, 1 / 6, 1 / 3], dtype=torch.float64))
    mixer = StaticMixer(domains=DOMAINS)
    assert mixer.schedule.update_every == 0  # never updates
    mixer.initial_proportions(ctx_for(ids))
    restored = StaticMixer(domains=DOMAINS)
    restored.load_state_dict(mixer.state_dict())
    assert torch.allclose(restored.proportions, sizes)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"proportions": [1, 1]}, "2 proportions for 3 domains"),
        ({"proportions": [1, -1, 1]}, ">= 0"),
        ({"proportions": [0, 0, 0]}, "all 0"),
        ({"proportions": {"code": 1, "drama": 1}}, "no proportion for domains"),
        (
            {"proportions": {"code": 1, "drama": 1, "quotes": 1, "poetry": 1}},
            "'poetry' is not a domain",
        ),
        ({"proportions": [1, 1, 1], "proportions_file": "x.json"}, "not both"),
    ],
)
def test_static_validation_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        StaticMixer(domains=DOMAINS, **kwargs)


def test_static_mapping_needs_domain_names():
    with pytest.raises(ValueError, match="mixer.domains"):
        StaticMixer(proportions={"code": 1})


def test_static_reads_proportions_file(tmp_path):
    path = tmp_path / "weights.json"
    path.write_text(json.dumps({"d_code": 0.2, "d_drama": 0.2, "d_quotes": 0.6}))
    out = StaticMixer(proportions_file=str(path), domains=DOMAINS).initial_proportions(ctx_for([0, 1, 2]))
    assert torch.allclose(out, torch.tensor([0.2, 0.2, 0.6], dtype=torch.float64))
    with pytest.raises(ValueError, match="does not exist"):
        StaticMixer(proportions_file=str(tmp_path / "missing.json")).initial_proportions(ctx_for([0, 1, 2]))


# -- random -------------------------------------------------------------------------------------
def test_dirichlet_draw_is_deterministic_per_seed_and_update():
    a = dirichlet_draw(7, seed=3, update_index=5)
    assert torch.equal(a, dirichlet_draw(7, seed=3, update_index=5)) and on_simplex(a, 1e-12)
    assert not torch.equal(a, dirichlet_draw(7, seed=3, update_index=6))
    assert not torch.equal(a, dirichlet_draw(7, seed=4, update_index=5))


def test_random_mixer_uniform_start_draws_and_state():
    ids = torch.tensor([0, 1, 2, 3])
    mixer = RandomMixer(seed=1, update_every=2)
    assert torch.allclose(
        mixer.initial_proportions(ctx_for(ids)),
        torch.full((4,), 0.25, dtype=torch.float64),
    )
    # Update 1 does not depend on update 0 having been drawn (a resumed run draws the same).
    assert torch.equal(
        mixer.update(ctx_for(ids, update_index=1, global_step=4)),
        dirichlet_draw(4, 1, 1),
    )
    resumed = RandomMixer(seed=1, update_every=2)
    resumed.load_state_dict(mixer.state_dict())
    assert resumed.history == mixer.history and len(resumed.history) == 2
    with pytest.raises(ValueError, match="seed"):
        RandomMixer(seed=2).load_state_dict(mixer.state_dict())


# -- end to end on the tiny model -----------------------------------------------------------------
E2E = [
    "data=offline_domains",
    "trainer=pt_full",
    "data.max_samples=16",
    "eval.before=false",
    "eval.after=false",
    "trainer.max_steps=4",
]


def record_domains(monkeypatch):
    from dataflex.train.trainer import DataFlexTrainerMixin

    seen: list[torch.Tensor] = []
    original = DataFlexTrainerMixin.compute_loss

    def spy(self, model, inputs, *args, **kwargs):
        seen.append(inputs["domain_id"].detach().cpu().clone())
        return original(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(DataFlexTrainerMixin, "compute_loss", spy)
    return seen


@pytest.mark.slow
def test_e2e_static_one_hot_trains_only_domain_0(tmp_path, monkeypatch):
    from dataflex.run import Run

    seen = record_domains(monkeypatch)
    cfg = compose_config([*E2E, "mixer=static", "mixer.proportions=[1,0,0,0,0,0,0]"])
    Run(cfg, tmp_path / "x").fit()
    trained = torch.cat([d.flatten() for d in seen])
    assert len(seen) >= 4 and trained.numel() > 0 and (trained == 0).all()


@pytest.mark.slow
def test_e2e_random_mixer_proportions_are_the_seeded_draws(tmp_path, monkeypatch):
    from dataflex.run import Run

    seen = record_domains(monkeypatch)
    cfg = compose_config([*E2E, "mixer=random", "mixer.update_every=2", "seed=7"])
    run = Run(cfg, tmp_path / "r")
    run.fit()
    history = run.components["mixer"].history
    assert [h["update_index"] for h in history] == [-1, 0, 1] and [h["global_step"] for h in history] == [0, 2, 4]
    assert history[0]["proportions"] == pytest.approx([1 / 7] * 7)
    for h in history[1:]:
        assert h["proportions"] == dirichlet_draw(7, 7, h["update_index"]).tolist()
    # The tracker got the same proportions at the update steps.
    records = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    names = ["code", "techdocs", "drama", "scripture", "dictionary", "computing", "quotes"]
    logged = {
        r["step"]: [r[f"mixer/proportion/offline_domains_{d}"] for d in names]
        for r in records
        if "mixer/proportion/offline_domains_code" in r
    }
    assert logged[2] == pytest.approx(history[1]["proportions"]) and logged[4] == pytest.approx(
        history[2]["proportions"]
    )
    # Several domains were trained (so the static test's all-zero domain ids are not a default value).
    assert torch.cat([d.flatten() for d in seen]).unique().numel() > 1


def test_odm_mixer_follows_exp3_on_observed_batches():
    """The component's proportions are exactly the pure cores applied to the observed batch losses."""
    from types import SimpleNamespace

    from dataflex.mixers.odm import ODMMixer, exp3_probabilities, odm_update_rewards

    ctx = SimpleNamespace(domain_ids=torch.tensor([0, 0, 1, 1, 2, 2]), global_step=1)
    mixer = ODMMixer(alpha=0.9)
    pi = mixer.initial_proportions(ctx)
    torch.testing.assert_close(pi, torch.full((3,), 1 / 3, dtype=torch.float64))
    rewards = torch.zeros(3, dtype=torch.float64)
    for step in range(1, 6):
        # two micro-batches per step; domain 2 absent; domain 0 has a NaN sample that must be ignored
        mixer.observe_batch(torch.tensor([4.0, 2.0, float("nan")]), {"domain_id": torch.tensor([0, 1, 0])})
        mixer.observe_batch(torch.tensor([6.0, 2.0]), {"domain_id": torch.tensor([0, 1])})
        ctx.global_step = step
        got = mixer.update(ctx)
        rewards = odm_update_rewards(
            rewards,
            torch.tensor([5.0, 2.0, 0.0], dtype=torch.float64),
            pi,
            torch.tensor([True, True, False]),
            alpha=0.9,
        )
        pi = exp3_probabilities(rewards, step)  # ε of the global optimizer step
        torch.testing.assert_close(got, pi)
        assert torch.isfinite(got).all() and abs(float(got.sum()) - 1) < 1e-9
    assert got[0] > got[1]  # the higher-loss domain gains probability
    assert mixer.rewards[2] == 0  # an absent domain keeps its reward


def test_odm_importance_divides_by_the_probability_a_sample_was_drawn_under():
    """The plan changed between the draw and the update: the rewards use the draw-time proportions the
    batch carries, not the proportions in force at the update (hand-computed, alpha = 0.9)."""
    from dataflex.mixers.odm import ODMMixer

    ctx = SimpleNamespace(domain_ids=torch.tensor([0, 0, 1, 1]), global_step=1)
    mixer = ODMMixer(alpha=0.9)
    mixer.initial_proportions(ctx)
    torch.testing.assert_close(mixer.probabilities, torch.tensor([0.5, 0.5], dtype=torch.float64))  # in force now
    # domain 0: losses 1 and 3, drawn under 0.2; domain 1: loss 4, drawn under 0.8 (an older plan)
    mixer.observe_batch(
        torch.tensor([1.0, 4.0, 3.0]),
        {"domain_id": torch.tensor([0, 1, 0]), "draw_domain_probability": torch.tensor([0.2, 0.8, 0.2])},
    )
    mixer.update(ctx)
    # R_0 = 0.1 * mean(1, 3) / 0.2 = 1.0 and R_1 = 0.1 * 4 / 0.8 = 0.5 (dividing by 0.5 would give 0.4 and 0.8)
    torch.testing.assert_close(mixer.rewards, torch.tensor([1.0, 0.5], dtype=torch.float64))
    # samples of one domain drawn under two plans: the harmonic mean of their draw probabilities
    mixer.rewards = torch.zeros(2, dtype=torch.float64)
    mixer.observe_batch(
        torch.tensor([1.0, 3.0, 2.0]),
        {"domain_id": torch.tensor([0, 0, 1]), "draw_domain_probability": torch.tensor([0.2, 0.5, 0.5])},
    )
    mixer.update(ctx)
    # domain 0: mean loss 2 over 2 / (1/0.2 + 1/0.5) = 2/7 -> 0.1 * 2 * 3.5 = 0.7; domain 1: 0.1 * 2 / 0.5 = 0.4
    torch.testing.assert_close(mixer.rewards, torch.tensor([0.7, 0.4], dtype=torch.float64))


def test_odm_end_to_end_proportions_move_and_stay_on_the_simplex(tmp_path):
    """With K = 7, eps_t = 1/K (so pi is exactly uniform) while t <= K ln K ~ 13.6; after that the
    observed losses move the proportions."""
    from support.config import compose_config

    from dataflex.run import Run

    cfg = compose_config(
        [
            "data=offline_domains",
            "trainer=pt_full",
            "data.max_samples=16",
            "mixer=odm",
            "eval.before=false",
            "eval.after=false",
            "trainer.max_steps=20",
            "trainer.save_steps=10",
        ]
    )
    Run(cfg, tmp_path / "odm").fit()
    state = torch.load(tmp_path / "odm" / "checkpoints" / "checkpoint-20" / "dataflex_state.pt", weights_only=False)
    odm = state["components"]["mixer"]
    assert odm["t"] == 20 and len(odm["history"]) == 20  # one update per optimizer step; t = the global step
    for record in odm["history"]:
        p = torch.tensor(record["probabilities"], dtype=torch.float64)
        assert abs(float(p.sum()) - 1) < 1e-9 and (p > 0).all()
        assert all(math.isfinite(x) for x in record["domain_losses"] if x == x)  # NaN marks an absent domain
    uniform = torch.full((7,), 1 / 7, dtype=torch.float64)
    torch.testing.assert_close(
        torch.tensor(odm["history"][11]["probabilities"], dtype=torch.float64), uniform
    )  # t = 12
    assert not torch.allclose(torch.tensor(odm["history"][-1]["probabilities"], dtype=torch.float64), uniform)
    plans = state["sampler"]["history"]
    torch.testing.assert_close(
        plans[-1]["proportions"], torch.tensor(odm["history"][-1]["probabilities"], dtype=torch.float64)
    )
