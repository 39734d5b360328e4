"""Scale benchmark: the DynamicSampler over synthetic pretraining-size pools (`make bench-scale`).

For each pool size N (K = 7 domains, uneven sizes): the real ODMMixer updates the proportions after
every step (fed synthetic per-sample losses with the batch's draw-time probabilities) and the real
RandomSelector re-selects ``--budget`` samples every 10 steps, both applied to the sampler as the
callback does. Measured:

* build: grouping the pool by domain (once per run);
* sampler time per step: the step's draws plus applying the step's decisions (mixer every step,
  selector every 10th), excluding the components' own decision time (reported apart);
* checkpoint: the sampler state at the step (``torch.save`` size) and the whole DataFlex state;
* resume at step S: a fresh sampler restored from the step-S state, iterated as HF's Trainer does on
  resume (``skip_first_batches`` over the batches before S), until the first new batch;
* peak RSS beyond the pool's own arrays (the domain-id array), from /proc/self/status VmHWM.

``--before`` also times the previous sampler (commit ``BEFORE_REV``, or ``--before-file``)
at the smallest N: per-step time with new proportions every step and its resume by replay.

``--tokenized N ...`` measures the data path of a pool tokenized ahead of time (``data.tokenized_path``):
a synthetic pool of N rows (``--row-tokens`` int32 token ids each, a string domain column) saved with
``save_to_disk``, then, in a fresh process: opening it and reading the domain ids from the column (the
first time, and from the cache), the pool with its ``domain_id``/``sample_index`` columns, the
sampler over it, and the rows of ``--steps`` batches fetched as the trainer's data loader does; peak
RSS beyond the process after imports.

The model forward is not part of this benchmark (the sampler's cost does not depend on the model).
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import itertools
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from dataflex.mixers.odm import ODMMixer
from dataflex.selectors.random import RandomSelector
from dataflex.train.sampler import DynamicSampler

K = 7
SELECT_EVERY = 10
BEFORE_REV = "3843bce"  # the last commit with the replaying sampler


def rss_mb(field: str = "VmRSS") -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    except OSError:
        pass


def synthetic_domains(n: int) -> np.ndarray:
    weights = np.array([0.52, 0.27, 0.05, 0.045, 0.045, 0.04, 0.03])  # SlimPajama-like shares
    return np.random.default_rng(0).choice(K, size=n, p=weights / weights.sum()).astype(np.int64)


def torch_size(obj) -> int:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.tell()


def run(n: int, steps: int, batch: int, budget: int, resume_at: list[int]) -> dict:
    domains = synthetic_domains(n)
    base_rss = rss_mb()
    reset_peak()
    t0 = time.perf_counter()
    sampler = DynamicSampler(torch.from_numpy(domains), num_draws=steps * batch, seed=0, batch_size=batch)
    build_s = time.perf_counter() - t0
    mixer, selector = ODMMixer(alpha=0.9), RandomSelector(budget=budget, seed=0)
    ctx = SimpleNamespace(sampler=sampler, pool_size=n, domain_ids=sampler.domain_ids, global_step=0, update_index=-1)
    sampler.set_proportions(mixer.initial_proportions(ctx))
    sampler.set_indices(selector.initial_indices(ctx))
    it = iter(sampler)
    sampler_s, decide_s, states, per_step = 0.0, 0.0, {}, []
    for step in range(1, steps + 1):
        t0 = time.perf_counter()
        draws = list(itertools.islice(it, batch))
        dt = time.perf_counter() - t0
        ids = torch.tensor([domains[d] for d in draws])
        losses = 2.0 + ids.double() * 0.1 + torch.rand(batch, dtype=torch.float64)
        t1 = time.perf_counter()
        mixer.observe_batch(
            losses, {"domain_id": ids, "draw_domain_probability": torch.tensor([d.domain_probability for d in draws])}
        )
        ctx.global_step = step
        proportions = mixer.update(ctx)
        selection = None
        if step % SELECT_EVERY == 0:
            ctx.update_index = step // SELECT_EVERY - 1
            selection = selector.select(ctx)
            selector.rounds.clear()  # the benchmark keeps no selection history (the callback's rounds go to files)
        t2 = time.perf_counter()
        sampler.set_proportions(proportions)
        if selection is not None:
            sampler.set_indices(selection)
        t3 = time.perf_counter()
        sampler_s += dt + (t3 - t2)
        decide_s += t2 - t1
        per_step.append(dt + (t3 - t2))
        if step in resume_at:
            states[step] = sampler.state_dict(position=step * batch)
            states[step]["_full"] = torch_size({"sampler": states[step], "mixer": mixer.state_dict()})
    peak = rss_mb("VmHWM") - base_rss
    # the steps that draw a new selection's first batch, and the others
    select_steps = [t for s, t in enumerate(per_step, 1) if s % SELECT_EVERY == 1]
    other_steps = [t for s, t in enumerate(per_step, 1) if s % SELECT_EVERY != 1]
    out = {
        "n": n,
        "steps": steps,
        "build_s": build_s,
        "sampler_ms": 1e3 * sampler_s / steps,
        "p50_ms": 1e3 * float(np.median(other_steps)),
        "sel_ms": 1e3 * float(np.mean(select_steps)),
        "decide_ms": 1e3 * decide_s / steps,
        "peak_mb": peak,
        "resume": {},
    }
    for step, state in states.items():
        full = state.pop("_full")
        size = torch_size(state)
        t0 = time.perf_counter()
        resumed = DynamicSampler(torch.from_numpy(domains), num_draws=steps * batch, seed=0, batch_size=batch)
        t1 = time.perf_counter()
        resumed.load_state_dict(state)
        batches = iter(torch.utils.data.BatchSampler(resumed, batch, drop_last=False))
        skipped = 0
        for _ in range(step):  # what accelerate's SkipBatchSampler discards
            next(batches)
            skipped += 1
        first = next(batches) if step < steps else []
        t2 = time.perf_counter()
        out["resume"][step] = {
            "build_s": t1 - t0,
            "resume_s": t2 - t1,
            "state_kb": size / 1024,
            "full_state_kb": full / 1024,
            "first": [int(d) for d in first][:3],
        }
    return out


def run_before(path: Path, n: int, steps: int, batch: int) -> dict:
    """The previous sampler: new proportions every step, then a resume by replaying the history."""
    spec = importlib.util.spec_from_file_location("sampler_before", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["sampler_before"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    domains = torch.from_numpy(synthetic_domains(n))
    sampler = module.DynamicSampler(domains, num_draws=steps * batch, seed=0)
    it = iter(sampler)
    rng = np.random.default_rng(1)
    t0 = time.perf_counter()
    for _ in range(steps):
        list(itertools.islice(it, batch))
        sampler.set_proportions(rng.dirichlet(np.ones(K)).tolist())
    per_step = (time.perf_counter() - t0) / steps
    resumed = module.DynamicSampler(domains, num_draws=steps * batch + batch, seed=0)
    state = sampler.state_dict()
    state["num_draws"] = steps * batch + batch
    resumed.load_state_dict(state)
    t0 = time.perf_counter()
    list(itertools.islice(iter(resumed), steps * batch + 1))
    return {"n": n, "steps": steps, "sampler_ms": 1e3 * per_step, "replay_s": time.perf_counter() - t0}


DOMAIN_NAMES = ["CommonCrawl", "C4", "Github", "Book", "ArXiv", "Wikipedia", "StackExchange"]


def save_tokenized_pool(n: int, row_tokens: int, path: Path) -> float:
    """A synthetic tokenized pool of ``n`` rows at ``path`` (save_to_disk); returns its size in MB."""
    import pyarrow as pa
    from datasets import Dataset
    from datasets.table import InMemoryTable

    rng = np.random.default_rng(0)
    offsets = pa.array(np.arange(0, n * row_tokens + 1, row_tokens, dtype=np.int32))
    tokens = pa.ListArray.from_arrays(offsets, pa.array(rng.integers(0, 32_000, n * row_tokens, dtype=np.int32)))
    mask = pa.ListArray.from_arrays(offsets, pa.array(np.ones(n * row_tokens, dtype=np.int8)))
    domain = pa.DictionaryArray.from_arrays(
        pa.array(synthetic_domains(n).astype(np.int32)), pa.array(DOMAIN_NAMES)
    ).cast(pa.string())
    table = pa.table({"input_ids": tokens, "attention_mask": mask, "source": domain})
    Dataset(InMemoryTable(table)).save_to_disk(str(path))
    return sum(f.stat().st_size for f in path.rglob("*.arrow")) / 2**20


def measure_tokenized(path: Path, steps: int, batch: int) -> dict:
    """In this (fresh) process: the tokenized pool's data path, timed, and the peak RSS beyond imports."""
    import json
    import tempfile

    import datasets  # noqa: F401  (imported before the baseline: the figures are the pool's, not the imports')
    import llamafactory.data.data_utils  # noqa: F401
    import pyarrow.compute  # noqa: F401

    import dataflex.backend.pools as pools
    from dataflex.train.trainer import DrawDataset

    work = Path(tempfile.mkdtemp())
    pools.domain_cache_dir = lambda: work / "domain_ids"
    (work / pools.DOMAIN_SPLIT_FILE).write_text(json.dumps({"source": None, "column": "source", "domains": []}))
    base, base_anon = rss_mb(), rss_mb("RssAnon")
    reset_peak()
    out = {}
    t0 = time.perf_counter()
    domains = pools.resolve_pool_domains(str(work), ["pool"], str(path))
    out["ids_first_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    domains = pools.resolve_pool_domains(str(work), ["pool"], str(path))
    out["ids_cached_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    pool = pools.tokenized_pool(domains)
    out["pool_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    sampler = DynamicSampler(pools.pool_domain_ids(pool), num_draws=steps * batch, seed=0, batch_size=batch)
    out["sampler_s"] = time.perf_counter() - t0
    data, it = DrawDataset(pool), iter(sampler)
    t0 = time.perf_counter()
    tokens = 0
    for _ in range(steps):
        rows = data.__getitems__(list(itertools.islice(it, batch)))
        tokens += sum(len(r["input_ids"]) for r in rows)
    out["fetch_ms"] = 1e3 * (time.perf_counter() - t0) / steps
    out["peak_mb"] = rss_mb("VmHWM") - base
    out["anon_mb"] = rss_mb("RssAnon") - base_anon  # the process's own memory (the rest: mapped pool pages)
    out["rss_mb"] = rss_mb() - base
    out["domains"], out["rows"], out["tokens"] = domains.names, len(pool), tokens
    return out


def run_tokenized(n: int, steps: int, batch: int, row_tokens: int) -> dict:
    import json
    import shutil
    import subprocess
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="dataflex_scale_"))
    try:
        t0 = time.perf_counter()
        size = save_tokenized_pool(n, row_tokens, folder / "pool")
        save_s = time.perf_counter() - t0
        child = subprocess.run(
            [
                sys.executable,
                __file__,
                "--measure-tokenized",
                str(folder / "pool"),
                "--steps",
                str(steps),
                "--batch",
                str(batch),
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        return {"n": n, "disk_mb": size, "save_s": save_s, **json.loads(child.stdout.strip().splitlines()[-1])}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--resume-at", type=int, nargs="+", default=[1_000, 10_000])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--budget", type=int, default=65_536, help="samples per selection round")
    parser.add_argument("--before", action="store_true", help="also time the previous sampler")
    parser.add_argument("--before-file", type=Path, default=None)
    parser.add_argument("--before-steps", type=int, default=50)
    parser.add_argument("--tokenized", type=int, nargs="+", default=None, help="pool sizes of the tokenized-pool run")
    parser.add_argument("--row-tokens", type=int, default=16, help="token ids per row of the tokenized pool")
    parser.add_argument("--measure-tokenized", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.measure_tokenized is not None:  # the child of run_tokenized
        import json

        print(json.dumps(measure_tokenized(args.measure_tokenized, args.steps, args.batch)))
        return
    if args.tokenized:
        print(
            f"tokenized pool (memory-mapped): K={K} batch={args.batch} steps={args.steps} {args.row_tokens} tokens/row"
        )
        print(
            f"{'pool N':>11} {'disk MB':>8} {'ids s':>6} {'cached s':>8} {'pool s':>6} {'sampler s':>9} "
            f"{'fetch ms/step':>13} {'peak MB':>8} {'RSS MB':>7} {'anon MB':>7}"
        )
        for n in args.tokenized:
            r = run_tokenized(n, args.steps, args.batch, args.row_tokens)
            print(
                f"{n:>11,} {r['disk_mb']:>8.0f} {r['ids_first_s']:>6.2f} {r['ids_cached_s']:>8.2f} "
                f"{r['pool_s']:>6.2f} {r['sampler_s']:>9.2f} {r['fetch_ms']:>13.3f} {r['peak_mb']:>8.0f} {r['rss_mb']:>7.0f} "
                f"{r['anon_mb']:>7.0f}"
            )
        return
    print(f"K={K} batch={args.batch} steps={args.steps} budget={args.budget} (selection every {SELECT_EVERY} steps)")
    print(
        f"{'pool N':>11} {'build s':>8} {'sampler ms/step':>16} {'p50 ms':>7} {'sel ms':>7} {'decide ms':>9} "
        f"{'peak MB':>8} | "
        f"{'resume at':>9} {'resume s':>8} {'sampler KB':>10} {'state KB':>8}"
    )
    for n in args.sizes:
        r = run(n, args.steps, args.batch, args.budget, [s for s in args.resume_at if s <= args.steps])
        rows = list(r["resume"].items()) or [(None, None)]
        for i, (step, res) in enumerate(rows):
            head = (
                (
                    f"{n:>11,} {r['build_s']:>8.2f} {r['sampler_ms']:>16.3f} {r['p50_ms']:>7.3f} {r['sel_ms']:>7.2f} "
                    f"{r['decide_ms']:>9.3f} {r['peak_mb']:>8.0f}"
                )
                if i == 0
                else " " * 72
            )
            tail = (
                ""
                if res is None
                else (f"{step:>9,} {res['resume_s']:>8.3f} {res['state_kb']:>10.1f} {res['full_state_kb']:>8.1f}")
            )
            print(f"{head} | {tail}")
    if args.before:
        path = args.before_file
        if path is None:  # the sampler before issue 20, from git
            import subprocess
            import tempfile

            text = subprocess.run(
                ["git", "show", f"{BEFORE_REV}:dataflex/train/sampler.py"],
                check=True,
                capture_output=True,
                text=True,
                cwd=Path(__file__).resolve().parents[1],
            ).stdout
            path = Path(tempfile.mkdtemp()) / "sampler_before.py"
            path.write_text(text)
        b = run_before(path, args.sizes[0], args.before_steps, args.batch)
        print(
            f"before ({path}): N={b['n']:,}: {b['sampler_ms']:.2f} ms/step with new proportions every step; "
            f"resume by replaying {b['steps']} steps: {b['replay_s']:.2f} s"
        )


if __name__ == "__main__":
    main()
