"""Building components from config groups: declared keyword-only fields, checked before any code of
the component runs (so before any model loads), each refusal one line naming the key, what it
expects and the value given."""

from __future__ import annotations

import dataclasses

import pytest
from support.config import compose_config, group_options

from dataflex.errors import ConfigError
from dataflex.train.build import build_component
from dataflex.train.components import Component, Scheduled, Selector
from dataflex.train.fields import config_key, param


def refused(kind: str, overrides: list[str]) -> str:
    with pytest.raises(ConfigError) as err:
        build_component(kind, compose_config(overrides)[kind])
    message = str(err.value)
    assert "\n" not in message, message
    return message


@pytest.mark.parametrize(
    "overrides, kind, expected",
    [
        (
            ["data=offline_domains", "trainer=pt_full", "mixer=odm", "mixer.alpha=notanumber"],
            "mixer",
            "mixer=odm: alpha must be a float in [0, 1], got 'notanumber'",
        ),
        (
            ["selector=random", "selector.budget=-5"],
            "selector",
            "selector=random: budget must select at least 1 sample (an int count >= 1 or a float fraction in (0, 1]), got -5",
        ),
        (
            ["selector=loss", "selector.budget=lots"],
            "selector",
            "selector=loss: budget must be an int count or a float fraction in (0, 1], got 'lots'",
        ),
        (
            ["selector=loss", "selector.candidates=2.5"],
            "selector",
            "selector=loss: candidates as a fraction must lie in (0, 1], got 2.5",
        ),
        (["selector=loss", "selector.warmup_steps=-1"], "selector", "selector=loss: warmup_steps must be >= 0, got -1"),
        (["selector=loss", "selector.temperature=0"], "selector", "selector=loss: temperature must be > 0, got 0"),
        (
            ["selector=loss", "selector.rule=median"],
            "selector",
            "selector=loss: rule must be one of ('topk', 'tercile'), got 'median'",
        ),
        (
            ["selector=loss", "selector.batch_size=many"],
            "selector",
            "selector=loss: batch_size must be an int >= 1, got 'many'",
        ),
        (["selector=random", "selector.seed=true"], "selector", "selector=random: seed must be an int, got True"),
        (["selector=tsds", "selector.alpha=2"], "selector", "selector=tsds: alpha must lie in [0, 1], got 2"),
        (
            ["data=offline_domains", "trainer=pt_full", "mixer=random", "mixer.seed=-1"],
            "mixer",
            "mixer=random: seed must be >= 0, got -1",
        ),
        (
            ["weighter=loss", "weighter.temperature=hot"],
            "weighter",
            "weighter=loss: temperature must be a float > 0, got 'hot'",
        ),
    ],
)
def test_a_value_that_does_not_fit_its_declaration_is_one_line(overrides, kind, expected):
    assert refused(kind, overrides) == expected


def test_every_shipped_option_builds_and_declares_its_keys():
    for kind in ("selector", "mixer", "weighter"):
        for option in group_options(kind):
            extra = ["data=offline_domains", "trainer=pt_full"] if kind == "mixer" else []
            cfg = compose_config([*extra, f"{kind}={option}"])[kind]
            component = build_component(kind, cfg)
            if component is None:
                continue
            declared = {config_key(f) for f in dataclasses.fields(component)}
            assert set(cfg) - {"_target_", "name"} <= declared, (kind, option)


def test_misspelled_keys_still_get_a_suggestion():
    message = refused("selector", ["selector=loss", "+selector.warmup_step=2"])
    assert "unknown key 'warmup_step' (did you mean 'warmup_steps'?)" in message


def test_the_schedule_keys_are_declared_once_and_only_where_a_component_updates():
    from dataflex.mixers.static import StaticMixer
    from dataflex.selectors.less import LessOfflineSelector
    from dataflex.selectors.loss import LossSelector
    from dataflex.selectors.static import StaticSelector

    names = lambda cls: {f.name for f in dataclasses.fields(cls)}  # noqa: E731
    schedule = {"warmup_steps", "update_every", "num_updates"}
    assert schedule <= names(LossSelector) and issubclass(LossSelector, Scheduled)
    assert not schedule & (names(StaticSelector) | names(StaticMixer) | names(LessOfflineSelector))
    assert LessOfflineSelector(budget=4).schedule.update_every == 0
    with pytest.raises(TypeError):
        LossSelector(4)  # keyword-only


def test_a_new_component_declares_fields_ranges_and_flags():
    class Picky(Scheduled, Selector):
        needs_validation = True
        rate: float = param(0.5, gt=0, le=1)
        mode: str = param("a", choices=("a", "b"))
        limit: int | None = None

        def __post_init__(self):
            super().__post_init__()
            self.state = []

    picky = Picky(rate=1, update_every=3)
    assert picky.rate == 1.0 and isinstance(picky.rate, float)  # YAML's 1 for 1.0
    assert picky.schedule.update_every == 3 and picky.state == [] and Picky.needs_validation
    with pytest.raises(ConfigError, match=r"^rate must lie in \(0, 1\], got 1.5$"):
        Picky(rate=1.5)
    with pytest.raises(ConfigError, match=r"^mode must be one of \('a', 'b'\), got 'c'$"):
        Picky(mode="c")
    with pytest.raises(ConfigError, match=r"^limit must be an int or null, got 'x'$"):
        Picky(limit="x")
    assert issubclass(Picky, Component) and dataclasses.is_dataclass(Picky)
