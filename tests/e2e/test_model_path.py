"""``model=/path/to/model``: a local model directory works and is recorded as that path (issue 22)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.config import compose_config

from dataflex.cli.run import model_path_overrides
from dataflex.data.assets import asset_path
from dataflex.errors import ConfigError


def test_a_directory_becomes_the_path_model(tmp_path):
    overrides = model_path_overrides(["selector=loss", f"model={tmp_path}", "seed=1"])
    assert overrides == [
        "selector=loss",
        "model=path",
        f"model.name_or_path={tmp_path}",
        f"model.name={tmp_path}",
        "seed=1",
    ]
    cfg = compose_config(overrides[1:4], tiny=False)
    assert cfg.model.name_or_path == str(tmp_path) and cfg.model.template is None


def test_config_names_are_left_to_hydra():
    assert model_path_overrides(["model=tiny", "model.template=chatml"]) == ["model=tiny", "model.template=chatml"]


def test_a_path_that_is_no_directory_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match=r"model=.*/nope: no such model directory"):
        model_path_overrides([f"model={tmp_path / 'nope'}"])


def test_dataflex_run_trains_a_model_directory(tmp_path):
    model_dir = asset_path("tiny")  # the tiny model's own directory, named by path
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "dataflex-run"),
            f"model={model_dir}",
            "data.max_samples=16",
            "trainer.max_steps=1",
            "trainer.per_device_train_batch_size=4",
            "eval.before=false",
            "eval.after=false",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["model"] == str(Path(model_dir).resolve()) and metrics["global_step"] == 1
