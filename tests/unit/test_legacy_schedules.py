"""dataflex-cli schedules (issue 19 item 6): the original DataFlex's run length and Flex epochs, a run that
ends before the first decision, a component's explicit seed, the loss weighter's warm-up."""

from __future__ import annotations

import math

import pytest
import torch
from support.legacy import COMPONENTS, DATAFLEX, offline_args
from support.losses import micro_batch

from dataflex.config import ConfigError, to_dict
from dataflex.data.assets import asset_path
from dataflex.legacy import compose, translate, translate_file
from dataflex.train.build import build_component
from dataflex.train.components import Schedule


def original_selection_steps(warmup: int, every: int, times: int, max_steps: int) -> list[int]:
    """The steps after which the original's select trainer selects (its _inner_training_loop at
    OpenDCAI/DataFlex 3c13e37): a Flex epoch of ``warmup + every * times`` steps; at each Flex epoch's
    first step the warm-up starts again; a selection at ``warmup``, then every ``every`` steps of it."""
    period, steps = warmup + every * times, []
    for step in range(1, max_steps + 1):
        in_epoch = step % period
        if in_epoch == 0:
            continue  # a new Flex epoch: warm-up again
        if step < max_steps and (in_epoch == warmup or (in_epoch > warmup and (in_epoch - warmup) % every == 0)):
            steps.append(step)
    return steps


def selector_steps(selector, max_steps: int) -> list[int]:
    done, steps = 0, []
    for step in range(1, max_steps + 1):
        if selector.is_due(step, done, max_steps):
            steps.append(step)
            done += 1
    return steps


def test_restart_every_repeats_the_schedule_offsets():
    schedule = Schedule(warmup_steps=4, update_every=3, num_updates=4, restart_every=16)
    due = [s for s in range(1, 49) if schedule.is_update_step(s, 0)]
    assert due == [4, 7, 10, 13, 20, 23, 26, 29, 36, 39, 42, 45]
    assert [s for s in range(1, 31) if Schedule(0, 5, 2, restart_every=10).is_update_step(s, 0)] == [5, 15, 25]


@pytest.mark.parametrize("epochs, extra", [(1.0, []), (3.0, []), (2.5, []), (1.0, ["train_step=40"])])
def test_num_train_epochs_repeats_the_selector_schedule_as_the_original(monkeypatch, epochs, extra):
    monkeypatch.chdir(DATAFLEX)  # the example names components_cfg_file from the repository's root
    path = DATAFLEX / "examples/test/quick_select_delta_loss.yaml"  # warmup_step 3, update_step 2, update_times 5
    t = translate_file(path, [*offline_args(path), f"num_train_epochs={epochs}", *extra])
    cfg = compose(t.overrides)
    max_steps = cfg.trainer.max_steps
    assert max_steps == (40 if extra else math.ceil(epochs * 13))  # train_step, else epochs x the Flex epoch
    assert cfg.selector.get("restart_every") == (13 if max_steps > 13 else None)
    selector = build_component("selector", cfg.selector)
    assert selector_steps(selector, max_steps) == original_selection_steps(3, 2, 5, max_steps)


def test_a_dynamic_mixer_trains_one_flex_epoch_as_the_original():
    keys = {
        "model_name_or_path": str(asset_path("tiny")),
        "template": "chatml",
        "stage": "pt",
        "finetuning_type": "full",
        "dataset": "offline_domains_code,offline_domains_drama",
        "train_type": "dynamic_mix",
        "component_name": "random",
        "warmup_step": 2,
        "update_step": 3,
        "update_times": 2,
        "num_train_epochs": 3.0,
        "train_step": 50,
    }
    t = translate(keys, name="m", env={})
    cfg = to_dict(compose(t.overrides))
    assert cfg["trainer"]["max_steps"] == 8 and "restart_every" not in cfg["mixer"]
    assert any(n.startswith("train_step: 50 has no effect on a dynamic mixer") for n in t.notes)


def test_a_components_yaml_seed_is_kept_when_the_run_seed_differs(monkeypatch):
    monkeypatch.chdir(DATAFLEX)
    path = DATAFLEX / "examples/train_lora/selectors/random_sft_lora.yaml"  # components.yaml: random selector seed 2024
    t = translate_file(path, [*offline_args(path), "seed=7"])
    cfg = compose(t.overrides)
    assert cfg.seed == 7 and cfg.selector.seed == 2024
    assert "selector.seed=2024" in t.overrides


def test_a_weighter_that_never_weights_is_one_line(monkeypatch):
    monkeypatch.chdir(DATAFLEX)
    path = DATAFLEX / "examples/train_lora/weighters/loss_sft_lora.yaml"  # warmup_step 60
    with pytest.raises(ConfigError, match=r"^weighter=loss never weights: warmup_step=60 >= the run's 50 steps"):
        translate_file(path, [*offline_args(path), "train_step=50"])


def test_the_loss_weighter_warmup_is_plain_training_then_the_original_weighting(monkeypatch):
    monkeypatch.chdir(DATAFLEX)
    path = DATAFLEX / "examples/train_lora/weighters/loss_sft_lora.yaml"  # components.yaml: quadratic, delta 2
    weighter = compose(translate_file(path, offline_args(path)).overrides).weighter
    assert (weighter.warmup_steps, weighter.schedule, weighter.temperature, weighter.reduction) == (
        60,
        "constant",
        1.0,
        "sample",
    )
    assert (weighter.strategy, weighter.delta) == ("quadratic", 2.0)
    keys = {"model_name_or_path": "tiny", "dataset": "offline_sft_facts", "train_type": "dynamic_weight"}
    t = translate({**keys, "component_name": "loss", "components_cfg_file": str(COMPONENTS)}, name="w", env={})
    assert compose(t.overrides).weighter.warmup_steps == 0  # the original's default warmup_step

    li, nll = micro_batch(1 / 9, 1.0, lengths=(3, 1, 5), grad_accum_steps=1)
    w = build_component("weighter", {**to_dict(weighter), "warmup_steps": 2})
    w.step_end(1)
    assert torch.equal(w.training_loss(li), li.plain())  # the warm-up: the trainer's own loss
    w.step_end(2)
    weighted = w.training_loss(li)
    means = nll.detach().sum(-1) / torch.tensor([3.0, 1.0, 5.0])
    normalised = 2 * (2 * means - means.max() - means.min()) / (means.max() - means.min())  # delta 2
    weights = torch.softmax(1 - normalised.square() / 4, 0)  # quadratic 1 - l^2 / delta^2, r 1: the original's
    assert weighted.item() == pytest.approx(float((weights * means).sum()), rel=1e-5)
