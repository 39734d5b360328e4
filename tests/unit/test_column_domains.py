"""Column-defined domains: one source dataset split by a column into one domain per value (the
Pile's meta.pile_set_name, SlimPajama's meta.redpajama_set_name), then trained like any domains."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from support.columns import column_config, registry_for, write_source
from support.config import compose_config

from dataflex.backend.llamafactory import build_hparams, split_by_column
from dataflex.config import ConfigError, to_dict


def test_split_keeps_all_fields_orders_and_reuses(tmp_path):
    source = write_source(tmp_path / "mixed.jsonl")
    registry = registry_for(source)
    names = split_by_column(
        {"source": "mixed", "column": "meta.src", "domains": ["c", "a"]}, registry, tmp_path / "out"
    )
    assert names == ["c", "a"] and registry["c"]["columns"] == {"prompt": "text"}
    rows = [json.loads(line) for line in Path(registry["c"]["file_name"]).read_text().splitlines()]
    assert len(rows) == 6 and all(r["meta"]["src"] == "c" and r["text"].startswith("charlie") for r in rows)
    assert [r["meta"]["i"] for r in rows] == list(range(6))  # the source's order within a domain
    # every value found (sorted) when no domains are listed; the split on disk is reused
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out" / "domains").iterdir()}
    registry = registry_for(source)
    assert split_by_column({"source": "mixed", "column": "meta.src"}, registry, tmp_path / "out") == ["a", "b", "c"]
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out" / "domains").iterdir()} == before


@pytest.mark.parametrize(
    "spec, match",
    [
        (
            {"source": "mixed", "column": "meta.src", "domains": ["a", "z"]},
            r"no row of 'mixed' has meta.src = 'z'; values found: a, b, c",
        ),
        ({"source": "other", "column": "meta.src"}, "source 'other'.*is not registered"),
        ({"source": "mixed", "column": "meta.missing"}, "no row of .mixed. has a value in column meta.missing"),
    ],
)
def test_split_errors_name_the_fix(tmp_path, spec, match):
    registry = registry_for(write_source(tmp_path / "mixed.jsonl"))
    with pytest.raises(ConfigError, match=match):
        split_by_column(spec, registry, tmp_path / "out")


def test_a_value_with_a_comma_is_refused(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_text(json.dumps({"text": "x", "meta": {"src": "a,b"}}) + "\n")
    with pytest.raises(ConfigError, match="contains a comma"):
        split_by_column({"source": "mixed", "column": "meta.src"}, registry_for(path), tmp_path / "out")


def test_source_is_required():
    cfg = to_dict(compose_config(["data=offline_domains", "trainer=pt_full"]))
    cfg["data"] = {**cfg["data"], "domain_column": "meta.src", "source": None}
    with pytest.raises(ConfigError, match="domain_column needs `source`"):
        build_hparams(cfg, Path("unused"), resume_from=None)


def test_e2e_column_domains_train_with_a_mixer(tmp_path):
    """Every value becomes a domain named after it; the mixer's proportions and the per-domain
    training loss are logged under those names."""
    from dataflex.run import Run

    cfg = column_config(tmp_path, ["mixer=odm"])
    metrics = Run(cfg, tmp_path / "run").fit()
    assert metrics["domains"] == ["a", "b", "c"]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("mixer/proportion/b" in r for r in records)
    logged = {k.rsplit("/", 1)[1] for r in records for k in r if k.startswith("train/domain_loss/")}
    assert logged and logged <= {"a", "b", "c"}
    state = torch.load(tmp_path / "run" / "checkpoints" / "checkpoint-4" / "dataflex_state.pt", weights_only=False)
    assert state["sampler"]["history"][-1]["proportions"].numel() == 3


def test_e2e_listed_values_choose_and_order_the_domains(tmp_path):
    from dataflex.run import Run

    cfg = column_config(tmp_path, ["mixer=static", "mixer.proportions=[1,0]"], domains=["c", "a"])
    metrics = Run(cfg, tmp_path / "run").fit()
    assert metrics["domains"] == ["c", "a"]
    state = torch.load(tmp_path / "run" / "checkpoints" / "checkpoint-4" / "dataflex_state.pt", weights_only=False)
    torch.testing.assert_close(
        state["sampler"]["history"][-1]["proportions"], torch.tensor([1.0, 0.0], dtype=torch.float64)
    )
