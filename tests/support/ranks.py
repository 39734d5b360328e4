"""Multi-process runs with every component decision recorded per rank (tests/e2e/rank_probe.py), and
the comparisons of those records: ranks against each other, a multi-rank run against one process."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf, open_dict
from support.config import compose_config

PROBE = Path(__file__).resolve().parents[1] / "e2e" / "rank_probe.py"  # the program torchrun starts on every rank

BASE = ["eval.before=false", "eval.after=false", "trainer.max_steps=6", "trainer.save_steps=6"]
PT = ["data=offline_domains", "trainer=pt_full", "data.max_samples=16"]
LOSS = ["selector=loss", "selector.budget=16", "selector.warmup_steps=2", "selector.update_every=2"]
ODM = ["mixer=odm"]


def probe_env(extra_env: dict | None = None) -> dict[str, str]:
    """The environment of a probed run: CPU DeepSpeed, offline, one thread, the tests' packages importable."""
    return {
        **os.environ,
        "DS_ACCELERATOR": "cpu",
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")]),
        **(extra_env or {}),
    }


def launch(tmp_path: Path, name: str, overrides: list[str], nproc: int, extra_env: dict | None = None) -> list[dict]:
    """Run the probe under torchrun with ``nproc`` processes; each rank's record."""
    run_dir = tmp_path / name
    run_dir.mkdir(parents=True)
    per_device = 4 // nproc  # the same global batch of 4 whatever the process count
    cfg = compose_config([*BASE, *overrides, f"trainer.per_device_train_batch_size={per_device}"])
    with open_dict(cfg):
        cfg.nproc = nproc
    (run_dir / "launch_config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        str(PROBE),
        str(run_dir),
        name,
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=probe_env(extra_env), timeout=3000)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    ranks = [torch.load(run_dir / f"rank{r}.pt", weights_only=False) for r in range(nproc)]
    assert all(r["world"] == nproc for r in ranks)
    return ranks


def max_diff(a, b) -> float:
    """Largest absolute difference between nested structures (inf when their shapes differ)."""
    if isinstance(a, dict):
        return (
            max((max_diff(a[k], b[k]) for k in a), default=0.0)
            if isinstance(b, dict) and a.keys() == b.keys()
            else math.inf
        )
    if isinstance(a, (list, tuple)):
        ok = isinstance(b, (list, tuple)) and len(a) == len(b)
        return max((max_diff(x, y) for x, y in zip(a, b)), default=0.0) if ok else math.inf
    if torch.is_tensor(a):
        if not torch.is_tensor(b) or a.shape != b.shape:
            return math.inf
        if a.numel() == 0:
            return 0.0
        a, b = a.double(), b.double()
        d = torch.where(torch.isnan(a) & torch.isnan(b), torch.zeros_like(a), (a - b).abs())
        return float(torch.nan_to_num(d, nan=math.inf).max())
    if isinstance(a, float) and isinstance(b, (int, float)):
        return 0.0 if (math.isnan(a) and math.isnan(b)) else abs(a - b)
    return 0.0 if a == b else math.inf


def decisions(rank: dict, method: str | None = None) -> list[dict]:
    return [r for r in rank["records"] if method is None or r["method"] == method]


def assert_ranks_agree(r0: dict, r1: dict) -> None:
    """Both ranks made the same decisions, round by round (to 1e-12), and ended in the same state."""
    made = decisions(r0)
    assert made and len(made) == len(decisions(r1))
    for a, b in zip(made, decisions(r1)):
        assert (a["method"], a["step"]) == (b["method"], b["step"])
        assert max_diff(a["value"], b["value"]) <= 1e-12, (a["method"], a["step"])
    assert max_diff(r0["state"], r1["state"]) <= 1e-12


def assert_as_one_process(made: list[dict], one: list[dict]) -> None:
    """A multi-rank run's decisions equal a one-process run's with the same global batch: the seeded
    warm-up selection exactly, later selections as sets, proportions and weights to 1e-5."""
    assert [(d["method"], d["step"]) for d in one] == [(d["method"], d["step"]) for d in made]
    for a, b in zip(made, one):
        if a["method"] == "initial_indices":
            assert torch.equal(a["value"], b["value"])
        elif a["method"] == "select":
            assert sorted(a["value"].tolist()) == sorted(b["value"].tolist()), a["step"]
        else:
            assert max_diff(a["value"], b["value"]) <= 1e-5, (a["method"], a["step"])
