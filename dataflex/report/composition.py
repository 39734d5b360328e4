"""Selection composition per arm: each round's share of the selected rows per domain, the mean over
the arm's seeds, as markdown tables and a stacked plot (one panel per selector arm)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dataflex.report.selection import Composition
from dataflex.report.tables import Arm, _fmt, _fmt_stat, precision_stats


@dataclass
class ArmComposition:
    """The mean over an arm's seeds of each round's shares (``rounds``: (round, step, {domain: share}))."""

    arm: Arm
    domains: list[str]
    rounds: list[tuple[int, int | None, dict[str, float]]]
    pool: dict[str, float] | None
    seeds: int


def _mean(dicts: list[dict[str, float]], domains: list[str]) -> dict[str, float]:
    return {d: sum(x.get(d, 0.0) for x in dicts) / len(dicts) for d in domains}


def arm_composition(arm: Arm) -> ArmComposition | None:
    """Mean shares per round over the arm's runs that saved rounds (None when none did); a round
    only some seeds reached is the mean over those."""
    comps: list[Composition] = [r.composition for r in arm.runs if r.composition is not None]
    if not comps:
        return None
    domains: list[str] = []
    for c in comps:
        domains += [d for d in c.domains if d not in domains]
    by_round: dict[int, list] = {}
    for c in comps:
        for r in c.rounds:
            by_round.setdefault(r.round, []).append(r)
    rounds = [(n, by_round[n][0].step, _mean([r.shares for r in by_round[n]], domains)) for n in sorted(by_round)]
    pools = [c.pool_shares for c in comps if c.pool_shares]
    return ArmComposition(arm, domains, rounds, _mean(pools, domains) if pools else None, len(comps))


def _ordered(domains: list[str], target: str | None) -> list[str]:
    return [target, *[d for d in domains if d != target]] if target in domains else list(domains)


def composition_markdown(arms: list[Arm], target: str | None = None) -> str:
    """A table per selector arm: one row per round (and the pool's base rates), one column per
    domain; with ``target`` its column first and the arm's precision against the base rate below."""
    parts = []
    for arm in arms:
        comp = arm_composition(arm)
        if comp is None:
            continue
        domains = _ordered(comp.domains, target)
        header = ["round", "step", *[f"**{d}** (target)" if d == target else d for d in domains]]
        lines = [
            f"### Selection composition: {arm.name}",
            "",
            f"Share of each round's selected rows per domain, mean over {comp.seeds} seed(s).",
            "",
            "| " + " | ".join(header) + " |",
            "|" + "|".join("---" for _ in header) + "|",
        ]
        if comp.pool is not None:
            lines.append("| pool (base rate) | – | " + " | ".join(f"{comp.pool[d]:.3f}" for d in domains) + " |")
        for number, step, shares in comp.rounds:
            step_cell = "–" if step is None else str(step)
            lines.append(f"| {number} | {step_cell} | " + " | ".join(f"{shares[d]:.3f}" for d in domains) + " |")
        stats = precision_stats(arm, target) if target else None
        if stats is not None:
            stat, base = stats
            base_text = f"base rate {_fmt(base)}" if base is not None else "no base rate recorded"
            lines += [
                "",
                f"Precision ({target}): {_fmt_stat(stat)} (mean over the rounds after the start, then mean ± std "
                f"over seeds) vs {base_text}.",
            ]
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def plot_selection_composition(arms: list[Arm], path: Path, target: str | None = None) -> Path | None:
    """``report_selection_composition.png``: one panel per selector arm, a stacked bar per round
    (each domain's mean share of the selected rows); with ``target`` the target at the bottom and its
    base rate as a dashed line."""
    from dataflex.report.plots import _pyplot, _save

    panels = [c for c in (arm_composition(a) for a in arms) if c is not None]
    if not panels:
        return None
    domains: list[str] = []
    for comp in panels:
        domains += [d for d in comp.domains if d not in domains]
    domains = _ordered(domains, target)
    colors = {d: f"C{i % 10}" for i, d in enumerate(domains)}
    plt = _pyplot()
    figure, axes = plt.subplots(len(panels), 1, figsize=(8, 3.0 * len(panels)), squeeze=False)
    for index, comp in enumerate(panels):
        ax = axes[index][0]
        xs = list(range(len(comp.rounds)))
        bottom = [0.0] * len(xs)
        for d in _ordered(comp.domains, target):
            heights = [shares.get(d, 0.0) for _, _, shares in comp.rounds]
            ax.bar(xs, heights, bottom=bottom, color=colors[d], label=d, width=0.8)
            bottom = [b + h for b, h in zip(bottom, heights)]
        if target and comp.pool is not None and target in comp.pool:
            ax.axhline(comp.pool[target], color="black", linestyle="--", linewidth=1, label=f"{target} base rate")
        labels = [f"{n}\n{'' if s is None else s}" for n, s, _ in comp.rounds]
        ax.set_xticks(xs, labels, fontsize=7)
        ax.set(ylim=(0, 1), ylabel="share of selected", xlabel="selection round (optimizer step)")
        # left-aligned and small: a long arm name runs into the legend's margin instead of off the figure
        ax.set_title(f"{comp.arm.name} (mean over {comp.seeds} seed(s))", loc="left", fontsize=9)
        if index == 0:
            ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    return _save(figure, path)
