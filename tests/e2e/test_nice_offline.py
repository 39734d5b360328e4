"""NICE's offline recipe end to end on model=tiny (``python -m dataflex.cli.less_offline
experiment=nice_offline``): a short warm-up with one checkpoint per epoch, one NICE round under each
checkpoint, learning-rate-weighted, the top k trained on (mirrors the LESS offline test in
tests/unit/test_selectors_less.py)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from dataflex.selectors import nice as N
from dataflex.signals.features import top_k_indices


def always_one(prompts, responses, references):
    """Every sampled response rewarded 1 (exact match never fires on the untrained tiny model), so
    every checkpoint's round carries signal."""
    return [1.0] * len(responses)


# 256 pool rows, warm-up on 5% = 12 of them, global batch 4: 3 steps an epoch, 2 epochs = checkpoints
# 3 and 6; then the top 16 of 48 candidates for 1 epoch over them (4 steps).
OFFLINE = ["experiment=nice_offline", "less_offline.warmup_epochs=2", "less_offline.train_epochs=1",
           "selector.budget=16", "selector.candidates=48", "selector.val_prompts=4", "selector.num_samples=2",
           "selector.max_new_tokens=6", "selector.proj_dim=64", "selector.batch_size=8",
           "selector.reward=test_nice_offline.always_one", "trainer.warmup_steps=0",
           "eval.before=false", "eval.after=false"]


@pytest.mark.slow
def test_nice_offline_recipe_end_to_end(tmp_path):
    from support.config import compose_config
    from support.runs import losses

    from dataflex.cli.less_offline import run_recipe

    run_dir = tmp_path / "nice"
    metrics = run_recipe(compose_config(OFFLINE), run_dir)
    assert metrics["global_step"] == 4 and math.isfinite(metrics["final_train_loss"])

    warm = run_dir / "warmup"
    assert len(losses(warm)) == 6
    for step in (3, 6):
        ckpt = warm / "checkpoints" / f"checkpoint-{step}"
        assert (ckpt / "adapter_model.safetensors").is_file() and (ckpt / "optimizer.pt").is_file()

    record = json.loads((run_dir / N.OFFLINE_RECORD).read_text())
    assert record["checkpoint_steps"] == [3, 6] and record["candidates"] == 48 and record["k"] == 16
    assert record["reward_mean"] == [1.0, 1.0]
    # w_c: the mean learning rate the warm-up logged over each epoch's steps, normalised, by hand
    log = json.loads((warm / "checkpoints" / "checkpoint-6" / "trainer_state.json").read_text())["log_history"]
    lr = {r["step"]: r["learning_rate"] for r in log if "learning_rate" in r}
    means = [(lr[1] + lr[2] + lr[3]) / 3, (lr[4] + lr[5] + lr[6]) / 3]
    assert record["checkpoint_weights"] == pytest.approx([m / sum(means) for m in means])
    assert means[0] > 2 * means[1]  # cosine decay: the first epoch weighs more (not a uniform fallback)

    state = torch.load(run_dir / "checkpoints" / "checkpoint-3" / "dataflex_state.pt", weights_only=False)
    sel = state["components"]["selector"]["last_scores"]
    chosen = record["indices"]
    assert len(set(chosen)) == 16 and state["sampler"]["history"][-1]["indices"].tolist() == chosen
    assert json.loads((run_dir / "selections" / "round_000.json").read_text())["indices"] == chosen
    scores, cand = sel["scores"], sel["candidates"]
    assert torch.isfinite(scores).all() and scores.std() > 0 and (scores.abs() <= 1 + 1e-6).all()
    assert sel["rewards"].shape == (2, 4, 2)  # [checkpoints, prompts, samples]
    generator = torch.Generator().manual_seed(0)  # unused unless scores tie; they do not here
    assert sorted(cand[top_k_indices(scores, 16, generator)].tolist()) == sorted(chosen)
    assert record["scores"] == pytest.approx(sorted(record["scores"], reverse=True), abs=1e-6)
