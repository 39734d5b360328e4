"""The report: runs -> arms -> table and plots, written to ``report.md``; optionally logged to W&B."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from dataflex.report.composition import composition_markdown, plot_selection_composition
from dataflex.report.plots import (
    plot_arm_proportions,
    plot_domain_weights,
    plot_losses,
    plot_metric,
    plot_selection_overlap,
)
from dataflex.report.runs import RunRecord, find_runs, load_run
from dataflex.report.tables import (
    BEST_MARK,
    Arm,
    best_arm,
    default_metric,
    domain_weight_table,
    find_arm,
    lower_is_better,
    markdown_table,
    paired_table,
    summarize,
)


@dataclass
class Report:
    arms: list[Arm]
    runs: list[RunRecord]
    metric: str | None
    table: str
    markdown: str
    plots: dict[str, Path]
    path: Path | None = None
    target: str | None = None


def _check_target(runs: list[RunRecord], target: str) -> None:
    from dataflex.config import ConfigError

    comps = [r.composition for r in runs if r.composition is not None]
    if not comps:
        raise ConfigError(f"--target {target}: no run saved a selection round (selections/round_*.json)")
    domains = sorted({d for c in comps for d in c.domains})
    if target not in domains:
        raise ConfigError(f"--target {target!r} is not a domain of the selection rounds; domains: {', '.join(domains)}")


def build_report(
    paths: Iterable[str | os.PathLike],
    metric: str | None = None,
    metrics: list[str] | None = None,
    target: str | None = None,
    baseline: str | None = None,
) -> Report:
    """Read every run under ``paths`` and build the table (no files written). With ``target`` (a
    domain of the selection rounds) the table gets its selection precision beside the base rate; with
    ``baseline`` (an arm) a second table of every arm's paired differences to it, seed by seed."""
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
    if target is not None:
        _check_target(runs, target)
    base = find_arm(arms, baseline) if baseline is not None else None
    metric = metric or default_metric(metrics or available)
    table = markdown_table(arms, metric, metrics, target)
    unfinished = [r for r in runs if not r.finished]
    lines = [f"# Comparison: {', '.join(Path(p).name or str(p) for p in paths)}", ""]
    if arms:
        lines += [table, ""]
        if metric:
            direction = "lower" if lower_is_better(metric) else "higher"
            lines.append(
                f"{BEST_MARK} best mean `{metric}` ({direction} is better). Values are the mean ± sample "
                f"standard deviation over seeds of the evaluation after training; tokens are training "
                f"tokens per run (≤: an upper bound, steps × global batch × cutoff_len); wall time per run, of "
                f"the attempt that finished it (a resumed run counts from its resume)."
            )
        if any(a.decision_overhead is not None for a in arms):
            lines += [""]
            lines.append(
                "Decision cost: the wall time spent deciding (selection rounds, mixer updates with their reference "
                "forwards, weight computations and gathers) as a percentage of the time spent training (the rest of "
                "the training loop), mean over seeds, with the mean seconds spent deciding."
            )
        if target is not None:
            lines += [""]
            lines.append(
                f"Precision: the share of each selection round's rows that are `{target}` rows, averaged over the "
                f"rounds after the start, then mean ± std over seeds; the base rate is `{target}`'s share of the pool."
            )
        if base is not None:
            lines += ["", f"## Paired differences to {base.name}", ""]
            lines.append(paired_table(arms, base, metrics or available, target))
            lines += [
                "",
                f"Each cell: the arm's value minus {base.name}'s on the same seed, mean ± sample std over the "
                "seeds both finished, and on how many of them the arm is better (lower for losses, perplexities "
                "and NLLs, higher otherwise)." + (" Precision: the mean selection precision." if target else ""),
            ]
        weights = domain_weight_table(arms)
        if weights:
            lines += ["", "## Weights by domain", "", weights, ""]
            lines.append(
                "Each cell: the mean relative weight B·w a weighter gave the domain's rows (1 = the batch average), "
                "over the steps after its warm-up, mean ± std over seeds. The weighters never see the domains; "
                "the runs log these means (`weighter/domain_weight/<domain>`) to show where the weight went."
            )
        composition = composition_markdown(arms, target)
        if composition:
            lines += ["", "## Selection composition", "", composition]
    else:
        lines.append("No run has finished yet.")
    if unfinished:
        lines += ["", f"Unfinished runs ({len(unfinished)}, not in the table):", ""]
        lines += [f"- `{r.run_dir}` (step {r.global_step if r.global_step is not None else 0})" for r in unfinished]
    markdown = "\n".join(lines) + "\n"
    return Report(
        arms=arms, runs=runs, metric=metric, table=table if arms else "", markdown=markdown, plots={}, target=target
    )


def write_report(
    paths: Iterable[str | os.PathLike],
    out_dir: str | os.PathLike | None = None,
    metric: str | None = None,
    metrics: list[str] | None = None,
    target: str | None = None,
    baseline: str | None = None,
) -> Report:
    """Write ``report.md`` and the plots (``report_metric.png``, ``report_loss.png``, ``report_proportions.png`` for
    mixers, ``report_selection_overlap.png`` and ``report_selection_composition.png`` for selectors)
    into ``out_dir`` (default: the first path), and return the report."""
    from dataflex.utils import atomic_write_text

    paths = list(paths)
    report = build_report(paths, metric, metrics, target, baseline)
    out = Path(out_dir if out_dir is not None else paths[0])
    out.mkdir(parents=True, exist_ok=True)
    finished = report.arms
    plots = {
        "metric": plot_metric(finished, report.metric, out / "report_metric.png"),
        "loss": plot_losses(finished, out / "report_loss.png"),
        "proportions": plot_arm_proportions(finished, out / "report_proportions.png"),
        "selection_overlap": plot_selection_overlap(finished, out / "report_selection_overlap.png"),
        "domain_weights": plot_domain_weights(finished, out / "report_domain_weights.png"),
        "selection_composition": plot_selection_composition(
            finished, out / "report_selection_composition.png", report.target
        ),
    }
    report.plots = {k: v for k, v in plots.items() if v is not None}
    if report.plots:
        report.markdown += "\n" + "\n".join(f"![{k}]({p.name})" for k, p in report.plots.items()) + "\n"
    report.path = out / "report.md"
    atomic_write_text(report.path, report.markdown)
    return report


def log_to_wandb(
    report: Report, group: str, project: str = "dataflex", entity: str | None = None, mode: str | None = None
) -> Path:
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
    columns = [
        "arm",
        "method",
        "seeds",
        *[f"{m} mean" for m in metrics],
        *[f"{m} std" for m in metrics],
        "tokens",
        "wall_time_s",
        "decision_overhead",
        "decision_seconds",
        "best",
    ]
    rows = []
    for arm in report.arms:
        stats = [arm.stats.get(m, (None, None)) for m in metrics]
        rows.append(
            [
                arm.name,
                arm.method,
                ",".join(map(str, arm.seeds)),
                *[s[0] for s in stats],
                *[s[1] for s in stats],
                arm.tokens,
                arm.wall_time_s,
                arm.decision_overhead,
                arm.decision_seconds,
                arm is best,
            ]
        )
    run = wandb.init(
        project=project,
        entity=entity,
        group=group,
        name=f"{group}/report",
        job_type="report",
        dir=str(out),
        mode=mode,
        config={"metric": report.metric, "runs": len(report.runs)},
    )
    try:
        run.log(
            {
                "report/table": wandb.Table(columns=columns, data=rows),
                **{f"report/{name}": wandb.Image(str(path)) for name, path in report.plots.items()},
            }
        )
        if best is not None:
            run.summary.update({"best_arm": best.name, "metric": report.metric})
        return Path(run.dir).parent
    finally:
        run.finish()
