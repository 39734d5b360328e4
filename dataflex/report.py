"""Run directories -> comparison tables and PNG plots (``dataflex-report``).

Everything is read from the files every run writes (``metrics.jsonl``, ``metrics.json``,
``dataflex_config.yaml``); W&B is never needed. A *run* is a directory holding ``metrics.jsonl``;
runs are grouped into *arms* by their directory: a sweep writes ``<sweep>/<arm>/seed=<seed>/``
(sweeps/sweep.py), and a ``seed=N`` item in a directory name never separates two arms.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

PREFIX = "mixer/proportion/"
OVERLAP = "selector/overlap"
TOKENS = "train/num_input_tokens_seen"
SKIP_DIRS = {".submitit", "wandb", "checkpoints", "model", "selections", ".hydra"}
BEST_MARK = "★"


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """The records of a run's ``metrics.jsonl`` (a torn last line from a kill is skipped)."""
    records = []
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def _series(records: list[dict], key: str) -> dict[int, float]:
    """``key`` by step; a resumed run logs some steps twice and the later record wins."""
    out: dict[int, float] = {}
    for record in records:
        value = record.get(key)
        if isinstance(value, (int, float)) and record.get("step") is not None:
            out[int(record["step"])] = float(value)
    return out


def proportions_by_step(records: list[dict], prefix: str = PREFIX) -> dict[int, dict[str, float]]:
    """Each logged mixer decision: step -> {domain: proportion} (the later record of a step wins).
    ``prefix`` picks another per-domain series (DoReMi's ``mixer/doremi/alpha/``)."""
    by_step: dict[int, dict[str, float]] = {}
    for record in records:
        values = {k[len(prefix):]: float(v) for k, v in record.items() if k.startswith(prefix)}
        if values and record.get("step") is not None:
            by_step[int(record["step"])] = values
    return by_step


def held_by_step(by_step: dict[int, dict[str, float]], last_step: int) -> dict[str, list[float]]:
    """Each domain's value at steps 0..last_step, each decision held until the next one (a domain
    missing from a decision is 0 there); {} when there is no decision."""
    if not by_step:
        return {}
    current = by_step[min(by_step)]
    out: dict[str, list[float]] = {domain: [] for domain in current}
    for step in range(last_step + 1):
        current = by_step.get(step, current)
        for domain, values in out.items():
            values.append(current.get(domain, 0.0))
    return out


def _stackplot(axes, by_step: dict[int, dict[str, float]], title: str, legend: bool = True,
               end: int | None = None) -> None:
    """Proportions as a step function: a decision holds until the next one, the last one until
    ``end`` (the run's last step), so a single decision (a static mixer) still shows."""
    steps = sorted(by_step)
    if end is not None and end > steps[-1]:
        by_step = {**by_step, end: by_step[steps[-1]]}
        steps.append(end)
    domains = list(by_step[steps[0]])
    # a step function: a decision holds until the next one
    axes.stackplot(steps, [[by_step[s].get(d, 0.0) for s in steps] for d in domains], labels=domains, step="post")
    axes.set(xlabel="optimizer step", ylabel="sampling proportion", ylim=(0, 1),
             xlim=(steps[0], max(steps[-1], steps[0] + 1)), title=title)
    if legend:
        axes.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)


def _save(figure, path: Path, rect: tuple[float, float, float, float] | None = None, dpi: int = 110) -> Path:
    """Lay out (within ``rect`` of the figure, when given), write the PNG atomically, close."""
    import matplotlib.pyplot as plt

    from dataflex.utils import atomic_write

    figure.tight_layout(rect=rect)
    atomic_write(path, lambda handle: figure.savefig(handle, format="png", dpi=dpi))
    plt.close(figure)
    return path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_proportions(run_dir: str | os.PathLike) -> Path | None:
    """Write ``proportions.png``: each domain's sampling proportion over training steps.

    A resumed run logs some steps twice; the later record of a step wins. Returns the PNG's path,
    or None when the run logged no proportions.
    """
    records = read_metrics(run_dir)
    by_step = proportions_by_step(records)
    if not by_step:
        return None
    end = max((int(r["step"]) for r in records if r.get("step") is not None), default=None)
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(8, 4.5))
    _stackplot(axes, by_step, f"Domain proportions: {Path(run_dir).name}", end=end)
    return _save(figure, Path(run_dir) / "proportions.png")


# -- runs and arms -------------------------------------------------------------------------------
@dataclass
class RunRecord:
    """What one run directory says, read from its files."""

    run_dir: Path
    arm: str
    seed: Any
    method: str
    finished: bool
    eval: dict[str, float]
    tokens: int | None
    tokens_exact: bool
    wall_time_s: float | None
    global_step: int | None
    losses: dict[int, float] = field(default_factory=dict)
    proportions: dict[int, dict[str, float]] = field(default_factory=dict)
    overlap: dict[int, float] = field(default_factory=dict)


def find_runs(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Every run directory (one holding ``metrics.jsonl``) at or below ``paths``, sorted."""
    found: set[Path] = set()
    for path in map(Path, paths):
        if not path.is_dir():
            from dataflex.config import ConfigError

            raise ConfigError(f"{path} is not a directory; give a sweep directory or a run directory")
        if (path / "metrics.jsonl").is_file():
            found.add(path.resolve())
            continue
        for jsonl in path.rglob("metrics.jsonl"):
            if not SKIP_DIRS.intersection(jsonl.relative_to(path).parts[:-1]):
                found.add(jsonl.parent.resolve())
    return sorted(found)


_SEED_ITEM = re.compile(r"^seed[=_]\S+$")


def arm_and_seed(run_dir: Path, config: dict) -> tuple[str, Any]:
    """The arm a run belongs to (its directory name without a ``seed=N`` item, or its parent's
    name for a ``seed=N`` directory) and its seed (from its config, else its directory)."""
    name = run_dir.name
    items = name.split(",")
    kept = [item for item in items if not _SEED_ITEM.match(item)]
    seed = config.get("seed")
    if seed is None:
        dropped = [item for item in items if _SEED_ITEM.match(item)]
        seed = dropped[0].split("=", 1)[-1].split("_", 1)[-1] if dropped else None
    arm = ",".join(kept) if kept else run_dir.parent.name
    return arm, seed


def method_of(config: dict) -> str:
    """``selector=loss``, ``mixer=odm``, ``selector=loss+mixer=odm``; ``plain`` without components."""
    parts = []
    for kind in ("selector", "mixer", "weighter"):
        component = config.get(kind) or {}
        if isinstance(component, dict) and component.get("_target_"):
            parts.append(f"{kind}={component.get('name') or component['_target_'].rsplit('.', 1)[-1]}")
    return "+".join(parts) or "plain"


def _estimated_tokens(config: dict, steps: int | None) -> int | None:
    """An upper bound when the run did not count its tokens: steps x global batch x cutoff_len."""
    trainer, data = config.get("trainer") or {}, config.get("data") or {}
    try:
        per_step = (int(trainer.get("per_device_train_batch_size", 1)) * int(trainer.get("gradient_accumulation_steps", 1))
                    * int(config.get("nproc", 1) or 1) * int(data["cutoff_len"]))
    except (KeyError, TypeError, ValueError):
        return None
    return per_step * steps if steps is not None else None


def load_run(run_dir: str | os.PathLike) -> RunRecord:
    """Read one run directory (finished or not)."""
    import yaml

    run_dir = Path(run_dir)
    config_path = run_dir / "dataflex_config.yaml"
    config = (yaml.safe_load(config_path.read_text()) or {}) if config_path.is_file() else {}
    records = read_metrics(run_dir)
    final_path = run_dir / "metrics.json"
    final = json.loads(final_path.read_text()) if final_path.is_file() else {}
    if final:
        evals = dict(final.get("eval_after") or {})
    else:  # unfinished: whatever eval_after it logged (none, usually)
        evals = {}
        for record in records:
            evals.update({k[len("eval_after/"):]: v for k, v in record.items() if k.startswith("eval_after/")})
    losses = _series(records, "train/loss")
    steps = final.get("global_step", max(losses) if losses else None)
    counted = _series(records, TOKENS)
    tokens = int(counted[max(counted)]) if counted else _estimated_tokens(config, steps)
    arm, seed = arm_and_seed(run_dir, config)
    return RunRecord(
        run_dir=run_dir, arm=arm, seed=seed, method=method_of(config), finished=bool(final),
        eval={k: float(v) for k, v in evals.items() if isinstance(v, (int, float))},
        tokens=tokens, tokens_exact=bool(counted), wall_time_s=final.get("wall_time_s"), global_step=steps,
        losses=losses, proportions=proportions_by_step(records), overlap=_series(records, OVERLAP),
    )


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (n - 1 in the denominator); std is None for one value."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def lower_is_better(metric: str) -> bool:
    """Perplexities and losses go down; accuracies and exact-match rates go up."""
    leaf = metric.lower()
    return leaf.startswith(("ppl", "loss")) or "/ppl" in leaf or "loss" in leaf or "perplexity" in leaf


def default_metric(metrics: list[str]) -> str | None:
    """The metric the best row is chosen by: ``ppl/avg`` if evaluated, else the first accuracy,
    else the first exact-match rate, else the first metric."""
    if "ppl/avg" in metrics:
        return "ppl/avg"
    for word in ("accuracy", "em/"):
        for metric in metrics:
            if word in metric:
                return metric
    return metrics[0] if metrics else None


@dataclass
class Arm:
    """One row of the comparison: the finished runs of one arm, aggregated over seeds."""

    name: str
    method: str
    seeds: list[Any]
    stats: dict[str, tuple[float, float | None]]
    tokens: float | None
    tokens_exact: bool
    wall_time_s: float | None
    runs: list[RunRecord]


def summarize(runs: list[RunRecord]) -> list[Arm]:
    """Aggregate finished runs per arm (mean and sample std over seeds), in first-seen order."""
    groups: dict[str, list[RunRecord]] = {}
    for run in runs:
        if run.finished:
            groups.setdefault(run.arm, []).append(run)
    arms = []
    for name, members in groups.items():
        members.sort(key=lambda r: (str(type(r.seed)), r.seed))
        metrics = sorted({k for r in members for k in r.eval})
        stats = {m: mean_std([r.eval[m] for r in members if m in r.eval]) for m in metrics}
        tokens = [r.tokens for r in members if r.tokens is not None]
        walls = [r.wall_time_s for r in members if r.wall_time_s is not None]
        arms.append(Arm(
            name=name, method=" / ".join(sorted({r.method for r in members})), seeds=[r.seed for r in members],
            stats=stats, tokens=sum(tokens) / len(tokens) if tokens else None,
            tokens_exact=all(r.tokens_exact for r in members), wall_time_s=sum(walls) / len(walls) if walls else None,
            runs=members,
        ))
    return arms


def best_arm(arms: list[Arm], metric: str | None) -> Arm | None:
    """The arm with the best mean ``metric`` (lowest for losses/perplexities, else highest)."""
    scored = [a for a in arms if metric in a.stats]
    if not scored:
        return None
    sign = 1.0 if lower_is_better(metric) else -1.0
    return min(scored, key=lambda a: sign * a.stats[metric][0])


def _fmt(value: float) -> str:
    if value == 0 or 1e-3 <= abs(value) < 1e5:
        return f"{value:.4f}" if abs(value) < 100 else f"{value:.2f}"
    return f"{value:.3e}"


def _fmt_stat(stat: tuple[float, float | None] | None) -> str:
    if stat is None:
        return "–"
    mean, std = stat
    return _fmt(mean) if std is None else f"{_fmt(mean)} ± {_fmt(std)}"


def _fmt_tokens(arm: Arm) -> str:
    if arm.tokens is None:
        return "–"
    return f"{arm.tokens:,.0f}" if arm.tokens_exact else f"≤{arm.tokens:,.0f}"


def _fmt_wall(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def markdown_table(arms: list[Arm], metric: str | None = None, metrics: list[str] | None = None) -> str:
    """The comparison table: one row per arm; the best arm by ``metric`` (and any tied with it) is marked."""
    if metrics is None:
        metrics = sorted({m for a in arms for m in a.stats})
    best = best_arm(arms, metric)
    # every arm tied with the best mean is marked
    marked = [a for a in arms if best is not None and metric in a.stats and a.stats[metric][0] == best.stats[metric][0]]
    header = ["arm", "method", "seeds", *metrics, "tokens", "wall time"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for arm in arms:
        name = f"**{arm.name}** {BEST_MARK}" if any(arm is m for m in marked) else arm.name
        cells = [name, arm.method, ",".join(str(s) for s in arm.seeds),
                 *[_fmt_stat(arm.stats.get(m)) for m in metrics], _fmt_tokens(arm), _fmt_wall(arm.wall_time_s)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# -- plots ---------------------------------------------------------------------------------------
def _mean_series(series: list[dict[int, float]]) -> dict[int, float]:
    steps = sorted({s for one in series for s in one})
    return {s: sum(one[s] for one in series if s in one) / sum(1 for one in series if s in one) for s in steps}


def _short_names(names: list[str]) -> list[str]:
    """Labels without the prefix every name shares, cut at a ``=``/``_``/``,`` boundary
    (``experiment=paper_small_selection_less`` -> ``less`` beside its sibling arms)."""
    if len(names) < 2:
        return names
    common = os.path.commonprefix(names)
    cut = max(common.rfind(c) for c in "=_,") + 1
    return [name[cut:] or name for name in names]


def plot_metric(arms: list[Arm], metric: str | None, path: Path) -> Path | None:
    """The comparison's metric per arm: every seed's value as a dot, the mean ± sample std as a bar;
    arms ordered by their mean, the best at the top."""
    rows = [(a, [r.eval[metric] for r in a.runs if metric in r.eval]) for a in arms] if metric else []
    rows = [(a, values) for a, values in rows if values]
    if not rows:
        return None
    rows.sort(key=lambda row: row[0].stats[metric][0], reverse=lower_is_better(metric))  # best last: the top row
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(7, 0.45 * len(rows) + 1.2))
    for y, (arm, values) in enumerate(rows):
        mean, std = arm.stats[metric]
        axes.errorbar([mean], [y], xerr=[[std or 0.0], [std or 0.0]], fmt="|", color="black", markersize=14, capsize=4)
        spread = [0.0] if len(values) == 1 else [0.3 * (i / (len(values) - 1) - 0.5) for i in range(len(values))]
        axes.scatter(values, [y + dy for dy in spread], color="C0", alpha=0.7, s=22, zorder=3)  # equal values stay apart
    axes.set_yticks(range(len(rows)), _short_names([arm.name for arm, _ in rows]), fontsize=8)
    direction = "lower" if lower_is_better(metric) else "higher"
    axes.set(xlabel=f"{metric} ({direction} is better)", title=f"{metric}: each seed (dots), mean ± std (bars)")
    axes.grid(axis="x", alpha=0.3)
    return _save(figure, path)


def plot_losses(arms: list[Arm], path: Path) -> Path | None:
    """Training loss per step: one line per arm (the mean over its seeds), seeds drawn faintly."""
    if not any(r.losses for a in arms for r in a.runs):
        return None
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(8, 4.5))
    for index, (arm, label) in enumerate(zip(arms, _short_names([a.name for a in arms]))):
        color = f"C{index % 10}"
        for run in arm.runs:
            if len(arm.runs) > 1 and run.losses:
                steps = sorted(run.losses)
                axes.plot(steps, [run.losses[s] for s in steps], color=color, alpha=0.25, linewidth=0.8)
        mean = _mean_series([r.losses for r in arm.runs if r.losses])
        if mean:
            steps = sorted(mean)
            axes.plot(steps, [mean[s] for s in steps], color=color, label=label, linewidth=1.6)
    axes.set(xlabel="optimizer step", ylabel="training loss", title="Training loss per arm (mean over seeds)")
    axes.legend(fontsize=8)
    return _save(figure, path)


def plot_arm_proportions(arms: list[Arm], path: Path) -> Path | None:
    """Domain proportions over training, one panel per mixer arm (the mean over its seeds)."""
    panels = []
    for arm in arms:
        runs = [r.proportions for r in arm.runs if r.proportions]
        if not runs:
            continue
        steps = sorted({s for one in runs for s in one})
        mean = {}
        for step in steps:
            present = [one[step] for one in runs if step in one]
            domains = list(present[0])
            mean[step] = {d: sum(p.get(d, 0.0) for p in present) / len(present) for d in domains}
        last = [r.global_step for r in arm.runs if r.global_step is not None]
        panels.append((arm.name, mean, max(last) if last else None))
    if not panels:
        return None
    plt = _pyplot()
    figure, axes = plt.subplots(len(panels), 1, figsize=(8, 3.2 * len(panels)), squeeze=False)
    for index, (name, mean, end) in enumerate(panels):
        _stackplot(axes[index][0], mean, f"Domain proportions: {name}", legend=index == 0, end=end)
    return _save(figure, path)


def plot_selection_overlap(arms: list[Arm], path: Path) -> Path | None:
    """Selection overlap with the previous round, per round, one line per selector arm."""
    rows = [(a.name, _mean_series([r.overlap for r in a.runs if r.overlap])) for a in arms]
    rows = [(name, mean) for name, mean in rows if mean]
    if not rows:
        return None
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(8, 4.5))
    for (_, mean), label in zip(rows, _short_names([name for name, _ in rows])):
        steps = sorted(mean)
        axes.plot(steps, [mean[s] for s in steps], marker="o", label=label)
    axes.set(xlabel="optimizer step of the selection round", ylabel="overlap with the previous selection", ylim=(0, 1.05),
             title="Selection overlap across rounds (mean over seeds)")
    axes.legend(fontsize=8)
    return _save(figure, path)


# -- the report ----------------------------------------------------------------------------------
@dataclass
class Report:
    arms: list[Arm]
    runs: list[RunRecord]
    metric: str | None
    table: str
    markdown: str
    plots: dict[str, Path]
    path: Path | None = None


def build_report(paths: Iterable[str | os.PathLike], metric: str | None = None, metrics: list[str] | None = None) -> Report:
    """Read every run under ``paths`` and build the table (no files written)."""
    from dataflex.config import ConfigError

    paths = list(paths)
    runs = [load_run(d) for d in find_runs(paths)]
    if not runs:
        raise ConfigError(f"no run directories (with a metrics.jsonl) under {', '.join(map(str, paths))}")
    arms = summarize(runs)
    available = sorted({m for a in arms for m in a.stats})
    if metrics:
        unknown = [m for m in metrics if m not in available]
        if unknown:
            raise ConfigError(f"no run evaluated {unknown[0]!r}; evaluated: {', '.join(available) or 'nothing'}")
    if metric is not None and metric not in available:
        raise ConfigError(f"--metric {metric!r} was not evaluated; evaluated: {', '.join(available) or 'nothing'}")
    metric = metric or default_metric(metrics or available)
    table = markdown_table(arms, metric, metrics)
    unfinished = [r for r in runs if not r.finished]
    lines = [f"# Comparison: {', '.join(Path(p).name or str(p) for p in paths)}", ""]
    if arms:
        lines += [table, ""]
        if metric:
            direction = "lower" if lower_is_better(metric) else "higher"
            lines.append(f"{BEST_MARK} best mean `{metric}` ({direction} is better). Values are the mean ± sample "
                         f"standard deviation over seeds of the evaluation after training; tokens are training "
                         f"tokens per run (≤: an upper bound, steps × global batch × cutoff_len); wall time per run, of "
                         f"the attempt that finished it (a resumed run counts from its resume).")
    else:
        lines.append("No run has finished yet.")
    if unfinished:
        lines += ["", f"Unfinished runs ({len(unfinished)}, not in the table):", ""]
        lines += [f"- `{r.run_dir}` (step {r.global_step if r.global_step is not None else 0})" for r in unfinished]
    markdown = "\n".join(lines) + "\n"
    return Report(arms=arms, runs=runs, metric=metric, table=table if arms else "", markdown=markdown, plots={})


def write_report(paths: Iterable[str | os.PathLike], out_dir: str | os.PathLike | None = None,
                 metric: str | None = None, metrics: list[str] | None = None) -> Report:
    """Write ``report.md`` and the plots (``report_metric.png``, ``report_loss.png``, ``report_proportions.png`` for
    mixers, ``report_selection_overlap.png`` for selectors) into ``out_dir`` (default: the first
    path), and return the report."""
    from dataflex.utils import atomic_write_text

    paths = list(paths)
    report = build_report(paths, metric, metrics)
    out = Path(out_dir if out_dir is not None else paths[0])
    out.mkdir(parents=True, exist_ok=True)
    finished = report.arms
    plots = {
        "metric": plot_metric(finished, report.metric, out / "report_metric.png"),
        "loss": plot_losses(finished, out / "report_loss.png"),
        "proportions": plot_arm_proportions(finished, out / "report_proportions.png"),
        "selection_overlap": plot_selection_overlap(finished, out / "report_selection_overlap.png"),
    }
    report.plots = {k: v for k, v in plots.items() if v is not None}
    if report.plots:
        report.markdown += "\n" + "\n".join(f"![{k}]({p.name})" for k, p in report.plots.items()) + "\n"
    report.path = out / "report.md"
    atomic_write_text(report.path, report.markdown)
    return report


def log_to_wandb(report: Report, group: str, project: str = "dataflex", entity: str | None = None,
                 mode: str | None = None) -> Path:
    """Log the comparison table (and the plots) to W&B as one ``report`` run in ``group`` (a sweep's
    runs share that group). Offline, under ``<report dir>/wandb``, when no API key is configured.
    Returns the W&B run's directory."""
    import wandb

    if mode is None:
        has_key = bool(os.environ.get("WANDB_API_KEY")) or Path("~/.netrc").expanduser().is_file()
        mode = os.environ.get("WANDB_MODE") or ("online" if has_key else "offline")
    out = report.path.parent if report.path is not None else Path.cwd()
    metrics = sorted({m for a in report.arms for m in a.stats})
    best = best_arm(report.arms, report.metric)
    columns = ["arm", "method", "seeds", *[f"{m} mean" for m in metrics], *[f"{m} std" for m in metrics],
               "tokens", "wall_time_s", "best"]
    rows = []
    for arm in report.arms:
        stats = [arm.stats.get(m, (None, None)) for m in metrics]
        rows.append([arm.name, arm.method, ",".join(map(str, arm.seeds)), *[s[0] for s in stats], *[s[1] for s in stats],
                     arm.tokens, arm.wall_time_s, arm is best])
    run = wandb.init(project=project, entity=entity, group=group, name=f"{group}/report", job_type="report",
                     dir=str(out), mode=mode, config={"metric": report.metric, "runs": len(report.runs)})
    try:
        run.log({"report/table": wandb.Table(columns=columns, data=rows),
                 **{f"report/{name}": wandb.Image(str(path)) for name, path in report.plots.items()}})
        if best is not None:
            run.summary.update({"best_arm": best.name, "metric": report.metric})
        return Path(run.dir).parent
    finally:
        run.finish()
