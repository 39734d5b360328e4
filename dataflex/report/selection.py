"""Selection composition and precision of one run, read from its round records.

A selector run saves every selection round as ``selections/round_NNN.json``
(:class:`~dataflex.train.callback.DataFlexCallback`), holding ``domains``: the selected rows per
domain (a task of an SFT pool, a domain of a pretraining pool; counted as drawn, with repeats) and
``pool_domains``: the pool's rows per domain (records written before it existed have no base rate).
From these:

* the **composition** of a round: each domain's share of the round's selected rows;
* the **precision** for a target domain: the target's share of a round's selected rows, beside the
  **base rate**, the target's share of the pool (what a random selection gets on average);
* the **mean precision** of a run: the mean over its rounds after the start (the decision at the
  start is a seeded random warm-up for most selectors), or that first round alone when there is no
  other.

:func:`selection_summary` gives all of it as a dict (``metrics.json`` and a run's closing summary),
:func:`format_selection_summary` as a few printable lines.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROUNDS_DIR = "selections"


@dataclass
class Round:
    """One selection round: ``counts`` of the selected rows per domain (with repeats)."""

    round: int
    update_index: int
    step: int | None
    counts: dict[str, int]

    @property
    def selected(self) -> int:
        return sum(self.counts.values())

    @property
    def shares(self) -> dict[str, float]:
        total = self.selected
        return {d: (c / total if total else 0.0) for d, c in self.counts.items()}


@dataclass
class Composition:
    """The rounds of one run and its pool's rows per domain (None when the records predate it)."""

    rounds: list[Round]
    pool: dict[str, int] | None = None
    names: list[str] = field(default_factory=list)

    @property
    def domains(self) -> list[str]:
        """Every domain, in the pool's order (then any only a round names)."""
        seen = list(self.pool or {})
        for r in self.rounds:
            seen += [d for d in r.counts if d not in seen]
        return seen

    @property
    def pool_shares(self) -> dict[str, float] | None:
        if not self.pool:
            return None
        total = sum(self.pool.values())
        return {d: c / total for d, c in self.pool.items()} if total else None

    def check_target(self, target: str) -> None:
        from dataflex.errors import ConfigError

        if target not in self.domains:
            raise ConfigError(
                f"target {target!r} is not a domain of the selection rounds; domains: {', '.join(self.domains)}"
            )

    def base_rate(self, target: str) -> float | None:
        shares = self.pool_shares
        return None if shares is None else shares.get(target, 0.0)

    def precision(self, target: str) -> list[float]:
        """The target's share of each round's selected rows."""
        return [r.shares.get(target, 0.0) for r in self.rounds]

    @property
    def counted_rounds(self) -> list[Round]:
        """The rounds the mean precision is over: those after the start, else the start's alone."""
        later = [r for r in self.rounds if r.update_index >= 0]
        return later or self.rounds

    def mean_precision(self, target: str) -> float | None:
        rounds = self.counted_rounds
        if not rounds:
            return None
        return sum(r.shares.get(target, 0.0) for r in rounds) / len(rounds)


def read_composition(run_dir: str | os.PathLike) -> Composition | None:
    """The composition of every saved round of ``run_dir`` (None when it saved no round with domains)."""
    folder = Path(run_dir) / ROUNDS_DIR
    if not folder.is_dir():
        return None
    rounds, pool = [], None
    for path in sorted(folder.glob("round_*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        counts = record.get("domains")
        if not isinstance(counts, dict):  # a record that does not say the domains of its rows
            continue
        update_index = int(record.get("update_index", int(record.get("round", 0)) - 1))
        rounds.append(
            Round(
                round=int(record.get("round", update_index + 1)),
                update_index=update_index,
                step=record.get("step"),
                counts={str(d): int(c) for d, c in counts.items()},
            )
        )
        if isinstance(record.get("pool_domains"), dict):
            pool = {str(d): int(c) for d, c in record["pool_domains"].items()}
    if not rounds:
        return None
    rounds.sort(key=lambda r: r.round)
    return Composition(rounds=rounds, pool=pool)


def selection_summary(run_dir: str | os.PathLike, target: str | None = None) -> dict[str, Any] | None:
    """A run's selection composition (and precision for ``target``) as a JSON-able dict; None when
    the run saved no selection round.

    Returns:
        ``{"rounds": [{"round", "step", "selected", "shares": {domain: share}}, ...],
        "pool_shares": {domain: share} or None}``, plus, with ``target``: ``"target"``,
        ``"base_rate"`` (None when the records hold no pool counts), ``"precision"`` (the mean over
        the rounds after the start) and each round's ``"precision"``.

    Raises:
        ConfigError: ``target`` is not a domain of the rounds (the domains are named).
    """
    composition = read_composition(run_dir)
    if composition is None:
        return None
    rounds = [
        {"round": r.round, "step": r.step, "selected": r.selected, "shares": r.shares} for r in composition.rounds
    ]
    summary: dict[str, Any] = {"rounds": rounds, "pool_shares": composition.pool_shares}
    if target is not None:
        composition.check_target(target)
        for entry, value in zip(rounds, composition.precision(target)):
            entry["precision"] = value
        summary.update(
            target=target, base_rate=composition.base_rate(target), precision=composition.mean_precision(target)
        )
    return summary


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.0f}%"


def format_selection_summary(summary: dict[str, Any] | None, max_domains: int = 8, noun: str = "domain") -> str:
    """A few lines for a run's closing summary: precision vs the base rate (with a target), and what
    each round selected by domain (the ``max_domains`` largest overall; the rest as ``other``);
    ``noun`` names the domains (``task`` for an SFT pool of tasks)."""
    if not summary:
        return "no selection round was saved"
    rounds = summary["rounds"]
    lines = []
    if summary.get("target") is not None:
        per_round = " ".join(_pct(r["precision"]) for r in rounds)
        lines.append(
            f"selection precision ({summary['target']}): {_pct(summary['precision'])} of the selected rows "
            f"(mean over rounds) vs base rate {_pct(summary['base_rate'])}; per round: {per_round}"
        )
    totals: dict[str, float] = {}
    for r in rounds:
        for d, share in r["shares"].items():
            totals[d] = totals.get(d, 0.0) + share
    shown = sorted(totals, key=lambda d: -totals[d])[:max_domains]
    if summary.get("target") in totals and summary["target"] not in shown:
        shown[-1] = summary["target"]
    other = len(totals) > len(shown)
    header = ["round", "step", *shown, *(["other"] if other else [])]
    rows = []
    pool = summary.get("pool_shares")
    if pool:
        rows.append(["pool", "", *[_pct(pool.get(d, 0.0)) for d in shown]])
        if other:
            rows[-1].append(_pct(1.0 - sum(pool.get(d, 0.0) for d in shown)))
    for r in rounds:
        row = [
            str(r["round"]),
            str(r["step"] if r["step"] is not None else ""),
            *[_pct(r["shares"].get(d, 0.0)) for d in shown],
        ]
        if other:
            row.append(_pct(1.0 - sum(r["shares"].get(d, 0.0) for d in shown)))
        rows.append(row)
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    lines.append(f"selected by {noun} (share of each round's selected rows; pool: the base rates):")
    for row in [header, *rows]:
        lines.append("  " + "  ".join(cell.rjust(w) for cell, w in zip(row, widths)))
    return "\n".join(lines)
