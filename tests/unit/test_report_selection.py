"""Selection composition, precision and decision cost in dataflex-report, on hand-built run
directories whose round records give known values."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_report import make_run

from dataflex.config import ConfigError
from dataflex.report import (
    arm_composition,
    build_report,
    format_selection_summary,
    load_run,
    read_composition,
    selection_summary,
    summarize,
    write_report,
)
from dataflex.train.timing import DecisionClock, totals_over_attempts

POOL = {"facts": 10, "arith": 30, "defs": 60}  # base rate of facts: 0.1


def add_rounds(run_dir: Path, rounds: list[dict[str, int]], pool: dict[str, int] | None = POOL, every: int = 2):
    """``selections/round_NNN.json`` as the callback writes them: round 0 at the start (update_index -1)."""
    folder = run_dir / "selections"
    folder.mkdir()
    for number, counts in enumerate(rounds):
        record = {
            "run_id": "x",
            "round": number,
            "update_index": number - 1,
            "step": number * every,
            "selected": sum(counts.values()),
            "unique": sum(counts.values()),
            "domains": counts,
            **({"pool_domains": pool} if pool is not None else {}),
            "indices": list(range(sum(counts.values()))),
        }
        (folder / f"round_{number:03d}.json").write_text(json.dumps(record))


def add_timing(run_dir: Path, deciding: float, training: float):
    path = run_dir / "metrics.json"
    metrics = json.loads(path.read_text())
    metrics.update(
        decision_seconds=deciding,
        **{"decision_seconds/selector": deciding},
        train_seconds=training,
        decision_share=deciding / (deciding + training),
        decision_overhead=deciding / training,
    )
    path.write_text(json.dumps(metrics))


@pytest.fixture
def selection_sweep(tmp_path):
    """Arm ``less`` (2 seeds, 3 rounds of 10 rows) and arm ``random`` (1 seed); arm ``static`` has no round."""
    sweep = tmp_path / "sweep"
    less = {
        1: [
            {"facts": 1, "arith": 3, "defs": 6},
            {"facts": 5, "arith": 3, "defs": 2},
            {"facts": 7, "arith": 3, "defs": 0},
        ],
        2: [
            {"facts": 1, "arith": 3, "defs": 6},
            {"facts": 3, "arith": 5, "defs": 2},
            {"facts": 9, "arith": 1, "defs": 0},
        ],
    }
    for seed, rounds in less.items():
        run = make_run(sweep / "selector=less" / f"seed={seed}", seed=seed, evals={"em/facts": 0.1 * seed})
        add_rounds(run, rounds)
        add_timing(run, deciding=2.0 * seed, training=10.0)  # overheads 0.2 and 0.4
    run = make_run(sweep / "selector=random" / "seed=1", seed=1, evals={"em/facts": 0.05})
    add_rounds(run, [{"facts": 1, "arith": 3, "defs": 6}] * 3)
    add_timing(run, deciding=0.5, training=10.0)
    make_run(sweep / "selector=static" / "seed=1", seed=1, evals={"em/facts": 0.02})
    return sweep


def test_round_records_give_shares_precision_and_base_rate(selection_sweep):
    run_dir = selection_sweep / "selector=less" / "seed=1"
    comp = read_composition(run_dir)
    assert [r.round for r in comp.rounds] == [0, 1, 2] and [r.step for r in comp.rounds] == [0, 2, 4]
    assert comp.rounds[1].shares == {"facts": 0.5, "arith": 0.3, "defs": 0.2}
    assert comp.base_rate("facts") == pytest.approx(0.1)
    assert comp.precision("facts") == [0.1, 0.5, 0.7]
    assert comp.mean_precision("facts") == pytest.approx(0.6)  # rounds after the start: (0.5 + 0.7) / 2
    summary = selection_summary(run_dir, target="facts")
    assert summary["precision"] == pytest.approx(0.6) and summary["base_rate"] == pytest.approx(0.1)
    assert [r["precision"] for r in summary["rounds"]] == [0.1, 0.5, 0.7]
    assert summary["pool_shares"] == {"facts": 0.1, "arith": 0.3, "defs": 0.6}
    assert json.loads(json.dumps(summary)) == summary  # JSON-able (metrics.json)
    assert selection_summary(selection_sweep / "selector=static" / "seed=1") is None
    with pytest.raises(ConfigError, match="'nope' is not a domain.*facts, arith, defs"):
        selection_summary(run_dir, target="nope")


def test_a_run_with_only_the_first_round_averages_it(tmp_path):
    run = make_run(tmp_path / "one")
    add_rounds(run, [{"facts": 4, "arith": 0, "defs": 4}])
    assert read_composition(run).mean_precision("facts") == 0.5


def test_records_without_pool_counts_have_no_base_rate(tmp_path):
    run = make_run(tmp_path / "old")
    add_rounds(run, [{"facts": 2, "arith": 2, "defs": 0}] * 2, pool=None)
    summary = selection_summary(run, target="facts")
    assert summary["base_rate"] is None and summary["pool_shares"] is None and summary["precision"] == 0.5
    report = build_report([run], target="facts")
    assert "0.5000 |" in report.table and "no base rate recorded" in report.markdown


def test_arm_composition_is_the_mean_over_seeds(selection_sweep):
    arms = {a.name: a for a in summarize([load_run(d) for d in sorted(selection_sweep.glob("*/seed=*"))])}
    comp = arm_composition(arms["selector=less"])
    assert comp.seeds == 2 and comp.domains == ["facts", "arith", "defs"]
    assert [(n, s) for n, s, _ in comp.rounds] == [(0, 0), (1, 2), (2, 4)]
    assert comp.rounds[1][2] == pytest.approx({"facts": 0.4, "arith": 0.4, "defs": 0.2})
    assert comp.rounds[2][2] == pytest.approx({"facts": 0.8, "arith": 0.2, "defs": 0.0})
    assert comp.pool == pytest.approx({"facts": 0.1, "arith": 0.3, "defs": 0.6})
    assert arm_composition(arms["selector=static"]) is None


def test_report_table_has_precision_and_decision_cost_columns(selection_sweep, tmp_path):
    report = write_report([selection_sweep], tmp_path / "out", metric="em/facts", target="facts")
    header = report.table.splitlines()[0]
    assert "| precision: facts | decision cost |" in header
    lines = report.table.splitlines()[2:]
    rows = {arm: next(line for line in lines if f"selector={arm}" in line) for arm in ("less", "random", "static")}
    # less: per-seed mean precision 0.6 (seed 1) and 0.6 (seed 2: (0.3 + 0.9) / 2); overheads 20% and 40%
    assert "| 0.6000 ± 0.0000 (base 0.1000) | 30% (3.0 s) |" in rows["less"]
    assert "| 0.1000 (base 0.1000) | 5% (0.5 s) |" in rows["random"]
    assert "| – | – |" in rows["static"]
    md = report.markdown
    assert "## Selection composition" in md and "### Selection composition: selector=less" in md
    assert "| round | step | **facts** (target) | arith | defs |" in md
    assert "| pool (base rate) | – | 0.100 | 0.300 | 0.600 |" in md
    assert "| 1 | 2 | 0.400 | 0.400 | 0.200 |" in md and "| 2 | 4 | 0.800 | 0.200 | 0.000 |" in md
    assert "Precision (facts): 0.6000 ± 0.0000" in md and "vs base rate 0.1000" in md
    png = report.plots["selection_composition"]
    assert png.name == "report_selection_composition.png" and png.read_bytes()[:4] == b"\x89PNG"
    assert "![selection_composition](report_selection_composition.png)" in md


def test_without_target_composition_but_no_precision_column(selection_sweep):
    report = build_report([selection_sweep])
    assert "precision" not in report.table.splitlines()[0] and "decision cost" in report.table
    assert "| round | step | facts | arith | defs |" in report.markdown


def test_runs_without_timing_keep_the_old_table(tmp_path):
    make_run(tmp_path / "sweep" / "a" / "seed=1", evals={"ppl/avg": 3.0})
    assert "decision cost" not in build_report([tmp_path / "sweep"]).table


def test_target_errors_name_the_domains(selection_sweep, tmp_path):
    with pytest.raises(
        ConfigError, match="'nope' is not a domain of the selection rounds; domains: arith, defs, facts"
    ):
        build_report([selection_sweep], target="nope")
    plain = make_run(tmp_path / "plain")
    with pytest.raises(ConfigError, match="no run saved a selection round"):
        build_report([plain], target="facts")
    from dataflex.cli.report import main

    assert main([str(selection_sweep), "--out", str(tmp_path / "o"), "--target", "nope"]) == 2
    assert main([str(selection_sweep), "--out", str(tmp_path / "o"), "--target", "facts"]) == 0


def test_closing_summary_lines(selection_sweep):
    text = format_selection_summary(
        selection_summary(selection_sweep / "selector=less" / "seed=1", "facts"), noun="task"
    )
    lines = text.splitlines()
    assert lines[0] == (
        "selection precision (facts): 60% of the selected rows (mean over rounds) vs base rate 10%; per round: 10% 50% 70%"
    )
    assert lines[1].startswith("selected by task")
    # the largest total share first: facts 1.3, arith 0.9, defs 0.8
    assert lines[2].split() == ["round", "step", "facts", "arith", "defs"]
    assert lines[3].split() == ["pool", "10%", "30%", "60%"]
    assert lines[5].split() == ["1", "2", "50%", "30%", "20%"]
    assert format_selection_summary(None) == "no selection round was saved"


def test_decision_clock_sums_spans_per_kind():
    clock = DecisionClock()
    clock.start_loop()
    with clock.measure("selector"):
        with clock.measure("mixer"):  # nested: counted once, in the outer span
            sum(range(100_000))
    with clock.measure(None):  # not a decision
        sum(range(100_000))
    clock.stop_loop()
    totals = clock.totals()
    assert totals["decision_seconds/selector"] > 0 and "decision_seconds/mixer" not in totals
    assert totals["decision_seconds"] == totals["decision_seconds/selector"]
    assert 0 < totals["decision_share"] < 1 and totals["train_seconds"] > 0
    running = clock.running()
    assert running["time/attempt"] == clock.attempt and running["time/decision_seconds"] == totals["decision_seconds"]


def test_totals_over_attempts_sum_each_attempts_last_record():
    records = [
        {"step": 1, "time/attempt": 100.0, "time/decision_seconds": 1.0, "time/train_seconds": 5.0},
        {"step": 2, "time/attempt": 100.0, "time/decision_seconds": 2.0, "time/train_seconds": 9.0},
        {"step": 2, "train/loss": 1.0},
        {"step": 3, "time/attempt": 200.0, "time/decision_seconds": 3.0, "time/train_seconds": 4.0},
    ]
    assert totals_over_attempts(records) == {"attempts": 2, "decision_seconds": 5.0, "train_seconds": 13.0}
    assert totals_over_attempts([{"step": 1}]) is None


def test_paired_precision_against_the_random_arm(selection_sweep):
    """less seed 1: precision 0.6, random seed 1: 0.1 -> +0.5 on the one shared seed; em/facts 0.1 - 0.05."""
    report = build_report([selection_sweep], metric="em/facts", target="facts", baseline="selector=random")
    paired = report.markdown.split("## Paired differences to selector=random")[1]
    row = next(line for line in paired.splitlines() if line.startswith("| selector=less"))
    assert row == "| selector=less | 1 | +0.0500 (1/1 better) | +0.5000 (1/1 better) |"
    static = next(line for line in paired.splitlines() if line.startswith("| selector=static"))
    assert static.endswith("| – |")  # no selection rounds: no precision to pair


def test_an_eval_metric_named_precision_is_not_the_selection_precision(tmp_path):
    """An eval metric called ``precision`` pairs its own values; the selection precision is its own column."""
    sweep = tmp_path / "sweep"
    for arm, value, facts in (("selector=less", 0.9, 8), ("selector=random", 0.7, 1)):
        run = make_run(sweep / arm / "seed=1", seed=1, evals={"precision": value})
        add_rounds(run, [{"facts": facts, "arith": 10 - facts, "defs": 0}] * 2)
    report = build_report([sweep], metric="precision", target="facts", baseline="selector=random")
    paired = report.markdown.split("## Paired differences to selector=random")[1].splitlines()
    assert "| arm | seeds paired | Δ precision | Δ selection precision |" in paired
    row = next(line for line in paired if line.startswith("| selector=less"))
    assert row == "| selector=less | 1 | +0.2000 (1/1 better) | +0.7000 (1/1 better) |"
