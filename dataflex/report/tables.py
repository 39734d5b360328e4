"""Arms: the runs of one arm aggregated over seeds, the best arm, the markdown comparison table."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from dataflex.report.runs import RunRecord

BEST_MARK = "★"


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (n - 1 in the denominator); std is None for one value."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def lower_is_better(metric: str) -> bool:
    """Perplexities, losses and NLLs go down; accuracies, exact-match rates and precisions go up."""
    leaf = metric.lower()
    return (
        leaf.startswith(("ppl", "loss", "nll"))
        or "/ppl" in leaf
        or "/nll" in leaf
        or "loss" in leaf
        or "perplexity" in leaf
    )


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
    #: mean over seeds of ``decision_overhead`` (decision time / training time) and of ``decision_seconds``
    decision_overhead: float | None = None
    decision_seconds: float | None = None


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
        timed = [r.decision for r in members if "decision_overhead" in r.decision]
        arms.append(
            Arm(
                name=name,
                method=" / ".join(sorted({r.method for r in members})),
                seeds=[r.seed for r in members],
                stats=stats,
                tokens=sum(tokens) / len(tokens) if tokens else None,
                tokens_exact=all(r.tokens_exact for r in members),
                wall_time_s=sum(walls) / len(walls) if walls else None,
                runs=members,
                decision_overhead=sum(t["decision_overhead"] for t in timed) / len(timed) if timed else None,
                decision_seconds=sum(t["decision_seconds"] for t in timed) / len(timed) if timed else None,
            )
        )
    return arms


def best_arm(arms: list[Arm], metric: str | None) -> Arm | None:
    """The arm with the best mean ``metric`` (lowest for losses/perplexities, else highest)."""
    scored = [a for a in arms if metric in a.stats]
    if not scored:
        return None
    sign = 1.0 if lower_is_better(metric) else -1.0
    return min(scored, key=lambda a: sign * a.stats[metric][0])


def _fmt(value: float) -> str:
    if abs(value) < 1e-12:  # float noise of an exact zero (a std over equal values)
        value = 0.0
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


def _fmt_cost(arm: Arm) -> str:
    if arm.decision_overhead is None:
        return "–"
    seconds = arm.decision_seconds
    spent = f"{seconds:.1f} s" if seconds is not None and seconds < 10 else _fmt_wall(seconds)
    return f"{100 * arm.decision_overhead:.0f}% ({spent})"


def precision_stats(arm: Arm, target: str) -> tuple[tuple[float, float | None], float | None] | None:
    """Mean ± std over seeds of each run's mean selection precision for ``target``, and the mean base
    rate (None when no run of the arm saved selection rounds)."""
    runs = [r.composition for r in arm.runs if r.composition is not None and target in r.composition.domains]
    values = [c.mean_precision(target) for c in runs]
    values = [v for v in values if v is not None]
    if not values:
        return None
    bases = [b for b in (c.base_rate(target) for c in runs) if b is not None]
    return mean_std(values), (sum(bases) / len(bases) if bases else None)


def _fmt_precision(arm: Arm, target: str) -> str:
    stats = precision_stats(arm, target)
    if stats is None:
        return "–"
    stat, base = stats
    return _fmt_stat(stat) + (f" (base {_fmt(base)})" if base is not None else "")


def markdown_table(
    arms: list[Arm], metric: str | None = None, metrics: list[str] | None = None, target: str | None = None
) -> str:
    """The comparison table: one row per arm; the best arm by ``metric`` (and any tied with it) is marked.
    A ``decision cost`` column when some run recorded its decision time; a ``precision: <target>``
    column (mean ± std over seeds, the pool's base rate beside it) with ``target``."""
    if metrics is None:
        metrics = sorted({m for a in arms for m in a.stats})
    best = best_arm(arms, metric)
    # every arm tied with the best mean is marked
    marked = [a for a in arms if best is not None and metric in a.stats and a.stats[metric][0] == best.stats[metric][0]]
    timed = any(a.decision_overhead is not None for a in arms)
    extra = ([f"precision: {target}"] if target else []) + (["decision cost"] if timed else [])
    header = ["arm", "method", "seeds", *metrics, *extra, "tokens", "wall time"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for arm in arms:
        name = f"**{arm.name}** {BEST_MARK}" if any(arm is m for m in marked) else arm.name
        cells = [
            name,
            arm.method,
            ",".join(str(s) for s in arm.seeds),
            *[_fmt_stat(arm.stats.get(m)) for m in metrics],
            *([_fmt_precision(arm, target)] if target else []),
            *([_fmt_cost(arm)] if timed else []),
            _fmt_tokens(arm),
            _fmt_wall(arm.wall_time_s),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# -- paired differences against a baseline arm --------------------------------------------------------


def find_arm(arms: list[Arm], name: str) -> Arm:
    """The arm called ``name``, or the one arm whose name ends with it (``static`` finds
    ``experiment=paper_small_target_static``); a clear error otherwise."""
    from dataflex.errors import ConfigError

    exact = [a for a in arms if a.name == name]
    found = exact or [a for a in arms if a.name.endswith(name)]
    if len(found) != 1:
        names = ", ".join(a.name for a in arms) or "none"
        what = "is ambiguous" if found else "matches no finished arm"
        raise ConfigError(f"--baseline {name!r} {what}; arms: {names}")
    return found[0]


#: the paired table's column of mean selection precision (a name no eval metric has: eval metrics carry no space)
SELECTION_PRECISION = "selection precision"


def run_values(run: RunRecord, metric: str, target: str | None = None) -> float | None:
    """One run's value of ``metric``; ``SELECTION_PRECISION`` is its mean selection precision for ``target``."""
    if metric == SELECTION_PRECISION:
        comp = run.composition
        return comp.mean_precision(target) if target and comp is not None and target in comp.domains else None
    return run.eval.get(metric)


def paired_difference(arm: Arm, base: Arm, metric: str, target: str | None = None) -> dict[str, Any] | None:
    """``arm − base`` seed by seed over the seeds both finished: the differences' mean and sample std,
    how many seeds, and on how many ``arm`` is better (lower for losses, higher otherwise)."""
    ours = {r.seed: run_values(r, metric, target) for r in arm.runs}
    theirs = {r.seed: run_values(r, metric, target) for r in base.runs}
    diffs = [ours[s] - theirs[s] for s in ours if s in theirs and ours[s] is not None and theirs[s] is not None]
    if not diffs:
        return None
    mean, std = mean_std(diffs)
    sign = -1.0 if lower_is_better(metric) else 1.0
    return {"mean": mean, "std": std, "n": len(diffs), "better": sum(sign * d > 0 for d in diffs)}


def _fmt_diff(diff: dict[str, Any] | None) -> str:
    if diff is None:
        return "–"
    spread = "" if diff["std"] is None else f" ± {_fmt(diff['std'])}"
    mean = _fmt(diff["mean"])
    return f"{'+' if diff['mean'] > 0 else ''}{mean}{spread} ({diff['better']}/{diff['n']} better)"


def paired_table(arms: list[Arm], base: Arm, metrics: list[str], target: str | None = None) -> str:
    """One row per arm other than ``base``: for every metric (and the selection precision with ``target``)
    the paired difference to ``base`` (mean ± std over the shared seeds, and on how many seeds it is better)."""
    columns = [*metrics, *([SELECTION_PRECISION] if target else [])]
    header = ["arm", "seeds paired", *(f"Δ {m}" for m in columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for arm in arms:
        if arm is base:
            continue
        diffs = [paired_difference(arm, base, m, target) for m in columns]
        shared = sorted({r.seed for r in arm.runs} & {r.seed for r in base.runs}, key=str)
        lines.append(
            "| " + " | ".join([arm.name, ",".join(map(str, shared)) or "–", *(_fmt_diff(d) for d in diffs)]) + " |"
        )
    return "\n".join(lines)


def domain_weight_table(arms: list[Arm]) -> str | None:
    """One row per weighter arm: each domain's mean relative weight B·w after the warm-up (1 = the
    batch average), mean ± std over seeds; None when no run logged domain weights."""
    weighted = [a for a in arms if any(r.domain_weights for r in a.runs)]
    if not weighted:
        return None
    domains = sorted({d for a in weighted for r in a.runs for d in r.domain_weights})
    header = ["arm", "seeds", *domains]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for arm in weighted:
        cells = []
        for d in domains:
            series = [r.domain_weights[d] for r in arm.runs if r.domain_weights.get(d)]
            values = [sum(one.values()) / len(one) for one in series]  # each run's mean over its steps
            cells.append(_fmt_stat(mean_std(values)) if values else "–")
        seeds = ",".join(str(r.seed) for r in arm.runs if r.domain_weights)
        lines.append("| " + " | ".join([arm.name, seeds, *cells]) + " |")
    return "\n".join(lines)
