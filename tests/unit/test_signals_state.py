"""Tests for dataflex.signals.optimizer (Adam state by name) and dataflex.signals.distributed (gathers)."""

from __future__ import annotations

import itertools

import pytest
import torch
from support.distributed import run_distributed

from dataflex.signals import distributed as D
from dataflex.signals.optimizer import adam_state, adam_state_shards, unwrap_optimizer


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(11, 6)
        self.lin = torch.nn.Linear(6, 4)
        self.frozen = torch.nn.Linear(4, 3)
        self.frozen.requires_grad_(False)

    def forward(self, x):
        return self.frozen(torch.tanh(self.lin(self.emb(x)))).sum()


def _train(model, opt, steps):
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randint(0, 11, (5, 3), generator=g)
        opt.zero_grad()
        model(x).backward()
        opt.step()


def _model_opt():
    torch.manual_seed(0)
    model = Tiny()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    return model, opt


def test_adam_state_before_first_step_is_zeros():
    model, opt = _model_opt()
    state = adam_state(opt, model)
    assert list(state) == [
        "emb.weight",
        "lin.weight",
        "lin.bias",
    ]  # trainable only, named_parameters order
    for name, p in model.named_parameters():
        if p.requires_grad:
            m, v = state[name]
            assert m.shape == v.shape == p.shape
            assert m.abs().sum() == 0 and v.abs().sum() == 0


def test_adam_state_equals_optimizer_state_after_steps():
    model, opt = _model_opt()
    _train(model, opt, 3)
    state = adam_state(opt, model)
    params = dict(model.named_parameters())
    for name, (m, v) in state.items():
        ref = opt.state[params[name]]
        assert torch.equal(m, ref["exp_avg"]) and torch.equal(v, ref["exp_avg_sq"])
        assert m.abs().sum() > 0 and v.abs().sum() > 0
    shards = adam_state_shards(opt, model)
    assert all(s.is_full and s.offset == 0 for s in shards.values())
    assert adam_state(opt, model, full=True).keys() == state.keys()  # full is a no-op for a plain optimizer


def test_adam_state_unwraps_accelerate_optimizer():
    from accelerate import Accelerator
    from accelerate.optimizer import AcceleratedOptimizer
    from accelerate.state import AcceleratorState, GradientState

    model, opt = _model_opt()
    try:
        wrapped = Accelerator(cpu=True).prepare_optimizer(opt)
        assert isinstance(wrapped, AcceleratedOptimizer)
        assert unwrap_optimizer(wrapped) is opt
        _train(model, wrapped, 2)
    finally:  # the Accelerator singletons must not leak into other tests
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    params = dict(model.named_parameters())
    for name, (m, v) in adam_state(wrapped, model).items():
        assert torch.equal(m, opt.state[params[name]]["exp_avg"])
        assert torch.equal(v, opt.state[params[name]]["exp_avg_sq"])


def test_adam_state_rejects_non_adam_optimizer():
    model, _ = _model_opt()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    _train(model, opt, 1)
    with pytest.raises(ValueError, match="exp_avg"):
        adam_state(opt, model)


# ---------------------------------------------------------------- distributed, one process


def test_distributed_single_process_noops():
    assert not D.is_distributed() and D.rank() == 0 and D.world_size() == 1 and D.is_main_process()
    obj = {"a": [1, 2]}
    assert D.broadcast_object(obj) is obj
    x = torch.tensor([1.0, 3.0])
    assert torch.equal(D.all_reduce_mean(x), x)
    with D.main_process_first():
        pass
    D.barrier()
    assert list(D.progress(range(3), desc="x")) == [0, 1, 2]
    assert D.main_process_result(lambda a, b=0: a + b, 2, b=3) == 5
    with pytest.raises(KeyError):  # one process: the original exception, as it is
        D.main_process_result(lambda: {}["missing"])
    assert D.all_ranks_true(True) and not D.all_ranks_true(False)


def test_gather_by_index_single_process_sorts_and_dedups():
    values = torch.tensor([[5.0, 0.5], [1.0, 0.1], [3.0, 0.3], [5.5, 9.9]])
    indices = torch.tensor([5, 1, 3, 5])  # a padded sampler repeats index 5
    v, i = D.gather_by_index(values, indices)
    assert i.tolist() == [1, 3, 5]
    assert torch.equal(v, torch.tensor([[1.0, 0.1], [3.0, 0.3], [5.0, 0.5]]))  # first occurrence kept
    with pytest.raises(ValueError):
        D.gather_by_index(values, indices[:2])
    v0, i0 = D.gather_by_index(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))
    assert v0.shape == (0, 3) and i0.numel() == 0


# ---------------------------------------------------------------- distributed, two gloo processes


def _gather_and_broadcast():
    rank = D.rank()
    # Interleaved sharding of 7 samples over 2 ranks, the sampler pads rank 1 by repeating index 0;
    # rank 0 additionally holds fewer samples in a different local order to exercise the count padding.
    local = {0: [4, 0, 2], 1: [1, 3, 5, 6, 0]}[rank]
    idx = torch.tensor(local)
    vals = torch.stack([idx.float() * 10, idx.float() + 100 * (rank + 1)], dim=1)
    v, i = D.gather_by_index(vals, idx)
    b = D.broadcast_object({"decision": [rank, 42]} if rank == 0 else None)
    m = D.all_reduce_mean(torch.tensor([float(rank)]))
    with D.main_process_first():
        pass
    # computed on rank 0 only (rank 1 would return 1); a failure there reaches every rank
    computed = D.main_process_result(lambda: D.rank() + 40)
    failures = []
    for bad in (lambda: int("x"), lambda: {}["missing"]):
        try:
            D.main_process_result(bad)
        except Exception as err:
            failures.append([type(err).__name__, str(err)])
    agree = [D.all_ranks_true(True), D.all_ranks_true(rank == 0)]
    return {
        "values": v.tolist(),
        "indices": i.tolist(),
        "broadcast": b,
        "mean": m.tolist(),
        "computed": computed,
        "failures": failures,
        "agree": agree,
        "is_dist": D.is_distributed(),
        "rank": D.rank(),
        "world": D.world_size(),
    }


def test_two_process_gloo_gather_and_broadcast():
    results = run_distributed(_gather_and_broadcast, 2, timeout=120)
    # Index 0 appears on both ranks: the first occurrence (rank 0) wins.
    owner = {4: 0, 0: 0, 2: 0, 1: 1, 3: 1, 5: 1, 6: 1}
    expected = [[i * 10.0, i + 100.0 * (owner[i] + 1)] for i in range(7)]
    for r, res in enumerate(results):
        assert res["indices"] == list(range(7))
        assert res["values"] == expected
        assert res["broadcast"] == {"decision": [0, 42]}
        assert res["mean"] == [0.5]
        assert res["computed"] == 40 and res["agree"] == [True, False]
        value_error = ["ValueError", "invalid literal for int() with base 10: 'x'"]
        assert res["failures"] == (
            [value_error, ["KeyError", "'missing'"]]
            if r == 0
            else [value_error, ["RuntimeError", "rank 0 failed: 'missing'"]]
        )
        assert res["is_dist"] and res["rank"] == r and res["world"] == 2


# ---------------------------------------------------------------- DeepSpeed ZeRO on CPU, two gloo processes


def _zero_model():
    torch.manual_seed(0)
    # 5x7 = 35 and 7 elements: odd sizes, so ZeRO partitions split parameters unevenly (with padding).
    return torch.nn.Sequential(torch.nn.Linear(7, 5), torch.nn.Tanh(), torch.nn.Linear(5, 1))


def _check_zero_state(zopt, engine, expected):
    full = adam_state(zopt, engine.module, full=True)
    shards = adam_state_shards(zopt, engine.module)
    ok_full, ok_local, covered = True, True, {}
    for name, (em, ev) in expected.items():
        m, v = full[name]
        ok_full &= m.shape == em.shape and torch.allclose(m, em, atol=1e-7) and torch.allclose(v, ev, atol=1e-9)
        s = shards[name]
        sl = slice(s.offset, s.offset + s.numel)
        ok_local &= torch.allclose(s.exp_avg[: s.numel], em.reshape(-1)[sl], atol=1e-7)
        ok_local &= torch.allclose(s.exp_avg_sq[: s.numel], ev.reshape(-1)[sl], atol=1e-9)
        ok_local &= bool((s.exp_avg[s.numel :] == 0).all())  # ZeRO-3 padding
        covered[name] = [s.offset, s.numel, em.numel()]
    return bool(ok_full), bool(ok_local), covered, full


def _zero_adam_report():
    import deepspeed

    deepspeed.init_distributed(dist_backend="gloo")  # joins the group run_distributed started
    x = torch.randn(4, 7, generator=torch.Generator().manual_seed(0))
    ref = _zero_model()
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-2)
    ref(x).pow(2).mean().backward()
    ref_opt.step()
    expected = {n: (ref_opt.state[p]["exp_avg"], ref_opt.state[p]["exp_avg_sq"]) for n, p in ref.named_parameters()}
    report = {}
    for stage in (2, 3):
        model = _zero_model()
        cfg = {
            "train_micro_batch_size_per_gpu": 4,
            "gradient_accumulation_steps": 1,
            "zero_optimization": {"stage": stage},
            "zero_allow_untested_optimizer": True,
        }
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        engine, zopt, _, _ = deepspeed.initialize(model=model, optimizer=opt, config=cfg)
        before = adam_state(zopt, engine.module, full=True)
        before_local = adam_state(zopt, engine.module)
        zero_before = all(
            float(t.abs().sum()) == 0 for pair in [*before.values(), *before_local.values()] for t in pair
        )
        # Every rank sees the same batch: the averaged gradient equals the reference one.
        engine.backward(engine(x).pow(2).mean())
        engine.step()
        ok_full, ok_local, covered, _ = _check_zero_state(zopt, engine, expected)
        # Two more steps: the local shards must still be the matching slices of the assembled state.
        for _ in range(2):
            engine.backward(engine(x * 0.5).pow(2).mean())
            engine.step()
        full_now = adam_state(zopt, engine.module, full=True)
        _, ok_local_later, _, _ = _check_zero_state(zopt, engine, full_now)
        report[str(stage)] = {
            "zero_before": zero_before,
            "full": ok_full,
            "local": ok_local and ok_local_later,
            "covered": covered,
        }
        del engine, zopt
    return report


def test_deepspeed_zero_adam_state_two_processes():
    """ZeRO-2 and ZeRO-3 on CPU (gloo): local shards tile each parameter and match, full state matches."""
    pytest.importorskip("deepspeed")
    reports = run_distributed(_zero_adam_report, 2, timeout=180)
    for stage in ("2", "3"):
        for rep in reports:
            assert rep[stage]["zero_before"] and rep[stage]["full"] and rep[stage]["local"], rep[stage]
        # The two ranks' valid local elements tile every parameter exactly once.
        for name, (_, _, total) in reports[0][stage]["covered"].items():
            spans = sorted((rep[stage]["covered"][name][0], rep[stage]["covered"][name][1]) for rep in reports)
            spans = [sp for sp in spans if sp[1] > 0]
            assert spans[0][0] == 0 and sum(n for _, n in spans) == total, (
                stage,
                name,
                spans,
            )
            assert all(a + n == b for (a, n), (b, _) in itertools.pairwise(spans)), (
                stage,
                name,
                spans,
            )
