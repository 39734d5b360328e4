"""Static mixer: fixed domain proportions for the whole run.

The proportions come from the config (a list aligned with the data config's domains, or a mapping
domain name -> weight), from a JSON file (the mapping DoReMi's proxy run writes), or, when none is
given, from the domain sizes of the pool (each sample as likely as any other, like plain training).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from dataflex.errors import ConfigError
from dataflex.train.components import Mixer, UpdateContext


def _resolve_name(key: str, domains: Sequence[str]) -> int:
    """Index of ``key`` in ``domains``: the exact name, else the unique name ending in ``_<key>``.

    The suffix form lets a mapping say ``code`` for ``offline_domains_code`` (the per-domain eval
    keys use the short names).
    """
    if key in domains:
        return list(domains).index(key)
    matches = [i for i, d in enumerate(domains) if d.endswith(f"_{key}")]
    if len(matches) == 1:
        return matches[0]
    why = "matches several domains" if matches else "is not a domain"
    raise ConfigError(f"mixer=static: proportion key {key!r} {why}; the domains are {list(domains)}")


def proportions_from_config(
    value: Sequence[float] | Mapping[str, float], domains: Sequence[str] | None
) -> torch.Tensor:
    """Validate ``value`` (a list, or a mapping domain -> weight) and return it normalised.

    Raises:
        ValueError: negative, non-finite or all-zero weights, a list whose length is not the
            number of domains, a mapping without domain names to resolve it against, or a mapping
            with an unknown or a missing domain. Each message says how to fix it.
    """
    if isinstance(value, Mapping):
        if not domains:
            raise ConfigError(
                "mixer=static: proportions given as a mapping need the domain names; "
                "set mixer.domains (the shipped static.yaml takes them from data.domains) or give a list"
            )
        weights = [None] * len(domains)
        for key, w in value.items():
            weights[_resolve_name(str(key), domains)] = float(w)
        missing = [d for d, w in zip(domains, weights) if w is None]
        if missing:
            raise ConfigError(
                f"mixer=static: no proportion for domains {missing}; give every domain a weight (0 to leave it out)"
            )
    else:
        weights = [float(w) for w in value]
        if domains and len(weights) != len(domains):
            raise ConfigError(
                f"mixer=static: {len(weights)} proportions for {len(domains)} domains {list(domains)}; "
                "give one weight per domain, in the data config's order"
            )
    tensor = torch.tensor(weights, dtype=torch.float64)
    if tensor.numel() == 0:
        raise ConfigError("mixer=static: proportions are empty; give one weight per domain")
    if not torch.isfinite(tensor).all() or (tensor < 0).any():
        raise ConfigError(f"mixer=static: proportions must be finite and >= 0, got {weights}")
    if tensor.sum() <= 0:
        raise ConfigError(
            f"mixer=static: proportions are all 0, got {weights}; give at least one domain a positive weight"
        )
    return tensor / tensor.sum()


class StaticMixer(Mixer):
    """Fixed proportions; never updates.

    Args:
        proportions: a list aligned with ``domains`` or a mapping domain name -> weight (a short
            name ``code`` matches ``offline_domains_code``); normalised to sum 1. None: use
            ``proportions_file``, else the domain sizes.
        proportions_file: path of a JSON file holding such a mapping (or list), e.g. the averaged
            weights DoReMi's proxy run writes. Read when training starts, so a config may name a
            file that a previous step of a sweep has not written yet.
        domains: the data config's domain names (the shipped YAML interpolates ``data.domains``);
            needed for a mapping, and used to check a list's length early.
    """

    proportions: Sequence[float] | Mapping[str, float] | None = None
    proportions_file: str | None = None
    domains: Sequence[str] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()  # no schedule: never updates
        if self.proportions is not None and self.proportions_file is not None:
            raise ValueError("mixer=static: set either proportions or proportions_file, not both")
        self.domains = list(self.domains) if self.domains else None
        # Validate config-given proportions now: a wrong length fails before any model loads.
        self.proportions = (
            proportions_from_config(self.proportions, self.domains) if self.proportions is not None else None
        )

    def check_before_start(self) -> None:
        if self.proportions is None and self.proportions_file is not None and not Path(self.proportions_file).is_file():
            raise ConfigError(
                f"proportions_file {self.proportions_file} does not exist; run the step that writes it "
                "first (e.g. the DoReMi proxy run's doremi_weights.json)"
            )

    def initial_proportions(self, ctx: UpdateContext) -> torch.Tensor:
        """The configured proportions, the file's, or the pool's domain sizes (in that order)."""
        if self.proportions is None and self.proportions_file is not None:
            path = Path(self.proportions_file)
            if not path.is_file():
                raise ConfigError(
                    f"mixer=static: proportions_file {path} does not exist; run the step that writes it first"
                )
            domains = self.domains or getattr(ctx, "domain_names", None)  # e.g. a column-defined split
            self.proportions = proportions_from_config(json.loads(path.read_text()), domains)
        if self.proportions is None:
            num_domains = len(self.domains) if self.domains else int(ctx.domain_ids.max()) + 1
            counts = torch.bincount(ctx.domain_ids, minlength=num_domains).to(torch.float64)
            self.proportions = counts / counts.sum()
        return self.proportions.clone()

    def update(self, ctx: UpdateContext) -> torch.Tensor:
        """Static: the same proportions (only reached if a caller forces an update)."""
        return self.initial_proportions(ctx)

    def state_dict(self) -> dict[str, Any]:
        return {"proportions": None if self.proportions is None else self.proportions.tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("proportions") is not None:
            self.proportions = torch.tensor(state["proportions"], dtype=torch.float64)
