"""`dataflex-report`: run directories -> a comparison table (report.md) and PNG plots.

    dataflex-report outputs/sweeps/compare_mixers            # a sweep: one row per arm (mean ± std over seeds)
    dataflex-report outputs/sweeps/a outputs/sweeps/b --out cmp   # several sweeps in one table
    dataflex-report outputs/runs/2026-01-01_12-00-00         # a single run directory
    dataflex-report SWEEP --metric em/arithmetic             # the metric that picks the best row
    dataflex-report SWEEP --wandb                            # also log the table to W&B (the sweep's group)
    dataflex-report SWEEP --target facts                     # selection precision for the pool's `facts` rows
    dataflex-report SWEEP --baseline uniform                 # each arm minus `uniform`, seed by seed (paired)

Reads only the files every run writes (metrics.jsonl, metrics.json, dataflex_config.yaml, the
selection rounds selections/round_*.json); W&B is never needed. Prints the table and writes
report.md plus report_loss.png, report_proportions.png (mixer runs), report_selection_overlap.png
and report_selection_composition.png (selector runs: each round's share of the selected rows per
domain), report_domain_weights.png (weighter runs: each domain's B·w over training) into --out
(default: the first directory). The table has a "decision cost" column (time spent deciding as a
percentage of the time spent training) for runs that recorded it; weighter runs add a weights-by-domain
table, --baseline a table of paired differences.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="dataflex-report",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("dirs", nargs="+", metavar="DIR", help="sweep directories or run directories")
    parser.add_argument("--out", default=None, help="where report.md and the plots go (default: the first DIR)")
    parser.add_argument(
        "--metric",
        default=None,
        help="the eval metric that picks the best row "
        "(default: ppl/avg, else the first accuracy, else the first exact match)",
    )
    parser.add_argument("--metrics", default=None, help="comma-separated eval metrics for the table (default: all)")
    parser.add_argument(
        "--target",
        default=None,
        metavar="DOMAIN",
        help="a domain (task) of the pool: adds its selection precision (its share of each round's selected rows, "
        "with its share of the pool, the base rate, beside it) to the table and the composition tables",
    )
    parser.add_argument(
        "--baseline",
        default=None,
        metavar="ARM",
        help="an arm (or the end of its name): adds a table of every other arm's paired differences to it "
        "(per seed, mean ± std over the shared seeds, and on how many seeds the arm is better)",
    )
    parser.add_argument(
        "--wandb",
        nargs="?",
        const="",
        default=None,
        metavar="GROUP",
        help="also log the table and plots to W&B as a `report` run in GROUP (default: the first "
        "DIR's name, a sweep's W&B group); offline without an API key",
    )
    parser.add_argument("--wandb-project", default="dataflex", help="W&B project for --wandb (default: dataflex)")
    args = parser.parse_args(argv)

    from dataflex.errors import DataFlexError
    from dataflex.report import write_report

    try:
        report = write_report(
            args.dirs,
            args.out,
            args.metric,
            args.metrics.split(",") if args.metrics else None,
            args.target,
            args.baseline,
        )
    except DataFlexError as err:
        print(f"dataflex-report: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # --out not writable: a file in the way, a read-only directory, a full disk
        where = err.filename or args.out or args.dirs[0]
        print(
            f"dataflex-report: error: cannot write the report to {where} ({err.strerror}); "
            "choose a writable directory with --out",
            file=sys.stderr,
        )
        return 2
    print(report.table or "No run has finished yet.")
    unfinished = [r for r in report.runs if not r.finished]
    if unfinished:
        print(f"({len(unfinished)} unfinished run(s) left out; listed in the report)")
    print(f"report: {report.path}")
    for name, path in report.plots.items():
        print(f"plot ({name}): {path}")
    if args.wandb is not None:
        from pathlib import Path

        from dataflex.report import log_to_wandb

        group = args.wandb or Path(args.dirs[0]).resolve().name
        where = log_to_wandb(report, group=group, project=args.wandb_project)
        print(f"W&B report run ({group}): {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
