"""Shared set-up and fixtures: offline environment, the config resolvers, the real train.yaml (shrunk) on the
tiny model. Helpers used by several test modules live in the ``support`` package beside this file."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DS_ACCELERATOR", "cpu")

import pytest
from support.config import compose_config

from dataflex.config import register_resolvers

register_resolvers()


@pytest.fixture
def tiny_cfg():
    return compose_config
