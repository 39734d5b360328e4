"""Hydra overrides: values in the override grammar, the overrides between two configs, the shipped conf."""

from __future__ import annotations

import math
import re
from importlib import resources
from pathlib import Path
from typing import Any

from dataflex.config import register_resolvers
from dataflex.errors import ConfigError

_BARE = re.compile(r"[A-Za-z_/.][A-Za-z0-9_\-./]*")


def render_value(value: Any) -> str:
    """``value`` in Hydra's override grammar (strings quoted only where they must be)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):
        if _BARE.fullmatch(value) and value.lower() not in ("null", "true", "false", "inf", "nan"):
            return value
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("${", "\\${")
        return f'"{escaped}"'
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(render_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{render_value(v)}" for k, v in value.items()) + "}"
    raise ConfigError(f"cannot express {value!r} as a dataflex-run override")


def diff_overrides(prefix: str, base: dict, desired: dict, delete_missing: bool) -> list[str]:
    """The overrides that turn ``base`` into ``desired`` under ``prefix`` (``key=``, ``+key=``, ``~key``)."""
    out = []
    for key, value in desired.items():
        path = f"{prefix}.{key}"
        if key not in base:
            out.append(f"+{path}={render_value(value)}")
        elif isinstance(value, dict) and isinstance(base[key], dict) and value:
            out.extend(diff_overrides(path, base[key], value, delete_missing))
        elif value != base[key] or (type(value) is not type(base[key]) and base[key] is not None):
            out.append(f"{path}={render_value(value)}")  # 1 and 1.0 are equal but not the same setting
    if delete_missing:  # a null key already means "unset" (the backend drops it), and Hydra cannot delete one
        out.extend(f"~{prefix}.{key}" for key in base if key not in desired and base[key] is not None)
    return out


def override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def compose(overrides):
    """The shipped ``train.yaml`` composed with ``overrides``, as ``dataflex-run`` composes it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    register_resolvers()
    try:
        with initialize_config_module(config_module="dataflex.conf", version_base="1.3"):
            return hydra_compose(config_name="train", overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as err:
        lines = [line for line in str(err).splitlines() if line.strip()]
        raise ConfigError(" ".join(lines[:3])) from None


def resolved(cfg) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True)


def conf_file(group: str, option: str) -> Path:
    """``dataflex/conf/<group>/<option>.yaml`` (whether it exists or not)."""
    return Path(str(resources.files("dataflex.conf"))) / group / f"{option}.yaml"


def group_options(group: str) -> list[str]:
    """The option names of a shipped config group (``selector`` -> ``['delta_loss', 'loss', ...]``)."""
    return sorted(p.stem for p in conf_file(group, "x").parent.glob("*.yaml"))
