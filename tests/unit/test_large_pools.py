"""Large pools (issue 20, item 3): a pool tokenized ahead of time (``data.tokenized_path``, a
``datasets.save_to_disk`` directory) with domains from a column, opened memory-mapped; column-defined
domains read as domain ids once per source and column, cached and shared by runs, no copy of the corpus."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from support.columns import column_config, pt_config

from dataflex.backend import pools
from dataflex.config import ConfigError
from dataflex.run import Run

WORDS = {"alpha": "alpha apple anchor", "bravo": "bravo banana bridge", "charlie": "charlie cherry castle"}


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    """The domain-id cache of these tests (not the user's)."""
    folder = tmp_path / "domain_ids"
    monkeypatch.setattr(pools, "domain_cache_dir", lambda: folder)
    return folder


def base_config(overrides=()):
    return pt_config(overrides)


def save_tokenized(path: Path, model_path: str, column: str = "source", per_domain: int = 7) -> None:
    """A tokenized pool as a user prepares one: input_ids/attention_mask and the domain column, the
    domains interleaved (not grouped), saved with ``save_to_disk``."""
    from datasets import Dataset
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    rows = []
    for i in range(per_domain):
        for value, words in WORDS.items():
            ids = tokenizer(f"{words} number {i} " * 3)["input_ids"][:24]
            rows.append({"input_ids": ids, "attention_mask": [1] * len(ids), column: value})
    Dataset.from_list(rows).save_to_disk(str(path))


def tokenized_config(tmp_path, overrides=(), domains=None, column="source"):
    cfg = base_config(overrides)
    path = tmp_path / "tokenized"
    if not path.exists():
        save_tokenized(path, cfg["model"]["name_or_path"], column="source")
    cfg["data"] = {
        "name": "tokenized_pool",
        "asset": None,
        "stage": "pt",
        "dataset_dir": None,
        "registry": {},
        "tokenized_path": str(path),
        "domain_column": column,
        "domains": domains,
        "cutoff_len": 32,
        "max_samples": None,
        "eval": {},
    }
    if "domains" in cfg["mixer"]:
        cfg["mixer"]["domains"] = domains  # what ${data.domains} interpolates to
    return cfg


def test_tokenized_pool_is_mapped_and_split_by_its_column(tmp_path):
    """The pool is the saved Arrow file (memory-mapped, not rows in Python), each row with the domain of
    its column value, ``sample_index`` its position; max_samples keeps the first rows of each domain."""
    from dataflex.backend.llamafactory import build, build_hparams

    cfg = tokenized_config(tmp_path, domains=["charlie", "alpha"])
    cfg["data"]["max_samples"] = 5
    built = build(build_hparams(cfg, tmp_path / "run", resume_from=None))
    assert built.domain_names == ["charlie", "alpha"]
    assert any(str(tmp_path / "tokenized") in f["filename"] for f in built.pool.cache_files)
    from datasets import load_from_disk

    rows = load_from_disk(str(tmp_path / "tokenized")).to_list()
    first = {v: [i for i, r in enumerate(rows) if r["source"] == v][:5] for v in ("charlie", "alpha")}
    kept = [rows[i] for i in sorted(first["charlie"] + first["alpha"])]  # the saved order, not regrouped
    assert len(built.pool) == 10 and sorted(built.pool.column_names) == [
        "attention_mask",
        "domain_id",
        "input_ids",
        "sample_index",
    ]
    for position, (row, original) in enumerate(zip(built.pool, kept)):
        assert row["sample_index"] == position and row["input_ids"] == original["input_ids"]
        assert built.domain_names[row["domain_id"]] == original["source"]
    assert not (tmp_path / "run" / "data" / "domains").exists()


def test_e2e_odm_on_a_tokenized_pool(tmp_path):
    """mixer=odm trains on the tokenized pool: its proportions are over the column's values, each
    batch's domain ids are those of the saved rows."""
    cfg = tokenized_config(tmp_path, ["mixer=odm"])
    metrics = Run(cfg, tmp_path / "run").fit()
    assert metrics["domains"] == ["alpha", "bravo", "charlie"] and metrics["pool_size"] == 21
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("mixer/proportion/charlie" in r for r in records)
    state = torch.load(tmp_path / "run" / "checkpoints" / "checkpoint-4" / "dataflex_state.pt", weights_only=False)
    assert state["sampler"]["history"][-1]["proportions"].numel() == 3
    logged = {k.rsplit("/", 1)[1] for r in records for k in r if k.startswith("train/domain_loss/")}
    assert logged and logged <= {"alpha", "bravo", "charlie"}


def test_runs_share_the_cached_domain_ids(tmp_path, cache_dir, monkeypatch):
    """Two runs over one column-defined source: the column is read once (the second run finds the
    cache keyed by the source's fingerprint) and neither run writes a copy of the corpus."""
    reads = []
    original = pools.column_values
    monkeypatch.setattr(pools, "column_values", lambda *args: reads.append(args[1]) or original(*args))
    cfg = column_config(tmp_path, ["mixer=odm"])  # writes the source once (a rewrite is a new fingerprint)
    first = Run(copy.deepcopy(cfg), tmp_path / "one").fit()
    cached = sorted(cache_dir.iterdir())
    assert reads == ["meta.src"] and len(cached) == 1
    stamp = cached[0].stat().st_mtime_ns
    second = Run(cfg, tmp_path / "two").fit()
    assert reads == ["meta.src"] and sorted(cache_dir.iterdir()) == cached and cached[0].stat().st_mtime_ns == stamp
    assert first["domains"] == second["domains"] == ["a", "b", "c"]
    assert first["pool_size"] == second["pool_size"]
    for run in ("one", "two"):
        assert not (tmp_path / run / "data" / "domains").exists()
    with np.load(cached[0]) as saved:
        assert list(saved["values"]) == ["a", "b", "c"] and (saved["ids"] == -1).sum() == 1  # the row without it


def test_read_domain_ids_by_fingerprint(tmp_path, cache_dir):
    """The cache is per (fingerprint, column): another column is read anew; values need not be strings."""
    from datasets import Dataset

    data = Dataset.from_dict(
        {"x": [1, 2, 3, 4], "group": [3, 1, None, 3], "meta": [{"s": "q"}, {"s": "p"}, {"s": None}, {}]}
    )
    ids, values = pools.read_domain_ids(data, "group", "test")
    assert values == ["1", "3"] and ids.tolist() == [1, 0, -1, 1]
    ids, values = pools.read_domain_ids(data, "meta.s", "test")
    assert values == ["p", "q"] and ids.tolist() == [1, 0, -1, -1]
    assert len(list(cache_dir.iterdir())) == 2
    with pytest.raises(
        ConfigError,
        match=r"test: the rows have no column meta.t \(data.domain_column\); "
        r"their columns: x, group, meta",
    ):
        pools.read_domain_ids(data, "meta.t", "test")


@pytest.mark.parametrize(
    "change, match",
    [
        (
            {"domain_column": "domain"},
            (
                r"^data.tokenized_path=.*tokenized: the rows have no column domain \(data.domain_column\); "
                r"their columns: input_ids, attention_mask, source; add the column"
            ),
        ),
        (
            {"tokenized_path": "/nonexistent/pool"},
            r"^data.tokenized_path=/nonexistent/pool: /nonexistent/pool holds no saved dataset",
        ),
        (
            {"domain_column": None, "domains": ["a", "b"]},
            r"a tokenized pool is one saved dataset; its domains come from a column",
        ),
    ],
)
def test_bad_tokenized_pool_is_one_line_before_the_model_loads(tmp_path, monkeypatch, change, match):
    """Refused by the preflight, in one line: no model loaded, nothing written in the run directory."""
    import llamafactory.model

    cfg = tokenized_config(tmp_path)
    cfg["data"].update(change)
    monkeypatch.setattr(llamafactory.model, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(ConfigError, match=match) as err:
        Run(cfg, tmp_path / "run").fit()
    assert "\n" not in str(err.value)
    assert not (tmp_path / "run" / "checkpoints").exists() and not (tmp_path / "run" / "metrics.json").exists()
