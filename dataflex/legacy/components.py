"""A legacy YAML's component: its option, its params (components_cfg_file, component_overrides, the
component's own legacy key names), the DataFlex schedule and mixture keys, and the run length."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml

from dataflex.errors import ConfigError
from dataflex.legacy.keys import (
    DATAFLEX_KEYS,
    SAMPLE_RULES,
    SCHEDULE,
    SECTIONS,
    UNUSED_EVERYWHERE,
    did_you_mean,
    llamafactory_default,
)
from dataflex.legacy.overrides import conf_file, group_options
from dataflex.train.targets import target_class


def component_params(kind: str, flex: dict, base_dir: Path, notes: list[str]) -> tuple[str, dict]:
    """The component's option name and its params (``components_cfg_file``, then ``component_overrides``)."""
    option = str(flex.get("component_name") or "").lower()
    if kind == "mixer" and flex.get("static_mix"):
        if option not in ("", "static"):
            notes.append(f"component_name: {option} has no effect with static_mix: true (mixer=static)")
        option = "static"
    if not option:
        raise ConfigError(f"train_type: {flex['train_type']} needs component_name (the {kind})")
    if not conf_file(kind, option).is_file():
        available = [o for o in group_options(kind) if o != "none"]
        raise ConfigError(
            f"component_name: {option}: no {kind} config dataflex/conf/{kind}/{option}.yaml "
            f"(not available in this version){did_you_mean(option, available)}; available: {', '.join(available) or 'none yet'}"
        )
    params: dict[str, Any] = {}
    if flex.get("components_cfg_file"):
        given = Path(flex["components_cfg_file"]).expanduser()  # relative to the YAML, else to the working directory
        path = next((p for p in (base_dir / given, given) if p.is_file()), None)
        if path is None:
            raise ConfigError(f"components_cfg_file {given} not found (looked in {base_dir} and {Path.cwd()})")
        entry = ((yaml.safe_load(path.read_text()) or {}).get(SECTIONS[kind]) or {}).get(option)
        if entry is None:
            raise ConfigError(
                f"components_cfg_file {path} has no {SECTIONS[kind]}.{option} entry; add one "
                f"(its params may be empty) or drop components_cfg_file to use conf/{kind}/{option}.yaml"
            )
        params.update((entry or {}).get("params") or {})
    params.update(flex.get("component_overrides") or {})
    rule = flex.get("mixture_sample_rule")
    if kind == "mixer" and option not in ("static", "doremi") and rule in ("uniform", "stratified"):
        # the original's mixture manager ignores a dynamic mixer's proportions under these rules
        notes.append(
            f"mixture_sample_rule: {rule} keeps the mixture fixed in the original DataFlex (the {option} "
            "mixer's proportions are never used): mixer=static; mixture_sample_rule: mixture lets it move them"
        )
        return "static", {}
    declared = component_class(kind, option)
    renamed = getattr(declared, "legacy_keys", {})
    unused = {**UNUSED_EVERYWHERE, **getattr(declared, "legacy_unused", {})}
    implies = getattr(declared, "legacy_implies", {})
    for key, superseded in getattr(declared, "legacy_superseded", {}).items():
        if key in params:  # e.g. NICE's reward_model_path: the original then ignores its judge block
            unused.update({k: f"{key} is given, so the original ignores it" for k in superseded if k in params})
    out: dict[str, Any] = {}
    for key, value in params.items():
        if key in unused:
            notes.append(f"{SECTIONS[kind]}.{option}.{key}: not used ({unused[key]})")
        elif renamed.get(key) in DATAFLEX_KEYS:  # a param that is one of the DataFlex keys here; the YAML's own wins
            if flex.get(renamed[key]) is None:
                flex[renamed[key]] = value
        else:
            _set(out, renamed.get(key, key), value)
    for key, implied_values in implies.items():  # an original param that also sets keys of its own (NICE's reward)
        if key in params and key not in unused:
            for implied, value in implied_values.items():
                if implied not in params:
                    out.setdefault(implied, value)
    return option, out


def _set(out: dict, dotted: str, value: Any) -> None:
    """``out[a][b] = value`` for ``a.b`` (a component key that is a mapping, e.g. NICE's ``reward_kwargs``)."""
    *parents, last = dotted.split(".")
    for part in parents:
        out = out.setdefault(part, {})
    out[last] = value


def component_class(kind: str, option: str) -> type | None:
    """The class ``conf/<kind>/<option>.yaml`` builds (its ``_target_``), None without one."""
    target = (yaml.safe_load(conf_file(kind, option).read_text()) or {}).get("_target_")
    cls = target_class(target)
    if target is not None and cls is None:
        raise ConfigError(f"{kind}={option}: cannot import _target_ '{target}'; check conf/{kind}/{option}.yaml")
    return cls


def component_values(
    kind: str,
    option: str,
    base: dict,
    params: dict,
    flex: dict,
    trainer: dict,
    world: int,
    domains: list[str],
    notes: list[str],
    restart_every: int | None = None,
) -> dict:
    """The component group's values: its conf, its params, the original's defaults where this component's
    differ, then the DataFlex schedule (``restart_every``: the selector's Flex epoch) and mixture keys."""
    desired = {**base, **params}
    # the original's defaults where this component's differ (e.g. the loss selector's tercile draw)
    cls = component_class(kind, option)
    desired.update({k: v for k, v in getattr(cls, "legacy_defaults", {}).items() if k not in params})
    if restart_every and hasattr(cls, "restart_every"):  # a Scheduled selector (the conf does not list the key)
        desired["restart_every"] = restart_every
    for legacy_key, key in SCHEDULE.items():
        if flex.get(legacy_key) is None:  # absent, or null: the component's (or the original's) default
            continue
        if key not in base:
            notes.append(f"{legacy_key}: {kind}={option} has no {key}")
            continue
        if key in params and params[key] != flex[legacy_key]:
            notes.append(f"{legacy_key}: {flex[legacy_key]} overrides {SECTIONS[kind]}.{option}.{key}: {params[key]}")
        desired[key] = flex[legacy_key]
    if kind == "selector" and "budget" in base and "budget" not in params and (flex.get("update_step") or 0) > 0:
        # The original selects exactly what one window trains: update_step global batches.
        batch = trainer.get("per_device_train_batch_size", llamafactory_default("per_device_train_batch_size"))
        accumulation = trainer.get("gradient_accumulation_steps", llamafactory_default("gradient_accumulation_steps"))
        desired["budget"] = int(batch) * int(accumulation) * world * int(flex["update_step"])
    if kind == "mixer":
        _mixture(option, base, desired, flex, domains)
    else:
        ignored = [k for k in ("mixture_sample_rule", "init_mixture_proportions", "static_mix") if k in flex]
        if ignored:
            notes.append(f"{', '.join(ignored)}: no effect with train_type: {flex['train_type']}")
    return desired


def _mixture(option: str, base: dict, desired: dict, flex: dict, domains: list[str]) -> None:
    """``mixture_sample_rule``/``init_mixture_proportions`` onto the mixer's proportions."""
    proportions = flex.get("init_mixture_proportions")  # also an original param declared as this key (ODM's)
    rule = flex.get("mixture_sample_rule") or ("mixture" if proportions is not None else None)
    if rule is not None and rule not in SAMPLE_RULES:
        raise ConfigError(
            f"mixture_sample_rule: '{rule}' is not one of {', '.join(SAMPLE_RULES)}{did_you_mean(rule, SAMPLE_RULES)}"
        )
    if proportions is not None:
        proportions = [float(p) for p in proportions]
        if len(proportions) != len(domains):
            raise ConfigError(
                f"init_mixture_proportions has {len(proportions)} entries but dataset names {len(domains)} domains"
            )
    if rule == "uniform" or (rule == "mixture" and proportions is None):  # the original: uniform without proportions
        proportions = [1.0] * len(domains)
    if option == "static":
        if rule is not None:  # stratified: the static mixer's default, proportional to domain sizes
            desired.update(proportions=proportions, proportions_file=None)
        return
    if "initial_proportions" in base:
        if proportions is not None or rule == "stratified":
            desired["initial_proportions"] = proportions
        return
    if (
        "initial" in base
    ):  # the start before the first update (ODM: natural | uniform | weights; random: null | weights)
        if proportions is not None:
            equal = len(set(proportions)) == 1
            desired["initial"] = ("uniform" if base["initial"] is not None else None) if equal else proportions
        return
    if rule == "stratified" or (proportions is not None and len(set(proportions)) > 1):
        raise ConfigError(
            f"mixer={option} samples every domain uniformly (its weights act on the loss), so "
            f"mixture_sample_rule: {rule} {proportions or ''} cannot be honoured; use equal "
            "init_mixture_proportions or mixture_sample_rule: uniform, or static_mix: true for a fixed mixture"
        )


def run_length(flex: dict, kind: str | None, trainer: dict, notes: list[str]) -> int | None:
    """``max_steps`` as the original sets it; returns the selector's Flex epoch to repeat (``restart_every``)
    when the run is longer than one, else None. ``max_steps`` in the YAML wins.

    The original's Flex epoch is ``warmup_step + update_step * update_times`` (``update_times`` > 0):
    a selector trains ``train_step`` steps, else ``ceil(num_train_epochs`` x the Flex epoch), and repeats
    its schedule every Flex epoch; a dynamic mixer trains exactly one Flex epoch (``train_step`` and
    ``num_train_epochs`` aside); otherwise ``train_step``, else LLaMA-Factory's epochs."""
    if kind is None:
        return None
    times, every = int(flex.get("update_times", 1)), int(flex.get("update_step", 0))
    period = int(flex.get("warmup_step", 0)) + every * times if times > 0 and every > 0 else None
    steps = None
    if kind == "mixer" and not flex.get("static_mix") and period:
        steps = period
        if flex.get("train_step") and int(flex["train_step"]) != period:
            notes.append(
                f"train_step: {flex['train_step']} has no effect on a dynamic mixer with update_times > 0: the "
                f"original trains warmup_step + update_step x update_times = {period} steps"
            )
    elif flex.get("train_step"):
        steps = int(flex["train_step"])
    elif kind == "selector" and period:
        epochs = float(trainer.get("num_train_epochs", llamafactory_default("num_train_epochs")))
        steps = max(1, math.ceil(epochs * period))
    if steps is not None:
        if trainer.get("max_steps", -1) > 0:
            if trainer["max_steps"] != steps:
                notes.append(f"max_steps: {trainer['max_steps']} wins over the DataFlex run length {steps}")
        else:
            trainer["max_steps"] = steps
    final = trainer.get("max_steps", -1)
    if kind == "selector" and period and final > period:
        return period
    return None


def check_weighting_starts(flex: dict, kind: str | None, option: str | None, trainer: dict) -> None:
    """A weighter whose ``warmup_step`` is not before the run's end never weights: one line, as
    dataflex-run's preflight refuses a selector or mixer that never updates."""
    warmup, steps = flex.get("warmup_step"), trainer.get("max_steps", -1)
    if kind == "weighter" and isinstance(warmup, int) and isinstance(steps, int) and 0 < steps <= warmup:
        raise ConfigError(
            f"weighter={option} never weights: warmup_step={warmup} >= the run's {steps} steps (plain training "
            "only); lower warmup_step or raise train_step / max_steps"
        )
