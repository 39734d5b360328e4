"""Offline NICE (``selector=nice_offline``): the learning-rate-weighted aggregation over warm-up
checkpoints against hand-computed values, the shared warm-up helpers, and the selector's wiring on a
small model with real checkpoint files (the NICE round itself is tested in test_selectors_nice.py;
the whole recipe on model=tiny in tests/e2e/test_nice_offline.py)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

from dataflex.config import ConfigError
from dataflex.selectors import nice as N
from dataflex.signals.features import combine_subtask_similarities
from dataflex.train import checkpoints as CK
from dataflex.train.components import UpdateContext

# two checkpoints, three candidates, two subtasks
SIMS = torch.tensor([
    [[0.5, -0.2], [0.1, 0.4], [-0.3, 0.0]],   # checkpoint at step 2
    [[0.1, 0.3], [0.2, -0.6], [0.9, 0.1]],    # checkpoint at step 4
], dtype=torch.float64)
# trainer_state.json's log: lr 3e-4, 1e-4 over the first epoch (steps 1-2), 5e-5, 5e-5 over the second
LOG = [{"step": 1, "learning_rate": 3e-4, "loss": 1.0}, {"step": 2, "learning_rate": 1e-4, "loss": 1.0},
       {"step": 3, "learning_rate": 5e-5, "loss": 1.0}, {"step": 4, "learning_rate": 5e-5, "loss": 1.0}]


def expected_scores() -> list[float]:
    # w = (mean lr epoch 1, mean lr epoch 2) / sum = (2e-4, 5e-5) / 2.5e-4 = (0.8, 0.2)
    # candidate 0: subtask 0: 0.8*0.5 + 0.2*0.1 = 0.42; subtask 1: 0.8*-0.2 + 0.2*0.3 = -0.10 -> 0.42
    # candidate 1: 0.8*0.1 + 0.2*0.2 = 0.12; 0.8*0.4 + 0.2*-0.6 = 0.20 -> 0.20
    # candidate 2: 0.8*-0.3 + 0.2*0.9 = -0.06; 0.8*0.0 + 0.2*0.1 = 0.02 -> 0.02
    return [0.42, 0.20, 0.02]


def test_checkpoint_aggregation_by_hand():
    assert combine_subtask_similarities(SIMS, [2e-4, 5e-5]).tolist() == pytest.approx(expected_scores())
    assert combine_subtask_similarities(SIMS, [0.8, 0.2]).tolist() == pytest.approx(expected_scores())
    assert CK.epoch_learning_rates(LOG, [2, 4]) == pytest.approx([2e-4, 5e-5])
    # the sum over checkpoints comes before the max over subtasks: not the mean of per-checkpoint maxima
    assert combine_subtask_similarities(SIMS, [1, 1])[1] == pytest.approx(max(0.15, -0.1))


def fake_warmup(tmp_path, model: torch.nn.Module, weights_by_step: dict[int, float]):
    """A warm-up run directory: per step, full weights filled with the given value, the DataFlex state
    marking the save complete, and the trainer's log in every trainer_state.json."""
    root = tmp_path / "warmup" / "checkpoints"
    for step, value in weights_by_step.items():
        ckpt = root / f"checkpoint-{step}"
        ckpt.mkdir(parents=True)
        save_file({n: torch.full_like(p, value) for n, p in model.state_dict().items()}, ckpt / "model.safetensors")
        torch.save({"run_id": "warm"}, ckpt / CK.STATE_FILE)
        (ckpt / "trainer_state.json").write_text(json.dumps({"log_history": [r for r in LOG if r["step"] <= step]}))
    return tmp_path / "warmup"


def test_warmup_helpers(tmp_path):
    model = torch.nn.Linear(2, 1)
    found = CK.warmup_checkpoints(fake_warmup(tmp_path, model, {2: 1.0, 4: 2.0}))
    assert [s for s, _ in found] == [2, 4]
    assert CK.warmup_checkpoint_weights(found) == pytest.approx([2e-4, 5e-5])
    assert CK.warmup_checkpoint_weights(found, [1, 3]) == [1.0, 3.0]
    with pytest.raises(ConfigError, match="2 entries for 1 checkpoints"):
        CK.warmup_checkpoint_weights(found[:1], [1, 3])

    own = model.weight.detach().clone()
    seen = CK.for_each_warmup_checkpoint(model, found, lambda step, path, adam: (step, float(model.weight[0, 0].detach()), adam))
    assert seen == [(2, 1.0, None), (4, 2.0, None)]
    assert torch.equal(model.weight, own)  # the model's own weights are back

    def boom(step, path, adam):
        raise RuntimeError("pass failed")

    with pytest.raises(RuntimeError, match="pass failed"):
        CK.for_each_warmup_checkpoint(model, found, boom)
    assert torch.equal(model.weight, own)  # also after a failing pass

    assert CK.check_checkpoint_choice([4, 2], [1, 2]) == ([2, 4], [1.0, 2.0])
    with pytest.raises(ValueError, match="positive warm-up steps"):
        CK.check_checkpoint_choice([0], None)
    with pytest.raises(ValueError, match="1 checkpoint_weights for 2 checkpoints"):
        CK.check_checkpoint_choice([2, 4], [1])
    with pytest.raises(ConfigError, match="not all 0"):
        CK.check_checkpoint_choice(None, [0, 0])


def test_offline_selector_weights_each_checkpoints_round(tmp_path):
    """initial_indices runs one round under every checkpoint (the weights of that checkpoint loaded)
    and keeps the top k of the learning-rate-weighted sum: the rounds here return SIMS[c] for the
    checkpoint whose weights are loaded, so the scores must be the hand-computed ones."""
    model = torch.nn.Linear(2, 1)
    warm = fake_warmup(tmp_path, model, {2: 1.0, 4: 2.0})
    sel = N.NiceOfflineSelector(budget=2, warmup_dir=str(warm), gradient_type="sgd", proj_dim=16, seed=0)
    assert sel.schedule.update_every == 0 and not sel.acts_through_updates
    calls = []

    def round_under_loaded_checkpoint(ctx, candidates, adam=None):
        c = int(model.weight[0, 0].item()) - 1  # checkpoint-2 holds 1.0, checkpoint-4 holds 2.0
        calls.append((c, adam, candidates.tolist()))
        return SIMS[c], torch.full((1, 4), float(c)), torch.tensor([0])

    sel.similarities = round_under_loaded_checkpoint
    own = model.weight.detach().clone()
    ctx = UpdateContext(model=model, validation=[0], sampler=SimpleNamespace(pool_size=3), run_dir=tmp_path / "run")
    (tmp_path / "run").mkdir()
    chosen = sel.initial_indices(ctx)
    assert calls == [(0, None, [0, 1, 2]), (1, None, [0, 1, 2])]
    assert chosen.tolist() == [0, 1] and torch.equal(model.weight, own)
    assert sel.last_scores["scores"].tolist() == pytest.approx(expected_scores())
    record = json.loads((tmp_path / "run" / N.OFFLINE_RECORD).read_text())
    assert record["checkpoint_steps"] == [2, 4] and record["checkpoint_weights"] == pytest.approx([0.8, 0.2])
    assert record["indices"] == [0, 1] and record["scores"] == pytest.approx([0.42, 0.20])
    assert record["reward_mean"] == [0.0, 1.0]
    with pytest.raises(RuntimeError, match="once, before training"):
        sel.select(ctx)


def test_offline_selector_settings():
    with pytest.raises(TypeError):
        N.NiceOfflineSelector(budget=2, warmup_steps=3)  # no schedule: it decides once
    with pytest.raises(ValueError, match="positive warm-up steps"):
        N.NiceOfflineSelector(budget=2, checkpoints=[])
    sel = N.NiceOfflineSelector(budget=2)
    ctx = UpdateContext(model=torch.nn.Linear(2, 1), validation=[0], sampler=SimpleNamespace(pool_size=3))
    with pytest.raises(ConfigError, match="needs selector.warmup_dir=.*experiment=nice_offline"):
        sel.initial_indices(ctx)
