"""The component schedule and config-level checks."""

import pytest

from dataflex.config import ConfigError
from dataflex.train.build import build_component, check_kwargs
from dataflex.train.components import Schedule


def updates(schedule, steps):
    done, at = 0, []
    for step in range(1, steps + 1):
        if schedule.is_update_step(step, done):
            at.append(step)
            done += 1
    return at


def test_warmup_then_every_n_steps():
    assert updates(Schedule(warmup_steps=3, update_every=4, num_updates=0), 20) == [3, 7, 11, 15, 19]


def test_num_updates_caps_the_rounds():
    assert updates(Schedule(warmup_steps=0, update_every=5, num_updates=2), 30) == [5, 10]


def test_update_every_zero_never_updates():
    assert updates(Schedule(warmup_steps=0, update_every=0), 10) == []


def test_negative_warmup_is_refused():
    with pytest.raises(ValueError, match="warmup_steps"):
        Schedule(warmup_steps=-1)


def test_none_component_builds_nothing():
    assert build_component("selector", {"name": "none"}) is None
    assert build_component("mixer", None) is None


def test_settings_without_a_component_are_an_error():
    with pytest.raises(ConfigError, match="no selector chosen"):
        build_component("selector", {"name": "none", "budget": 3})


def test_misspelled_key_names_the_key_and_a_suggestion():
    def target(budget, update_every=1):
        pass

    with pytest.raises(ConfigError, match="unknown key 'budjet'.*did you mean 'budget'"):
        check_kwargs(target, {"budjet": 3}, where="selector=x")


def test_target_must_be_the_right_kind():
    with pytest.raises(ConfigError, match="is not a Mixer"):
        build_component("mixer", {"_target_": "dataflex.train.components.Selector"})
