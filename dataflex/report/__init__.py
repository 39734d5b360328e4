"""Run directories -> comparison tables and PNG plots (``dataflex-report``).

Everything is read from the files every run writes (``metrics.jsonl``, ``metrics.json``,
``dataflex_config.yaml``); W&B is never needed. A *run* is a directory holding ``metrics.jsonl``;
runs are grouped into *arms* by their directory: a sweep writes ``<sweep>/<arm>/seed=<seed>/``
(sweeps/sweep.py), and a ``seed=N`` item in a directory name never separates two arms.
"""

from dataflex.report.build import Report, build_report, log_to_wandb, write_report
from dataflex.report.composition import (
    ArmComposition,
    arm_composition,
    composition_markdown,
    plot_selection_composition,
)
from dataflex.report.plots import (
    _pyplot,
    _save,
    _short_names,
    _stackplot,
    plot_arm_proportions,
    plot_losses,
    plot_metric,
    plot_proportions,
    plot_selection_overlap,
)
from dataflex.report.runs import (
    OVERLAP,
    PREFIX,
    SKIP_DIRS,
    TOKENS,
    RunRecord,
    arm_and_seed,
    find_runs,
    held_by_step,
    load_run,
    method_of,
    proportions_by_step,
    read_metrics,
)
from dataflex.report.selection import (
    Composition,
    Round,
    format_selection_summary,
    read_composition,
    selection_summary,
)
from dataflex.report.tables import (
    BEST_MARK,
    Arm,
    best_arm,
    default_metric,
    lower_is_better,
    markdown_table,
    mean_std,
    precision_stats,
    summarize,
)

__all__ = [
    "ArmComposition",
    "Composition",
    "Round",
    "arm_composition",
    "composition_markdown",
    "format_selection_summary",
    "plot_selection_composition",
    "precision_stats",
    "read_composition",
    "selection_summary",
    "BEST_MARK",
    "OVERLAP",
    "PREFIX",
    "SKIP_DIRS",
    "TOKENS",
    "Arm",
    "Report",
    "RunRecord",
    "_pyplot",
    "_save",
    "_short_names",
    "_stackplot",
    "arm_and_seed",
    "best_arm",
    "build_report",
    "default_metric",
    "find_runs",
    "held_by_step",
    "load_run",
    "log_to_wandb",
    "lower_is_better",
    "markdown_table",
    "mean_std",
    "method_of",
    "plot_arm_proportions",
    "plot_losses",
    "plot_metric",
    "plot_proportions",
    "plot_selection_overlap",
    "proportions_by_step",
    "read_metrics",
    "summarize",
    "write_report",
]
