"""Shared fixtures: compose the real train.yaml (shrunk) and run it on the tiny model, offline."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DS_ACCELERATOR", "cpu")

import pytest
from hydra import compose, initialize_config_module
from omegaconf import open_dict

from dataflex.config import register_resolvers

register_resolvers()

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


def compose_config(overrides=(), tiny=True):
    """The real train.yaml composed with ``overrides`` (after the TINY shrink when ``tiny``)."""
    with initialize_config_module(config_module="dataflex.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=[*(TINY if tiny else []), *overrides])
    with open_dict(cfg):
        cfg.paths.output_root = "unused-in-tests"
    return cfg


@pytest.fixture
def tiny_cfg():
    return compose_config
