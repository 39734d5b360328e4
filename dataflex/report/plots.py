"""PNG plots: a run's proportions, and the arms' metric, losses, proportions and selection overlap."""

from __future__ import annotations

import os
from pathlib import Path

from dataflex.report.runs import proportions_by_step, read_metrics
from dataflex.report.tables import Arm, lower_is_better


def _stackplot(
    axes, by_step: dict[int, dict[str, float]], title: str, legend: bool = True, end: int | None = None
) -> None:
    """Proportions as a step function: a decision holds until the next one, the last one until
    ``end`` (the run's last step), so a single decision (a static mixer) still shows."""
    steps = sorted(by_step)
    if end is not None and end > steps[-1]:
        by_step = {**by_step, end: by_step[steps[-1]]}
        steps.append(end)
    domains = list(by_step[steps[0]])
    # a step function: a decision holds until the next one
    axes.stackplot(steps, [[by_step[s].get(d, 0.0) for s in steps] for d in domains], labels=domains, step="post")
    axes.set(
        xlabel="optimizer step",
        ylabel="sampling proportion",
        ylim=(0, 1),
        xlim=(steps[0], max(steps[-1], steps[0] + 1)),
        title=title,
    )
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
        axes.scatter(
            values, [y + dy for dy in spread], color="C0", alpha=0.7, s=22, zorder=3
        )  # equal values stay apart
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
    axes.set(
        xlabel="optimizer step of the selection round",
        ylabel="overlap with the previous selection",
        ylim=(0, 1.05),
        title="Selection overlap across rounds (mean over seeds)",
    )
    axes.legend(fontsize=8)
    return _save(figure, path)


def plot_domain_weights(arms: list[Arm], path: Path, window: int = 5) -> Path | None:
    """Each domain's mean relative weight B·w over training (after the weighter's warm-up), one panel
    per domain, one line per weighter arm (the mean over its seeds, a ``window``-step moving average;
    1 = the batch average)."""
    weighted = [a for a in arms if any(r.domain_weights for r in a.runs)]
    if not weighted:
        return None
    domains = sorted({d for a in weighted for r in a.runs for d in r.domain_weights})
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(domains), figsize=(4.5 * len(domains), 3.6), squeeze=False, sharey=True)
    labels = _short_names([a.name for a in weighted])
    for ax, domain in zip(axes[0], domains):
        for index, (arm, label) in enumerate(zip(weighted, labels)):
            mean = _mean_series([r.domain_weights[domain] for r in arm.runs if r.domain_weights.get(domain)])
            steps = sorted(mean)
            smooth = [
                sum(mean[t] for t in steps[max(0, i - window + 1) : i + 1]) / len(steps[max(0, i - window + 1) : i + 1])
                for i in range(len(steps))
            ]
            ax.plot(steps, smooth, color=f"C{index % 10}", label=label, linewidth=1.4)
        ax.axhline(1.0, color="black", linestyle="--", linewidth=0.8)
        ax.set_title(domain, fontsize=9, loc="left")
        ax.set(xlabel="optimizer step")
    axes[0][0].set_ylabel(f"B·w of the domain's rows ({window}-step mean)")
    axes[0][-1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return _save(figure, path)
