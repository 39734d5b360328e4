"""Load (issue 8): a selector run over a large pool, and an 8-job multirun through the local launcher.

The 200k-sample figures (peak memory, time against plain training) come from
``benchmarks/load.py`` (``make bench-load``, results in benchmarks/RESULTS.md); here the same
benchmark code runs a small pool, checking that the whole pool is scored with a completed progress
bar and a recorded selection. The multirun checks that 8 concurrent jobs share nothing they write.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("bench_load", ROOT / "benchmarks" / "load.py")
load = sys.modules.setdefault("bench_load", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(load)

BIN = Path(sys.executable).parent


def test_synthetic_pool_is_seeded_and_split_over_domains(tmp_path):
    first = load.write_pool(tmp_path / "a", 10)
    load.write_pool(tmp_path / "b", 10)
    rows = {d: (tmp_path / "a" / f"load_{d}.jsonl").read_text().splitlines() for d in range(load.DOMAINS)}
    assert [len(v) for v in rows.values()] == [3, 3, 2, 2]
    assert all(
        (tmp_path / "a" / f"load_{d}.jsonl").read_bytes() == (tmp_path / "b" / f"load_{d}.jsonl").read_bytes()
        for d in range(load.DOMAINS)
    )
    row = json.loads(rows[0][0])
    assert row["instruction"].endswith(row["output"]) and first[0] == "data.domains=[load_0,load_1,load_2,load_3]"


@pytest.mark.slow
def test_selector_over_a_whole_synthetic_pool(tmp_path):
    result = load.run_size(4000, tmp_path)
    assert result["pool_size"] == 4000
    assert result["scored"] == 4000  # every pool sample got a finite loss in the round (the selector's count)
    assert result["selection_rounds"] == 2 and result["selected"] == 40  # warm-up + one round, 1% kept
    assert result["selector"]["peak_rss_mb"] > 0 and result["plain"]["peak_rss_mb"] > 0


@pytest.mark.slow
def test_eight_job_multirun_through_the_local_launcher_shares_nothing(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    seeds = list(range(1, 9))
    command = [
        str(BIN / "dataflex-run"),
        "-m",
        "hydra/launcher=local",
        f"seed={','.join(map(str, seeds))}",
        "model=tiny",
        "data.max_samples=16",
        "data.cutoff_len=64",
        "trainer.max_steps=3",
        "trainer.save_steps=2",
        "trainer.per_device_train_batch_size=2",
        "selector=loss",
        "selector.budget=8",
        "selector.warmup_steps=2",
        "selector.update_every=2",
        "eval.before=false",
        "eval.after=false",
        f"paths.output_root={tmp_path}",
    ]
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=3000)
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = sorted(p.parent for p in tmp_path.glob("multirun/*/*/metrics.json"))
    assert len(jobs) == 8 and len({p.name for p in jobs}) == 8  # one directory per job

    run_ids, warmups = set(), set()
    for job in jobs:
        config = (job / "dataflex_config.yaml").read_text()
        seed = int(next(line.split(":")[1] for line in config.splitlines() if line.startswith("seed:")))
        assert f"seed={seed}" in job.name  # the directory is the job's own
        metrics = json.loads((job / "metrics.json").read_text())
        assert metrics["global_step"] == 3
        rounds = [json.loads(p.read_text()) for p in sorted((job / "selections").glob("round_*.json"))]
        assert [r["round"] for r in rounds] == [0, 1]
        assert len({r["run_id"] for r in rounds}) == 1  # every selection file is this job's own
        run_ids.add(rounds[0]["run_id"])
        warmups.add(tuple(rounds[0]["indices"]))
        records = [json.loads(line) for line in (job / "metrics.jsonl").read_text().splitlines()]
        assert max(r["step"] for r in records if "train/loss" in r) == 3  # no other job's lines
        assert sum(1 for r in records if "train/loss" in r) == 3
        assert (job / "data" / "dataset_info.json").is_file() and (job / "checkpoints" / "checkpoint-2").is_dir()
    assert len(run_ids) == 8 and len(warmups) == 8  # 8 distinct runs, 8 distinct seeded warm-up subsets
