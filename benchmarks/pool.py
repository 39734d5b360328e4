"""Benchmark of a whole-pool signal pass (:func:`dataflex.signals.pool.map_pool`): length-sorted batches
against the pool in its own order.

Run: ``make bench-pool`` (or ``.venv/bin/python benchmarks/pool.py [--rows 256] [--bf16]``).

The pool, collator and model are the real ones of a planted-target run (``experiment=paper_small_target_loss``:
smollm2_135m with LoRA, LLaMA-Factory's SFT rows of ``data=planted_target``, cutoff 128), taken at the
selector's first round (after its 4 warm-up steps), so the pass is exactly what ``selector=loss`` runs
each round. On ``--rows`` pool rows (a seeded sample; the whole pool is 640), each timed in this process:

* project: ``map_pool(per_sample_losses)`` as the selectors call it (windows of 32 batches sorted by
  length, then cut into batches of ``--batch-size``);
* baseline: the same pass over the rows in pool order (``sort_window=1``): what a DataLoader with the
  padding collator does, and what the selectors did before the sorting;
* baseline: one row at a time (batch 1, no padding at all): the shape of LESS's reference code, which
  scores the pool with a batch-size-1 DataLoader;
* (``--bf16``) the project's pass under ``torch.autocast("cpu", torch.bfloat16)``: NOT the project's
  default, measured to size a bf16 option (the loss change and the agreement of the top-64 selection
  are printed beside it).

Printed per pass: seconds, the padded tokens it computed (Σ batch × longest row), and the ratio to the
baseline; the max and mean |Δ loss| against the baseline's values.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

import torch
from hydra import compose, initialize_config_module

from dataflex.config import register_resolvers
from dataflex.run import Run
from dataflex.signals.losses import per_sample_losses
from dataflex.signals.pool import map_pool, pool_batches


class FirstRound(Exception):
    """Raised from the selector's first round, once the passes are timed: the run has nothing else to do."""


def padded_tokens(pool, indices: torch.Tensor, batch_size: int, sort_window: int) -> int:
    """Σ over the pass's batches of rows × the batch's longest row (map_pool's batching, one rank)."""
    return sum(
        len(rows) * max(len(r["input_ids"]) for r in rows)
        for _, rows in pool_batches(pool, indices, batch_size, sort_window)
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=256, help="pool rows in each pass (a seeded sample; 0: all 640)")
    ap.add_argument("--batch-size", type=int, default=16, help="rows per forward (the selectors' default)")
    ap.add_argument("--bf16", action="store_true", help="also time the sorted pass under bf16 autocast")
    ap.add_argument("--budget", type=int, default=64, help="k of the top-k agreement printed for --bf16")
    args = ap.parse_args()
    register_resolvers()
    overrides = [
        "experiment=paper_small_target_loss",
        "trainer.max_steps=5",
        "trainer.save_steps=100000",
        "eval.after=false",
        "logger=none",
    ]
    with initialize_config_module(config_module="dataflex.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    results: dict[str, dict] = {}

    def bench(ctx) -> None:
        pool, model = ctx.pool, ctx.model
        g = torch.Generator().manual_seed(0)
        n = len(pool) if args.rows <= 0 else min(args.rows, len(pool))
        indices = torch.randperm(len(pool), generator=g)[:n].sort().values
        bs = args.batch_size
        passes = [
            ("baseline: pool order", bs, 1, False),
            ("baseline: one row at a time", 1, 1, False),
            ("project: length-sorted", bs, 32, False),
        ]
        if args.bf16:
            passes.append(("length-sorted, bf16 autocast", bs, 32, True))
        for name, size, window, bf16 in passes:
            autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)
            t0 = time.perf_counter()
            with autocast:
                values = map_pool(per_sample_losses, model, pool, ctx.collator, indices, size, name, sort_window=window)
            seconds = time.perf_counter() - t0
            tokens = padded_tokens(pool, indices, size, window)
            results[name] = {"seconds": seconds, "tokens": tokens, "values": values.float()}
            print(f"[bench-pool] {name}: {seconds:.1f}s, {tokens} padded tokens", flush=True)
        raise FirstRound

    with tempfile.TemporaryDirectory() as tmp:
        run = Run(cfg, Path(tmp) / "run", run_name="bench-pool")
        selector = run.components["selector"]
        select = selector.select
        selector.select = lambda ctx: bench(ctx) if ctx.update_index >= 0 else select(ctx)
        try:
            run.fit()
        except FirstRound:
            pass
        if not results:
            raise SystemExit("the run ended before the selector's first round: no pass was timed")

    base = results["baseline: pool order"]
    rows = base["values"].numel()
    print()
    print(
        f"machine: {os.cpu_count()} CPU cores ({platform.machine()}), torch {torch.__version__} "
        f"({torch.get_num_threads()} threads); smollm2_135m LoRA, planted_target, {rows} rows, batch {args.batch_size}"
    )
    header = (
        f"{'pass':32} | {'seconds':>8} {'vs base':>8} | {'padded tokens':>13} {'vs base':>8} | abs Δ loss: max, mean"
    )
    print(header)
    print("-" * len(header))
    for name, r in results.items():
        delta = (r["values"] - base["values"]).abs()
        print(
            f"{name:32} | {r['seconds']:8.1f} {base['seconds'] / r['seconds']:7.2f}x | "
            f"{r['tokens']:13d} {base['tokens'] / r['tokens']:7.2f}x | {delta.max():.2e}, {delta.mean():.2e}"
        )
    if args.bf16:
        k = min(args.budget, rows)
        top = [set(r["values"].topk(k).indices.tolist()) for r in (base, results["length-sorted, bf16 autocast"])]
        print(f"bf16: the top-{k} by loss (selector=loss's rule) shares {len(top[0] & top[1])} of {k} rows with fp32")


if __name__ == "__main__":
    main()
