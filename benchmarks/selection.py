"""Benchmark of the NEAR and TSDS selection cores on synthetic embeddings, against exact brute force.

Run: ``make bench-select`` (or ``.venv/bin/python benchmarks/selection.py [--sizes 10000 100000 1000000]``).

Data: L2-normalised 384-d float32 embeddings drawn around ``--clusters`` random unit centres (the
cosine of a point to its centre is about 0.78; two points of one cluster about 0.6, of different
clusters about 0), standing in for sentence embeddings of a pool with topics. The ``--queries``
queries come from ``--query-clusters`` of those clusters (a target task covers a few topics).

Per pool size N, each timed in the same process:

* ``build``: :class:`dataflex.signals.knn.KnnIndex` over the pool (exact IndexFlatIP up to
  ``exact_max``, IVF above, each selector's default; the selectors build it once per run and reuse
  it every round with sentence embeddings). Both selectors' times include it.
* NEAR: ``build`` + :func:`dataflex.selectors.near.near_indices` (k = ``--budget`` of the pool).
  Baseline: exact brute force, a chunked torch matmul top-k over the whole pool and the same round
  robin, in one pass at the depth the project's search ended at (the baseline is not charged for
  finding that depth).
* TSDS: ``build`` + :func:`dataflex.selectors.tsds.tsds_probabilities` (defaults: α 0.5, C 5,
  σ 0.75, max_K 5000, kde_K 1000, both capped at N/10) + drawing k samples. Baseline: the same
  closed form with exact brute-force neighbours and exact brute-force KDE (a chunked torch matmul of
  every candidate the sweep reaches against the whole pool). Above ``--baseline-full-max`` the
  exact KDE is timed on a random sample of ``--kde-sample`` reached candidates and scaled to all of
  them (marked ``~``): its cost is linear in their number.

Quality, printed beside the times: NEAR's overlap with the exact selection, the IVF kNN recall@10
of the queries, the KDE's agreement with the exact KDE on the sampled candidates (IVF scans each
candidate's own cell only), and the total-variation distance between the project's p and the exact
p where the full baseline ran. Growth: the exponent b of time ~ N^b between consecutive sizes.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import platform
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from dataflex.selectors.near import near_indices, round_robin
from dataflex.selectors.tsds import (
    TSDS_EXACT_MAX,
    capped,
    draw,
    kde_densities,
    transport_mass,
    tsds_probabilities,
)
from dataflex.signals.knn import EXACT_MAX, KnnIndex

DIM = 384


def synthetic(
    n: int, centers: torch.Tensor, which: torch.Tensor | None, g: torch.Generator, noise: float = 0.8
) -> torch.Tensor:
    """``n`` unit vectors around ``centers`` (those listed in ``which``, or all), built in chunks."""
    out = torch.empty(n, centers.shape[1])
    pool = torch.arange(len(centers)) if which is None else which
    for s in range(0, n, 65536):
        m = min(65536, n - s)
        c = pool[torch.randint(len(pool), (m,), generator=g)]
        out[s : s + m] = F.normalize(
            centers[c] + noise * torch.randn(m, centers.shape[1], generator=g) / centers.shape[1] ** 0.5, dim=1
        )
    return out


def brute_topk(
    queries: torch.Tensor, pool: torch.Tensor, k: int, chunk: int = 16384
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k cosine (unit rows) by chunked matmul, merging running top-k lists."""
    best_s = torch.full((len(queries), 0), -math.inf)
    best_i = torch.zeros((len(queries), 0), dtype=torch.long)
    for s in range(0, len(pool), chunk):
        scores = queries @ pool[s : s + chunk].T
        v, i = scores.topk(min(k, scores.shape[1]), dim=1)
        v, i = torch.cat([best_s, v], 1), torch.cat([best_i, i + s], 1)
        best_s, order = v.topk(min(k, v.shape[1]), dim=1)
        best_i = i.gather(1, order)
    return best_s, best_i


def brute_near(queries: torch.Tensor, pool: torch.Tensor, k: int, depth: int) -> torch.Tensor:
    """NEAR by exact brute force in one pass at ``depth`` neighbours per query (the depth the
    project's search found enough: the baseline is spared the search for it)."""
    _, neighbors = brute_topk(queries, pool, depth)
    return round_robin(neighbors, k)


def brute_kde(rows: torch.Tensor, pool: torch.Tensor, sigma: float, kde_K: int, chunk: int = 256) -> torch.Tensor:
    """Exact ρ of the candidates ``rows``: 1 (itself) + the kernel of its kde_K − 1 nearest others,
    by a chunked matmul against the whole pool."""
    thr = 1.0 - sigma**2 / 2.0
    rho = torch.ones(len(rows), dtype=torch.float64)
    for s in range(0, len(rows), chunk):
        r = rows[s : s + chunk]
        owner, values = [], []
        for c in range(0, len(pool), 65536):
            scores = pool[r] @ pool[c : c + 65536].T
            mine = (r >= c) & (r < c + 65536)
            scores[torch.nonzero(mine).flatten(), r[mine] - c] = -2.0  # itself counts exactly 1, added above
            i, j = torch.nonzero(scores > thr, as_tuple=True)
            owner.append(i)
            values.append(scores[i, j])
        owner, values = torch.cat(owner), torch.cat(values).double()
        for q in range(len(r)):  # only the kde_K − 1 nearest others count
            v = values[owner == q]
            if v.numel():
                v = v.sort(descending=True).values[: kde_K - 1]
                rho[s + q] += torch.clamp(1 - (2 - 2 * v) / sigma**2, min=0).sum()
    return rho


def tsds_exact(pool, queries, alpha, C, sigma, max_K, kde_K, start_rank=64):
    """The TSDS closed form on exact neighbours and exact KDE (the same prefix doubling)."""
    n = len(pool)
    k_max, k_kde = capped(max_K, n), capped(kde_K, n)
    scores, neighbors = brute_topk(queries, pool, k_max)
    distances = torch.sqrt(torch.clamp(2.0 - 2.0 * scores.double(), min=0.0))
    rho = torch.full((n,), math.nan, dtype=torch.float64)
    r = min(k_max, start_rank)
    while True:
        cols = neighbors[:, :r]
        new = torch.unique(cols[torch.isnan(rho[cols])])
        rho[new] = brute_kde(new, pool, sigma, k_kde)
        plan = transport_mass(distances[:, :r], rho[cols], alpha, C)
        if r == k_max or (plan.stopped and plan.s < float((1.0 / rho[cols]).sum(1).min())):
            break
        r = min(2 * r, k_max)
    p = torch.zeros(n, dtype=torch.float64).index_add_(0, cols.reshape(-1), plan.mass.reshape(-1))
    return p / p.sum()


class Timer:
    """Wall seconds (``seconds``) and this process's CPU seconds over all threads (``cpu``)."""

    def __enter__(self):
        gc.collect()
        self.start, self.start_cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
        self.cpu = time.process_time() - self.start_cpu


def kind(index: KnnIndex) -> str:
    return "exact" if index.exact else f"IVF {index.nlist}"


def growth(sizes: list[int], times: list[float]) -> str:
    return "  ".join(
        f"{a // 1000}k->{b // 1000}k: N^{math.log(tb / ta) / math.log(b / a):.2f}"
        for a, b, ta, tb in zip(sizes, sizes[1:], times, times[1:])
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--clusters", type=int, default=1000)
    ap.add_argument("--query-clusters", type=int, default=50)
    ap.add_argument("--budget", type=float, default=0.1, help="k as a fraction of the pool")
    ap.add_argument("--near-exact-max", type=int, default=EXACT_MAX, help="NEAR's exact_max (its selector default)")
    ap.add_argument(
        "--tsds-exact-max", type=int, default=TSDS_EXACT_MAX, help="TSDS's exact_max (its selector default)"
    )
    ap.add_argument("--nlist-factor", type=float, default=None, help="IVF cells per sqrt(N) (default: KnnIndex's)")
    ap.add_argument("--nprobe", type=int, default=None, help="IVF cells scanned per query (default: KnnIndex's)")
    ap.add_argument(
        "--baseline-full-max", type=int, default=20_000, help="largest N whose exact TSDS baseline runs in full"
    )
    ap.add_argument(
        "--kde-sample", type=int, default=4000, help="reached candidates the exact KDE is timed on above it"
    )
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads)"
    )
    print(f"load average before: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    g = torch.Generator().manual_seed(args.seed)
    centers = F.normalize(torch.randn(args.clusters, DIM, generator=g), dim=1)
    target = torch.randperm(args.clusters, generator=g)[: args.query_clusters]
    queries = synthetic(args.queries, centers, target, g)

    rows, quality, near_t, tsds_t = [], [], [], []
    for n in tqdm(args.sizes, desc="pool sizes"):
        pool = synthetic(n, centers, None, g)
        k = max(1, int(args.budget * n))
        ivf = {k: v for k, v in (("nlist_factor", args.nlist_factor), ("nprobe", args.nprobe)) if v is not None}
        with Timer() as t_build:
            index = KnnIndex(pool, exact_max=args.near_exact_max, seed=args.seed, **ivf)
        t_build_tsds, tsds_index = t_build, index
        if index.exact != (n <= args.tsds_exact_max):  # TSDS's default index is of the other kind
            with Timer() as t_build_tsds:
                tsds_index = KnnIndex(pool, exact_max=args.tsds_exact_max, seed=args.seed, **ivf)
        near_info: dict = {}
        with Timer() as t_near:
            picked = near_indices(index, queries, k, near_info)
        with Timer() as t_near_base:
            exact_pick = brute_near(queries, pool, k, near_info["depth"])
        overlap = len(set(picked.tolist()) & set(exact_pick.tolist())) / k
        _, ivf10 = index.search(queries, 10)
        _, ex10 = brute_topk(queries, pool, 10)
        recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ivf10.tolist(), ex10.tolist())]))

        info: dict = {}
        with Timer() as t_tsds:
            p = tsds_probabilities(pool, queries, index=tsds_index, info=info)
            draw(p, k, True, torch.Generator().manual_seed(args.seed))
        # the exact KDE on a sample of the reached candidates (timing and agreement)
        reached = torch.nonzero(p > 0).flatten()
        sample = reached[torch.randperm(reached.numel(), generator=g)[: args.kde_sample]]
        approx = kde_densities(tsds_index, sample, 0.75, capped(1000, n))
        with Timer() as t_kde_sample:
            exact_rho = brute_kde(sample, pool, 0.75, capped(1000, n))
        kde_agree = float((approx - exact_rho).abs().le(1e-4).double().mean())
        kde_err = float(((approx - exact_rho).abs() / exact_rho).mean())
        if n <= args.baseline_full_max:
            with Timer() as t_tsds_base:
                p_exact = tsds_exact(pool, queries, 0.5, 5.0, 0.75, 5000, 1000)
                draw(p_exact, k, True, torch.Generator().manual_seed(args.seed))
            base_tsds, base_tsds_cpu, approx_mark = t_tsds_base.seconds, t_tsds_base.cpu, ""
            tv = f"{0.5 * float((p - p_exact).abs().sum()):.4f}"
        else:
            # exact neighbours of the queries (timed) + exact KDE for every candidate whose density
            # the project computed (scaled from the sample) + the sweep (as the project's)
            with Timer() as t_knn_base:
                brute_topk(queries, pool, capped(5000, n))
            scale = info["densities"] / max(1, sample.numel())
            base_tsds = t_knn_base.seconds + t_kde_sample.seconds * scale
            base_tsds_cpu = t_knn_base.cpu + t_kde_sample.cpu * scale
            approx_mark, tv = "~", "-"
        near_total, tsds_total = t_build.seconds + t_near.seconds, t_build_tsds.seconds + t_tsds.seconds
        near_cpu, tsds_cpu = t_build.cpu + t_near.cpu, t_build_tsds.cpu + t_tsds.cpu
        near_t.append(near_total)
        tsds_t.append(tsds_total)
        rows.append(
            f"{n:>9,} {kind(index):>9} {t_build.seconds:6.1f} | {t_near.seconds:6.1f} {near_total:6.1f} ({near_cpu:5.1f}) "
            f"{t_near_base.seconds:6.1f} ({t_near_base.cpu:5.1f}) {t_near_base.seconds / near_total:5.1f}x ({t_near_base.cpu / near_cpu:4.1f}x) | "
            f"{kind(tsds_index):>9} {t_tsds.seconds:6.1f} {tsds_total:6.1f} ({tsds_cpu:5.1f}) "
            f"{approx_mark:>1}{base_tsds:6.1f} ({base_tsds_cpu:6.1f}) {base_tsds / tsds_total:5.1f}x ({base_tsds_cpu / tsds_cpu:4.1f}x)"
        )
        quality.append(
            f"{n:>9,} | {near_info['depth']:>5} {overlap:7.3f} {recall:6.3f} | {info['prefix']:>5} {info['densities']:>8,} "
            f"{info['support']:>8,} {'yes' if info['stopped'] else 'no':>4} {kde_agree:6.3f} {kde_err:7.4f} {tv:>6}"
        )
        tqdm.write(rows[-1])
        del index, tsds_index, pool, p
        gc.collect()

    header = (
        f"{'N':>9} {'index':>9} {'build':>6} | {'select':>6} {'NEAR':>6} {'(cpu)':>7} {'brute':>6} {'(cpu)':>7} {'ratio':>6} {'(cpu)':>7} | "
        f"{'index':>9} {'p+draw':>6} {'TSDS':>6} {'(cpu)':>7} {'exact':>7} {'(cpu)':>8} {'ratio':>6} {'(cpu)':>7}"
    )
    print()
    print(
        f"queries {args.queries}, budget {args.budget:g} of the pool, dim {DIM}, exact_max NEAR {args.near_exact_max:,} TSDS {args.tsds_exact_max:,}"
    )
    print(
        "times in seconds: wall (this process's CPU seconds, all threads); ratio = baseline / project, of wall (of CPU);"
    )
    print("~ = the exact KDE timed on a sample of the candidates and scaled to all of them")
    print(header)
    print("-" * len(header))
    print("\n".join(rows))
    header = (
        f"{'N':>9} | {'depth':>5} {'overlap':>7} {'rec@10':>6} | {'prefix':>5} {'KDEs':>8} {'support':>8} {'stop':>4} "
        f"{'KDE=':>6} {'KDEerr':>7} {'TV':>6}"
    )
    print()
    print("NEAR: depth searched per query, overlap with the exact selection, IVF recall@10 of the queries.")
    print("TSDS: neighbour prefix used, candidates whose KDE was computed, support of p, stopped by the criterion,")
    print("      fraction of sampled KDEs equal to the exact ones (1e-4), their mean relative error, TV(p, exact p).")
    print(header)
    print("-" * len(header))
    print("\n".join(quality))
    print(f"NEAR growth: {growth(args.sizes, near_t)}")
    print(f"TSDS growth: {growth(args.sizes, tsds_t)}")
    print(f"load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
