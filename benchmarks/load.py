"""Load: a selector run over a large synthetic pool, peak memory and time against plain training.

    python benchmarks/load.py                          # pools of 20k and 200k samples (make bench-load)
    python benchmarks/load.py --sizes 200000 --json load.json

For each pool size N, a synthetic instruction set of N rows in 4 domains (seeded pseudo-words:
"Echo: w1 w2 ..." -> "w1 w2 ...") is written as local JSONL files, and two real ``dataflex-run``
processes on the tiny model train on it for a few steps:

- the baseline: plain training (``selector=none``);
- the project's way: ``selector=loss`` scoring the WHOLE pool once (one forward pass over all N
  samples through the signals engine, with its progress bar) and keeping 1% of it.

Each process gets its own datasets cache, so both pay the same tokenisation. Reported per run:
peak RSS of the process (``os.wait4``), wall time, the trainer's own train runtime, and whether the
scoring progress bar reached its total; then the ratios selector/baseline and, across sizes, how
peak RSS grows with N (bounded memory: far below linear).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DOMAINS = 4
SCORE_BATCH = 64


def write_pool(directory: Path, size: int, seed: int = 0) -> list[str]:
    """``size`` synthetic alpaca rows split over :data:`DOMAINS` JSONL files; the data overrides."""
    rng = random.Random(seed)
    syllables = ["ka", "lo", "mi", "ne", "su", "ta", "ri", "po", "de", "vu", "ga", "shi"]
    words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 3))) for _ in range(2000)]
    directory.mkdir(parents=True, exist_ok=True)
    names, overrides = [], []
    for d in range(DOMAINS):
        name = f"load_{d}"
        rows = size // DOMAINS + (1 if d < size % DOMAINS else 0)
        with open(directory / f"{name}.jsonl", "w") as f:
            for _ in range(rows):
                text = " ".join(rng.choice(words) for _ in range(rng.randint(3, 8)))
                f.write(json.dumps({"instruction": f"Echo ({d}): {text}", "input": "", "output": text}) + "\n")
        names.append(name)
        overrides += [f"+data.registry.{name}.file_name={directory / f'{name}.jsonl'}"]
    return [f"data.domains=[{','.join(names)}]", *overrides]


def command(run_dir: Path, data: list[str], selector: bool) -> list[str]:
    script = Path(sys.executable).parent / "dataflex-run"
    head = [str(script)] if script.is_file() else [sys.executable, "-m", "dataflex.cli.run"]
    args = [
        "model=tiny",
        *data,
        "data.validation=null",
        "data.max_samples=null",
        "data.cutoff_len=64",
        "trainer.max_steps=4",
        "trainer.per_device_train_batch_size=8",
        "+trainer.save_strategy=no",
        "eval.before=false",
        "eval.after=false",
        f"hydra.run.dir={run_dir}",
    ]
    if selector:  # one round at step 1 over the whole pool, keeping 1% of it
        args += [
            "selector=loss",
            "selector.budget=0.01",
            "selector.warmup_steps=1",
            "selector.update_every=1",
            "selector.num_updates=1",
            f"selector.batch_size={SCORE_BATCH}",
        ]
    return [*head, *args]


def measure(cmd: list[str], run_dir: Path) -> dict:
    """Run ``cmd``; its peak RSS (this process alone, from ``wait4``), wall time and output."""
    run_dir.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "WANDB_MODE": "offline",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_DATASETS_CACHE": str(run_dir / "hf_cache"),
    }
    log = run_dir / "output.log"
    start = time.time()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.time() - start
    text = log.read_text(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"exit {proc.returncode}:\n{text[-3000:]}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "wall_s": round(wall, 1),
        "train_runtime_s": metrics["train"].get("train_runtime"),
        "pool_size": metrics["pool_size"],
        "output": text,
    }


def run_size(size: int, workdir: Path, keep: bool = False) -> dict:
    """Baseline and selector run over a pool of ``size``; their figures and the ratios."""
    base = workdir / f"n{size}"
    data = write_pool(base / "data", size)
    plain = measure(command(base / "plain", data, selector=False), base / "plain")
    chosen = measure(command(base / "selector", data, selector=True), base / "selector")
    rounds = sorted((base / "selector" / "selections").glob("round_*.json"))
    last = json.loads(rounds[-1].read_text()) if rounds else {}
    kept, scored = last.get("selected"), last.get("stats", {}).get("selector/scored")
    result = {
        "size": size,
        "pool_size": chosen["pool_size"],
        "plain": {k: v for k, v in plain.items() if k != "output"},
        "selector": {k: v for k, v in chosen.items() if k != "output"},
        "scored": int(scored) if scored is not None else None,  # finite losses in the round (the selector's count)
        "selection_rounds": len(rounds),
        "selected": kept,
        "rss_ratio": round(chosen["peak_rss_mb"] / plain["peak_rss_mb"], 3),
        "wall_ratio": round(chosen["wall_s"] / plain["wall_s"], 3),
    }
    if not keep:
        shutil.rmtree(base, ignore_errors=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000, 200_000])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the run directories")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="dataflex_load_"))
    results = []
    print(f"{'pool':>8} {'run':>9} {'peak RSS MB':>11} {'wall s':>7} {'train s':>8}  notes")
    for size in args.sizes:
        r = run_size(size, workdir, keep=args.keep)
        results.append(r)
        for name in ("plain", "selector"):
            m = r[name]
            note = (
                ""
                if name == "plain"
                else (
                    f"scored {r['scored']} of {r['pool_size']} samples, "
                    f"kept {r['selected']}; RSS x{r['rss_ratio']}, wall x{r['wall_ratio']} vs plain"
                )
            )
            print(
                f"{r['pool_size']:>8} {name:>9} {m['peak_rss_mb']:>11} {m['wall_s']:>7} {m['train_runtime_s']:>8}  {note}",
                flush=True,
            )
    if len(results) > 1:
        a, b = results[0], results[-1]
        growth = b["selector"]["peak_rss_mb"] / a["selector"]["peak_rss_mb"]
        print(f"pool x{b['pool_size'] / a['pool_size']:.0f} -> selector peak RSS x{growth:.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0 if all(r["scored"] == r["pool_size"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
