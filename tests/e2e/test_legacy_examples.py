"""The original DataFlex's and LLaMA-Factory's own example YAMLs train end to end on the tiny model through
`dataflex-cli train`, the files unchanged: only the substitutions of ``support.legacy.offline_args``
(model path, dataset names, CPU-only switches, the run's size) are given, as command-line args."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from support.legacy import DATAFLEX, LLAMAFACTORY, copy_tree, offline_args

from dataflex.cli import legacy


def train(tmp_path, monkeypatch, repo: Path, example: str, *extra: str, dataset_dir=None) -> tuple[dict, Path]:
    """``dataflex-cli train <example> <substitutions> <extra>`` from the copied repository's root:
    (the run's metrics.json, its run directory)."""
    root = copy_tree(tmp_path, repo) if not (tmp_path / repo.name).exists() else tmp_path / repo.name
    monkeypatch.chdir(root)
    args = [*offline_args(root / example, dataset_dir=dataset_dir, scale=True), *extra]
    legacy.main(["train", example, *args])
    run_dir = root / yaml.safe_load((root / example).read_text())["output_dir"]
    return json.loads((run_dir / "metrics.json").read_text()), run_dir


def logged(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_llamafactory_full_sft_example_trains(tmp_path, monkeypatch):
    metrics, run_dir = train(tmp_path, monkeypatch, LLAMAFACTORY, "examples/train_full/qwen3_full_sft.yaml")
    assert metrics["global_step"] == 4 and math.isfinite(metrics["final_train_loss"])
    saved = yaml.safe_load((run_dir / "dataflex_config.yaml").read_text())
    assert saved["trainer"]["finetuning_type"] == "full"
    assert (run_dir / "model" / "model.safetensors").is_file()  # the full model, not an adapter
    assert [r["step"] for r in logged(run_dir) if "train/loss" in r] == [1, 2, 3, 4]
