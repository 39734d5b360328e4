"""A small column-defined source (one JSONL file, the domain in ``meta.src``) and the run config over it."""

from __future__ import annotations

import json
from pathlib import Path

from support.config import compose_config

from dataflex.config import to_dict

WORDS = {"a": "alpha apple anchor", "b": "bravo banana bridge", "c": "charlie cherry castle"}


def write_source(path: Path, n_per_value: int = 6) -> Path:
    rows = []
    for i in range(n_per_value):
        for value, words in WORDS.items():
            rows.append({"text": f"{words} number {i} " * 12, "meta": {"src": value, "i": i}})
    rows.append({"text": "a row without the column", "meta": {}})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def registry_for(path: Path) -> dict:
    return {"mixed": {"file_name": str(path), "columns": {"prompt": "text"}}}


def pt_config(overrides=()) -> dict:
    """A 4-step pt run on the tiny model (batch 4, no evaluation), as a plain dict."""
    return to_dict(
        compose_config(
            [
                "data=offline_domains",
                "trainer=pt_full",
                "eval.before=false",
                "eval.after=false",
                "trainer.max_steps=4",
                "trainer.per_device_train_batch_size=4",
                *overrides,
            ]
        )
    )


def column_config(tmp_path, overrides=(), domains=None):
    """A 4-step pt run on the tiny model over ``tmp_path/mixed.jsonl`` (written anew), split by ``meta.src``."""
    cfg = pt_config(overrides)
    cfg["data"] = {
        "name": "mixed",
        "asset": None,
        "stage": "pt",
        "dataset_dir": None,
        "registry": registry_for(write_source(tmp_path / "mixed.jsonl")),
        "source": "mixed",
        "domain_column": "meta.src",
        "domains": domains,
        "cutoff_len": 32,
        "max_samples": None,
        "eval": {},
    }
    if cfg["mixer"].get("domains") is not None or "domains" in cfg["mixer"]:
        cfg["mixer"]["domains"] = domains  # what ${data.domains} interpolates to
    return cfg
