"""Config helpers: OmegaConf resolvers and plain-Python copies of config nodes.

Imports nothing of the training layer (components are built by :mod:`dataflex.train.build`).
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from dataflex.errors import ConfigError  # noqa: F401  (re-exported while imports move to dataflex.errors)


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
