"""Building the ``selector``/``mixer``/``weighter`` groups of a composed config into components.

Beside the component kinds (``dataflex.train.components``) rather than in ``dataflex.config``, so
the config helpers import nothing of the training layer.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
from collections.abc import Mapping
from typing import Any

import hydra.utils

from dataflex.config import to_dict
from dataflex.errors import ConfigError
from dataflex.train.components import Component, Mixer, Selector, Weighter
from dataflex.train.fields import check_values

KINDS: dict[str, type[Component]] = {"selector": Selector, "mixer": Mixer, "weighter": Weighter}


def check_kwargs(target: Any, kwargs: Mapping[str, Any], where: str) -> None:
    """Raise ConfigError naming any key ``target``'s signature does not accept, with the valid ones."""
    params = inspect.signature(target).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    valid = sorted(name for name in params if name != "self")
    for key in kwargs:
        if key not in params:
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"{where}: unknown key '{key}'{hint}; valid keys: {', '.join(valid)}")


def build_component(kind: str, cfg: Any) -> Component | None:
    """Instantiate the ``selector``/``mixer``/``weighter`` group (``none``/empty config: None).

    Unknown keys are an error naming the key and the valid ones (did you mean ...?), and a value
    that does not fit its declared field (type, range, choices) is an error naming the key, what it
    expects and the value given; both are checked before the component's own code runs, so before
    any model loads.
    """
    cfg = to_dict(cfg) or {}
    target_path = cfg.get("_target_")
    if target_path is None:
        if set(cfg) - {"_target_", "name"}:
            raise ConfigError(f"{kind}: settings {sorted(set(cfg) - {'_target_', 'name'})} given but no {kind} chosen")
        return None
    try:
        target = hydra.utils.get_class(target_path)
    except Exception as err:
        raise ConfigError(f"{kind}: cannot import _target_ '{target_path}' ({err})") from None
    kwargs = {k: v for k, v in cfg.items() if k not in ("_target_", "name")}
    name = cfg.get("name", target_path)
    label = f"{kind}={name}"
    check_kwargs(target, kwargs, where=label)
    try:
        if dataclasses.is_dataclass(target):
            check_values(target, kwargs)  # the declared types and ranges, before any code of the component runs
        component = target(**kwargs)
    except (ValueError, TypeError) as err:  # a value out of range or of the wrong type (ConfigError included)
        message = str(err)  # named once: a component's own message may already start with kind=name
        raise ConfigError(message if message.startswith(f"{kind}=") else f"{label}: {message}") from err
    if not isinstance(component, KINDS[kind]):
        raise ConfigError(f"{kind}: {target_path} is not a {KINDS[kind].__name__}")
    component.config_name = name  # for messages naming the config option
    return component
