"""In-process runs on the tiny model and what the tests read back from them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from support.config import compose_config

from dataflex.run import Run
from dataflex.train.callback import DataFlexCallback


def fit(tmp_path, name, overrides=()):
    """Train ``tmp_path / name`` with the shrunk train.yaml and ``overrides``: (metrics, run_dir)."""
    run_dir = tmp_path / name
    return Run(compose_config(overrides), run_dir).fit(), run_dir


def losses(run_dir: Path) -> list[float]:
    """Per-step training losses from the JSONL the run wrote (a resumed step's later line wins)."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    by_step = {r["step"]: r["train/loss"] for r in records if "train/loss" in r}
    return [by_step[s] for s in sorted(by_step)]


def same_state(a, b) -> bool:
    """Recursive equality for checkpointed state (tensors compared to 1e-6)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same_state(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(map(same_state, a, b))
    if torch.is_tensor(a):
        return (torch.is_tensor(b) and a.shape == b.shape
                and torch.allclose(a.double(), b.double(), atol=1e-6, equal_nan=True))
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))  # NaN marks "absent" in recorded histories
    return a == b


def kill_at_step(monkeypatch, step):
    """Make the next run stop as if killed when it reaches ``step`` (its last checkpoint stays)."""

    def boom(self, args, state, control, **kwargs):
        if state.global_step == step:
            raise KeyboardInterrupt("simulated kill")

    monkeypatch.setattr(DataFlexCallback, "on_step_begin", boom)


def run_selection(tmp_path, overrides):
    """A 6-step (or longer) selector run in ``tmp_path / "x"``: (cfg, the DataFlex state of checkpoint-6)."""
    cfg = compose_config(overrides)
    metrics = Run(cfg, tmp_path / "x").fit()
    assert math.isfinite(metrics["final_train_loss"])
    state = torch.load(tmp_path / "x" / "checkpoints" / "checkpoint-6" / "dataflex_state.pt", weights_only=False)
    return cfg, state


def saved_rounds(run_dir) -> list[dict]:
    """The selection rounds a run saved (``selections/round_NNN.json``), in order: each with
    ``update_index`` (-1: the decision at the start), ``step`` and ``indices``."""
    return [json.loads(p.read_text()) for p in sorted((Path(run_dir) / "selections").glob("round_*.json"))]


def check_rounds(state, run_dir, k=16, steps=(0, 2, 4)):
    """Warm-up, then every 2 steps; with max_steps=6 the round due at step 6 is not run (nothing would
    train on it)."""
    rounds = saved_rounds(run_dir)
    assert [r["update_index"] for r in rounds] == list(range(-1, len(steps) - 1))
    assert [r["step"] for r in rounds] == list(steps)
    assert state["updates_done"]["selector"] == len(steps) - 1
    for r in rounds:
        assert len(r["indices"]) == k and len(set(r["indices"])) == k
    # the last decision reached the sampler (it keeps only the plans still drawn from, not the whole
    # history: issue 20); the earlier ones are checked against the logged selections above
    plans = [p["indices"] for p in state["sampler"]["history"]]
    assert plans[-1].tolist() == rounds[-1]["indices"]
    return rounds
