"""Run directories -> plots (and, as the comparison studies arrive, tables)."""

from __future__ import annotations

import json
import os
from pathlib import Path

PREFIX = "mixer/proportion/"


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """The records of a run's ``metrics.jsonl`` (a torn last line from a kill is skipped)."""
    records = []
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def plot_proportions(run_dir: str | os.PathLike) -> Path | None:
    """Write ``proportions.png``: each domain's sampling proportion over training steps.

    A resumed run logs some steps twice; the later record of a step wins. Returns the PNG's path,
    or None when the run logged no proportions.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dataflex.utils import atomic_write

    by_step: dict[int, dict[str, float]] = {}
    for record in read_metrics(run_dir):
        values = {k[len(PREFIX):]: v for k, v in record.items() if k.startswith(PREFIX)}
        if values:
            by_step[record["step"]] = values
    if not by_step:
        return None
    steps = sorted(by_step)
    domains = list(by_step[steps[0]])
    figure, axes = plt.subplots(figsize=(8, 4.5))
    # a step function: a decision holds until the next one
    axes.stackplot(steps, [[by_step[s].get(d, 0.0) for s in steps] for d in domains], labels=domains, step="post")
    axes.set(xlabel="optimizer step", ylabel="sampling proportion", ylim=(0, 1), xlim=(steps[0], max(steps[-1], steps[0] + 1)),
             title=f"Domain proportions: {Path(run_dir).name}")
    axes.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    figure.tight_layout()
    path = atomic_write(Path(run_dir) / "proportions.png", lambda handle: figure.savefig(handle, format="png", dpi=110))
    plt.close(figure)
    return path
