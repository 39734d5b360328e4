"""The real train.yaml composed with overrides, shrunk so an end-to-end run on the tiny model takes seconds."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_module
from omegaconf import open_dict

import dataflex

CONF_DIR = Path(dataflex.__file__).parent / "conf"

# Small enough that an end-to-end run on the tiny model takes seconds.
TINY = [
    "model=tiny",
    "data.max_samples=64",
    "data.cutoff_len=128",
    "trainer.max_steps=6",
    "trainer.per_device_train_batch_size=4",
    "trainer.save_steps=3",
    "trainer.logging_steps=1",
    "eval.max_samples=8",
    "eval.batch_size=8",
    "eval.max_new_tokens=4",
    "eval.block_size=64",
]


def group_options(group: str) -> list[str]:
    """The option names of a config group (its YAML files)."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def compose_config(overrides=(), tiny=True):
    """The real train.yaml composed with ``overrides`` (after the TINY shrink when ``tiny``)."""
    with initialize_config_module(config_module="dataflex.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=[*(TINY if tiny else []), *overrides])
    with open_dict(cfg):
        cfg.paths.output_root = "unused-in-tests"
    return cfg
