"""A tiny run with a selector, a mixer and a weighter records its decision cost per kind and the
composition of its selection rounds (metrics.json, metrics.jsonl, the round records, dataflex-report)."""

from __future__ import annotations

import json

import pytest
from support.config import compose_config

from dataflex.report import build_report, format_selection_summary, selection_summary
from dataflex.run import Run
from dataflex.train.timing import totals_over_attempts

# offline_sft: one domain per task (4 domains), 16 samples each
OVERRIDES = [
    "data.max_samples=16",
    "eval.before=false",
    "eval.after=false",
    "trainer.max_steps=4",
    "trainer.save_steps=4",
    "selector=loss",
    "selector.budget=12",
    "selector.warmup_steps=2",
    "selector.update_every=2",
    "selector.batch_size=32",
    "mixer=odm",
    "weighter=loss",
    "weighter.warmup_steps=2",
]


def test_a_run_records_its_decision_cost_and_selection_composition(tmp_path):
    run_dir = tmp_path / "run"
    metrics = Run(compose_config(OVERRIDES), run_dir).fit()
    saved = json.loads((run_dir / "metrics.json").read_text())
    for kind in ("selector", "mixer", "weighter"):
        assert saved[f"decision_seconds/{kind}"] > 0, kind
    parts = sum(v for k, v in saved.items() if k.startswith("decision_seconds/"))
    assert saved["decision_seconds"] == pytest.approx(parts, abs=1e-3)
    assert saved["train_seconds"] > 0 and 0.0 <= saved["decision_share"] <= 1.0
    assert saved["decision_share"] == pytest.approx(
        saved["decision_seconds"] / (saved["decision_seconds"] + saved["train_seconds"]), rel=1e-3
    )
    assert saved["decision_overhead"] == pytest.approx(saved["decision_seconds"] / saved["train_seconds"], rel=1e-3)
    assert metrics["decision_seconds"] == saved["decision_seconds"]

    # the round records hold the pool's rows per domain, and no timing (a resumed run rewrites them identically)
    rounds = [json.loads(p.read_text()) for p in sorted((run_dir / "selections").glob("round_*.json"))]
    assert [r["step"] for r in rounds] == [0, 2]
    domains = saved["domains"]
    for record in rounds:
        assert record["pool_domains"] == {d: 16 for d in domains}
        assert sum(record["domains"].values()) == 12
        assert not [key for key in record if "seconds" in key]

    # metrics.json: every round's shares (they sum to 1) and the pool's
    selection = saved["selection"]
    assert selection["pool_shares"] == {d: 0.25 for d in domains}
    for entry, record in zip(selection["rounds"], rounds):
        assert entry["shares"] == {d: record["domains"][d] / 12 for d in domains}
        assert sum(entry["shares"].values()) == pytest.approx(1.0)

    # metrics.jsonl: shares and the decision time with each round and mixer update, running totals per log
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in records if "selector/selected" in r]
    assert [r["step"] for r in logged] == [0, 2]
    for r, record in zip(logged, rounds):
        assert {d: r[f"selector/share/{d}"] for d in domains} == {d: record["domains"][d] / 12 for d in domains}
    assert logged[1]["time/selector_decide_seconds"] > 0  # the loss round scored the pool
    updates = [r for r in records if "mixer/proportion/" + domains[0] in r]
    assert updates and all(r["time/mixer_decide_seconds"] >= 0 for r in updates)
    assert not [k for r in records for k in r if "seconds" in k and not k.startswith("time/")]
    totals = totals_over_attempts(records)
    assert totals["attempts"] == 1 and 0 < totals["decision_seconds"] <= saved["decision_seconds"] + 1e-3

    # the closing summary and the report
    summary = selection_summary(run_dir, target=domains[0])
    assert summary["base_rate"] == 0.25
    assert summary["precision"] == rounds[1]["domains"][domains[0]] / 12  # the one round after the start
    assert "vs base rate 25%" in format_selection_summary(summary)
    report = build_report([run_dir], target=domains[0])
    assert "decision cost" in report.table and f"precision: {domains[0]}" in report.table
