"""Projection kinds: cost per batch and LESS selection quality on the offline SFT pool (``make bench-signals``).

Run: ``.venv/bin/python benchmarks/projection.py [--model smollm2_135m] [--pool 96] [--val 50] [--dim 8192]``
(the defaults: a few minutes on an idle 2-core CPU, most of it the two dense projections of the
``2 x pool + val`` rows; the run behind RESULTS.md took 520 s for the exact gradients at load 7).

1. Exact per-sample gradients (LoRA r=8 on q/v, :func:`per_sample_gradients`, unprojected) of a
   seeded ``--pool`` rows of ``offline_sft``'s training pool and of ``--val`` seeded rows of its
   validation set (``val_mcq``); prompt = instruction (+ input), response = output, loss on the response tokens.
2. Each projection kind (``Projector(dim, seed=0, kind)``) maps both to ``d`` features; LESS scores
   (cosine of the L2-normalised pool feature with the validation centroid, :func:`subtask_centroids`)
   pick the top ``--top`` fraction. Reported against the OLD default (dense rademacher, seed 0) and
   against the exact (unprojected) scores: top-k overlap, Spearman-free score correlation, and the
   share of ``definitions`` rows (the task the validation set tests) in the selection. A second dense
   rademacher matrix (seed 1) gives the overlap two equally valid dense projections have with each
   other: a new kind keeps selection quality when its overlaps are at that level.
   Features: plain gradients both sides (``gradient_type: sgd``) and Adam training features with a
   zero optimizer state (Γ(g) = 0.1 g / sqrt(0.001 g² + 1e-8), the first round of online LESS).
   Kinds: ``--kinds kind:seed ...`` (default: rademacher 0 and 1, sjlt 0 and 1; ``gaussian:0`` and
   ``sparse:0`` are generated densely, so they cost what the dense rademacher costs).
3. Cost: seconds to project one batch of 16 of those gradients with each kind (median of ``--repeat``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from signals import load

from dataflex.signals.adam import adam_feature
from dataflex.signals.features import normalize_features, subtask_centroids
from dataflex.signals.gradients import per_sample_gradients
from dataflex.signals.projection import Projector

KINDS = (("rademacher", 0), ("rademacher", 1), ("sjlt", 0), ("sjlt", 1))


def rows(path: Path, n: int | None, seed: int) -> list[dict]:
    data = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if n is None or n >= len(data):
        return data
    keep = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:n]
    return [data[i] for i in keep.tolist()]


def tokenize(tok, items: list[dict], max_len: int) -> list[tuple[list[int], list[int]]]:
    out = []
    for r in items:
        prompt = r["instruction"] + ("\n" + r["input"] if r.get("input") else "") + "\n"
        p = tok(prompt, add_special_tokens=False)["input_ids"]
        a = tok(r["output"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        ids = (p + a)[:max_len]
        out.append((ids, ([-100] * len(p) + a)[:max_len]))
    return out


def batches(samples, size: int, pad: int):
    for i in range(0, len(samples), size):
        chunk = samples[i : i + size]
        t = max(len(ids) for ids, _ in chunk)
        ids = torch.full((len(chunk), t), pad)
        labels = torch.full((len(chunk), t), -100)
        mask = torch.zeros(len(chunk), t, dtype=torch.long)
        for j, (x, y) in enumerate(chunk):
            ids[j, : len(x)], labels[j, : len(y)], mask[j, : len(x)] = torch.tensor(x), torch.tensor(y), 1
        yield {"input_ids": ids, "attention_mask": mask, "labels": labels}


def exact_grads(model, samples, pad: int) -> dict[str, torch.Tensor]:
    parts: dict[str, list[torch.Tensor]] = {}
    for batch in batches(samples, 16, pad):
        for n, g in per_sample_gradients(model, batch).items():
            parts.setdefault(n, []).append(g)
    return {n: torch.cat(v) for n, v in parts.items()}


def scores(pool: torch.Tensor, val: torch.Tensor) -> torch.Tensor:
    centroid = subtask_centroids(val.double(), eps=1e-12)  # [1, d]
    return (normalize_features(pool.double(), 1e-12) @ centroid.T).max(dim=1).values


def top(s: torch.Tensor, k: int) -> set[int]:
    return set(torch.sort(s, descending=True, stable=True).indices[:k].tolist())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2_135m")
    ap.add_argument("--pool", type=int, default=96)
    ap.add_argument("--val", type=int, default=50)
    ap.add_argument("--dim", type=int, default=8192)
    ap.add_argument("--top", type=float, default=0.2)
    ap.add_argument("--max-len", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=1, help="timings of the batch-of-16 projection (median)")
    ap.add_argument("--kinds", nargs="*", default=None, help="kind:seed pairs (default: all of KINDS)")
    args = ap.parse_args()
    from transformers import AutoTokenizer

    from dataflex.data.assets import asset_path, dataset_dir

    home = dataset_dir() / "offline_sft"
    tok = AutoTokenizer.from_pretrained(asset_path(args.model))
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    pool_rows = rows(home / "train.jsonl", args.pool, seed=0)
    val_rows = rows(home / "val_mcq.jsonl", args.val, seed=0)
    model = load(args.model, "lora")
    t0 = time.perf_counter()
    pool = exact_grads(model, tokenize(tok, pool_rows, args.max_len), pad)
    val = exact_grads(model, tokenize(tok, val_rows, args.max_len), pad)
    nparams = sum(v[0].numel() for v in pool.values())
    print(
        f"{args.model} LoRA: {nparams:,} trainable; exact gradients of {len(pool_rows)} pool + {len(val_rows)} "
        f"validation rows in {time.perf_counter() - t0:.0f} s; d = {args.dim}, top {args.top:.0%}"
    )
    k = max(1, round(args.top * len(pool_rows)))
    is_def = torch.tensor([r.get("task") == "definitions" for r in pool_rows])
    adam0 = {n: adam_feature(g, torch.zeros(()), torch.zeros(())) for n, g in pool.items()}
    flat = {
        key: torch.cat([g.reshape(g.shape[0], -1) for g in src.values()], 1)
        for key, src in (("pool", pool), ("adam", adam0), ("val", val))
    }
    exact = {"sgd": scores(flat["pool"], flat["val"]), "adam": scores(flat["adam"], flat["val"])}
    results = {}
    kinds = KINDS if args.kinds is None else [(k.split(":")[0], int(k.split(":")[1])) for k in args.kinds]
    if ("rademacher", 0) not in kinds:
        kinds = [("rademacher", 0), *kinds]
    for kind, seed in kinds:
        proj = Projector(args.dim, seed=seed, kind=kind)
        batch16 = {n: g[:16] for n, g in pool.items()}
        times = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            proj.project(batch16)
            times.append(time.perf_counter() - t)
        # one call for all rows (pool, Adam pool, validation): each matrix is generated once
        n_pool = len(pool_rows)
        feats = proj.project({n: torch.cat([pool[n], adam0[n], val[n]]) for n in pool})
        v = feats[2 * n_pool :]
        results[(kind, seed)] = {
            "s": statistics.median(times),
            "sgd": scores(feats[:n_pool], v),
            "adam": scores(feats[n_pool : 2 * n_pool], v),
        }
    base = results[("rademacher", 0)]
    print(
        f"\n| kind (seed) | s / batch of 16 | vs dense | features | top-{k} overlap with dense seed 0 | "
        "with exact | score corr. with exact | definitions in top-k |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for ftype in ("sgd", "adam"):
        ex = top(exact[ftype], k)
        print(
            f"| exact (unprojected) | - | - | {ftype} | {len(ex & top(base[ftype], k)) / k:.2f} | 1.00 | 1.000 | "
            f"{is_def[list(ex)].float().mean():.2f} |"
        )
        for (kind, seed), r in results.items():
            sel = top(r[ftype], k)
            corr = torch.corrcoef(torch.stack([r[ftype], exact[ftype]]))[0, 1]
            print(
                f"| {kind} ({seed}) | {r['s']:.3f} | {r['s'] / base['s']:.3f}x | {ftype} | "
                f"{len(sel & top(base[ftype], k)) / k:.2f} | {len(sel & ex) / k:.2f} | {corr:.3f} | "
                f"{is_def[list(sel)].float().mean():.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
