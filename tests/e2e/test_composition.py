"""The three axes together, end to end on the tiny model: every pairwise combination of a selector,
a mixer and a weighter, and all three (`dataflex-run selector=loss mixer=odm weighter=loss`).

Order of decisions (README "Composing the three axes"): at the start the selector's warm-up subset and
the mixer's first proportions; every draw picks a domain by the proportions, renormalised over the
domains the selection holds, then a selected sample of it; every micro-batch's unweighted per-sample
losses reach the observers (ODM) and the weighter weights the loss; after every optimizer step the
weighter's step counter moves, then the selector, then the mixer decide (same model, same draw
position)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from support.config import compose_config

from dataflex.run import Run

# offline_sft, one domain per task (4 domains); 16 samples per domain, no evaluation
BASE = ["data.max_samples=16", "eval.before=false", "eval.after=false", "trainer.max_steps=4", "trainer.save_steps=4"]
LOSS_SELECTOR = [
    "selector=loss",
    "selector.budget=12",
    "selector.warmup_steps=2",
    "selector.update_every=2",
    "selector.batch_size=32",
]
RANDOM_SELECTOR = ["selector=random", "selector.budget=12", "selector.warmup_steps=2", "selector.update_every=2"]
ODM = ["mixer=odm"]
STATIC = ["mixer=static", "mixer.proportions=[1,1,0,0]"]
LOSS_WEIGHTER = ["weighter=loss", "weighter.warmup_steps=2", "weighter.temperature=0.5"]


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def state(run_dir: Path, step: int = 4) -> dict:
    return torch.load(run_dir / "checkpoints" / f"checkpoint-{step}" / "dataflex_state.pt", weights_only=False)


def fit_recording_batches(tmp_path, monkeypatch, name, overrides):
    """Train; return the run dir and (global_step, sample_index, domain_id) of every micro-batch."""
    from dataflex.train.trainer import DataFlexTrainerMixin

    seen: list[tuple[int, list[int], list[int]]] = []
    original = DataFlexTrainerMixin.compute_loss

    def spy(self, model, inputs, *args, **kwargs):
        seen.append((self.state.global_step, inputs["sample_index"].tolist(), inputs["domain_id"].tolist()))
        return original(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(DataFlexTrainerMixin, "compute_loss", spy)
    run_dir = tmp_path / name
    Run(compose_config([*BASE, *overrides]), run_dir).fit()
    return run_dir, seen


def check_selection(run_dir, seen):
    """Selections are saved per round, and after each round the batches come from it (one prefetched
    batch of slack: the sampler reads the plan at draw time)."""
    rounds = [json.loads(p.read_text()) for p in sorted((run_dir / "selections").glob("round_*.json"))]
    # no round at step 4 = max_steps: nothing would train on it
    assert [r["step"] for r in rounds] == [0, 2] and all(r["selected"] == 12 for r in rounds)
    window = [i for step, idx, _ in seen if step >= 3 for i in idx]  # the batches of step 4
    assert window and set(window) <= set(rounds[1]["indices"])


def check_weighter(run_dir, batch=4):
    """Weight statistics on every logged step: uniform at step 1 (warm-up from r = ∞), sharper later."""
    logged = [r for r in records(run_dir) if "weighter/weight_min" in r]
    assert [r["step"] for r in logged] == [1, 2, 3, 4]
    first = logged[0]
    assert first["weighter/weight_min"] == first["weighter/weight_max"] == pytest.approx(1 / batch)
    assert first["weighter/temperature"] == "inf" and first["weighter/entropy"] == pytest.approx(math.log(batch))
    for r in logged[2:]:  # after the warm-up: r = 0.5
        assert r["weighter/temperature"] == 0.5 and r["weighter/batch"] == batch
        assert r["weighter/weight_min"] < 1 / batch < r["weighter/weight_max"]
        assert 0 < r["weighter/entropy"] < math.log(batch)
    assert state(run_dir)["components"]["weighter"]["steps_done"] == 4


def check_odm(run_dir):
    logged = [r for r in records(run_dir) if "mixer/proportion/offline_sft_facts" in r]
    assert [r["step"] for r in logged] == [0, 1, 2, 3, 4]  # ODM updates every step
    for r in logged:
        assert sum(v for k, v in r.items() if k.startswith("mixer/proportion/")) == pytest.approx(1.0)
    odm = state(run_dir)["components"]["mixer"]
    assert odm["t"] == 4 and len(odm["history"]) == 4  # t: the global optimizer step of the last update
    # the training batches' losses reached the rewards (the proportions stay uniform while
    # ε_t = 1/K, i.e. for t < K·ln K ≈ 5.5 with K = 4)
    assert torch.isfinite(odm["rewards"]).all() and (odm["rewards"] > 0).sum() >= 2


def test_selector_and_mixer(tmp_path, monkeypatch):
    run_dir, seen = fit_recording_batches(tmp_path, monkeypatch, "sel_mix", [*LOSS_SELECTOR, *ODM])
    check_selection(run_dir, seen)
    check_odm(run_dir)
    # both decide at step 2 (the selector not at the last step, 4): one plan, holding the selection and the proportions, from the same draw
    history = state(run_dir)["sampler"]["history"]
    assert all(p["indices"] is not None and p["proportions"] is not None for p in history)


def test_selector_and_weighter(tmp_path, monkeypatch):
    run_dir, seen = fit_recording_batches(tmp_path, monkeypatch, "sel_w", [*RANDOM_SELECTOR, *LOSS_WEIGHTER])
    check_selection(run_dir, seen)
    check_weighter(run_dir)


def test_mixer_and_weighter(tmp_path, monkeypatch):
    run_dir, seen = fit_recording_batches(tmp_path, monkeypatch, "mix_w", [*STATIC, *LOSS_WEIGHTER])
    assert {d for _, _, domains in seen for d in domains} == {0, 1}  # only the domains with proportion > 0
    check_weighter(run_dir)


def test_all_three(tmp_path, monkeypatch):
    """The mixer sets the proportions, the selector chooses within the pool, the weighter weights the batch."""
    run_dir, seen = fit_recording_batches(tmp_path, monkeypatch, "all", [*LOSS_SELECTOR, *ODM, *LOSS_WEIGHTER])
    check_selection(run_dir, seen)
    check_odm(run_dir)
    check_weighter(run_dir)
    final = state(run_dir)
    assert set(final["components"]) == {"selector", "mixer", "weighter"}
    assert final["updates_done"] == {"selector": 1, "mixer": 4, "weighter": 0}
    losses = [r["train/loss"] for r in records(run_dir) if "train/loss" in r]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)


@pytest.mark.slow
def test_the_command_line_runs_all_three(tmp_path):
    run_dir = tmp_path / "cli"
    command = [
        str(Path(sys.executable).parent / "dataflex-run"),
        "model=tiny",
        "selector=loss",
        "mixer=odm",
        "weighter=loss",
        "selector.budget=12",
        "selector.warmup_steps=2",
        "selector.update_every=2",
        "weighter.warmup_steps=2",
        "trainer.max_steps=4",
        "trainer.per_device_train_batch_size=4",
        "data.max_samples=16",
        "eval.before=false",
        "eval.after=false",
        f"hydra.run.dir={run_dir}",
    ]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    logged = records(run_dir)
    assert any("selector/selected" in r for r in logged)
    assert any("mixer/proportion/offline_sft_facts" in r for r in logged)
    assert any("weighter/weight_max" in r for r in logged)
    assert json.loads((run_dir / "metrics.json").read_text())["global_step"] == 4
