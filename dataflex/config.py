"""Config helpers: the ConfigError type, OmegaConf resolvers, and component instantiation."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Mapping
from typing import Any

import hydra.utils
from omegaconf import DictConfig, OmegaConf

from dataflex.errors import ConfigError  # noqa: F401  (re-exported while imports move to dataflex.errors)
from dataflex.train.components import Component, Mixer, Selector, Weighter


def register_resolvers() -> None:
    """``${dataflex_home:}`` resolves to the offline asset cache (``$DATAFLEX_HOME``)."""
    if not OmegaConf.has_resolver("dataflex_home"):
        from dataflex.data.assets import dataflex_home

        OmegaConf.register_new_resolver("dataflex_home", lambda: str(dataflex_home()))


def to_dict(cfg: Any) -> Any:
    """A resolved plain-Python copy of a (possibly OmegaConf) config node."""
    if isinstance(cfg, DictConfig) or OmegaConf.is_config(cfg):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg


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


_KINDS = {"selector": Selector, "mixer": Mixer, "weighter": Weighter}


def build_component(kind: str, cfg: Any) -> Component | None:
    """Instantiate the ``selector``/``mixer``/``weighter`` group (``none``/empty config: None).

    Unknown keys are an error naming the key and the valid ones (checked against the target's
    signature before anything is built).
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
    check_kwargs(target, kwargs, where=f"{kind}={name}")
    try:
        component = target(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as err:  # a value out of range or of the wrong type
        raise ConfigError(f"{kind}={name}: {err}") from err
    if not isinstance(component, _KINDS[kind]):
        raise ConfigError(f"{kind}: {target_path} is not a {_KINDS[kind].__name__}")
    component.config_name = name  # for messages naming the config option
    return component
